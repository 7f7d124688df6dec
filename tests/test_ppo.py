"""PPO with a value head: GAE over policy tokens only, by hand; the clipped losses; the update."""

import math

import pytest
import torch

from agentenv.models import tiny_random_model
from agentenv.trainers.algorithms.ppo import (
    PPOConfig,
    ValueHead,
    explained_variance,
    masked_gae,
    ppo_token_loss,
    ppo_update,
    token_rewards,
)
from agentenv.trainers.loop.config import ConfigError, load_config
from agentenv.trajectory import Episode

# --- rewards and GAE by hand ---------------------------------------------------------------------------

# Row 0: policy, policy, tool, tool, policy, padding. Row 1: tool, policy, policy, tool, policy, policy.
MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]])
VALUES = torch.tensor([[0.5, 0.2, 9.0, 9.0, -0.3, 9.0], [9.0, 0.1, 0.4, 9.0, 0.6, 0.2]])  # 9: never read
KL = torch.tensor([[0.1, -0.2, 5.0, 5.0, 0.3, 5.0], [5.0, 0.0, 0.2, 5.0, -0.1, 0.4]])


def test_token_rewards_put_the_score_on_the_last_policy_token_and_the_kl_penalty_on_each():
    rewards = token_rewards(torch.tensor([1.0, 0.5]), KL * MASK, MASK, kl_coef=0.1)
    expected = torch.tensor([[-0.01, 0.02, 0.0, 0.0, -0.03 + 1.0, 0.0], [0.0, 0.0, -0.02, 0.0, 0.01, -0.04 + 0.5]])
    torch.testing.assert_close(rewards, expected)


def _hand_gae(rewards, values, gamma, lam):
    """GAE over one episode's policy tokens in order (the tool tokens already removed)."""
    n = len(rewards)
    advantages = [0.0] * n
    following = 0.0
    for k in reversed(range(n)):
        next_value = values[k + 1] if k + 1 < n else 0.0
        delta = rewards[k] + gamma * next_value - values[k]
        following = delta + gamma * lam * following
        advantages[k] = following
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


def test_gae_runs_over_policy_tokens_only_skipping_tool_output():
    gamma, lam = 0.9, 0.8
    rewards = token_rewards(torch.tensor([1.0, 0.5]), KL * MASK, MASK, kl_coef=0.1)
    advantages, returns = masked_gae(rewards, VALUES, MASK, gamma, lam)
    for row in range(2):
        kept = [t for t in range(6) if MASK[row, t] == 1]
        hand_a, hand_g = _hand_gae([rewards[row, t].item() for t in kept], [VALUES[row, t].item() for t in kept], gamma, lam)
        assert [advantages[row, t].item() for t in kept] == pytest.approx(hand_a, rel=1e-5, abs=1e-6)
        assert [returns[row, t].item() for t in kept] == pytest.approx(hand_g, rel=1e-5, abs=1e-6)
        # Tool output and padding: no advantage, no return; the 9s were never read.
        assert all(advantages[row, t] == 0 and returns[row, t] == 0 for t in range(6) if MASK[row, t] == 0)
    # Row 0's second token bootstraps from the value after the tool result (position 4), not position 2.
    delta = rewards[0, 1].item() + gamma * VALUES[0, 4].item() - VALUES[0, 1].item()
    assert advantages[0, 1].item() == pytest.approx(delta + gamma * lam * advantages[0, 4].item(), rel=1e-6)


