"""The learned reward term (reward.model): normalisation by hand, a GRPO run and an eval that add it."""

import json
import math
from pathlib import Path

import pytest

from agentenv.cli import main
from agentenv.trainers.algorithms.learned_reward import LearnedReward, normalized_scores
from agentenv.trainers.algorithms.reward_model import (
    build_reward_model,
    save_reward_model,
)
from agentenv.trainers.loop.reward_model_training import (
    load_rm_config,
)

TINY_TEST = str(Path(__file__).parent.parent / "configs" / "tiny-test.yaml")


def test_normalisation_matches_a_hand_computation():
    scores, groups = [1.0, 3.0, 10.0, 10.0], [0, 0, 1, 1]
    assert normalized_scores(scores, groups, "none") == scores
    # group: mean 2, population std 1 in group 0; group 1 has no spread, so both get 0
    assert normalized_scores(scores, groups, "group") == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-5)
    # batch: mean 6, population std sqrt((25 + 9 + 16 + 16) / 4) = sqrt(16.5)
    std = math.sqrt(16.5)
    assert normalized_scores(scores, groups, "batch") == pytest.approx([-5 / std, -3 / std, 4 / std, 4 / std], abs=1e-5)
    with pytest.raises(ValueError, match="model_normalize"):
        normalized_scores(scores, groups, "rank")


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    config = load_rm_config(None, ["model.name=tiny-random", "lora.enabled=false", "data.pairs=x.jsonl"])
    folder = tmp_path_factory.mktemp("rm") / "model"
    save_reward_model(build_reward_model(config.model, config.lora, tokenizer, seed=0), folder)
    return folder


def test_grpo_adds_the_weighted_normalised_term_to_every_episode(tmp_path, reward_model_dir, tokenizer):
    run = tmp_path / "run"
    assert main(["train", "--config", TINY_TEST, "--out", str(run), "--set", "max_steps=2",
                 "--set", f"reward.model={reward_model_dir}", "--set", "reward.model_weight=0.5",
                 "--set", "logging.transcripts_per_step=2",
                 "--set", "eval.every=2", "--set", "eval.questions=" + str(write_questions(tmp_path))]) == 0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in steps if "reward/reward_model" in m]
    assert [m["step"] for m in trained] == [1, 2]
    for metrics in trained:
        assert metrics["reward/reward_model"] == pytest.approx(0.0, abs=1e-6)  # batch-normalised: mean 0
        assert math.isfinite(metrics["reward/reward_model_score"])
    assert math.isfinite(steps[-1]["dev/reward_model_score"])
    # The episode's reward is the environment's terms plus what the reward model added.
    for line in (run / "transcripts" / "step_000001.jsonl").read_text().splitlines():
        record = json.loads(line)
        terms = record["reward_components"]
        assert record["reward"] == pytest.approx(terms["research_answer"] + terms["search_budget_penalty"] + terms["reward_model"])
        assert abs(terms["reward_model"]) <= 0.5 * math.sqrt(3) + 1e-6  # a z-score among 4 values is at most sqrt(3)


def test_apply_adds_w_times_z_of_the_models_own_scores_to_real_rollout_episodes(reward_model_dir, tokenizer):
    from agentenv.envs import make_calculator_env
    from agentenv.models import tiny_random_model
    from agentenv.trainers.rollout.engines import SamplingConfig, TransformersEngine
    from agentenv.trainers.rollout.rollout import rollout

    envs = [make_calculator_env(tokenizer=tokenizer, num_questions=4, max_turns=1, max_turn_tokens=6) for _ in range(4)]
    engine = TransformersEngine(tiny_random_model(tokenizer), tokenizer)
    batch = rollout(engine, envs, envs[0].questions[:2], 2, SamplingConfig(temperature=1.0, max_new_tokens=6, seed=0))
    before = [e.reward for e in batch.episodes]
    learned = LearnedReward(reward_model_dir, weight=0.25, normalize="group", tokenizer=tokenizer)
    scores = learned.apply(batch.episodes)
    assert scores == pytest.approx(learned.score([e.trajectory for e in batch.episodes]))
    z = normalized_scores(scores, [0, 0, 1, 1], "group")
    assert [e.reward for e in batch.episodes] == pytest.approx([r + 0.25 * zk for r, zk in zip(before, z, strict=True)])
    assert [e.reward_components["reward_model_score"] for e in batch.episodes] == scores
    assert [e.reward_components["reward_model"] for e in batch.episodes] == pytest.approx([0.25 * zk for zk in z])


def write_questions(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} + {a}?", "answers": [str(2 * a)]}) + "\n" for a in (3, 4)))
    return path


def test_a_reward_model_folder_without_a_model_is_a_one_line_config_error(tmp_path, capsys):
    assert main(["train", "--config", TINY_TEST, "--out", str(tmp_path / "run"), "--set", f"reward.model={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentenv train: error: reward.model: ") and "rm train" in err and err.count("\n") == 1


def test_eval_scores_every_episode_with_a_reward_model(tmp_path, reward_model_dir, tiny_model_dir):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--env", "agentenv/Calculator-v0", "--questions", str(write_questions(tmp_path)),
                 "--engine", "transformers", "--max-turns", "1", "--max-turn-tokens", "4",
                 "--reward-model", str(reward_model_dir), "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "transcripts-agentenv-Calculator-v0.jsonl").read_text().splitlines()]
    scores = [r["reward_model_score"] for r in records]
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["agentenv/Calculator-v0"]["reward_model_score"] == pytest.approx(sum(scores) / 2)
