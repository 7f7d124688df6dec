"""What the agent's searches did, on scripted episodes through the real environment: repeated,
near-repeated and question-copying queries, answer recall of retrieval and the reading verdict; the
aggregates a step and an evaluation log; the truncation flags the environment records; and the
verdict in an eval table and in `agentenv view`."""

import pytest

from agentenv import ToolEnv
from agentenv.search_behaviour import episode_search_record, search_metrics
from agentenv.tools import Tool, calculator, tool
from agentenv.tools.base import Retrieved, ToolError
from agentenv.trainers.evaluation.evaluate import format_table, summarise
from agentenv.trainers.evaluation.viewer import render_episode
from agentenv.trainers.loop.metrics import transcript
from agentenv.trajectory import Episode

QUESTION = {"id": "q1", "question": "What is the capital of Peru?", "answers": ["Lima"]}


@tool(returns_passages=True)
def lookup(query: str) -> str:
    """Look a country up.

    Args:
        query: A country name.
    """
    if not query.strip():
        raise ToolError("empty query")
    return "Lima is the capital of Peru." if "peru" in query.lower() else "Santiago is the capital of Chile."


def play(tokenizer, actions, tools=(lookup, calculator), **limits):
    env = ToolEnv(list(tools), tokenizer=tokenizer, max_turns=6, **limits)
    env.reset(options=QUESTION)
    for action in actions:
        *_, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return Episode.from_info(info, 0.0)
    raise AssertionError("the episode did not end")


def test_repeats_near_repeats_and_question_copies_are_counted(tokenizer):
    episode = play(tokenizer, [
        "<lookup>what is the capital city of peru</lookup>",
        "<lookup>What is capital city of Peru?</lookup>",            # the same, normalised
        "<lookup>what is the capital city of peru today</lookup>",   # 6 of 7 words shared
        "<lookup>What is the capital of Peru?</lookup>",             # the question; 5 of 6 words shared
        "<calculator>2+2</calculator>",                              # not a search
        "<answer>Lima</answer>",
    ])
    assert episode.passage_tools == ("lookup",)
    record = episode_search_record(episode)
    assert (record.searches, record.queries) == (4, 4)
    assert (record.duplicate_queries, record.near_duplicate_queries, record.question_copies) == (1, 2, 1)
    assert record.found and record.verdict == "found, read right"


@pytest.mark.parametrize(
    ("actions", "verdict"),
    [
        (["<lookup>Peru</lookup>", "<answer>Lima</answer>"], "found, read right"),
        (["<lookup>Peru</lookup>", "<answer>Santiago</answer>"], "found, misread"),
        (["<lookup>Chile</lookup>", "<answer>Santiago</answer>"], "not found"),
        (["<calculator>1+1</calculator>", "<answer>Lima</answer>"], "no search"),
        # A refused search (empty query) ran nothing: no search.
        (["<lookup></lookup>", "<answer>Lima</answer>"], "no search"),
    ],
)
def test_the_verdict_splits_not_found_from_found_and_misread(tokenizer, actions, verdict):
    assert episode_search_record(play(tokenizer, actions)).verdict == verdict


def test_the_aggregates_over_a_batch(tokenizer):
    plays = [
        ["<lookup>Peru</lookup>", "<answer>Lima</answer>"],
        ["<lookup>Peru</lookup>", "<lookup>Peru</lookup>", "<answer>Santiago</answer>"],
        ["<lookup>Chile</lookup>", "<answer>Santiago</answer>"],
        ["<answer>Lima</answer>"],
    ]
    metrics = search_metrics([episode_search_record(play(tokenizer, actions)) for actions in plays])
    assert metrics["search/per_episode"] == pytest.approx(4 / 4)
    assert [metrics[f"search/episodes_with_{b}"] for b in ("0", "1", "2", "3+")] == [0.25, 0.5, 0.25, 0.0]
    assert metrics["search/duplicate_rate"] == pytest.approx(1 / 4)
    assert metrics["search/answer_recall"] == pytest.approx(2 / 3)  # 2 of the 3 that searched saw "Lima"
    assert metrics["search/reading_accuracy"] == pytest.approx(1 / 2)
    shares = {k.removeprefix("search/verdict/"): v for k, v in metrics.items() if k.startswith("search/verdict/")}
    assert shares == {"no_search": 0.25, "not_found": 0.25, "found_read_right": 0.25, "found_misread": 0.25}


ATLAS = {"coral springs": ("city:1", "Coral Springs is a city in the United States."),
         "united states": ("country:US", "Washington is the capital of the United States.")}
TWO_HOP = {"id": "q2", "question": "Coral Springs is in a country; what is its capital?", "answers": ["Washington"],
           "entities": ["city:1", "country:US"]}


@tool(returns_passages=True)
def atlas(query: str) -> Retrieved:
    """Look a place up.

    Args:
        query: A place name.
    """
    found = [passage for name, passage in ATLAS.items() if name in query.lower()]
    return Retrieved(" ".join(text for _, text in found) or "Nothing found.", tuple(pid for pid, _ in found))


