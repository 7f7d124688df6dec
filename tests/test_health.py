"""Training health: each invariant on a real rollout batch that keeps it and on one that breaks it,
a training run that stops on a broken one, kl/to_start, truncated importance sampling, and each alert
on a scripted run that shows its shape."""

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from agentenv.cli import main
from agentenv.envs import make_calculator_env
from agentenv.models import tiny_random_model
from agentenv.trainers.algorithms.grpo import GRPOConfig, grpo_update
from agentenv.trainers.algorithms.logprobs import batch_logprobs, pad_episodes
from agentenv.trainers.loop.health import (
    HealthConfig,
    HealthMonitor,
    InvariantViolation,
    StartPolicy,
    check_answers,
    check_batch,
    check_gap,
    check_ids,
    check_mask,
    enforce,
    truncation_metrics,
)
from agentenv.trainers.rollout.engines import SamplingConfig, TransformersEngine
from agentenv.trainers.rollout.rollout import rollout
from agentenv.trajectory import Episode, SampledTurn, Trajectory

TINY_TEST = str(Path(__file__).parent.parent / "configs" / "tiny-test.yaml")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return tiny_random_model(tokenizer).eval()


@pytest.fixture(scope="module")
def rolled(tokenizer, model):
    """A real batch: 2 calculator questions x 2 samples from a tiny model, through the real env."""
    envs = [make_calculator_env(tokenizer=tokenizer, num_questions=4, max_turns=2, max_turn_tokens=12,
                                max_total_tokens=256) for _ in range(4)]
    engine = TransformersEngine(model, tokenizer)
    batch = rollout(engine, envs, envs[0].questions[:2], 2, SamplingConfig(temperature=1.0, seed=3))
    return batch.episodes


def test_a_real_batch_keeps_every_invariant(rolled, tokenizer):
    assert all(e.sampled_turns and len(e.sampled_turns) == e.num_turns for e in rolled)
    assert check_batch(rolled, pad_episodes(rolled, tokenizer.pad_token_id)) == []


def test_a_tool_token_in_the_loss_mask_is_named(rolled, tokenizer):
    batch = pad_episodes(rolled, tokenizer.pad_token_id)
    row = next(i for i, e in enumerate(rolled) if "tool" in e.trajectory.sources)
    position = rolled[row].trajectory.sources.index("tool")
    batch.policy_mask[row, position] = 1.0
    (violation,) = check_mask(rolled, batch)
    assert f"episode {row} " in violation.message
    assert f"token {position} (id {rolled[row].token_ids[position]}), a tool token, is in the loss mask" in violation.message


def test_template_filler_tagged_as_policy_is_caught_by_the_ids(rolled, tokenizer):
    # A chat template's end-of-turn tokens appended as if the model had written them.
    episode = rolled[0]
    trajectory = Trajectory(list(episode.trajectory.segments))
    index = next(i for i, s in enumerate(trajectory.segments) if s.source == "policy")
    first = trajectory.segments[index]
    filler = tuple(tokenizer.encode("<|im_end|>\n"))
    trajectory.segments[index] = replace(first, token_ids=first.token_ids + filler, logprobs=None)
    broken = replace(episode, trajectory=trajectory)
    (violation,) = check_ids([broken], pad_episodes([broken], tokenizer.pad_token_id))
    assert "turn 0 holds" in violation.message and "the turn was not cut" in violation.message


def test_a_changed_token_id_is_named_with_what_the_engine_sampled(rolled, tokenizer):
    episode = rolled[1]
    trajectory = Trajectory(list(episode.trajectory.segments))
    index = next(i for i, s in enumerate(trajectory.segments) if s.source == "policy" and s.token_ids)
    segment = trajectory.segments[index]
    sampled = segment.token_ids[0]
    trajectory.segments[index] = replace(segment, token_ids=(sampled + 1,) + segment.token_ids[1:])
    broken = replace(episode, trajectory=trajectory)
    position = sum(len(s.token_ids) for s in trajectory.segments[:index])
    (violation,) = check_ids([broken], pad_episodes([broken], tokenizer.pad_token_id))
    assert violation.message.endswith(f"token {position} is id {sampled + 1} in the batch; the engine sampled id {sampled}")


