"""A message, not a traceback: each mistake a user can make at the command line is answered with
one line that says what was wrong and what to do; files in the README's shapes are accepted."""

import json
import socket
from pathlib import Path

import pytest

from agentenv.cli import main
from agentenv.corpora import load_corpus, load_questions
from agentenv.tools.bm25 import BM25Index
from agentenv.trainers.loop.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
TINY_TEST = str(REPO / "configs" / "tiny-test.yaml")
PASSAGES = [
    {"id": "ouaga", "title": "Ouagadougou", "text": "Ouagadougou is the capital of Burkina Faso."},
    {"id": "nile", "title": "Nile", "text": "The Nile is a river in Africa."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def one_line_error(capsys, prefix):
    err = capsys.readouterr().err
    assert err.startswith(prefix), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- serve-retriever ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index") / "index"
    BM25Index.build(PASSAGES, backend="rank_bm25", out_dir=folder, show_progress=False)
    return folder


def test_serve_retriever_on_a_port_in_use_says_so(index_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve-retriever", "--index", str(index_dir), "--port", str(port)]) == 2
    err = one_line_error(capsys, "agentenv serve-retriever: error: ")
    assert f"127.0.0.1:{port} is already in use" in err and "--port" in err


def test_serve_retriever_on_a_port_out_of_range_says_the_range(index_dir, capsys):
    assert main(["serve-retriever", "--index", str(index_dir), "--port", "70000"]) == 2
    assert "--port 70000: a TCP port is 0 to 65535" in one_line_error(capsys, "agentenv serve-retriever: error: ")


def test_serve_retriever_on_a_missing_index_says_how_to_build_one(tmp_path, capsys):
    assert main(["serve-retriever", "--index", str(tmp_path / "nothing")]) == 2
    err = one_line_error(capsys, "agentenv serve-retriever: error: ")
    assert "is not a BM25 index" in err and "agentenv index build" in err


# --- grpo.group_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1])
def test_a_group_of_fewer_than_two_is_refused_with_the_reason(size):
    with pytest.raises(ConfigError, match=rf"grpo\.group_size must be at least 2, got {size}: .*advantage .* 0"):
        load_config(None, [f"grpo.group_size={size}"])


def test_no_shipped_config_trains_with_a_group_of_one():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if not path.name.startswith("experiment-"):
            assert load_config(path).grpo.group_size >= 2, path


# --- agentenv plot ---------------------------------------------------------------------------------


def test_plot_with_a_window_below_one_says_so(tmp_path, capsys):
    write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "reward/mean": 0.5}])
    assert main(["plot", str(tmp_path), "--window", "0"]) == 2
    assert "--window must be at least 1, got 0" in one_line_error(capsys, "agentenv plot: error: ")


# --- agentenv index build ------------------------------------------------------------------------------


def test_index_build_over_an_index_needs_overwrite(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", PASSAGES)
    out = tmp_path / "index"
    build = ["index", "build", "--corpus", str(corpus), "--out", str(out)]
    assert main(build) == 0
    capsys.readouterr()
    assert main(build) == 1
    assert "pass --overwrite to replace it" in one_line_error(capsys, "agentenv index build: error: ")
    write_jsonl(corpus, PASSAGES[:1])
    assert main([*build, "--overwrite"]) == 0
    assert len(BM25Index.load(out)) == 1


def test_a_failed_index_build_leaves_nothing_behind(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(PASSAGES[0]) + "\n{not json\n")
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "index")]) == 1
    assert "corpus.jsonl, line 2: not valid JSON" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # no index, no staging folder
    # An index that was there before a failed --overwrite is still there.
    good = write_jsonl(tmp_path / "good.jsonl", PASSAGES)
    assert main(["index", "build", "--corpus", str(good), "--out", str(tmp_path / "index")]) == 0
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "index"), "--overwrite"]) == 1
    assert len(BM25Index.load(tmp_path / "index")) == 2


def test_overwrite_never_deletes_a_folder_that_holds_no_index(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", PASSAGES)
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("not an index")
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(keep), "--overwrite"]) == 1
    assert "holds no BM25 index" in one_line_error(capsys, "agentenv index build: error: ")
    assert (keep / "mine.txt").read_text() == "not an index"


# --- one question format, titles optional --------------------------------------------------------------


def test_questions_without_ids_get_stable_ids_from_the_file_and_record(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": "How long is 'agent'?", "answers": ["5"]},
        {"id": "given", "question": "How long is 'tool'?", "answers": ["4"]},
        {"question": "How long is 'x'?", "answers": ["1"], "kind": "length"},
    ])
    questions = load_questions(path)
    assert [q.id for q in questions] == ["mine-0", "given", "mine-2"]
    assert [q.id for q in load_questions(path)] == ["mine-0", "given", "mine-2"]  # the same on every load
    assert questions[2].kind == "length"


def test_passages_without_titles_load_and_index_everywhere(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "1", "text": "The Nile is a river."}, {"id": "2", "text": "Lima is in Peru."}])
    assert list(load_corpus(corpus)) == [{"id": "1", "title": "", "text": "The Nile is a river."},
                                         {"id": "2", "title": "", "text": "Lima is in Peru."}]
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "index")]) == 0
    assert "indexed 2 passages" in capsys.readouterr().out
