"""GRPO: the loss and one update step, read top to bottom.

For a question q the policy samples a group of G trajectories o_1 … o_G from π_old (the weights
that did the rollout) and each gets a scalar reward r_i. With m_{i,t} = 1 on the tokens the
policy generated and 0 on prompt, tool output and padding (``Trajectory.policy_mask``)::

    A_i        = r_i − mean(r_1 … r_G)                  group advantage (Shao et al. 2024, §4.1.2)
    A_i        = A_i / (std(r_1 … r_G) + eps)           if ``scale_advantages_by_std`` (Dr. GRPO
                                                        drops this; Liu et al. 2025, §3.1)
    A_{i,t}    = A_i + P_{i,t}                          P: process rewards (agentenv/process_rewards.py),
                                                        P_{i,t} = c_{i,k(t)}, the weighted credit of the
                                                        turn k(t) that token t was generated in; P = 0
                                                        without them, and then A_{i,t} = A_i
    ρ_{i,t}    = exp(logπ_θ(o_{i,t}) − logπ_old(o_{i,t}))
    ℓ^clip_i,t = −min(ρ_{i,t} A_{i,t}, clip(ρ_{i,t}, 1 − eps_low, 1 + eps_high) A_{i,t})
                                                        separate bounds: DAPO's clip-higher
                                                        (Yu et al. 2025, §3.1)
    KL_{i,t}   = exp(logπ_ref − logπ_θ) − (logπ_ref − logπ_θ) − 1
                                                        the k3 estimator (Schulman 2020), ≥ 0
    w_{i,t}    = min(exp(logπ_old(o_{i,t}) − e_{i,t}), C)   truncated importance sampling (below);
                                                        w = 1 without it
    ℓ_{i,t}    = w_{i,t} ℓ^clip_{i,t} + β KL_{i,t}

and the loss aggregates ℓ over the policy tokens (``loss_agg``), with N sequences in the batch::

    token-mean               Σ_{i,t} m ℓ / Σ_{i,t} m                     DAPO (§3.3)
    seq-mean-token-mean      (1/N) Σ_i [ Σ_t m ℓ / Σ_t m ]               GRPO paper (eq. 3)
    seq-mean-token-sum-norm  (1/N) Σ_i [ Σ_t m ℓ / L_max ]               Dr. GRPO (§3.1; L_max is
                                                                         the max response length)

β = 0 skips the reference forward pass entirely. The reference is, for full fine-tuning, a frozen
copy of the policy GRPO starts from (after any SFT warm start, as InstructGPT's reference is its SFT
model); with LoRA, ``reference: base`` (the default) is the policy with its adapter disabled (no
second copy), i.e. the base model before any LoRA warm start, and ``reference: start`` a frozen copy
of the policy GRPO starts from, SFT adapter included: the leash that holds a LoRA run near the SFT
agent it started from (``init_from``) rather than near the model before SFT.

One update (``grpo_update``): compute advantages; optionally drop groups whose rewards are all
equal (their advantages are zero; DAPO's dynamic sampling, §3.2); compute logπ_old and logπ_ref
once; then μ epochs over the batch in shuffled minibatches, each one optimizer step, each split
into micro-batches whose gradients accumulate to exactly the minibatch's loss; gradient-norm
clipping (the shared ``optimize`` of trainers/algorithms/update.py); the loop sets the learning rate
once a step.

Dynamic sampling with a fixed over-draw (``oversample`` = k > 1). DAPO keeps sampling until the
batch holds B groups with different rewards; here a step rolls out ⌈k·B⌉ questions once and the
update keeps the first B groups (in question order) whose rewards differ, or all of them when
fewer differ (``groups/trained``). One rollout per step keeps the step's time bounded; the
rollout is the cheap part of a step on this machine (vLLM: ~13 s of ~58 s at B 16 × G 4), and
the update costs what it cost before, now spent on groups that carry a gradient. Advantages are
computed within each group, so dropping whole groups changes no kept advantage.

Per-token log-probabilities come from one forward pass over the right-padded batch; the logits at
position t−1 score token t, and the vocabulary projection runs only where m = 1 (the loss reads
nothing else). With μ = 1 and one minibatch, π_θ = π_old when the loss is computed,
so logπ_old is the current logπ_θ detached (ρ = 1, the gradient is the policy gradient) and no
extra forward pass is made. On-policy, the engine's logprobs are not used as logπ_old: vLLM and
transformers numerics differ, so their mean gap to the trainer's logπ_old is logged instead.

The shared prefix (``shared_prefix``). The G members of a group start with the same prompt. Each
micro-batch then holds members of one group (chunks of ``micro_batch_size`` of it), and the first
P tokens all its n rows have in common (read from the tokens; P < the shortest row) run through the
model once, at batch size 1, leaving their keys and values in a cache; the cache is repeated to the
n rows and each row's suffix runs on top of it at positions P … T−1, right-padded. Attention is
causal, so the hidden states at positions < P depend on those tokens alone and are the same in
every row: the values are the per-row pass's, and the prefix's last hidden state still scores the
first suffix token. The gradient is the same too: per row, each of the n copies of the prefix
passes its row's gradient into the shared weights, which sum them; here the repeat's backward sums
the n rows' gradients into the one prefix first, and the prefix passes the sum on (equal up to
float round-off, as any change of summation order). The body then runs P + Σ_i S_i tokens instead
of n·P + Σ_i S_i (S_i: row i's suffix), forward and backward: with the geo env's ~150-token prompts
in ~400-token episodes, about a quarter fewer at n = 4. The keys and values are still one copy per
row (each layer concatenates them with the row's own), and the suffix tokens still attend to the
prefix. Under gradient checkpointing in training (``model.gradient_checkpointing``) the
checkpointed layers drop the cache, so the rows run whole there. With dropout > 0 the n rows would
share the prefix's dropout mask: the same expected gradient, not the same one.

One step off the policy (``rollout.off_policy_steps: 1``, ``behaviour_logprobs=True``). The rollout
workers sample step k+1's batch while the trainer updates on step k's, so the batch an update at
weights θ_k trains on was sampled by π_behav = π_{θ_{k−1}}, one update older. Then::

    logπ_old(o_{i,t}) = logπ_behav(o_{i,t}) = e_{i,t}    the engine's logprob of the sampled token,
                                                          under the distribution it sampled from
                                                          (temperature applied: engines.py's
                                                          "processed" logprobs)
    ρ_{i,t}           = exp(logπ_θ(o_{i,t}) − e_{i,t})    ≠ 1 at the first step of the update

and ℓ^clip, the aggregation and everything else are as above: PPO's ratio against the policy that
sampled, so the clip holds π_θ within [1 − eps_low, 1 + eps_high] of π_behav, over the one update of
staleness as well as this update's own step. Why the engine's logprobs and not the trainer's
recomputation under θ_{k−1}: they are the behaviour distribution itself, with no copy of θ_{k−1}
kept in the trainer and no extra forward pass; and they stay right when a restarted worker redid
some episodes under the newer weights it was loaded with, which only the engine that sampled knows.
The cost is that the engine–trainer numerics gap enters ρ: measured at ~1e-6 mean |Δ logp| on this
CPU (float32 on both sides; bench/RESULTS.md); with bf16 on a GPU it is larger, and
``logprob_gap/engine_vs_trainer`` (here: staleness plus numerics) shows it. top_p < 1 would make
π_behav a truncated distribution that π_θ is not, so the config refuses it with this mode.

Truncated importance sampling (``truncated_is``; Yao et al. 2025's TIS, TRL's and verl's vLLM
correction). The engine samples o_{i,t} with its own numerics, e_{i,t} = its logprob of the token,
while the loss's ρ is taken against the trainer's logπ_old: when the engine computes in a lower
precision than the trainer (bf16 vLLM beside fp32 training), the batch is not quite π_old's, and
each token's clipped term is reweighted by the ratio of the two, capped at C (``truncated_is_cap``)
so that a token the engine found far likelier than the trainer does cannot dominate; w carries no
gradient. ``"auto"`` turns it on where ``engine.dtype`` is of lower precision than ``model.dtype``;
off-policy (logπ_old = e) every w is 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from agentenv.trainers.algorithms.logprobs import (
    REFERENCES,
    PaddedBatch,
    batch_logprobs,
    engine_logprob_gap,
    engine_logprob_matrix,
    group_micro_batches,
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

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
TRUNCATED_IS = ("auto", "on", "off")


@dataclass(frozen=True)
class GRPOConfig:
    """The knobs of the objective and of the update (YAML section ``grpo``)."""

    questions_per_step: int = 4  # B: questions sampled per training step
    group_size: int = 4  # G: trajectories per question
    scale_advantages_by_std: bool = True  # GRPO divides by the group std; Dr. GRPO does not
    advantage_eps: float = 1e-6
    filter_equal_reward_groups: bool = False  # DAPO dynamic sampling
    # > 1: roll out ⌈oversample · B⌉ questions and train on the first B groups whose rewards
    # differ (the module docstring's "dynamic sampling with a fixed over-draw").
    oversample: float = 1.0
    clip_eps_low: float = 0.2  # PPO's ε (Schulman et al. 2017)
    clip_eps_high: float = 0.2  # DAPO's clip-higher uses 0.28
    kl_beta: float = 0.0  # β; 0 skips the reference model
    # With LoRA, what the KL is to: "base" (the adapter disabled) or "start" (a frozen copy of the
    # policy GRPO starts from). Full fine-tuning always uses "start".
    reference: str = "base"
    loss_agg: str = "token-mean"
    max_response_tokens: int | None = None  # L_max of Dr. GRPO; None: the env's token budget
    epochs: int = 1  # μ: passes over each batch
    minibatch_size: int | None = None  # sequences per optimizer step; None: the whole batch
    micro_batch_size: int = 4  # sequences per forward pass (gradient accumulation)
    # False: the update without the lean path — the vocabulary projection at every position
    # after the shortest prompt and micro-batches in batch order. The same loss and gradients;
    # kept so bench/update.py can measure both paths in one run.
    lean_update: bool = True
    # True: micro-batches of one group each, whose shared prompt runs once (the module docstring's
    # "shared prefix"). The same loss and gradients.
    shared_prefix: bool = False
    # Truncated importance sampling (the module docstring's w): "auto" (on where the engine computes
    # in a lower precision than the trainer), "on" or "off"; C, the cap of the weight.
    truncated_is: str = "auto"
    truncated_is_cap: float = 2.0

    @property
    def rollout_questions(self) -> int:
        """Questions one step rolls out: B, or ⌈oversample · B⌉ under dynamic sampling."""
        return math.ceil(self.oversample * self.questions_per_step - 1e-9)

    def validate(self) -> None:
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"grpo.loss_agg must be one of {list(LOSS_AGGREGATIONS)}, got {self.loss_agg!r}")
        if self.group_size < 2:
            raise ValueError(
                f"grpo.group_size must be at least 2, got {self.group_size}: an advantage is a reward minus "
                "the mean reward of its group, so with one trajectory per question every advantage is 0 "
                "and no step can learn"
            )
        for name in ("questions_per_step", "epochs", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"grpo.minibatch_size must be at least 1 or null, got {self.minibatch_size!r}")
        for name in ("clip_eps_low", "clip_eps_high", "kl_beta", "advantage_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"grpo.{name} must be ≥ 0, got {getattr(self, name)!r}")
        if self.clip_eps_low >= 1:
            raise ValueError(f"grpo.clip_eps_low must be below 1, got {self.clip_eps_low!r}")
        if not self.oversample >= 1:
            raise ValueError(
                f"grpo.oversample must be at least 1, got {self.oversample!r}: it is how many times B questions "
                "a step rolls out to find B groups whose rewards differ"
            )
        if self.reference not in REFERENCES:
            raise ValueError(f"grpo.reference must be one of {list(REFERENCES)}, got {self.reference!r}")
        if self.truncated_is not in TRUNCATED_IS:
            raise ValueError(f"grpo.truncated_is must be one of {list(TRUNCATED_IS)}, got {self.truncated_is!r}")
        if not self.truncated_is_cap >= 1:
            raise ValueError(f"grpo.truncated_is_cap must be at least 1, got {self.truncated_is_cap!r}")
        if self.shared_prefix and not self.lean_update:
            raise ValueError(
                "grpo.shared_prefix needs grpo.lean_update: true: the prefix runs through the model's body "
                "and the lean path's projection, which lean_update: false does not use"
            )


# --- advantages ----------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """A_i = r_i − mean(r_group), divided by (std(r_group) + eps) when ``scale_by_std``.

    The std is the unbiased sample std, as in the GRPO reference code (``torch.std``); a group of
    one has advantage 0.
    """
    rewards = rewards.to(torch.float32)
    advantages = torch.zeros_like(rewards)
    for group in group_ids.unique():
        members = group_ids == group
        group_rewards = rewards[members]
        centred = group_rewards - group_rewards.mean()
        if scale_by_std and group_rewards.numel() > 1:
            centred = centred / (group_rewards.std() + eps)
        advantages[members] = centred if group_rewards.numel() > 1 else 0.0
    return advantages


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """True for episodes whose group has at least two different rewards (DAPO dynamic sampling)."""
    keep = torch.zeros_like(group_ids, dtype=torch.bool)
    for group in group_ids.unique():
        members = group_ids == group
        keep[members] = bool(rewards[members].max() > rewards[members].min())
    return keep


def first_groups(keep: torch.Tensor, group_ids: torch.Tensor, limit: int) -> torch.Tensor:
    """``keep`` narrowed to the episodes of its first ``limit`` groups, in order of appearance."""
    chosen: list[int] = []
    for group in group_ids[keep].tolist():
        if group not in chosen and len(chosen) < limit:
            chosen.append(group)
    return keep & torch.isin(group_ids, torch.tensor(chosen, dtype=group_ids.dtype))


# --- the per-token objective ---------------------------------------------------------------------


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(π_θ ‖ π_ref) per token, k3 estimator: exp(ref − logp) − (ref − logp) − 1 (≥ 0, 0 iff equal)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def aggregate_loss(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float,
    num_sequences: int,
    max_response_tokens: int | None = None,
) -> torch.Tensor:
    """Aggregate per-token losses ``[n, T]`` over the tokens where ``mask`` is 1.

    ``num_tokens`` and ``num_sequences`` are counted over the whole minibatch, so calling this on
    each micro-batch and summing gives exactly the minibatch loss (gradient accumulation).
    """
    masked = token_loss * mask
    if mode == "token-mean":
        return masked.sum() / max(num_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).sum() / num_sequences
    if mode == "seq-mean-token-sum-norm":
        if not max_response_tokens:
            raise ValueError("loss_agg 'seq-mean-token-sum-norm' needs max_response_tokens (Dr. GRPO's L_max)")
        return masked.sum() / max_response_tokens / num_sequences
    raise ValueError(f"grpo.loss_agg must be one of {list(LOSS_AGGREGATIONS)}, got {mode!r}")


@dataclass
class TokenLoss:
    """The per-token terms of the objective, each ``[n, T]``."""

    loss: torch.Tensor  # ℓ = ℓ^clip + β KL
    ratio: torch.Tensor  # ρ
    kl: torch.Tensor  # KL (zeros when β = 0)
    clipped_low: torch.Tensor  # ρ < 1 − eps_low with A < 0: the clip, not ρ, sets the loss
    clipped_high: torch.Tensor  # ρ > 1 + eps_high with A > 0


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    ref_logp: torch.Tensor | None,
    config: GRPOConfig,
    is_weight: torch.Tensor | None = None,
) -> TokenLoss:
    """ℓ_{i,t} for log-probs ``[n, T]`` and one advantage per sequence ``[n]`` or per token ``[n, T]``;
    ``is_weight``: w_{i,t} of truncated importance sampling, or None (w = 1)."""
    A = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = torch.clamp(ratio, 1 - config.clip_eps_low, 1 + config.clip_eps_high)
    clip_loss = -torch.min(ratio * A, clipped_ratio * A)
    if is_weight is not None:
        clip_loss = is_weight * clip_loss
    if ref_logp is not None and config.kl_beta > 0:
        kl = k3_kl(logp, ref_logp)
        loss = clip_loss + config.kl_beta * kl
    else:
        kl = torch.zeros_like(logp)
        loss = clip_loss
    return TokenLoss(
        loss=loss,
        ratio=ratio.detach(),
        kl=kl.detach(),
        clipped_low=((ratio < 1 - config.clip_eps_low) & (A < 0)).detach(),
        clipped_high=((ratio > 1 + config.clip_eps_high) & (A > 0)).detach(),
    )


# --- one update --------------------------------------------------------------------------------------


def grpo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    config: GRPOConfig,
    pad_id: int,
    reference_model: torch.nn.Module | None = None,
    max_grad_norm: float | None = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    behaviour_logprobs: bool = False,
    token_credits: Sequence[Sequence[float] | None] | None = None,
    truncated_is: bool = False,
) -> dict[str, float]:
    """One GRPO update on a batch of episodes; returns its metrics. ``behaviour_logprobs``: the
    batch was sampled by older weights, and each episode's engine logprobs are logπ_old (the
    module docstring's off-policy ρ). ``token_credits``: P_{i,t} per episode (one per token of its
    trajectory, 0 off policy), or None. ``truncated_is``: weight each token's clipped term by
    w_{i,t} (the module docstring's truncated importance sampling)."""
    config.validate()
    rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    groups = torch.tensor([e.group for e in episodes])
    advantages = group_advantages(rewards, groups, config.scale_advantages_by_std, config.advantage_eps)
    metrics = advantage_stats(advantages)
    credits = list(token_credits) if token_credits is not None else [None] * len(episodes)
    keep = informative_groups(rewards, groups)
    metrics["groups/equal_reward_fraction"] = 1.0 - keep.float().mean().item()
    if config.oversample > 1:
        keep = first_groups(keep, groups, config.questions_per_step)
    if config.filter_equal_reward_groups or config.oversample > 1:
        metrics["groups/trained"] = float(groups[keep].unique().numel())
        episodes = [e for e, kept in zip(episodes, keep.tolist(), strict=True) if kept]
        credits = [c for c, kept in zip(credits, keep.tolist(), strict=True) if kept]
        advantages = advantages[keep]
    if not episodes or not any(any(e.policy_mask) for e in episodes):
        return {**metrics, "update/skipped": 1.0}

    batch = pad_episodes(episodes, pad_id)
    process = process_advantage_matrix(episodes, credits, batch)
    if process is not None:
        policy_tokens = batch.policy_mask[:, batch.start :]
        metrics["advantage/process_mean"] = ((process * policy_tokens).sum() / policy_tokens.sum().clamp(min=1)).item()
    minibatch_size = config.minibatch_size or len(batch)
    single_pass = config.epochs == 1 and minibatch_size >= len(batch)
    # Group ids of the batch's rows when micro-batches share their group's prompt, else None.
    shared_groups = torch.tensor([e.group for e in episodes]) if config.shared_prefix else None

    model.train()
    # logπ_old: the behaviour policy's, from the engine, one update off the policy; on-policy with
    # one pass and one minibatch it is logπ_θ detached, taken from the loss forward.
    if behaviour_logprobs:
        old_logp = engine_logprob_matrix(episodes, batch)
    elif not single_pass:
        old_logp = batch_logprobs(model, batch, config.micro_batch_size, temperature, shared_groups)
    else:
        old_logp = None
    # The trainer's logπ before the update, for the engine-vs-trainer gap: logπ_old on-policy,
    # else read from the first epoch's forward passes.
    read_trainer_logp = old_logp is None or behaviour_logprobs
    if read_trainer_logp:
        trainer_logp = torch.zeros(len(batch), batch.input_ids.shape[1] - batch.start)
    else:
        trainer_logp = old_logp
    engine_logp = engine_logprob_matrix(episodes, batch) if truncated_is else None
    ref_logp = None
    if config.kl_beta > 0:
        ref_module, ref_ctx = reference_context(model, reference_model)
        with ref_ctx:
            ref_logp = batch_logprobs(ref_module, batch, config.micro_batch_size, temperature, shared_groups)

    sums = {"kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "entropy": 0.0, "ratio": 0.0, "tokens": 0.0,
            "is_weight": 0.0, "is_capped": 0.0}

    def split(minibatch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if config.shared_prefix:
            return group_micro_batches(minibatch, shared_groups, batch.lengths, config.micro_batch_size)
        if config.lean_update:
            return micro_batches(minibatch, batch.lengths, config.micro_batch_size)
        return minibatch.split(config.micro_batch_size)

    def micro_loss(epoch: int, minibatch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        num_tokens = batch.targets_mask(minibatch, int(batch.lengths[minibatch].max())).sum().item()
        width = int(batch.lengths[rows].max())
        columns = width - batch.start
        mask = batch.targets_mask(rows, width)
        logp, entropy = token_logprobs(
            model,
            batch.input_ids[rows, :width],
            batch.attention_mask[rows, :width],
            batch.start,
            temperature,
            with_entropy=epoch == 0,
            target_mask=mask if config.lean_update else None,
            shared_prefix=config.shared_prefix,
        )
        if epoch == 0 and read_trainer_logp:
            trainer_logp[rows, :columns] = logp.detach().float()
        old = logp.detach() if old_logp is None else old_logp[rows, :columns]
        ref = None if ref_logp is None else ref_logp[rows, :columns]
        A = advantages[rows] if process is None else advantages[rows].unsqueeze(1) + process[rows, :columns]
        weight = None
        if engine_logp is not None:
            # Off the policy tokens both log-probs are 0 or unread; the mask keeps them out of the loss.
            raw = torch.exp(old - engine_logp[rows, :columns]).where(mask > 0, torch.ones_like(old))
            weight = raw.clamp(max=config.truncated_is_cap)
            if epoch == 0:
                sums["is_weight"] += (weight * mask).sum().item()
                sums["is_capped"] += ((raw > config.truncated_is_cap) * mask).sum().item()
        terms = grpo_token_loss(logp, old, A, ref, config, weight)
        if epoch == 0:
            sums["tokens"] += mask.sum().item()
            sums["kl"] += (terms.kl * mask).sum().item()
            sums["clip_low"] += (terms.clipped_low * mask).sum().item()
            sums["clip_high"] += (terms.clipped_high * mask).sum().item()
            sums["entropy"] += (entropy * mask).sum().item()
            sums["ratio"] += (terms.ratio * mask).sum().item()
        return aggregate_loss(terms.loss, mask, config.loss_agg, num_tokens, len(minibatch), config.max_response_tokens)

    update = optimize(
        optimizer, trainable_parameters(model), len(batch), split, micro_loss,
        epochs=config.epochs, minibatch_size=minibatch_size, max_grad_norm=max_grad_norm, generator=generator,
    )
    tokens = max(sums["tokens"], 1.0)
    metrics.update(
        {
            **update,
            "kl": sums["kl"] / tokens,
            "clip_fraction/low": sums["clip_low"] / tokens,
            "clip_fraction/high": sums["clip_high"] / tokens,
            "entropy": sums["entropy"] / tokens,
            "ratio/mean": sums["ratio"] / tokens,
            **trained_stats(sums["tokens"], len(batch), sum(len(e.token_ids) for e in episodes)),
        }
    )
    if engine_logp is not None:
        metrics["truncated_is/weight_mean"] = sums["is_weight"] / tokens
        metrics["truncated_is/capped_fraction"] = sums["is_capped"] / tokens
    gap = engine_logprob_gap(episodes, batch, trainer_logp)
    if gap is not None:
        metrics.update(gap.metrics(episodes))
    return metrics


def process_advantage_matrix(
    episodes: Sequence[Episode], credits: Sequence[Sequence[float] | None], batch: PaddedBatch
) -> torch.Tensor | None:
    """P_{i,t} ``[N, T − start]`` in the batch's target columns, or None when no episode has any."""
    if all(c is None for c in credits):
        return None
    process = torch.zeros(len(batch), batch.input_ids.shape[1] - batch.start)
    for row, (episode, credit) in enumerate(zip(episodes, credits, strict=True)):
        if credit is None:
            continue
        if len(credit) != len(episode.token_ids):
            raise ValueError(f"episode {row}: {len(credit)} process advantages for {len(episode.token_ids)} tokens")
        values = torch.tensor(list(credit)[batch.start :], dtype=torch.float32)
        process[row, : len(values)] = values
    return process


def _update(inputs: UpdateInputs, config: GRPOConfig) -> dict[str, float]:
    return grpo_update(
        inputs.model, inputs.optimizer, inputs.episodes,
        replace(config, max_response_tokens=config.max_response_tokens or inputs.max_response_tokens),
        inputs.pad_id,
        reference_model=inputs.reference_model,
        max_grad_norm=inputs.max_grad_norm,
        temperature=inputs.temperature,
        generator=inputs.generator,
        behaviour_logprobs=inputs.behaviour_lag > 0,
        token_credits=inputs.token_credits,
        truncated_is=config.truncated_is == "on" or (config.truncated_is == "auto" and inputs.engine_lower_precision),
    )


register(Algorithm(
    name="grpo",
    config_class=GRPOConfig,
    update=_update,
    rollout_shape=lambda config: (config.rollout_questions, config.group_size),
    # With LoRA the KL reference is the adapter disabled unless reference: start; a full fine-tune
    # needs a frozen copy.
    reference_copy=lambda config, lora_enabled: config.kl_beta > 0 and (not lora_enabled or config.reference == "start"),
))