def test_a_cut_answer_must_say_so(tokenizer):
    # A one-turn environment reads whatever the turn holds as the answer: a turn stopped at its
    # budget gives a cut answer, which the environment marks and the check then accepts.
    env = make_calculator_env(tokenizer=tokenizer, num_questions=2, max_turn_tokens=4, on_no_call="answer")
    env.reset(options=env.questions[0])
    action = tokenizer.encode("The answer is probably 1234 but")[:4]
    *_, info = env.step(action)
    assert info["finish_reason"] == "untagged_answer" and info["answer_cut"] is True
    assert info["turns"][-1]["cut"] is True
    episode = Episode.from_info(info, 0.0)
    episode.sampled_turns = [SampledTurn(tuple(action), "length")]
    assert check_answers([episode]) == []
    unmarked = replace(episode, answer_cut=False)
    (violation,) = check_answers([unmarked])
    assert "comes from a turn the engine stopped at its token budget" in violation.message
    assert truncation_metrics([episode])["truncation/answer_cut"] == 1.0
    # A turn that ends at its stop string is whole, even when it fills the budget exactly.
    env.reset(options=env.questions[0])
    whole = tokenizer.encode("<answer>12</answer>")
    env.max_turn_tokens = len(whole)
    *_, info = env.step(whole)
    assert info["finish_reason"] == "answer" and info["answer_cut"] is False


def test_a_large_engine_trainer_gap_is_named_and_strict_false_only_warns(rolled, tokenizer, model, capsys):
    shifted = []
    for i, episode in enumerate(rolled):
        logprobs = list(episode.engine_logprobs)
        if i == 2:
            logprobs[0] -= 8.0  # one token the engine found 3000x less likely than the trainer does
        copy = replace(episode, trajectory=Trajectory(list(episode.trajectory.segments)), reward=float(i % 2))
        copy.engine_logprobs = logprobs
        shifted.append(copy)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    update = grpo_update(model, optimizer, shifted, GRPOConfig(group_size=2), tokenizer.pad_token_id)
    assert update["logprob_gap/engine_vs_trainer_max"] == pytest.approx(8.0, abs=1e-3)
    worst = update["logprob_gap/engine_vs_trainer_worst"]
    assert worst["row"] == 2 and worst["id"] == rolled[2].question["id"]
    assert worst["position"] == rolled[2].policy_mask.index(1)
    # 8 nats over a few dozen policy tokens: the mean is over its limit too.
    mean, largest = check_gap(update, HealthConfig())
    assert "on average (limit health.logprob_gap_mean_limit 0.1)" in mean.message
    assert f"token {worst['position']}" in largest.message and "limit health.logprob_gap_max_limit 5.0" in largest.message
    with pytest.raises(InvariantViolation, match="health.strict: false"):
        enforce([largest], HealthConfig(), step=7)
    enforce([largest], HealthConfig(strict=False), step=7)
    assert "agentenv train: health: step 7: gap: one token's engine-trainer log-prob gap" in capsys.readouterr().err
    assert check_gap(update, HealthConfig(logprob_gap_max_limit=10.0, logprob_gap_mean_limit=1.0)) == []


@pytest.mark.parametrize("mode", ["rloo", "ppo"])
def test_rloo_and_ppo_report_the_engine_trainer_gap_too(rolled, tokenizer, model, mode):
    """The same 8-nat token as above, under the other on-policy objectives: the health check reads
    their gap as it reads GRPO's. RLOO's one pass skips samples without advantage, so the shifted
    episode has one (rewards alternate within each group)."""
    from agentenv.trainers.algorithms.ppo import PPOConfig, ValueHead, ppo_update
    from agentenv.trainers.algorithms.rloo import RLOOConfig, rloo_update

    shifted = []
    for i, episode in enumerate(rolled):
        logprobs = list(episode.engine_logprobs)
        if i == 2:
            logprobs[0] -= 8.0
        copy = replace(episode, trajectory=Trajectory(list(episode.trajectory.segments)), reward=float(i % 2))
        copy.engine_logprobs = logprobs
        shifted.append(copy)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    if mode == "rloo":
        update = rloo_update(model, optimizer, shifted, RLOOConfig(samples_per_question=2), tokenizer.pad_token_id)
    else:
        head = ValueHead(model.config.hidden_size)
        optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.0)
        update = ppo_update(model, head, optimizer, shifted, PPOConfig(samples_per_question=2, kl_coef=0.0), tokenizer.pad_token_id)
    assert update["logprob_gap/engine_vs_trainer_max"] == pytest.approx(8.0, abs=1e-3)
    assert update["logprob_gap/engine_vs_trainer_worst"]["row"] == 2
    assert [v.invariant for v in check_gap(update, HealthConfig())] == ["gap", "gap"]


RETOKENIZING = '''
import gymnasium as gym
from agentenv.envs import CalculatorEnv, arithmetic_questions
from agentenv.tools import calculator


class Retokenizing(CalculatorEnv):
    """A bug seen in the field: the turn is decoded and encoded again before it is stored."""

    def _read_turn(self, action, logprobs):
        text = self.tokenizer.decode(list(action), skip_special_tokens=True)
        return super()._read_turn(text, None)


def make(questions=None, num_questions=20, **kwargs):
    kwargs.setdefault("reward", None)
    return Retokenizing(tools=[calculator], questions=questions or arithmetic_questions(num_questions), **kwargs)


gym.register(id="bug/Retokenizing-v0", entry_point=make)
'''


