"""Train and evaluate from Python, with the same typed configs as the CLI (notebook users)."""

import json

import pytest

import agentenv


def test_train_from_python_takes_a_yaml_path_and_overrides(tmp_path):
    metrics = agentenv.train("configs/tiny-test.yaml", ["max_steps=1", "logging.transcripts_per_step=0"], out=tmp_path / "run")
    assert "reward/mean" in metrics
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]


def test_train_from_python_takes_a_typed_config(tmp_path):
    from agentenv.trainers.loop.config import load_config

    config = load_config("configs/tiny-test.yaml", ["max_steps=1"])
    agentenv.train(config, out=tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "step_000001").is_dir()
    with pytest.raises(TypeError, match="overrides"):
        agentenv.train(config, ["max_steps=2"], out=tmp_path / "other")


def test_evaluate_from_python_returns_the_summary(tmp_path, tokenizer):
    from agentenv.models import tiny_random_model

    tiny_random_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    summary = agentenv.evaluate(tmp_path / "model", "geo:dev", modes=["closed-book"], out=tmp_path / "eval",
                                limit=2, engine="transformers", max_turn_tokens=4)
    assert summary["modes"]["closed-book"]["questions"] == 2
    assert (tmp_path / "eval" / "summary.json").is_file()
    with pytest.raises(TypeError, match="unknown option 'limt'"):
        agentenv.evaluate(tmp_path / "model", limt=2)
