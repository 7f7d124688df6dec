"""What a training run adds for experiments: the held-out curve, starting from another run's
weights, the baselines' SFT data (retrieve-then-answer and closed-book oracle episodes), and the
episode log `agentenv diagnose` reads."""

import json

import gymnasium as gym
import pytest
import torch

import agentenv  # noqa: F401  (registers the environments)
from agentenv.cli import main
from agentenv.trainers.algorithms.sft import oracle_episode
from agentenv.trainers.loop.config import ConfigError, load_config
from agentenv.trainers.loop.train import train

# A tiny random model on the search environment: seconds per step, real tokenizer, real index.
TINY_SEARCH = [
    "model.name=tiny-random",
    "lora.enabled=false",
    "engine.kind=transformers",
    "env.id=agentenv/SearchQA-v0",
    "env.kwargs={questions: 'geo:train', max_turns: 2, max_turn_tokens: 6, max_total_tokens: 768}",
    "grpo.questions_per_step=2",
    "grpo.group_size=2",
    "logging.tensorboard=false",
    "logging.progress=false",
    "logging.transcripts_per_step=0",
]

QUESTION = {"id": "q", "question": "Which country is Le Petit-Quevilly in?", "answers": ["France"], "hops": 1}


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_held_out_curve_is_logged_at_step_zero_and_every_n_steps(tmp_path):
    config = load_config(None, [*TINY_SEARCH, "max_steps=3", "eval.every=2", "eval.limit=3", "eval.questions=geo:dev"])
    train(config, tmp_path / "run")
    records = _records(tmp_path / "run")
    with_dev = {r["step"]: r for r in records if "dev/exact_match" in r}
    assert sorted(with_dev) == [0, 2, 3]  # the start, every 2 steps, and the last step
    assert [r["step"] for r in records if "dev/exact_match" not in r] == [1]
    first = with_dev[0]
    for key in ("dev/f1", "dev/tools/search_calls", "dev/tools/calculator_calls", "dev/valid_format", "time/dev_eval_s"):
        assert key in first, key
    from agentenv.envs import load_question_set

    kinds = {q["kind"] for q in load_question_set("geo:dev")[:3]}
    assert {f"dev/exact_match/{kind}" for kind in kinds} <= set(first)


def test_held_out_curve_needs_questions():
    with pytest.raises(ConfigError, match="eval.limit"):
        load_config(None, ["eval.every=1", "eval.limit=0"])


