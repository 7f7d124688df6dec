"""Every mode after the SFT warm start runs in the same loop: checkpoints, resume, the held-out
curve. A stopped and resumed run logs what an uninterrupted one does."""

import json

import pytest
from test_learning import TINY_RUN, register_no_spaces_env

from agentenv.trainers.loop.config import CHOICES, load_config
from agentenv.trainers.loop.train import train

MODES = {
    "grpo": [],
    "rft": ["mode=rft", "rft.questions_per_round=2", "rft.samples_per_question=4", "rft.keep=best", "rft.min_reward=0"],
    "dpo": ["mode=dpo", "dpo.questions_per_step=2", "dpo.samples_per_question=4"],
    "ppo": ["mode=ppo", "ppo.questions_per_step=2", "ppo.samples_per_question=4", "ppo.epochs=1"],
    "rloo": ["mode=rloo", "rloo.questions_per_step=2", "rloo.samples_per_question=4"],
}


def _records(run_dir):
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_every_mode_is_a_choice():
    assert set(MODES) | {"sft"} == set(CHOICES["mode"])


@pytest.mark.slow  # three runs per mode: 14-26 s each on 2 busy cores
@pytest.mark.parametrize("mode", [m for m in MODES if m != "grpo"])
def test_a_resumed_run_continues_as_an_uninterrupted_one(tmp_path, mode):
    register_no_spaces_env()
    settings = [*TINY_RUN, *MODES[mode], "checkpoint.every=1", "grpo.group_size=4"]
    train(load_config(None, [*settings, "max_steps=3"]), tmp_path / "whole")
    train(load_config(None, [*settings, "max_steps=2"]), tmp_path / "parts")
    train(load_config(None, [*settings, "max_steps=3"]), tmp_path / "parts", resume=True)
    whole, parts = _records(tmp_path / "whole"), _records(tmp_path / "parts")
    assert sorted(parts) == [1, 2, 3]
    assert parts[3]["data/question_ids"] == whole[3]["data/question_ids"]
    # The loss of step 3 reads the restored weights, optimizer, reference and (PPO) value head.
    for key in ("reward/mean", "loss", "sft/nll", "rft/acceptance_rate", "dpo/margin", "loss/value"):
        if key in whole[3]:
            assert parts[3][key] == pytest.approx(whole[3][key], rel=1e-5), key


@pytest.mark.parametrize("mode", [m for m in MODES if m != "grpo"])
def test_the_held_out_curve_and_the_sft_warm_start_work_in_every_mode(tmp_path, mode):
    register_no_spaces_env()
    config = load_config(None, [*TINY_RUN, *MODES[mode], "max_steps=2", "sft.steps=1", "sft.questions_per_step=2",
                                "eval.every=2", "eval.questions=tests/fixtures/questions_ours.jsonl", "eval.limit=2"])
    train(config, tmp_path / "run")
    records = _records(tmp_path / "run")
    assert [records[s]["phase"] for s in (1, 2, 3)] == ["sft", mode, mode]
    assert "dev/exact_match" in records[0] and "dev/exact_match" in records[2]


def test_a_ppo_checkpoint_holds_the_value_head(tmp_path):
    register_no_spaces_env()
    train(load_config(None, [*TINY_RUN, *MODES["ppo"], "max_steps=1"]), tmp_path / "run")
    from agentenv.trainers.loop.checkpoint import latest_checkpoint

    assert (latest_checkpoint(tmp_path / "run") / "value_head.safetensors").is_file()


def test_the_learning_rate_is_set_once_a_step_and_logged_as_the_step_used_it(tmp_path):
    import warnings

    from agentenv.trainers.algorithms.update import lr_multiplier

    register_no_spaces_env()
    config = load_config(None, [*TINY_RUN, "max_steps=4", "optim.lr=0.01", "optim.warmup_steps=2",
                                "optim.schedule=cosine", "optim.min_lr_ratio=0.1"])
    with warnings.catch_warnings():
        # PyTorch's warning for a scheduler stepped before its optimizer: the loop steps none.
        warnings.filterwarnings("error", message=".*lr_scheduler.step.*")
        train(config, tmp_path / "run")
    records = _records(tmp_path / "run")
    expected = [0.01 * lr_multiplier(step, 2, 4, "cosine", 0.1) for step in range(4)]
    assert [records[step]["lr"] for step in (1, 2, 3, 4)] == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.005)  # the first scheduled value is the first step's
