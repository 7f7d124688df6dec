"""Checkpoints: a round trip restores weights, optimizer (its learning rates too) and RNG; a killed run resumes
with the same next batch and the same parameters as an uninterrupted one; Ctrl-C checkpoints the
step in progress and prints the command that resumes the run."""

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agentenv.models import tiny_random_model
from agentenv.trainers.algorithms.update import set_learning_rate
from agentenv.trainers.loop.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_state,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parent.parent


def _lora(tokenizer):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_random_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def _train_a_little(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    ids = torch.randint(0, 1000, (2, 12))
    for step in range(2):
        set_learning_rate(optimizer, 1.0 / (step + 1))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def _trainable(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_round_trip_restores_everything(tmp_path, tokenizer, kind):
    make = (lambda: tiny_random_model(tokenizer)) if kind == "full" else (lambda: _lora(tokenizer))
    model = make()
    optimizer = _train_a_little(model)
    saved = _trainable(model)
    path = save_checkpoint(tmp_path, 7, model, optimizer, {"cursor": 28, "phase": "grpo"}, {"seed": 0})
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())

    fresh = make()
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=0.01)
    assert any(not torch.equal(saved[n], p) for n, p in _trainable(fresh).items())
    state = load_checkpoint(path, fresh, fresh_optimizer)

    assert state == {"cursor": 28, "phase": "grpo", "step": 7}
    for name, param in _trainable(fresh).items():
        assert torch.equal(param, saved[name]), name
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.005
    assert fresh_optimizer.param_groups[0]["base_lr"] == 0.01
    first = next(iter(optimizer.state.values()))["exp_avg"]
    assert torch.equal(next(iter(fresh_optimizer.state.values()))["exp_avg"], first)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws


class _CreatesFile:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, as it could call anything."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_a_file_carrying_a_pickle_payload_is_refused_and_never_run(tmp_path, tokenizer, name):
    model = tiny_random_model(tokenizer)
    optimizer = _train_a_little(model)
    path = save_checkpoint(tmp_path, 1, model, optimizer, {"cursor": 2, "phase": "grpo"}, {})
    marker = tmp_path / "the-payload-ran"
    torch.save({"state": [_CreatesFile(marker)]}, path / name)

    fresh = tiny_random_model(tokenizer)
    before = _trainable(fresh)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    refusal = rf"^{re.escape(str(path / name))}: refused to load \(it asks for io\.open\)"
    with pytest.raises(RuntimeError, match=refusal):
        load_checkpoint(path, fresh, fresh_optimizer)
    assert not marker.exists()
    assert all(torch.equal(param, before[n]) for n, param in _trainable(fresh).items())
    # The payload is live: a load that allows code (weights_only=False) runs it.
    torch.load(path / name, weights_only=False)["state"][0].close()
    assert marker.exists()


def test_rng_state_from_before_plain_lists_still_loads(tmp_path, tokenizer):
    # Older checkpoints stored numpy's state as an ndarray; it rebuilds without running code.
    model = tiny_random_model(tokenizer)
    optimizer = _train_a_little(model)
    path = save_checkpoint(tmp_path, 1, model, optimizer, {"cursor": 2, "phase": "grpo"}, {})
    torch.save(
        {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
        path / "rng.pt",
    )
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    load_checkpoint(path, tiny_random_model(tokenizer), None)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws


def test_keeps_the_last_k_and_ignores_half_written_folders(tmp_path, tokenizer):
    model = tiny_random_model(tokenizer)
    optimizer = _train_a_little(model)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, optimizer, {"cursor": step}, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]
    # A save killed before its rename leaves a .tmp folder; a folder without state.json is incomplete.
    (tmp_path / "checkpoints" / ".tmp-step_000004-x").mkdir()
    (tmp_path / "checkpoints" / "step_000005").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_000003"


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt", "model/model.safetensors"])
def test_a_truncated_file_is_one_line_naming_it(tmp_path, tokenizer, name):
    model = tiny_random_model(tokenizer)
    optimizer = _train_a_little(model)
    path = save_checkpoint(tmp_path, 1, model, optimizer, {"cursor": 2, "phase": "grpo"}, {})
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    fresh = tiny_random_model(tokenizer)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path / name))}: cannot be read \(.*\): the file is damaged$"):
        load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.01))


# --- a real run, killed and resumed -----------------------------------------------------------------

