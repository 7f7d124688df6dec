"""The measuring logic of bench/: which tokens a later turn re-reads, and how results are written.

The benchmarks themselves run for minutes and are run by hand (bench/RESULTS.md); these tests keep
the parts that decide what a figure means from drifting.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentenv.trajectory import Trajectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import common  # noqa: E402
import rollout as rollout_bench  # noqa: E402
from trainer_vs_trl import letter_share, one_turn_env  # noqa: E402


def episode(*segments):
    trajectory = Trajectory()
    for source, ids in segments:
        trajectory.append(source, ids, [0.0] * len(ids) if source == "policy" else None)
    return SimpleNamespace(trajectory=trajectory)


@pytest.fixture
def batch():
    three_turns = episode(
        ("prompt", [1, 2, 3]), ("policy", [4, 5]), ("tool", [6, 7, 8]), ("policy", [9]), ("tool", [10]), ("policy", [11])
    )
    one_turn = episode(("prompt", [1, 2, 3]), ("policy", [12, 13]))
    return SimpleNamespace(episodes=[three_turns, one_turn])


def test_later_turns_pair_what_the_engine_saw_with_the_whole_prompt(batch):
    turns = rollout_bench.later_turn_contexts(batch)
    # Turn 2: the engine had seen the prompt and its own reply; the prompt adds the tool output.
    assert turns[0] == [([1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8])]
    assert turns[1] == [([1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])]
    assert len(turns) == 2  # the one-turn episode has no later turn


def test_recomputed_history_is_everything_without_a_cache_and_the_block_tail_with_one(batch):
    no_cache = object()  # not a VLLMEngine: the transformers engine keeps nothing between calls
    assert rollout_bench.recomputed_history_tokens(no_cache, rollout_bench.later_turn_contexts(batch)) == (5 + 9, 3 + 1)

    from agentenv.trainers.rollout.engines import VLLMEngine

    cached = VLLMEngine.__new__(VLLMEngine)  # only block_size is read
    cached.block_size = 4
    assert rollout_bench.recomputed_history_tokens(cached, rollout_bench.later_turn_contexts(batch)) == (5 % 4 + 9 % 4, 3 + 1)


def test_results_table_has_one_row_per_result_and_marks_missing_values(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "RESULTS.md")
    rows = [{"engine": "vllm", "tokens_per_s": 81.4, "peak_rss_mb": 3539.7}, {"engine": "transformers", "tokens_per_s": 24.1}]
    common.append_section("Rollout engines", "python bench/rollout.py", ["machine line"], [
        ("engine", "engine"), ("tokens/s", "tokens_per_s"), ("peak RSS MB", "peak_rss_mb")], rows)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Rollout engines, " in text and "`python bench/rollout.py`" in text
    assert "|---|---:|---:|" in text
    assert "| vllm | 81.4 | 3,540 |" in text
    assert "| transformers | 24.1 | – |" in text


def test_the_shared_reward_varies_with_the_text():
    assert letter_share("abc") == 1.0
    assert letter_share("a1") == 0.5
    assert letter_share("") == 0.0


def test_the_trl_comparisons_one_turn_env_rewards_the_reply_by_its_letter_share(tokenizer):
    env = one_turn_env(tokenizer, [{"id": "q0", "question": "Capital of Peru?", "answers": ["Lima"]}], max_turn_tokens=8)
    env.reset(options={"index": 0})
    _, reward, terminated, _, _ = env.step("ab1!")  # a reply without a tool call is the answer
    assert terminated and reward == 0.5


def test_retrieval_speed_goals_compare_the_pruned_path_with_the_exhaustive_one_of_the_same_run():
    import retrieval_speed

    pruned = {"p50_ms": 1.2, "p95_ms": 9.0, "batch_queries_per_s_1_thread": 160.0, "batch_threads": 2,
              "batch_queries_per_s": 300.0, "requests_per_s": 100.0, "errors": 0}
    # The batch's baseline is the exhaustive search on one thread (the search without pruning), not its threaded run.
    exhaustive = {"p50_ms": 8.0, "p95_ms": 14.0, "batch_queries_per_s_1_thread": 100.0, "batch_threads": 2,
                  "batch_queries_per_s": 190.0, "requests_per_s": 60.0, "errors": 0}
    checked = retrieval_speed.goals({"pruned": pruned, "exhaustive": exhaustive}, same_hits=True)
    assert [met for _, met in checked] == [True, True, True, False, True]
    assert "1.67x" in checked[3][0]
    assert not all(met for _, met in retrieval_speed.goals({"pruned": pruned, "exhaustive": exhaustive}, same_hits=False))


def test_the_wiki_shaped_corpus_reads_as_wiki18_with_titles_shared_by_an_articles_passages(tmp_path):
    import gzip
    import itertools

    import wikipedia_scale

    from agentenv.corpora.loaders import load_corpus

    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wb") as file:
        for _, block in wikipedia_scale.corpus_chunks(300, seed=3):
            file.write(block)
    passages = list(load_corpus(path))
    assert [passage["id"] for passage in passages] == [str(row) for row in range(1, 301)]
    articles = [[passages[0]]]
    for previous, passage in itertools.pairwise(passages):
        if passage["title"] == previous["title"]:
            articles[-1].append(passage)
        else:
            articles.append([passage])
    assert 300 / 5 < len(articles) < 300 / 2  # 3.6 passages an article on average
    # DPR's 100-word blocks: only an article's last passage is shorter.
    assert all(len(passage["text"].split()) == 100 for article in articles for passage in article[:-1])
    assert all(1 <= len(article[-1]["text"].split()) <= 100 for article in articles)
    assert all(1 <= len(passage["title"].split()) <= 3 for passage in passages)
    again = b"".join(block for _, block in wikipedia_scale.corpus_chunks(300, seed=3))
    assert gzip.decompress(path.read_bytes()) == again
    assert again != b"".join(block for _, block in wikipedia_scale.corpus_chunks(300, seed=4))


def test_wikipedia_scale_goals_fail_on_memory_beyond_the_page_cache_and_on_pruned_hits_that_differ():
    import wikipedia_scale

    row = {"build_s": 1500.0, "build_peak_rss_mb": 6000.0, "build_peak_rss_anon_mb": 1200.0,
           "server_rss_anon_mb_started": 40.0, "server_rss_anon_mb_loaded": 60.0, "p50_ms": 8.0, "p95_ms": 40.0,
           "batch_queries_per_s": 250.0, "requests_per_s": 160.0, "server_errors": 0, "same_top_k": 1.0}
    # Mapped index pages (RSS 6 GB) are page cache: the goal is on RssAnon.
    assert all(met for _, met in wikipedia_scale.goals(row))
    missed = wikipedia_scale.goals({**row, "server_rss_anon_mb_loaded": 2100.0, "same_top_k": 0.999})
    assert [met for _, met in missed] == [True, True, False, True, True, True, True, False]