def test_gae_with_gamma_and_lambda_one_is_the_reward_to_go_minus_the_value():
    rewards = torch.tensor([[0.0, 0.1, 0.0, 1.0]])
    values = torch.tensor([[0.3, 0.2, 7.0, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    advantages, returns = masked_gae(rewards, values, mask, 1.0, 1.0)
    assert advantages[0].tolist() == pytest.approx([1.1 - 0.3, 1.1 - 0.2, 0.0, 1.0 - 0.5])
    assert returns[0].tolist() == pytest.approx([1.1, 1.1, 0.0, 1.0])


def test_explained_variance_is_one_for_a_perfect_critic_and_zero_for_a_constant_one():
    returns = torch.tensor([[1.0, 2.0, 5.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 0.7), returns, mask) == pytest.approx(0.0, abs=1e-6)


# --- the clipped losses by hand ---------------------------------------------------------------------------


def test_loss_and_gradients_match_hand_computation():
    config = PPOConfig(clip_eps=0.2, value_clip_eps=0.2, value_coef=0.5)
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.3]]))
    old = torch.log(torch.tensor([[0.5, 0.1, 0.5, 0.3]]))
    advantages = torch.tensor([[1.0, 1.0, -0.5, -2.0]])
    values = torch.tensor([[0.5, 1.0, 0.0, 0.35]])
    old_values = torch.tensor([[0.4, 0.5, 0.1, 0.3]])
    returns = torch.tensor([[1.0, 1.2, 0.3, 0.2]])
    logp_leaf, values_leaf = logp.clone().requires_grad_(True), values.clone().requires_grad_(True)
    terms = ppo_token_loss(logp_leaf, old, advantages, values_leaf, old_values, returns, config)
    terms.loss.sum().backward()

    for t in range(4):
        rho = math.exp(logp[0, t].item() - old[0, t].item())
        A = advantages[0, t].item()
        clipped = min(max(rho, 0.8), 1.2)
        policy = -min(rho * A, clipped * A)
        d_logp = -rho * A if rho * A <= clipped * A else 0.0  # the gradient flows through the unclipped term only
        V, V_old, G = values[0, t].item(), old_values[0, t].item(), returns[0, t].item()
        V_clipped = V_old + min(max(V - V_old, -0.2), 0.2)
        value = 0.5 * max((V - G) ** 2, (V_clipped - G) ** 2)
        if (V - G) ** 2 >= (V_clipped - G) ** 2:
            d_value = V - G
        else:
            d_value = (V_clipped - G) if abs(V - V_old) < 0.2 else 0.0
        assert terms.policy[0, t].item() == pytest.approx(policy, rel=1e-6), t
        assert terms.value[0, t].item() == pytest.approx(value, rel=1e-6), t
        assert logp_leaf.grad[0, t].item() == pytest.approx(d_logp, rel=1e-6, abs=1e-9), t
        assert values_leaf.grad[0, t].item() == pytest.approx(0.5 * d_value, rel=1e-6, abs=1e-9), t
    assert terms.clipped.tolist() == [[False, True, False, False]]
    assert terms.value_clipped.tolist() == [[False, True, False, False]]


def test_masked_tokens_get_exactly_zero_gradient():
    generator = torch.Generator().manual_seed(0)
    shape = (2, 6)
    logp = (-torch.rand(shape, generator=generator)).requires_grad_(True)
    values = torch.randn(shape, generator=generator).requires_grad_(True)
    old = -torch.rand(shape, generator=generator)
    rewards = token_rewards(torch.tensor([1.0, 0.0]), KL * MASK, MASK, 0.1)
    old_values = torch.randn(shape, generator=generator) * MASK
    advantages, returns = masked_gae(rewards, old_values, MASK, 1.0, 0.95)
    terms = ppo_token_loss(logp, old, advantages, values, old_values, returns, PPOConfig(clip_eps=10, value_clip_eps=10))
    ((terms.loss * MASK).sum() / MASK.sum()).backward()
    assert (logp.grad[MASK == 0] == 0).all() and (values.grad[MASK == 0] == 0).all()
    assert (values.grad[MASK == 1] != 0).all()


def test_ppo_config_is_checked():
    with pytest.raises(ConfigError, match=r"ppo\.gae_lambda must be in \[0, 1\]"):
        load_config(None, ["mode=ppo", "ppo.gae_lambda=1.5"])
    with pytest.raises(ConfigError, match=r"ppo\.reference: 'base' is the LoRA policy"):
        load_config(None, ["mode=ppo", "lora.enabled=false", "ppo.reference=base"])


# --- the update on a tiny real model ------------------------------------------------------------------------


def _episodes(vocab, generator, tool_at_end=3):
    """Four episodes: prompt, policy, tool, policy, and a closing tool segment of ``tool_at_end`` tokens."""
    episodes = []
    for i, (prompt, policy1, tool, policy2) in enumerate([(5, 4, 3, 2), (5, 3, 4, 4), (6, 2, 0, 0), (6, 5, 2, 1)]):
        ids = torch.randint(3, vocab, (prompt + policy1 + tool + policy2 + tool_at_end,), generator=generator).tolist()
        mask = [0] * prompt + [1] * policy1 + [0] * tool + [1] * policy2 + [0] * tool_at_end
        episodes.append(Episode.from_tokens(ids, mask, reward=float(i % 2), group=i))
    return episodes


