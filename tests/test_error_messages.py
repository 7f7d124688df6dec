"""A message, not a traceback: each mistake a user can make at the command line is answered with
one line that says what was wrong and what to do; files in the README's shapes are accepted."""

import gzip
import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch

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


def test_a_killed_index_build_never_loads_and_the_next_build_removes_it(tmp_path, capsys):
    """SIGKILL mid-build (no cleanup runs): the half index has no manifest, and the next build into
    the same --out removes it once its process is gone."""
    import subprocess
    import sys
    import time

    corpus = tmp_path / "big.jsonl"
    with corpus.open("w") as file:
        for i in range(300_000):
            file.write(json.dumps({"id": str(i), "title": f"Place {i}", "text": f"word{i % 997} and filler {i}"}) + "\n")
    out = tmp_path / "index"
    build = subprocess.Popen([sys.executable, "-m", "agentenv.cli", "index", "build", "--corpus", str(corpus), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while build.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob(".index.building-*/index/*")):
        time.sleep(0.05)
    time.sleep(0.5)  # into the stream of passages
    assert build.poll() is None, "the build ended before it could be killed"
    build.kill()
    build.wait()
    [staging] = tmp_path.glob(".index.building-*")
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="index.json is missing"):
        BM25Index.load(staging / "index")
    small = write_jsonl(tmp_path / "small.jsonl", PASSAGES)
    assert main(["index", "build", "--corpus", str(small), "--out", str(out)]) == 0
    assert f"removed {staging}" in capsys.readouterr().err
    assert not staging.exists() and len(BM25Index.load(out)) == len(PASSAGES)


def test_overwrite_never_deletes_a_folder_that_holds_no_index(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", PASSAGES)
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("not an index")
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(keep), "--overwrite"]) == 1
    assert "holds no BM25 index" in one_line_error(capsys, "agentenv index build: error: ")
    assert (keep / "mine.txt").read_text() == "not an index"


def error_after_progress(capsys, prefix):
    """The one line that ends stderr when a build fails after its progress bar started."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    error = err.rstrip("\n").rpartition("\n")[2]
    assert error.startswith(prefix) and err.endswith(error + "\n"), err
    return error


def _gzipped_corpus() -> bytes:
    passages = [{"id": f"p{i}", "title": f"Place {i}", "text": f"Place {i} lies {i * 7 % 13} km from river {i % 5}."}
                for i in range(2000)]
    return gzip.compress("".join(json.dumps(passage) + "\n" for passage in passages).encode(), mtime=0)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bit_flipped(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    return bytes(flipped)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_truncated, r"line \d+: the gzip data ends early: the file is truncated"),
        # Where a flipped bit shows depends on the compressor's output: in the inflated text, or at its checksum.
        (_bit_flipped, r"line \d+: (damaged gzip data \(.+\): the file is corrupt|not UTF-8 text .+|not valid JSON .+)"),
    ],
    ids=["truncated", "bit-flipped"],
)
def test_index_build_of_a_damaged_gzip_corpus_names_the_file_and_line(tmp_path, capsys, damage, problem):
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(damage(_gzipped_corpus()))
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "index")]) == 1
    error = error_after_progress(capsys, f"agentenv index build: error: {corpus}, ")
    assert re.fullmatch(problem, error.removeprefix(f"agentenv index build: error: {corpus}, ")), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl.gz"]


def test_index_build_of_a_line_nested_too_deeply_names_the_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(PASSAGES[0]) + "\n" + "[" * 200_000 + "]" * 200_000 + "\n")
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "index")]) == 1
    assert error_after_progress(capsys, "agentenv index build: error: ") == (
        f"agentenv index build: error: {corpus}, line 2: JSON nested too deeply to be a record"
    )


def test_index_build_refuses_passages_that_repeat_an_id(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [*PASSAGES, {**PASSAGES[0], "text": "Another text."}, PASSAGES[1]])
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "index")]) == 1
    assert error_after_progress(capsys, "agentenv index build: error: ") == (
        f"agentenv index build: error: {corpus}, line 3: passage id 'ouaga' was already used on line 1; ids must be "
        "unique (passages that repeat an earlier id: 2): remove or renumber them"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


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


# --- agentenv train --resume ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--config", TINY_TEST, "--out", str(run), "--set", "max_steps=1"]) == 0
    return run


class _CreatesFile:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, as it could call anything."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _edit_state(checkpoint: Path, **fields) -> None:
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, **fields}))


DAMAGED_CHECKPOINTS = {
    "unsafe rng.pt": (
        lambda checkpoint: torch.save({"python": _CreatesFile(checkpoint / "the-payload-ran")}, checkpoint / "rng.pt"),
        r"rng\.pt: refused to load \(it asks for io\.open\)",
    ),
    "truncated state.json": (
        lambda checkpoint: (checkpoint / "state.json").write_text((checkpoint / "state.json").read_text()[:20]),
        r"state\.json: not valid JSON \(.+\): the file is damaged",
    ),
    "step a string": (
        lambda checkpoint: _edit_state(checkpoint, step="1"),
        r"state\.json: 'step' must be a whole number ≥ 0, got '1'",
    ),
    "cursor past the steps": (
        lambda checkpoint: _edit_state(checkpoint, cursor=10**12),
        r"state\.json: 'cursor' is 1000000000000, past what 1 step could have taken",
    ),
}


@pytest.mark.parametrize("damage", DAMAGED_CHECKPOINTS)
def test_resume_from_a_refused_or_damaged_checkpoint_is_one_line_naming_the_file_and_field(
    one_step_run, tmp_path, capsys, damage
):
    run = tmp_path / "run"
    shutil.copytree(one_step_run, run)
    checkpoint = run / "checkpoints" / "step_000001"
    damage_checkpoint, problem = DAMAGED_CHECKPOINTS[damage]
    damage_checkpoint(checkpoint)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--set", "max_steps=2"]) == 2
    err = one_line_error(capsys, f"agentenv train: error: {checkpoint}{os.sep}")
    assert re.search(problem, err), err
    assert not (checkpoint / "the-payload-ran").exists()
    assert not (checkpoint.parent / "step_000002").exists()
