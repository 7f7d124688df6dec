"""RLOO: REINFORCE with a leave-one-out baseline, read top to bottom.

Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs", §3.2; TRL's ``RLOOTrainer``): the whole completion is one action, and the
baseline of a sample is the mean reward of the other samples of its question. For a question the
policy samples k trajectories o_1 … o_k (π_old: the weights that did the rollout) with rewards
r_1 … r_k. With m_{i,t} = 1 on the tokens the policy generated and 0 on prompt, tool output and
padding (``Trajectory.policy_mask``)::

    KL_i      = Σ_t m_{i,t} (log π_old(o_{i,t}) − log π_ref(o_{i,t}))   the sequence's KL estimate
                                                                      (k1), 0 when β = 0
    R_i       = r_i − β KL_i                                          the KL penalty in the reward,
                                                                      as Ahmadian et al. and TRL
    b_i       = (1 / (k − 1)) Σ_{j≠i} R_j                             leave-one-out baseline (eq. 4)
    A_i       = R_i − b_i                                             = k/(k−1) (R_i − mean_j R_j)
    A_i       ← A_i / (std(A) + eps)                                  over the batch, if
                                                                      ``normalize_advantages``
    ρ_{i,t}   = exp(log π_θ(o_{i,t}) − log π_old(o_{i,t}))
    ℓ_i       = − Σ_t m_{i,t} min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε, 1 + ε) A_i)
    L         = (1/N) Σ_i ℓ_i                                         N sequences in the minibatch

The sum over a sequence's tokens (not their mean) is REINFORCE's log-probability of the whole
completion. With one epoch and one minibatch (the default) π_θ = π_old when the loss is computed,
ρ = 1, and ∇L = −(1/N) Σ_i A_i ∇ log π_θ(o_i): plain REINFORCE with the leave-one-out baseline.
More epochs or minibatches make later optimizer steps off the policy; the clipped ratio (PPO's)
then keeps them near π_old, as TRL's RLOO does. Log-probs are at the sampling temperature.

How it differs from GRPO (trainers/algorithms/grpo.py) on the same groups: the advantage is the
group-centred reward scaled by k/(k−1), never divided by the group's std; and the loss sums over a
sequence's tokens, so a longer completion is not down-weighted per token.

One update (``rloo_update``): log π_old (and log π_ref for β > 0) once, without gradients; the
advantages; then the shared ``optimize`` (trainers/algorithms/update.py): μ epochs of shuffled
minibatches, micro-batches whose gradients accumulate, gradient-norm clipping, one optimizer step
per minibatch. A sample with A_i = 0 (every sample of a question whose rewards are all equal) adds
exactly 0 to ℓ whatever ρ is, so it gets no forward or backward pass; N still counts it, so the
loss and its gradient are the formula's. On the geo agent about half the groups are all-equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agentenv.trainers.algorithms.logprobs import (
    batch_logprobs,
    engine_logprob_gap,
    micro_batches,
    pad_episodes,
    reference_context,
    token_logprobs,
)
from agentenv.trainers.algorithms.registry import Algorithm, UpdateInputs, register
from agentenv.trainers.algorithms.update import (
    advantage_stats,
    optimize,
    trainable_parameters,
    trained_stats,
)
from agentenv.trajectory import Episode


@dataclass(frozen=True)
class RLOOConfig:
    """YAML section ``rloo`` (``mode: rloo``)."""

    questions_per_step: int = 4  # B
    samples_per_question: int = 4  # k: the leave-one-out baseline needs at least 2
    kl_coef: float = 0.0  # β of the KL penalty in the reward; 0 skips the reference pass
    clip_eps: float = 0.2  # ε: only bites when an epoch or minibatch comes after the first step
    normalize_advantages: bool = False
    advantage_eps: float = 1e-8
    epochs: int = 1  # μ
    minibatch_size: int | None = None  # sequences per optimizer step; None: the whole batch
    micro_batch_size: int = 4  # sequences per forward pass

    def validate(self) -> None:
        if self.samples_per_question < 2:
            raise ValueError(
                f"rloo.samples_per_question must be at least 2, got {self.samples_per_question}: a sample's "
                "baseline is the mean reward of the other samples of its question"
            )
        for name in ("questions_per_step", "epochs", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"rloo.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"rloo.minibatch_size must be at least 1 or null, got {self.minibatch_size!r}")
        for name in ("kl_coef", "clip_eps", "advantage_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"rloo.{name} must be ≥ 0, got {getattr(self, name)!r}")


def leave_one_out_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_i = R_i − mean of the other rewards of i's group; 0 for a group of one."""
    rewards = rewards.to(torch.float32)
    advantages = torch.zeros_like(rewards)
    for group in group_ids.unique():
        members = group_ids == group
        k = int(members.sum())
        if k > 1:
            group_rewards = rewards[members]
            baseline = (group_rewards.sum() - group_rewards) / (k - 1)
            advantages[members] = group_rewards - baseline
    return advantages