def _update(tokenizer, episodes, config, lr=0.0):
    model = tiny_random_model(tokenizer)
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=lr)
    grads = {}
    original = optimizer.step

    def capture():
        named = [*model.named_parameters(), *(("head." + n, p) for n, p in head.named_parameters())]
        grads.update({n: p.grad.clone() for n, p in named if p.grad is not None})
        original()

    optimizer.step = capture
    metrics = ppo_update(model, head, optimizer, episodes, config, tokenizer.pad_token_id,
                         reference_model=tiny_random_model(tokenizer), max_grad_norm=None)
    return metrics, grads


def test_tool_tokens_get_no_loss(tokenizer):
    """Tool output that closes each episode conditions no policy token: new ids there must leave
    the gradient (policy and value head) exactly as it was."""
    generator = torch.Generator().manual_seed(1)
    episodes = _episodes(len(tokenizer), generator)
    changed = []
    for e in episodes:
        ids = list(e.token_ids)
        ids[-3:] = torch.randint(3, len(tokenizer), (3,), generator=generator).tolist()
        changed.append(Episode.from_tokens(ids, e.policy_mask, e.reward, e.group))
    config = PPOConfig(epochs=1, micro_batch_size=4)
    _, grads = _update(tokenizer, episodes, config)
    _, changed_grads = _update(tokenizer, changed, config)
    assert grads["head.linear.weight"].abs().sum() > 0
    for name, grad in grads.items():
        assert torch.equal(grad, changed_grads[name]), name


def test_micro_batches_accumulate_to_the_full_batch_gradient(tokenizer):
    episodes = _episodes(len(tokenizer), torch.Generator().manual_seed(2))
    _, one = _update(tokenizer, episodes, PPOConfig(epochs=1, micro_batch_size=1))
    _, all_at_once = _update(tokenizer, episodes, PPOConfig(epochs=1, micro_batch_size=4))
    for name, grad in one.items():
        # Equal up to float round-off of the summation order, which differs between CPUs: an absolute
        # tolerance of 1e-7 failed on 6 of 3 M embedding entries on an AMD EPYC (8.8e-7 apart).
        scale = all_at_once[name].abs().max().item()
        torch.testing.assert_close(grad, all_at_once[name], rtol=1e-4, atol=1e-5 * scale)


def test_first_update_logs_the_critic_and_advantage_statistics(tokenizer):
    episodes = _episodes(len(tokenizer), torch.Generator().manual_seed(3))
    metrics, _ = _update(tokenizer, episodes, PPOConfig(epochs=2, minibatch_size=2), lr=1e-3)
    # The reference is the same random model: KL 0, so the rewards are the scores alone.
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["update/optimizer_steps"] == 4
    assert metrics["update/policy_tokens"] == sum(sum(e.policy_mask) for e in episodes)
    for key in ("loss/value", "value/explained_variance", "advantage/mean", "advantage/std", "advantage/min",
                "advantage/max", "returns/mean", "clip_fraction", "clip_fraction/value", "entropy"):
        assert math.isfinite(metrics[key]), key
    assert metrics["ratio/mean"] != 1.0  # the second minibatch saw moved weights


def test_the_value_head_learns_the_returns(tokenizer):
    model = tiny_random_model(tokenizer)
    head = ValueHead(model.config.hidden_size)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": 0.0},
                                   {"params": list(head.parameters()), "lr": 3e-2}])
    episodes = _episodes(len(tokenizer), torch.Generator().manual_seed(4))
    config = PPOConfig(kl_coef=0.0, epochs=4, gae_lambda=1.0)
    first = ppo_update(model, head, optimizer, episodes, config, tokenizer.pad_token_id)
    for _ in range(4):
        last = ppo_update(model, head, optimizer, episodes, config, tokenizer.pad_token_id)
    assert first["value/explained_variance"] == pytest.approx(0.0, abs=1e-6)  # V = 0 at the start
    assert last["value/explained_variance"] > 0.5
    assert last["loss/value"] < first["loss/value"] / 2
