"""RLOO: the leave-one-out advantage and the REINFORCE loss, against numbers worked out by hand."""

import pytest
import torch

from agentenv.models import tiny_random_model
from agentenv.trainers import algorithms
from agentenv.trainers.algorithms.rloo import (
    RLOOConfig,
    leave_one_out_advantages,
    rloo_token_loss,
    rloo_update,
)
from agentenv.trainers.loop.config import ConfigError, load_config
from agentenv.trajectory import Episode, Trajectory


def test_each_sample_is_measured_against_the_mean_of_the_others_of_its_question():
    # Question 0: rewards 1, 0, 0.5. b_0 = (0 + 0.5)/2 = 0.25, b_1 = (1 + 0.5)/2 = 0.75, b_2 = (1 + 0)/2 = 0.5.
    # Question 1: rewards 0.1, 0.1: each baseline is the other, 0.1.
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.1, 0.1])
    groups = torch.tensor([0, 0, 0, 1, 1])
    assert leave_one_out_advantages(rewards, groups).tolist() == pytest.approx([0.75, -0.75, 0.0, 0.0, 0.0])


def test_the_leave_one_out_advantage_is_k_over_k_minus_1_times_the_centred_reward():
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.0])
    advantages = leave_one_out_advantages(rewards, torch.zeros(4, dtype=torch.long))
    assert advantages.tolist() == pytest.approx((4 / 3 * (rewards - rewards.mean())).tolist())


def test_a_sample_alone_in_its_group_has_no_advantage():
    assert leave_one_out_advantages(torch.tensor([1.0, 0.3]), torch.tensor([0, 1])).tolist() == [0.0, 0.0]


def test_the_clipped_ratio_bounds_the_loss_as_ppo_does():
    # ρ = e^0.5 ≈ 1.6487 with A = 1: the clip at 1.2 wins; with A = −1: −min(−1.6487, −1.2) = 1.6487.
    logp, old = torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 0.0]])
    loss, ratio = rloo_token_loss(logp, old, torch.tensor([1.0]), clip_eps=0.2)
    assert loss.tolist()[0] == pytest.approx([-1.2, -1.0])
    assert ratio.tolist()[0] == pytest.approx([1.6487213, 1.0], rel=1e-6)
    loss, _ = rloo_token_loss(logp, old, torch.tensor([-1.0]), clip_eps=0.2)
    assert loss.tolist()[0] == pytest.approx([1.6487213, 1.0], rel=1e-6)


def _episodes(tokenizer, rewards, groups):
    generator = torch.Generator().manual_seed(0)
    episodes = []
    for i, (reward, group) in enumerate(zip(rewards, groups, strict=True)):
        trajectory = Trajectory()
        trajectory.append("prompt", torch.randint(3, len(tokenizer), (5,), generator=generator).tolist())
        trajectory.append("policy", torch.randint(3, len(tokenizer), (2 + i,), generator=generator).tolist())
        trajectory.append("tool", torch.randint(3, len(tokenizer), (3,), generator=generator).tolist())
        trajectory.append("policy", torch.randint(3, len(tokenizer), (2,), generator=generator).tolist())
        episodes.append(Episode(trajectory, reward, group=group))
    return episodes


