"""PPO with a learned value function and GAE: the loss and one update step, read top to bottom.

The InstructGPT recipe (Ouyang et al. 2022, §3.5; Ziegler et al. 2019, §2.2) on multi-turn
episodes. The actions are the policy's tokens: with m_t = 1 on the tokens the policy generated and
0 on prompt, tool output and padding (``Trajectory.policy_mask``), an episode's policy tokens are
a_1 … a_n at positions t_1 < … < t_n, and s_k is everything before t_k (tool results included).
V(s_k) is the value head on the hidden state at t_k − 1: the state the token a_k is sampled from.
R is the episode's reward from the environment::

    KL_k   = log π_old(a_k) − log π_ref(a_k)                  the sampled token's log-ratio
    r_k    = −β KL_k + [k = n] R                              InstructGPT's per-token KL penalty;
                                                              R at the last policy token
    δ_k    = r_k + γ V_old(s_{k+1}) − V_old(s_k)              V_old(s_{n+1}) = 0
    A_k    = δ_k + γλ A_{k+1}                                 GAE (Schulman et al. 2016, eq. 16),
                                                              A_{n+1} = 0
    G_k    = A_k + V_old(s_k)                                 the value target
    A_k    ← (A_k − mean A) / (std A + eps)                   over the batch's policy tokens, if
                                                              ``whiten_advantages``

The TD chain runs over policy tokens only: k + 1 is the next token the policy wrote, even with a
tool's output between them. Tool tokens are the environment's, not actions: they have no reward,
no value, no advantage and no loss; the value after a tool result is V(s_{k+1}), read where the
policy resumes. Then, per policy token::

    ρ_k     = exp(log π_θ(a_k) − log π_old(a_k))
    ℓ^π_k   = −min(ρ_k A_k, clip(ρ_k, 1 − ε, 1 + ε) A_k)                   (Schulman et al. 2017, eq. 7)
    V^c_k   = V_old(s_k) + clip(V_θ(s_k) − V_old(s_k), −ε_v, ε_v)          value clipping
    ℓ^V_k   = ½ max((V_θ(s_k) − G_k)², (V^c_k − G_k)²)
    L       = Σ_{i,k} m (ℓ^π + c_v ℓ^V) / Σ_{i,k} m                       token mean over a minibatch

**The value head** is one linear layer, ``hidden_size → 1``, initialised to 0, on the policy's own
last hidden state (the one its output projection reads), so values and log-probs come from one
forward pass. InstructGPT and Stiennon et al. (2020) instead train a separate value model
initialised from their reward model; we have no reward model (the reward is a verifier), and a
second network would double the forward and backward passes of every update, which is what limits
RL on a CPU here (the update takes most of a step's time). The price of sharing is that the value loss also moves the
backbone (or the LoRA adapter), which ``value_coef`` (c_v) scales; the head has its own learning
rate (``value_lr``), because a fresh head at a LoRA learning rate would barely move. It is saved
in each checkpoint as ``value_head.safetensors``.

π_ref (β > 0) is, as in DPO, ``start``: a frozen copy of the policy PPO starts from (the SFT model,
as InstructGPT's), or with LoRA ``base``: the adapter disabled. β = 0 skips the reference pass.

One update (``ppo_update``): log π_old, V_old (and log π_ref) once, without gradients, in eval
mode; rewards, GAE, returns; then μ epochs over the batch in shuffled minibatches, each one
optimizer step, each split into micro-batches whose gradients accumulate to exactly the
minibatch's loss; gradient-norm clipping over the policy and the head (the shared ``optimize``);
the loop sets the learning rate once a step. Log-probs are at the sampling temperature, as GRPO's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agentenv.trainers.algorithms.logprobs import (
    REFERENCES,
    PaddedBatch,
    batch_logprobs,
    decoder_and_head,
    engine_logprob_gap,
    masked_logprobs,
    micro_batches,
    pad_episodes,
    reference_context,
)
from agentenv.trainers.algorithms.registry import Algorithm, UpdateInputs, register
from agentenv.trainers.algorithms.update import optimize, trainable_parameters, trained_stats
from agentenv.trajectory import Episode


@dataclass(frozen=True)
class PPOConfig:
    """YAML section ``ppo`` (``mode: ppo``)."""

    questions_per_step: int = 8  # B
    samples_per_question: int = 1  # no groups are needed: the value function is the baseline
    gamma: float = 1.0  # γ
    gae_lambda: float = 0.95  # λ
    kl_coef: float = 0.02  # β of the per-token penalty (InstructGPT's value); 0 skips the reference
    reference: str = "start"  # start: a frozen copy of the starting policy | base: LoRA adapter disabled
    clip_eps: float = 0.2  # ε
    value_clip_eps: float = 0.2  # ε_v
    value_coef: float = 0.5  # c_v
    value_lr: float | None = None  # the head's learning rate; None: optim.lr
    whiten_advantages: bool = True
    advantage_eps: float = 1e-8
    epochs: int = 2  # μ
    minibatch_size: int | None = None  # sequences per optimizer step; None: the whole batch
    micro_batch_size: int = 4  # sequences per forward pass

    def validate(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"ppo.reference must be one of {list(REFERENCES)}, got {self.reference!r}")
        for name in ("questions_per_step", "samples_per_question", "epochs", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"ppo.minibatch_size must be at least 1 or null, got {self.minibatch_size!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"ppo.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("kl_coef", "clip_eps", "value_clip_eps", "value_coef", "advantage_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"ppo.{name} must be ≥ 0, got {getattr(self, name)!r}")
        if self.value_lr is not None and self.value_lr <= 0:
            raise ValueError(f"ppo.value_lr must be positive or null, got {self.value_lr!r}")


class ValueHead(torch.nn.Module):
    """V(s): ``hidden_size → 1`` on the policy's last hidden state, 0 at the start."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