def test_init_from_starts_with_the_other_runs_weights(tmp_path):
    sft = load_config(None, [*TINY_SEARCH, "mode=sft", "max_steps=1", "sft.questions_per_step=2"])
    train(sft, tmp_path / "sft")
    from agentenv.trainers.loop.build import load_policy, load_policy_tokenizer
    from agentenv.trainers.loop.checkpoint import latest_checkpoint, load_model_weights

    config = load_config(None, [*TINY_SEARCH, f"model.init_from={tmp_path / 'sft'}"])
    tokenizer = load_policy_tokenizer(config)
    started = load_policy(config, tokenizer).model
    fresh = load_policy(load_config(None, TINY_SEARCH), tokenizer).model
    load_model_weights(latest_checkpoint(tmp_path / "sft"), fresh)
    for (name, a), (_, b) in zip(started.state_dict().items(), fresh.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    untrained = load_policy(load_config(None, TINY_SEARCH), tokenizer).model
    assert any(not torch.equal(a, b) for a, b in zip(started.parameters(), untrained.parameters(), strict=True))


def test_a_run_from_another_runs_weights_goes_on_with_its_questions(tmp_path):
    # The SFT run imitates questions 0-3 of the seeded order; GRPO from it must not draw them again.
    sft = load_config(None, [*TINY_SEARCH, "mode=sft", "max_steps=2", "sft.questions_per_step=2"])
    train(sft, tmp_path / "sft")
    imitated = {i for r in _records(tmp_path / "sft") for i in r["data/question_ids"]}
    grpo = load_config(None, [*TINY_SEARCH, "max_steps=1", f"model.init_from={tmp_path / 'sft'}"])
    train(grpo, tmp_path / "grpo")
    [step] = _records(tmp_path / "grpo")
    assert step["data/cursor"] == 4 + 2 and not imitated & set(step["data/question_ids"])

    from agentenv.trainers.loop.build import warm_start_cursor

    assert warm_start_cursor(grpo)[0] == 4
    # Restarted on request, and whenever the warm start drew other questions or another order.
    assert warm_start_cursor(load_config(None, [*TINY_SEARCH, f"model.init_from={tmp_path / 'sft'}",
                                                "model.init_from_order=restart"])) is None
    assert warm_start_cursor(load_config(None, [*TINY_SEARCH, f"model.init_from={tmp_path / 'sft'}", "seed=1"])) is None
    other_questions = [*TINY_SEARCH, "env.kwargs={questions: 'geo:dev', max_turns: 2}", f"model.init_from={tmp_path / 'sft'}"]
    assert warm_start_cursor(load_config(None, other_questions)) is None
    with pytest.raises(ConfigError, match="model.init_from_order"):
        load_config(None, ["model.init_from_order=again"])


def test_init_from_a_folder_without_checkpoints_is_a_clear_error(tmp_path):
    from agentenv.trainers.loop.build import load_policy, load_policy_tokenizer

    config = load_config(None, [*TINY_SEARCH, f"model.init_from={tmp_path}"])
    with pytest.raises(ConfigError, match="neither a checkpoint nor a run folder"):
        load_policy(config, load_policy_tokenizer(config))


def test_rag_oracle_episode_answers_from_the_passages_in_one_turn(tokenizer):
    env = gym.make("agentenv/RagQA-v0", tokenizer=tokenizer).unwrapped
    episode = oracle_episode(env, QUESTION)
    assert [s.source for s in episode.trajectory.segments] == ["prompt", "policy"]
    prompt = tokenizer.decode(list(episode.trajectory.segments[0].token_ids))
    assert "Doc 1 (Title: Le Petit-Quevilly)" in prompt and "France" in prompt
    assert tokenizer.decode(list(episode.trajectory.segments[1].token_ids)) == "<answer>France</answer>"
    assert episode.reward_components["exact_match"] == 1.0


def test_closed_book_oracle_episode_is_the_question_and_the_answer(tokenizer):
    env = gym.make("agentenv/ClosedBookQA-v0", tokenizer=tokenizer).unwrapped
    episode = oracle_episode(env, QUESTION)
    assert [s.source for s in episode.trajectory.segments] == ["prompt", "policy"]
    assert "Doc 1" not in tokenizer.decode(list(episode.trajectory.segments[0].token_ids))
    assert episode.reward_components["exact_match"] == 1.0


def test_baselines_train_on_the_same_questions_as_the_agent(tmp_path):
    """Same seed and SFT budget: the three SFT runs see the same question ids in the same order."""
    seen = {}
    for env_id in ("agentenv/SearchQA-v0", "agentenv/RagQA-v0", "agentenv/ClosedBookQA-v0"):
        config = load_config(None, [*TINY_SEARCH, f"env.id={env_id}", "mode=sft", "max_steps=2", "sft.questions_per_step=2"])
        run = tmp_path / env_id.split("/")[1]
        train(config, run)
        seen[env_id] = [r["data/question_ids"] for r in _records(run)]
    assert len({json.dumps(ids) for ids in seen.values()}) == 1


def test_oversampled_run_rolls_out_twice_the_questions_and_trains_on_at_most_b_groups(tmp_path):
    config = load_config(None, [*TINY_SEARCH, "max_steps=2", "grpo.oversample=2", "engine.temperature=1.5"])
    train(config, tmp_path / "run")
    records = _records(tmp_path / "run")
    assert [len(r["data/question_ids"]) for r in records] == [4, 4]  # ⌈2 · B⌉ with B = 2
    assert len({q for r in records for q in r["data/question_ids"]}) == 8  # the order moves on by 4 a step
    for r in records:
        assert r.get("update/sequences", 0) <= 2 * 2  # at most B groups of G
        assert r.get("groups/trained", 0) <= 2


def test_probe_counts_groups_whose_rewards_all_agree():
    from agentenv.trainers.loop.probe import group_statistics

    rewards = [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.1, 1.0, 1.0, 1.0]]
    correct = [[True, True, False, True], [False] * 4, [False, True, True, True]]
    two = group_statistics(rewards, correct, 2)
    assert two["equal_reward_groups"] == pytest.approx(2 / 3)  # the first two samples agree twice
    assert two["pass_at_g"] == pytest.approx(2 / 3)
    four = group_statistics(rewards, correct, 4)
    assert four["equal_reward_groups"] == pytest.approx(1 / 3)
    assert four["pass_at_g"] == pytest.approx(2 / 3)
    assert four["reward_mean"] == pytest.approx(6.1 / 12)