# The run: test_learning's trivial environment, where every GRPO step moves the weights.
_TRAIN = (
    "import sys; sys.path.insert(0, 'tests'); import test_learning; test_learning.register_no_spaces_env(); "
    "from agentenv.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _train_command(out: Path, total_steps: int, *extra: str) -> list[str]:
    from test_learning import TINY_RUN

    command = [sys.executable, "-c", _TRAIN, "train", "--out", str(out), *extra]
    # A smaller learning rate than the learning test's: the policy must not converge (zero
    # advantages, zero gradient) before the last step, or equal weights would prove nothing.
    settings = [*TINY_RUN, "optim.lr=1e-3", f"max_steps={total_steps}", "checkpoint.every=1", "checkpoint.keep_last=5"]
    for override in settings:
        command += ["--set", override]
    return command


def _metrics(run: Path) -> dict[int, dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, lines)}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(latest_checkpoint(run) / "model" / "model.safetensors")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, env=_environment(), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def _environment():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_batch_and_parameters(tmp_path):
    total = 5
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(killed, total), env=_environment(), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        checkpoint = latest_checkpoint(killed)
        if checkpoint is not None and checkpoint.name >= "step_000002":
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = int(latest_checkpoint(killed).name.split("_")[1])
    assert 2 <= resumed_from < total, "the run finished before it could be killed"

    _run(_train_command(killed, total, "--resume"))
    reference = tmp_path / "reference"
    _run(_train_command(reference, total))

    resumed_metrics, reference_metrics = _metrics(killed), _metrics(reference)
    assert sorted(resumed_metrics) == list(range(1, total + 1))  # no step lost, none twice
    next_step = resumed_from + 1
    assert resumed_metrics[next_step]["data/question_ids"] == reference_metrics[next_step]["data/question_ids"]
    assert resumed_metrics[next_step]["reward/mean"] == reference_metrics[next_step]["reward/mean"]
    # Every step after the resume moved the weights, so equal final weights mean equal steps.
    assert all(reference_metrics[step]["grad_norm"] > 0 for step in range(next_step, total + 1))
    resumed_weights, reference_weights = _final_weights(killed), _final_weights(reference)
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_step_in_progress_and_prints_the_command_that_resumes(tmp_path):
    run, total = tmp_path / "run", 6
    # checkpoint.every beyond max_steps: the only checkpoint before the end is the one Ctrl-C asks for.
    command = [sys.executable, "-m", "agentenv.cli", "train", "--config", str(REPO / "configs" / "tiny-test.yaml"),
               "--out", str(run), "--set", f"max_steps={total}", "--set", "checkpoint.every=100"]
    process = subprocess.Popen(command, env=_environment(), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip():
            break  # the loop runs: step 1 is logged
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    [checkpoint] = list_checkpoints(run)
    stopped_at = read_state(checkpoint)["step"]
    assert 1 <= stopped_at < total, "the run finished before Ctrl-C reached it"
    assert sorted(_metrics(run)) == list(range(1, stopped_at + 1))  # the step in progress was finished
    assert f"stopped after step {stopped_at} of {total}; checkpoint {checkpoint}" in stderr
    resume = re.search(r"^resume with: (.+)$", stderr, re.MULTILINE).group(1)
    assert resume == f"agentenv train --out {shlex.quote(str(run))} --resume"

    program, *arguments = shlex.split(resume)  # the printed command, as printed
    assert program == "agentenv"
    _run([sys.executable, "-m", "agentenv.cli", *arguments])  # agentenv is `python -m agentenv.cli`
    assert sorted(_metrics(run)) == list(range(1, total + 1))  # no step lost, none twice
    assert read_state(latest_checkpoint(run))["step"] == total


def test_resumed_metrics_keep_the_steps_up_to_the_checkpoint_and_move_the_rest_aside(tmp_path):
    from agentenv.trainers.loop.metrics import REDONE_METRICS, MetricsLogger

    def log_steps(resume_step, steps):
        logger = MetricsLogger(tmp_path, tensorboard=False, resume_step=resume_step)
        for step in steps:
            logger.log(step, {"time/step_s": float(step)})
        logger.close()

    def steps_in(name):
        return [json.loads(line)["step"] for line in (tmp_path / name).read_text().splitlines()]

    log_steps(None, [1, 2, 3, 4])
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 5, "time/st')  # the line a kill -9 cut short
    log_steps(2, [3, 4, 5])  # killed after step 4, resumed from checkpoint 2
    assert steps_in("metrics.jsonl") == [1, 2, 3, 4, 5]
    assert steps_in(REDONE_METRICS) == [3, 4]  # computed twice: their first time still cost wall time
    log_steps(4, [5])
    assert steps_in(REDONE_METRICS) == [3, 4, 5]
    log_steps(None, [1])  # a fresh run in the same folder owes nothing to the old one
    assert not (tmp_path / REDONE_METRICS).exists()