def logprobs_and_values(
    model: torch.nn.Module,
    value_head: ValueHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    temperature: float,
    target_mask: torch.Tensor,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """log π(a_t), V(s_t) and (optionally) the entropy at target positions ``start … T−1`` from one
    forward pass, each ``[n, T − start]`` and 0 where ``target_mask`` is 0."""
    parts = decoder_and_head(model)
    if parts is None:
        raise ValueError(
            "ppo: the value head reads the policy's last hidden state, and this model does not expose "
            "its body and output projection separately (or changes logits after the projection)"
        )
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logp, entropy = masked_logprobs(head, hidden, input_ids, start, temperature, target_mask, with_entropy)
    # The hidden state at t−1 is the state token t is sampled from.
    values = value_head(hidden[:, start - 1 : -1]).float() * target_mask
    return logp, values, entropy


# --- rewards and advantages ----------------------------------------------------------------------------


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r ``[n, T]``: −β KL on every policy token, plus the episode's score on its last one."""
    rewards = -kl_coef * kl * mask
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).max(dim=1).values
    has_policy = last >= 0
    rows = torch.arange(mask.shape[0])[has_policy]
    rewards[rows, last[has_policy]] += scores[has_policy].to(rewards.dtype)
    return rewards


def masked_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G) ``[n, T]`` by GAE over the positions where ``mask`` is 1, walking back from the end:
    a masked position passes the next policy token's value and advantage through unchanged, so the
    TD chain skips it; A and G are 0 there."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    next_advantage = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[1])):
        is_action = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(is_action, advantage, 0.0)
        next_value = torch.where(is_action, values[:, t], next_value)
        next_advantage = torch.where(is_action, advantage, next_advantage)
    returns = (advantages + values) * mask
    return advantages, returns


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    selected = x[mask > 0]
    if selected.numel() < 2:
        return (selected.mean().item() if selected.numel() else 0.0), 0.0
    return selected.mean().item(), selected.std().item()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[G − V] / Var[G] over policy tokens: 1 for a perfect critic, ≤ 0 for a useless one."""
    target, error = returns[mask > 0], (returns - values)[mask > 0]
    variance = target.var(unbiased=False).item() if target.numel() else 0.0
    return float("nan") if variance == 0 else 1.0 - error.var(unbiased=False).item() / variance


# --- the per-token objective ---------------------------------------------------------------------------


@dataclass
class PPOTokenLoss:
    """The per-token terms, each ``[n, T]``."""

    loss: torch.Tensor  # ℓ^π + c_v ℓ^V
    policy: torch.Tensor  # ℓ^π
    value: torch.Tensor  # ℓ^V
    ratio: torch.Tensor  # ρ
    clipped: torch.Tensor  # the clip, not ρ, sets ℓ^π
    value_clipped: torch.Tensor  # the clipped value's error is the larger


def ppo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    config: PPOConfig,
) -> PPOTokenLoss:
    """ℓ per token for per-token log-probs, advantages, values and returns ``[n, T]``."""
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = torch.clamp(ratio, 1 - config.clip_eps, 1 + config.clip_eps)
    policy = -torch.min(ratio * advantages, clipped_ratio * advantages)
    clipped_values = old_values + torch.clamp(values - old_values, -config.value_clip_eps, config.value_clip_eps)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped_values - returns) ** 2
    value = 0.5 * torch.max(unclipped_error, clipped_error)
    return PPOTokenLoss(
        loss=policy + config.value_coef * value,
        policy=policy,
        value=value,
        ratio=ratio.detach(),
        clipped=(clipped_ratio * advantages < ratio * advantages).detach(),
        value_clipped=(clipped_error > unclipped_error).detach(),
    )


# --- one update ------------------------------------------------------------------------------------------


def _old_logprobs_and_values(model, value_head, batch: PaddedBatch, micro_batch_size: int, temperature: float):
    shape = (len(batch), batch.input_ids.shape[1] - batch.start)
    old_logp, old_values = torch.zeros(shape), torch.zeros(shape)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for rows in micro_batches(torch.arange(len(batch)), batch.lengths, micro_batch_size):
            width = int(batch.lengths[rows].max())
            logp, values, _ = logprobs_and_values(
                model, value_head, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start,
                temperature, batch.targets_mask(rows, width),
            )
            old_logp[rows, : width - batch.start] = logp.float()
            old_values[rows, : width - batch.start] = values
    model.train(was_training)
    return old_logp, old_values


def ppo_update(
    model: torch.nn.Module,
    value_head: ValueHead,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    config: PPOConfig,
    pad_id: int,
    reference_model: torch.nn.Module | None = None,
    max_grad_norm: float | None = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One PPO update on a batch of episodes; returns its metrics."""
    config.validate()
    if not any(any(e.policy_mask) for e in episodes):
        return {"update/skipped": 1.0}
    batch = pad_episodes(episodes, pad_id)
    mask = batch.targets_mask(torch.arange(len(batch)), batch.input_ids.shape[1])
    old_logp, old_values = _old_logprobs_and_values(model, value_head, batch, config.micro_batch_size, temperature)
    kl = torch.zeros_like(old_logp)
    if config.kl_coef > 0:
        ref_module, ref_ctx = reference_context(model, reference_model)
        with ref_ctx:
            kl = (old_logp - batch_logprobs(ref_module, batch, config.micro_batch_size, temperature)) * mask
    scores = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    rewards = token_rewards(scores, kl, mask, config.kl_coef)
    advantages, returns = masked_gae(rewards, old_values, mask, config.gamma, config.gae_lambda)
    advantage_mean, advantage_std = masked_mean_std(advantages, mask)
    metrics = {
        "advantage/mean": advantage_mean,
        "advantage/std": advantage_std,
        "advantage/max": advantages[mask > 0].max().item(),
        "advantage/min": advantages[mask > 0].min().item(),
        "returns/mean": masked_mean_std(returns, mask)[0],
        "value/mean": masked_mean_std(old_values, mask)[0],
        "value/explained_variance": explained_variance(old_values, returns, mask),
        "kl": (kl * mask).sum().item() / mask.sum().item(),
        "reward/kl_penalty": (-config.kl_coef * kl * mask).sum().item() / len(batch),
    }
    if config.whiten_advantages:
        advantages = (advantages - advantage_mean) / (advantage_std + config.advantage_eps) * mask

    model.train()
    sums = defaultdict(float)

    def micro_loss(epoch: int, minibatch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        num_tokens = batch.targets_mask(minibatch, int(batch.lengths[minibatch].max())).sum().item()
        width = int(batch.lengths[rows].max())
        columns = width - batch.start
        rows_mask = batch.targets_mask(rows, width)
        logp, values, entropy = logprobs_and_values(
            model, value_head, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start,
            temperature, rows_mask, with_entropy=epoch == 0,
        )
        terms = ppo_token_loss(
            logp, old_logp[rows, :columns], advantages[rows, :columns], values, old_values[rows, :columns],
            returns[rows, :columns], config,
        )
        sums["policy_loss"] += (terms.policy * rows_mask).sum().item()
        sums["value_loss"] += (terms.value * rows_mask).sum().item()
        sums["clip"] += (terms.clipped * rows_mask).sum().item()
        sums["value_clip"] += (terms.value_clipped * rows_mask).sum().item()
        sums["tokens"] += rows_mask.sum().item()
        if epoch == 0:
            sums["first_epoch_tokens"] += rows_mask.sum().item()
            sums["entropy"] += (entropy * rows_mask).sum().item()
            sums["ratio"] += (terms.ratio * rows_mask).sum().item()
        return (terms.loss * rows_mask).sum() / max(num_tokens, 1.0)

    update = optimize(
        optimizer, trainable_parameters(model, value_head), len(batch),
        lambda minibatch: micro_batches(minibatch, batch.lengths, config.micro_batch_size), micro_loss,
        epochs=config.epochs, minibatch_size=config.minibatch_size, max_grad_norm=max_grad_norm, generator=generator,
    )
    tokens, all_tokens = max(sums["first_epoch_tokens"], 1.0), max(sums["tokens"], 1.0)
    metrics.update(
        {
            **update,
            "loss/policy": sums["policy_loss"] / all_tokens,
            "loss/value": sums["value_loss"] / all_tokens,
            "clip_fraction": sums["clip"] / all_tokens,
            "clip_fraction/value": sums["value_clip"] / all_tokens,
            "entropy": sums["entropy"] / tokens,
            "ratio/mean": sums["ratio"] / tokens,
            **trained_stats(sums["first_epoch_tokens"], len(batch), sum(len(e.token_ids) for e in episodes)),
        }
    )
    # logπ_old is the trainer's own pass before the update: the engine-vs-trainer gap (health.py).
    gap = engine_logprob_gap(episodes, batch, old_logp)
    if gap is not None:
        metrics.update(gap.metrics(episodes))
    return metrics


def _update(inputs: UpdateInputs, config: PPOConfig) -> dict[str, float]:
    return ppo_update(
        inputs.model, inputs.modules["value_head"], inputs.optimizer, inputs.episodes, config, inputs.pad_id,
        reference_model=inputs.reference_model,
        max_grad_norm=inputs.max_grad_norm,
        temperature=inputs.temperature,
        generator=inputs.generator,
    )


register(Algorithm(
    name="ppo",
    config_class=PPOConfig,
    update=_update,
    rollout_shape=lambda config: (config.questions_per_step, config.samples_per_question),
    reference_copy=lambda config, lora_enabled: config.kl_coef > 0 and config.reference == "start",
    trained_modules=lambda config, hidden_size: {"value_head": (ValueHead(hidden_size), config.value_lr)},
))