def test_probe_runs_on_a_tiny_model(tmp_path, capsys):
    import yaml

    from agentenv.cli import main

    run = tmp_path / "sft"
    train(load_config(None, [*TINY_SEARCH, "mode=sft", "max_steps=1", "sft.questions_per_step=2"]), run)
    config = tmp_path / "config.yaml"
    config.write_text((run / "config.yaml").read_text())
    assert yaml.safe_load(config.read_text())["env"]["id"] == "agentenv/SearchQA-v0"
    capsys.readouterr()
    assert main(["probe", "--config", str(config), "--model", str(run), "--questions", "2",
                 "--group-sizes", "2", "3", "--engine", "transformers"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["group_size"] for line in lines] == [2, 3]
    assert all(0 <= line["equal_reward_groups"] <= 1 for line in lines)


def test_a_grpo_run_logs_every_episode_and_diagnose_reads_it(tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config(None, [*TINY_SEARCH, "max_steps=2"]), run)
    lines = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1] * 4 + [2] * 4  # B 2 × G 2 a step
    assert {line["group"] for line in lines if line["step"] == 1} == {0, 1}
    assert all(line["class"] in {"single-hop", "two-hop", "calculator"} for line in lines)
    assert all(set(line["tool_calls"]) == {"search", "calculator"} or line["tool_calls"] == {} for line in lines)
    assert main(["diagnose", str(run), "--json", str(tmp_path / "report.json")]) == 0
    printed = capsys.readouterr().out
    assert "## Drift by class" in printed and "## The push by episode length" in printed
    assert json.loads((tmp_path / "report.json").read_text())["episodes"] == 8


def test_unsolved_questions_are_tried_again_first_and_the_queue_survives_a_resume(tmp_path):
    """The tiny random model answers nothing right, so every group is unsolved: with a share of 0.5
    of B 2, each step retries the oldest queued question once, then drops it."""
    settings = [*TINY_SEARCH, "rollout.retry_unsolved_share=0.5", "rollout.retry_unsolved_times=1"]
    train(load_config(None, [*settings, "max_steps=3"]), tmp_path / "whole")
    records = _records(tmp_path / "whole")
    ids = [r["data/question_ids"] for r in records]
    assert ids[1][0] == ids[0][0] and ids[2][0] == ids[0][1]  # retried first, oldest first
    assert len({ids[0][1], ids[1][1], ids[2][1]} | {ids[0][0]}) == 4  # the rest come from the order
    assert [r["rollout/retried_questions"] for r in records] == [0.0, 1.0, 1.0]
    assert [r["rollout/unsolved_queue"] for r in records] == [2.0, 2.0, 2.0]  # one out (tried twice), one in
    train(load_config(None, [*settings, "max_steps=2"]), tmp_path / "parts")
    train(load_config(None, [*settings, "max_steps=3"]), tmp_path / "parts", resume=True)
    assert _records(tmp_path / "parts")[2]["data/question_ids"] == ids[2]


def test_the_retry_queue_keeps_only_unsolved_questions_up_to_their_limit(tokenizer):
    from agentenv import ToolEnv
    from agentenv.tools import calculator
    from agentenv.trainers.loop.build import UnsolvedRetries
    from agentenv.trajectory import Episode

    def episode(group, answer):
        env = ToolEnv([calculator], tokenizer=tokenizer)
        env.reset(options={"question": "What is 2+2?", "answers": ["4"]})
        *_, info = env.step(f"<answer>{answer}</answer>")
        return Episode.from_info(info, 0.0, group=group)

    retries = UnsolvedRetries(share=0.5, times=2)
    retries.record([10, 11], [episode(0, "4"), episode(0, "5"), episode(1, "5"), episode(1, "3")])
    assert retries.queue == [[11, 0]]  # question 10 had a right answer
    for expected_queue in ([[11, 1]], []):  # retried twice, then dropped
        assert retries.take(4) == [11]
        retries.record([11, 12], [episode(0, "5"), episode(1, "4")])
        assert retries.queue == expected_queue
    assert UnsolvedRetries(share=0.0, times=1, queue=[[3, 0]]).take(8) == []


def test_retrying_unsolved_questions_with_prefetched_rollouts_is_a_config_error():
    with pytest.raises(ConfigError, match="retry_unsolved_share needs rollout.off_policy_steps: 0"):
        load_config(None, ["rollout.off_policy_steps=1", "engine.workers=1", "rollout.retry_unsolved_share=0.5"])