def rloo_token_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """−min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) per token ``[n, T]`` for one advantage per sequence
    ``[n]``; and ρ (detached)."""
    A = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    loss = -torch.min(ratio * A, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * A)
    return loss, ratio.detach()


def rloo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    config: RLOOConfig,
    pad_id: int,
    reference_model: torch.nn.Module | None = None,
    max_grad_norm: float | None = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One RLOO update on a batch of episodes (the samples of a question share ``group``)."""
    config.validate()
    if not any(any(e.policy_mask) for e in episodes):
        return {"update/skipped": 1.0}
    batch = pad_episodes(episodes, pad_id)
    mask = batch.targets_mask(torch.arange(len(batch)), batch.input_ids.shape[1])
    single_pass = config.epochs == 1 and (config.minibatch_size or len(batch)) >= len(batch)
    old_logp = None if single_pass and config.kl_coef == 0 else batch_logprobs(
        model, batch, config.micro_batch_size, temperature
    )
    sequence_kl = torch.zeros(len(batch))
    if config.kl_coef > 0:
        ref_module, ref_ctx = reference_context(model, reference_model)
        with ref_ctx:
            ref_logp = batch_logprobs(ref_module, batch, config.micro_batch_size, temperature)
        sequence_kl = ((old_logp - ref_logp) * mask).sum(dim=1)
    scores = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    rewards = scores - config.kl_coef * sequence_kl
    advantages = leave_one_out_advantages(rewards, torch.tensor([e.group for e in episodes]))
    metrics = {
        **advantage_stats(advantages),
        "kl": sequence_kl.sum().item() / max(mask.sum().item(), 1.0),
        "reward/kl_penalty": -config.kl_coef * sequence_kl.mean().item(),
    }
    if config.normalize_advantages and len(episodes) > 1:
        advantages = advantages / (advantages.std() + config.advantage_eps)
    live = advantages != 0  # the samples whose ℓ_i can be other than 0
    if not live.any():
        return {**metrics, "update/skipped": 1.0}

    model.train()
    sums = {"tokens": 0.0, "ratio": 0.0, "entropy": 0.0}
    # The trainer's logπ before the update, for the engine-vs-trainer gap (health.py checks it):
    # logπ_old where it was computed, else read from the first epoch's forward passes, which
    # skip the samples with no advantage.
    trainer_logp = old_logp if old_logp is not None else torch.zeros(len(batch), batch.input_ids.shape[1] - batch.start)

    def micro_loss(epoch: int, minibatch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        width = int(batch.lengths[rows].max())
        rows_mask = batch.targets_mask(rows, width)
        logp, entropy = token_logprobs(
            model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start, temperature,
            with_entropy=epoch == 0, target_mask=rows_mask,
        )
        old = logp.detach() if old_logp is None else old_logp[rows, : width - batch.start]
        if epoch == 0 and old_logp is None:
            trainer_logp[rows, : width - batch.start] = logp.detach().float()
        token_loss, ratio = rloo_token_loss(logp, old, advantages[rows], config.clip_eps)
        if epoch == 0:
            sums["tokens"] += rows_mask.sum().item()
            sums["ratio"] += (ratio * rows_mask).sum().item()
            sums["entropy"] += (entropy * rows_mask).sum().item()
        return (token_loss * rows_mask).sum() / len(minibatch)

    def split(minibatch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = minibatch[live[minibatch]]
        return micro_batches(rows, batch.lengths, config.micro_batch_size) if len(rows) else ()

    update = optimize(
        optimizer, trainable_parameters(model), len(batch), split, micro_loss,
        epochs=config.epochs, minibatch_size=config.minibatch_size, max_grad_norm=max_grad_norm, generator=generator,
    )
    tokens = max(sums["tokens"], 1.0)
    forwarded_tokens = sum(len(e.token_ids) for e, alive in zip(episodes, live.tolist(), strict=True) if alive)
    metrics.update(
        {
            **update,
            "ratio/mean": sums["ratio"] / tokens,
            "entropy": sums["entropy"] / tokens,
            **trained_stats(sums["tokens"], int(live.sum()), forwarded_tokens),
        }
    )
    read = None if old_logp is not None else live.nonzero().flatten().tolist()
    gap = engine_logprob_gap(episodes, batch, trainer_logp, rows=read)
    if gap is not None:
        metrics.update(gap.metrics(episodes))
    return metrics


def _update(inputs: UpdateInputs, config: RLOOConfig) -> dict[str, float]:
    return rloo_update(
        inputs.model, inputs.optimizer, inputs.episodes, config, inputs.pad_id,
        reference_model=inputs.reference_model,
        max_grad_norm=inputs.max_grad_norm,
        temperature=inputs.temperature,
        generator=inputs.generator,
    )


register(Algorithm(
    name="rloo",
    config_class=RLOOConfig,
    update=_update,
    rollout_shape=lambda config: (config.questions_per_step, config.samples_per_question),
    reference_copy=lambda config, lora_enabled: not lora_enabled and config.kl_coef > 0,
))