def test_training_stops_on_an_environment_that_retokenizes_and_goes_on_when_not_strict(tmp_path, monkeypatch, capsys):
    (tmp_path / "bugmod.py").write_text(RETOKENIZING)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        common = ["--config", TINY_TEST, "--set", "env.id=bugmod:bug/Retokenizing-v0", "--set",
                  "env.kwargs={max_turns: 2, max_turn_tokens: 12, max_total_tokens: 256}", "--set", "max_steps=2"]
        assert main(["train", *common, "--out", str(tmp_path / "strict")]) == 1
        error = capsys.readouterr().err
        assert "a training batch broke an invariant" in error and "step 1: ids: episode " in error
        assert "in the batch; the engine sampled id" in error or "the turn was not cut" in error
        assert not (tmp_path / "strict" / "checkpoints").exists() or not any((tmp_path / "strict" / "checkpoints").iterdir())

        assert main(["train", *common, "--out", str(tmp_path / "lenient"), "--set", "health.strict=false"]) == 0
        assert "agentenv train: health: step 1: ids: episode" in capsys.readouterr().err
        records = [json.loads(line) for line in (tmp_path / "lenient" / "metrics.jsonl").read_text().splitlines()]
        assert all(r["health/violations"] >= 1 for r in records)
    finally:
        sys.modules.pop("bugmod", None)
        gym.registry.pop("bug/Retokenizing-v0", None)


def test_kl_to_start_is_zero_at_the_start_matches_the_exact_k3_after_a_change_and_restores_the_weights(
    rolled, tokenizer, model, tmp_path
):
    policy = tiny_random_model(tokenizer).eval()
    policy.load_state_dict(model.state_dict())
    start = StartPolicy(policy, tmp_path)
    assert (tmp_path / "start_policy.safetensors").is_file()
    batch = pad_episodes(rolled, tokenizer.pad_token_id)
    assert start.kl(policy, rolled, tokenizer.pad_token_id, 1.0) == pytest.approx(0.0, abs=1e-5)

    with torch.no_grad():
        policy.lm_head.weight.add_(0.05 * torch.randn_like(policy.lm_head.weight))
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    # The engine's logprobs of the moved policy: what a rollout from it would carry.
    moved = batch_logprobs(policy, batch, 4)
    episodes = []
    for row, episode in enumerate(rolled):
        copy = replace(episode, trajectory=Trajectory(list(episode.trajectory.segments)))
        columns = [t - batch.start for t, m in enumerate(episode.policy_mask) if m]
        copy.engine_logprobs = moved[row, columns].tolist()
        episodes.append(copy)
    kl = start.kl(policy, episodes, tokenizer.pad_token_id, 1.0)
    original = batch_logprobs(model, batch, 4)
    mask = batch.policy_mask[:, batch.start:] > 0
    log_ratio = (original - moved)[mask]
    exact = (torch.exp(log_ratio) - log_ratio - 1).mean().item()
    assert kl == pytest.approx(exact, rel=1e-4) and kl > 1e-4
    assert all(torch.equal(before[name], p) for name, p in policy.named_parameters())
    # A resumed run reads the saved start instead of taking the weights it resumed with.
    assert StartPolicy(policy, tmp_path).kl(policy, episodes, tokenizer.pad_token_id, 1.0) == pytest.approx(kl)


def test_truncated_importance_sampling_weights_each_token_by_the_capped_ratio(rolled, tokenizer, model):
    episodes = []
    for i, episode in enumerate(rolled):
        copy = replace(episode, trajectory=Trajectory(list(episode.trajectory.segments)), reward=float(i % 2))
        episodes.append(copy)
    batch = pad_episodes(episodes, tokenizer.pad_token_id)
    trainer = batch_logprobs(model, batch, 4)

    def gradient(shift: float, cap: float, on: bool) -> tuple[torch.Tensor, dict]:
        for row, episode in enumerate(episodes):
            columns = [t - batch.start for t, m in enumerate(episode.policy_mask) if m]
            episode.engine_logprobs = (trainer[row, columns] - shift).tolist()
        policy = tiny_random_model(tokenizer)
        policy.load_state_dict(model.state_dict())
        optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)  # the step is minus the gradient
        metrics = grpo_update(policy, optimizer, episodes, GRPOConfig(group_size=2, truncated_is_cap=cap),
                              tokenizer.pad_token_id, max_grad_norm=None, truncated_is=on)
        return model.lm_head.weight - policy.lm_head.weight.detach(), metrics

    plain, _ = gradient(0.0, 2.0, False)
    same, metrics = gradient(0.0, 2.0, True)  # engine = trainer: every w is 1
    assert plain.abs().max() > 0
    assert torch.allclose(same, plain, atol=1e-6) and metrics["truncated_is/weight_mean"] == pytest.approx(1.0, abs=1e-4)
    # The engine found every token half as likely as the trainer: w = 2, at the cap 3 not reached.
    doubled, metrics = gradient(math.log(2.0), 3.0, True)
    assert torch.allclose(doubled, 2 * plain, rtol=1e-3, atol=1e-6)
    assert metrics["truncated_is/capped_fraction"] == 0.0
    capped, metrics = gradient(math.log(2.0), 1.5, True)
    assert torch.allclose(capped, 1.5 * plain, rtol=1e-3, atol=1e-6)
    assert metrics["truncated_is/capped_fraction"] == pytest.approx(1.0)


