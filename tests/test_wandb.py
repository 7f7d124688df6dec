"""`logging.wandb: true`: a Weights & Biases run beside TensorBoard, offline when no key is set.

The offline run is read back with wandb's own reader of its transaction log
(`wandb leet inspect --json`), so the test checks what `wandb sync` would upload.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentenv.cli import main
from agentenv.models import cache_dir
from agentenv.trainers.loop.config import ConfigError, load_config
from agentenv.trainers.loop.metrics import _is_scalar, wandb_mode
from agentenv.trainers.loop.train import train

pytest.importorskip("wandb")

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny-test.yaml")


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    """No WANDB_MODE, no WANDB_API_KEY, and a home without ~/.netrc or wandb settings."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTENV_CACHE", str(cache_dir()))  # the converted model stays where it is
    monkeypatch.setenv("HF_HOME", os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface")))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_records(offline_run):
    """The records of an offline run's .wandb file, as wandb itself reads them."""
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def logged_history(offline_run):
    return [r["history"]["item"] for r in wandb_records(offline_run) if r["type"] == "history"]


def test_without_a_key_the_run_is_offline_and_logs_the_metrics_jsonl_names(tmp_path, no_wandb_key):
    run = tmp_path / "run"
    assert main(["train", "--config", TINY, "--set", "logging.wandb=true", "--out", str(run)]) == 0

    [offline] = offline_runs(run)  # offline-run-<time>-<id>: nothing was sent anywhere
    run_id = (run / "wandb" / "run_id").read_text().strip()
    assert offline.name.endswith(run_id) and (offline / f"run-{run_id}.wandb").is_file()
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    history = logged_history(offline)
    assert [row["_step"] for row in history] == [record["step"] for record in jsonl] == [1, 2, 3]
    for row, record in zip(history, jsonl, strict=True):
        scalars = {key for key, value in record.items() if key != "step" and _is_scalar(value)}
        assert {"reward/mean", "loss", "lr"} <= scalars
        assert scalars == {key for key in row if not key.startswith("_")}
        assert all(row[key] == pytest.approx(record[key]) for key in scalars)
    [header] = [r["run"] for r in wandb_records(offline) if r["type"] == "run"]
    assert header["project"] == "agentenv" and header["config"]["update"]["grpo"]["group_size"] == 2


def test_a_resumed_run_continues_its_wandb_run(tmp_path, no_wandb_key):
    run = tmp_path / "run"
    train(load_config(TINY, ["logging.wandb=true", "max_steps=2"]), run)
    train(load_config(TINY, ["logging.wandb=true", "max_steps=3"]), run, resume=True)

    first, second = offline_runs(run)
    run_id = (run / "wandb" / "run_id").read_text().strip()
    # Each folder holds the run's own file; their names need not end with the id: a run resumed
    # within the same second gets offline-run-<time>-<id>-1.
    assert (first / f"run-{run_id}.wandb").is_file() and (second / f"run-{run_id}.wandb").is_file()
    assert [row["_step"] for row in logged_history(second)] == [3]


def test_an_api_key_or_a_netrc_entry_leaves_the_mode_to_wandb(no_wandb_key, monkeypatch):
    assert wandb_mode() == "offline"
    (no_wandb_key / ".netrc").write_text("machine api.wandb.ai login user password secret\n")
    (no_wandb_key / ".netrc").chmod(0o600)
    assert wandb_mode() is None
    (no_wandb_key / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "secret")
    assert wandb_mode() is None


def test_wandb_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec answers None: not installed
    with pytest.raises(ConfigError, match=r"logging.wandb: true needs the wandb package.*agentenv\[wandb\]"):
        train(load_config(TINY, ["logging.wandb=true"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