def test_passage_recall_counts_the_gold_passages_a_search_returned_by_id(tokenizer):
    def episode(question, actions):
        env = ToolEnv([atlas], tokenizer=tokenizer, max_turns=4)
        env.reset(options=question)
        for action in actions:
            *_, info = env.step(action)
        return Episode.from_info(info, 0.0)

    both = episode(TWO_HOP, ["<atlas>Coral Springs</atlas>", "<atlas>United States</atlas>", "<answer>Washington</answer>"])
    first_hop = episode(TWO_HOP, ["<atlas>Coral Springs</atlas>", "<atlas>Coral Springs</atlas>", "<answer>Miami</answer>"])
    unnamed = episode(QUESTION, ["<atlas>United States</atlas>", "<answer>Lima</answer>"])  # names no passages
    records = [episode_search_record(e) for e in (both, first_hop, unnamed)]
    assert [(r.gold_passages, r.gold_passages_found) for r in records] == [(2, 2), (2, 1), (0, 0)]
    assert search_metrics(records)["search/passage_recall"] == pytest.approx(3 / 4)
    # Without named passages (or a tool that returns bare strings) there is nothing to report.
    assert "search/passage_recall" not in search_metrics(records[2:])


def test_a_tool_that_does_not_return_passages_is_not_a_search(tokenizer):
    plain = Tool.from_function(lookup.function, name="lookup")
    episode = play(tokenizer, ["<lookup>Peru</lookup>", "<answer>Lima</answer>"], tools=(plain,))
    assert episode.passage_tools == () and episode_search_record(episode).searches == 0
    assert "search" not in transcript(episode, tokenizer)


def test_the_environment_records_which_turns_and_tool_outputs_were_cut(tokenizer):
    long_action = "<lookup>Peru</lookup>" + " and more" * 40
    episode = play(tokenizer, [long_action, "<answer>Lima</answer>"], max_turn_tokens=16, max_observation_tokens=12)
    first, last = episode.turns
    assert first["cut"] is True and first["observation_cut"] is True
    assert last["cut"] is False and last["observation_cut"] is False and not episode.answer_cut
    whole = play(tokenizer, ["<lookup>Peru</lookup>", "<answer>Lima</answer>"])
    assert not any(turn["cut"] or turn["observation_cut"] for turn in whole.turns)


def test_eval_reports_the_split_and_the_viewer_shows_each_verdict(tokenizer):
    plays = {
        "a": ["<lookup>Peru</lookup>", "<answer>Lima</answer>"],
        "b": ["<lookup>Peru</lookup>", "<answer>Santiago</answer>"],
        "c": ["<lookup>Chile</lookup>", "<answer>Santiago</answer>"],
    }
    records = []
    for qid, actions in plays.items():
        episode = play(tokenizer, actions)
        episode.question = dict(episode.question, id=qid)
        records.append({"mode": "agent", "class": None, "sample": 0, **transcript(episode, tokenizer)})
    summary = summarise(records)
    assert summary["search"]["answer_recall"] == pytest.approx(2 / 3)
    assert summary["search"]["verdict/found_misread"] == pytest.approx(1 / 3)
    table = format_table({"agent": summary})
    assert "recall" in table and "misread" in table
    row = next(line for line in table.splitlines() if line.startswith("agent") and "0.667" in line)
    assert "1.00" in row  # one search per episode
    assert 'class="badge misread"' in render_episode(records[1]) and "found, misread" in render_episode(records[1])
    assert "not found: 1 searches" in render_episode(records[2])


def test_a_search_budget_refuses_searches_past_it_and_leaves_other_tools_alone(tokenizer):
    env = ToolEnv([lookup, calculator], tokenizer=tokenizer, max_turns=6, max_searches=1)
    env.reset(options=QUESTION)
    env.step("<lookup>Chile</lookup>")
    *_, info = env.step("<lookup>Peru</lookup><calculator>1+1</calculator>")
    refused, calculated = info["turns"][1]["calls"]
    assert not refused["ok"] and "the search budget of this episode (1 searches) is spent" in refused["output"]
    assert calculated["ok"] and calculated["output"] == "2"
    *_, info = env.step("<answer>Santiago</answer>")
    episode = Episode.from_info(info, 0.0)
    assert episode.tool_calls == {"lookup": 1, "calculator": 1}
    assert episode_search_record(episode).verdict == "not found"  # Lima was behind the refused search
    # A budget of 0: no search runs at all.
    env = ToolEnv([lookup], tokenizer=tokenizer, max_searches=0)
    env.reset(options=QUESTION)
    *_, info = env.step("<lookup>Peru</lookup>")
    assert info["tool_calls"] == {} and "is spent" in info["turns"][0]["calls"][0]["output"]


def test_eval_with_search_budgets_adds_a_mode_per_budget(tiny_model_dir, tmp_path):
    import json

    from agentenv.cli import main

    out = tmp_path / "budgets"
    assert main(["eval", "--model", str(tiny_model_dir), "--questions", "geo:dev", "--limit", "2", "--mode", "agent",
                 "rag", "--engine", "transformers", "--max-turn-tokens", "8", "--search-budgets", "0", "2",
                 "--out", str(out)]) == 0
    modes = json.loads((out / "summary.json").read_text())["modes"]
    assert list(modes) == ["rag", "agent", "agent@0", "agent@2"]  # rag's env has no search tool to cut
    assert modes["agent@0"]["search_budget"] == 0 and modes["agent@2"]["search_budget"] == 2
    assert modes["agent@0"]["tool_calls"]["search"] == 0.0
    assert set(modes["agent"]["search"]) >= {"answer_recall", "reading_accuracy", "verdict/found_misread"}
    assert main(["eval", "--model", str(tiny_model_dir), "--search-budgets", "-1"]) == 2