# --- alerts on scripted runs ---------------------------------------------------------------------------

HEALTHY = {"entropy": 1.2, "episode/format_valid": 0.9, "search/per_episode": 1.5, "search/at_cap": 0.1,
           "episode/at_length_limit": 0.05, "logprob_gap/engine_vs_trainer": 0.01, "groups/equal_reward_fraction": 0.4}


def scripted_run(change: dict[str, float], steps: int = 20, from_step: int = 11) -> tuple[HealthMonitor, list]:
    """20 steps of a healthy run whose metrics take ``change`` from ``from_step`` on."""
    monitor = HealthMonitor(HealthConfig(window=5), search_cap=3)
    seen = []
    for step in range(1, steps + 1):
        metrics = dict(HEALTHY, **(change if step >= from_step else {}))
        out, started = monitor.observe(step, metrics)
        seen.append((step, out, started))
    return monitor, seen


@pytest.mark.parametrize(
    ("alert", "change", "onset", "words"),
    [
        # The onset is the first step whose 5-step mean crosses the threshold (the change starts at 11).
        ("entropy_collapse", {"entropy": 0.1}, 15, "policy entropy collapsed: 0.1 nats a token, from 1.2"),
        ("format_valid_falling", {"episode/format_valid": 0.5}, 13, "format-valid rate fell to 0.66 from 0.90"),
        ("searches_to_zero", {"search/per_episode": 0.0}, 15, "the agent stopped searching: 0.00 searches per episode"),
        ("searches_to_cap", {"search/at_cap": 0.95}, 15, "95% of episodes search as often as an episode can (3)"),
        ("length_at_limit", {"episode/at_length_limit": 0.6}, 13, "38% of episodes run into a token budget"),
        ("logprob_gap_growing", {"logprob_gap/engine_vs_trainer": 0.2}, 11, "log-prob gap grew to 0.048 from 0.01"),
        ("equal_reward_groups", {"groups/equal_reward_fraction": 0.9}, 14, "80% of groups have all-equal rewards"),
    ],
)
def test_each_alert_fires_once_when_its_shape_shows_and_not_before(alert, change, onset, words):
    _, seen = scripted_run(change)
    onsets = [(step, a) for step, _, started in seen for a in started]
    assert [(step, a.name) for step, a in onsets] == [(onset, alert)]
    assert words in onsets[0][1].message
    for step, out, _ in seen:
        assert out[f"health/alert/{alert}"] == float(step >= onset)
        assert out["health/alerts"] == float(step >= onset)


def test_a_healthy_run_raises_no_alert_and_an_alert_that_clears_can_come_back():
    _, seen = scripted_run({})
    assert not any(started for _, _, started in seen)
    monitor = HealthMonitor(HealthConfig(window=1), search_cap=3)
    names = []
    for value in (1.0, 0.0, 1.0, 0.0):
        names.append([a.name for a in monitor.observe(0, dict(HEALTHY, **{"search/per_episode": value}))[1]])
    assert names == [[], ["searches_to_zero"], [], ["searches_to_zero"]]


def test_a_training_run_prints_an_alert_once_and_logs_it_every_step(tmp_path, capsys):
    # The tiny random model never answers: every group's rewards are equal, which is the alert's shape.
    run = tmp_path / "run"
    assert main(["train", "--config", TINY_TEST, "--out", str(run), "--set", "max_steps=3",
                 "--set", "health.window=1", "--set", "health.kl_every=1"]) == 0
    err = capsys.readouterr().err
    assert err.count("health alert at step 1: equal_reward_groups: 100% of groups have all-equal rewards") == 1
    assert "health alert at step 2" not in err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["health/alert/equal_reward_groups"] for r in records] == [1.0, 1.0, 1.0]
    assert all(r["health/violations"] == 0.0 and r["kl/to_start"] >= 0.0 for r in records)
    assert {"truncation/turn_budget", "truncation/answer_cut", "episode/format_valid"} <= set(records[0])