def _update(tokenizer, episodes, config, model=None):
    """One ``rloo_update`` at learning rate 0; its metrics and the gradient it stepped with."""
    model = model if model is not None else tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    grads = {}
    step = optimizer.step

    def capture(*args, **kwargs):
        grads.update({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    optimizer.step = capture
    return rloo_update(model, optimizer, episodes, config, tokenizer.pad_token_id, max_grad_norm=None), grads


def test_one_update_is_reinforce_with_the_leave_one_out_baseline_on_the_whole_completion(tokenizer):
    """With one pass ρ = 1 and ∇L = −(1/N) Σ_i A_i ∇ Σ_t m_{i,t} log π(o_{i,t}): the gradient of that
    objective written out by hand, token by token, on the model itself."""
    rewards, groups = [1.0, 0.0, 0.5, 0.2, 0.6, 0.1], [0, 0, 0, 1, 1, 1]
    episodes = _episodes(tokenizer, rewards, groups)
    A = [0.75, -0.75, 0.0, 0.2 - 0.35, 0.6 - 0.15, 0.1 - 0.4]

    model = tiny_random_model(tokenizer)
    expected = torch.zeros(())
    for episode, advantage in zip(episodes, A, strict=True):
        ids = torch.tensor([episode.token_ids])
        log_probs = torch.log_softmax(model(ids).logits[0].float(), -1)
        for t, is_policy in enumerate(episode.policy_mask):
            if is_policy:
                expected = expected - advantage * log_probs[t - 1, episode.token_ids[t]] / len(episodes)
    expected.backward()
    hand = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    metrics, grads = _update(tokenizer, episodes, RLOOConfig(samples_per_question=3, micro_batch_size=4), model)
    # At ρ = 1 the surrogate's value is −(1/N) Σ_i A_i (policy tokens of i); its gradient is REINFORCE's.
    surrogate = -sum(a * sum(e.policy_mask) for a, e in zip(A, episodes, strict=True)) / len(episodes)
    assert metrics["loss"] == pytest.approx(surrogate, abs=1e-5)
    assert metrics["advantage/max"] == pytest.approx(0.75)
    assert metrics["ratio/mean"] == pytest.approx(1.0)
    for name, gradient in hand.items():
        torch.testing.assert_close(grads[name], gradient, rtol=1e-4, atol=1e-6)


def test_tool_tokens_after_the_last_policy_token_change_neither_loss_nor_gradient(tokenizer):
    def update(closing_tool_tokens):
        episodes = _episodes(tokenizer, [1.0, 0.0], [0, 0])
        for episode in episodes:
            episode.trajectory.append("tool", closing_tool_tokens)
        metrics, grads = _update(tokenizer, episodes, RLOOConfig(samples_per_question=2))
        return metrics["loss"], grads

    loss_a, grads_a = update([11, 12, 13])
    loss_b, grads_b = update([400, 500, 600, 700])
    assert loss_a == pytest.approx(loss_b, abs=1e-7) and loss_a != 0.0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name])


def test_rloo_is_a_registered_mode_with_its_own_config_section():
    algorithm = algorithms.get("rloo")
    config = load_config(None, ["mode=rloo", "rloo.questions_per_step=3", "rloo.samples_per_question=5"])
    assert algorithm.rollout_shape(config.rloo) == (3, 5)
    assert not algorithm.reference_copy(config.rloo, True)
    with pytest.raises(ConfigError, match="rloo.samples_per_question must be at least 2"):
        load_config(None, ["mode=rloo", "rloo.samples_per_question=1"])


def test_samples_without_an_advantage_are_not_forwarded_and_change_nothing(tokenizer):
    """A question whose samples all earned the same reward adds exactly 0 to the loss: leaving its
    samples out of the forward pass gives the loss and gradient of the full formula, whose N still
    counts them."""
    episodes = _episodes(tokenizer, [1.0, 0.0, 0.3, 0.3], [0, 0, 1, 1])

    def update(batch):
        return _update(tokenizer, batch, RLOOConfig(samples_per_question=2))

    full, full_grads = update(episodes)
    alone, alone_grads = update(episodes[:2])
    assert full["update/sequences"] == 2  # the two of question 1 were not forwarded
    # The same sum of per-sample terms, divided by 4 instead of 2.
    assert full["loss"] == pytest.approx(alone["loss"] / 2, rel=1e-5)
    for name, gradient in alone_grads.items():
        torch.testing.assert_close(full_grads[name], gradient / 2, rtol=1e-4, atol=1e-7)
    skipped, _ = update(episodes[2:])
    assert skipped["update/skipped"] == 1.0
