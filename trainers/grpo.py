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
    ℓ_{i,t}    = ℓ^clip_{i,t} + β KL_{i,t}

and the loss aggregates ℓ over the policy tokens (``loss_agg``), with N sequences in the batch::

    token-mean               Σ_{i,t} m ℓ / Σ_{i,t} m                     DAPO (§3.3)
    seq-mean-token-mean      (1/N) Σ_i [ Σ_t m ℓ / Σ_t m ]               GRPO paper (eq. 3)
    seq-mean-token-sum-norm  (1/N) Σ_i [ Σ_t m ℓ / L_max ]               Dr. GRPO (§3.1; L_max is
                                                                         the max response length)

β = 0 skips the reference forward pass entirely. The reference is, for full fine-tuning, a frozen
copy of the policy GRPO starts from (after any SFT warm start, as InstructGPT's reference is its SFT
model); with LoRA it is the policy with its adapter disabled (no second copy), i.e. the base model
before any LoRA warm start.

One update (``grpo_update``): compute advantages; optionally drop groups whose rewards are all
equal (their advantages are zero; DAPO's dynamic sampling, §3.2); compute logπ_old and logπ_ref
once; then μ epochs over the batch in shuffled minibatches, each one optimizer step, each split
into micro-batches whose gradients accumulate to exactly the minibatch's loss; gradient-norm
clipping; one learning-rate scheduler step per update.

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
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


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
    loss_agg: str = "token-mean"
    max_response_tokens: int | None = None  # L_max of Dr. GRPO; None: the env's token budget
    epochs: int = 1  # μ: passes over each batch
    minibatch_size: int | None = None  # sequences per optimizer step; None: the whole batch
    micro_batch_size: int = 4  # sequences per forward pass (gradient accumulation)
    # False: the update as it was before issue 13 — the vocabulary projection at every position
    # after the shortest prompt and micro-batches in batch order. The same loss and gradients;
    # kept so bench/update.py can measure both paths in one run.
    lean_update: bool = True
    # True: micro-batches of one group each, whose shared prompt runs once (the module docstring's
    # "shared prefix"). The same loss and gradients.
    shared_prefix: bool = False

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
) -> TokenLoss:
    """ℓ_{i,t} for log-probs ``[n, T]`` and one advantage per sequence ``[n]`` or per token ``[n, T]``."""
    A = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = torch.clamp(ratio, 1 - config.clip_eps_low, 1 + config.clip_eps_high)
    clip_loss = -torch.min(ratio * A, clipped_ratio * A)
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


# --- per-token log-probabilities of trajectories ---------------------------------------------------


@dataclass
class PaddedBatch:
    """Trajectories right-padded to one length. Per-token tensors cover target positions
    ``start … T−1``: column j holds the token at position ``start + j``."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    policy_mask: torch.Tensor  # [N, T], float: 1 on policy tokens
    lengths: torch.Tensor  # [N]
    start: int  # the shortest prompt: no earlier position is a policy token

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def targets_mask(self, rows: torch.Tensor, width: int) -> torch.Tensor:
        return self.policy_mask[rows, self.start : width]


def pad_trajectories(
    token_ids: Sequence[Sequence[int]], policy_masks: Sequence[Sequence[int]], pad_id: int
) -> PaddedBatch:
    """Right-pad token ids and policy masks; padding is never a policy token."""
    if not token_ids:
        raise ValueError("pad_trajectories needs at least one trajectory")
    lengths = [len(ids) for ids in token_ids]
    width = max(lengths)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    policy_mask = torch.zeros((len(token_ids), width), dtype=torch.float32)
    first_policy = []
    for row, (ids, mask) in enumerate(zip(token_ids, policy_masks, strict=True)):
        if len(mask) != len(ids):
            raise ValueError(f"trajectory {row}: {len(mask)} mask entries for {len(ids)} tokens")
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        policy_mask[row, : len(ids)] = torch.tensor(mask, dtype=torch.float32)
        first_policy.append(next((t for t, m in enumerate(mask) if m), len(ids)))
    # Position 0 has no logits before it, so it can never be scored.
    start = max(1, min(first_policy))
    return PaddedBatch(input_ids, attention_mask, policy_mask, torch.tensor(lengths), start)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    target_mask: torch.Tensor | None = None,
    shared_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token_t | tokens_<t) for t = start … T−1, shape ``[n, T − start]``; and the entropy of
    π at each of those positions when ``with_entropy``.

    Logits are divided by the sampling temperature so π is the distribution the engine sampled from.
    With ``target_mask`` (``[n, T − start]``, 1 where the loss reads the token) the vocabulary
    projection and the log-softmax run only at those positions and every other entry is 0: in a
    multi-turn episode most positions after the prompt are tool output, and the projection onto
    SmolLM2's 49k-word vocabulary is a fifth of its parameters. Without it, every target position is
    projected (``logits_to_keep`` still skips the prompt).

    With ``shared_prefix`` (and ``target_mask``) the rows' longest common first tokens run through
    the body once, not once per row (``prefix_then_suffixes``): the same values, for rows that share
    a prompt, as the members of a GRPO group do.
    """
    # Batches are built on the CPU; a model on a GPU computes there and hands the per-token values
    # back (``.to`` keeps the autograd graph), so the losses and masks stay where they were built.
    home, device = input_ids.device, next(model.parameters()).device
    if device != home:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        target_mask = target_mask.to(device) if target_mask is not None else None
        logp, entropy = token_logprobs(
            model, input_ids, attention_mask, start, temperature, with_entropy, target_mask, shared_prefix
        )
        return logp.to(home), entropy.to(home) if entropy is not None else None
    parts = decoder_and_head(model) if target_mask is not None else None
    if parts is None:
        keep = input_ids.shape[1] - start + 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False).logits
        logits = logits[:, :-1].float() / temperature  # logits at t−1 score token t
        log_probs = F.log_softmax(logits, dim=-1)
        logp = log_probs.gather(-1, input_ids[:, start:].unsqueeze(-1)).squeeze(-1)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = -(log_probs.exp() * log_probs).sum(-1)
        return logp, entropy
    decoder, head = parts
    prefix = common_prefix_length(input_ids, attention_mask) if shared_prefix and keeps_cache(decoder) else 0
    if prefix:
        hidden = prefix_then_suffixes(decoder, input_ids, attention_mask, prefix)
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return masked_logprobs(head, hidden, input_ids, start, temperature, target_mask, with_entropy)


def common_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many first tokens all rows of a right-padded batch have in common, at most the shortest
    row's length − 1 so that every row keeps a token of its own; 0 for a single row."""
    if input_ids.shape[0] < 2:
        return 0
    limit = int(attention_mask.sum(dim=1).min()) - 1
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(dim=0)
    return int(same.int().cumprod(dim=0).sum())


def keeps_cache(decoder: torch.nn.Module) -> bool:
    """False while gradient checkpointing trains the body: transformers' checkpointed layers then
    drop ``past_key_values`` (``GradientCheckpointingLayer``), and a suffix could not see its prefix."""
    return not (decoder.training and getattr(decoder, "is_gradient_checkpointing", False))


def prefix_then_suffixes(
    decoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: int
) -> torch.Tensor:
    """The body's last hidden states ``[n, T, d]`` of rows whose first ``prefix`` tokens are equal:
    the prefix runs once (batch 1) and leaves its keys and values in a cache; the cache is repeated
    to the n rows and the suffixes run on top of it, at positions prefix … T−1, under the rows'
    attention mask (right padding in the suffixes). In the backward pass the repeat sums the n rows'
    gradients into the one prefix, as n separate copies of the prefix would have summed them."""
    rows = input_ids.shape[0]
    shared = decoder(input_ids=input_ids[:1, :prefix], use_cache=True)
    cache = shared.past_key_values
    # The public way generate() expands a prompt's cache to several samples; its repeat_interleave
    # is a copy, which each layer's concatenation with the suffix's keys would make anyway.
    cache.batch_repeat_interleave(rows)
    own = decoder(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    return torch.cat([shared.last_hidden_state.expand(rows, -1, -1), own.last_hidden_state], dim=1)


def masked_logprobs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    start: int,
    temperature: float,
    target_mask: torch.Tensor,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` from the body's last hidden states ``[n, T, d]``: the output projection
    ``head`` runs only where ``target_mask`` is 1 (0 elsewhere)."""
    scored = target_mask > 0
    # The hidden state at t−1 scores token t.
    log_probs = F.log_softmax(head(hidden[:, start - 1 : -1][scored]).float() / temperature, dim=-1)
    selected = log_probs.gather(-1, input_ids[:, start:][scored].unsqueeze(-1)).squeeze(-1)
    logp = selected.new_zeros(scored.shape)
    logp[scored] = selected
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = torch.zeros(scored.shape, dtype=log_probs.dtype, device=log_probs.device)
            entropy[scored] = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(the transformer body, the output projection) of a causal LM whose logits are exactly
    ``head(body(x))``; None for models that change logits after the projection (Gemma 2's soft-cap,
    Cohere's logit scale) or that do not expose the two parts, which then take the full forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA lives in its modules
    config = getattr(base, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if get_decoder else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def micro_batches(rows: torch.Tensor, lengths: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """``rows`` split into micro-batches of ``size``, sequences of similar length together: each
    micro-batch is padded only to its own longest sequence, and the accumulated gradient is the
    same sum in any order."""
    return rows[lengths[rows].argsort(stable=True)].split(size)


def group_micro_batches(
    rows: torch.Tensor, groups: torch.Tensor, lengths: torch.Tensor, size: int
) -> tuple[torch.Tensor, ...]:
    """``rows`` split into micro-batches of one group each (``groups``: a group id per row of the
    batch), in chunks of ``size`` and of similar lengths as ``micro_batches`` makes them: the rows of
    a micro-batch share their group's prompt, which then runs once (``token_logprobs``'s
    ``shared_prefix``)."""
    members = groups[rows]
    return tuple(chunk for group in members.unique() for chunk in micro_batches(rows[members == group], lengths, size))


def reference_context(model: torch.nn.Module, reference_model: torch.nn.Module | None):
    """(the module to call, a context) for reference log-probs: a frozen copy if there is one, else
    the LoRA model with its adapter disabled (``peft``'s ``disable_adapter``)."""
    if reference_model is not None:
        return reference_model, contextlib.nullcontext()
    if hasattr(model, "disable_adapter"):
        return model, model.disable_adapter()
    raise ValueError("kl_beta > 0 needs a reference: a LoRA model or a frozen reference copy")


def batch_logprobs(
    model: torch.nn.Module,
    batch: PaddedBatch,
    micro_batch_size: int,
    temperature: float = 1.0,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """log-probs ``[N, T − start]`` of the whole batch without gradients, micro-batch by micro-batch
    (in eval mode: logπ_old and logπ_ref are the policies that sampled, without dropout). With
    ``groups`` (a group id per row) each micro-batch holds one group and runs its shared prompt once."""
    out = torch.zeros(batch.input_ids.shape[0], batch.input_ids.shape[1] - batch.start)
    everything = torch.arange(len(batch))
    if groups is None:
        chunks = micro_batches(everything, batch.lengths, micro_batch_size)
    else:
        chunks = group_micro_batches(everything, groups, batch.lengths, micro_batch_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for rows in chunks:
            width = int(batch.lengths[rows].max())
            logp, _ = token_logprobs(
                model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start, temperature,
                target_mask=batch.targets_mask(rows, width), shared_prefix=groups is not None,
            )
            out[rows, : width - batch.start] = logp.float()
    model.train(was_training)
    return out


# --- the learning-rate schedule ---------------------------------------------------------------------


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps`` then ``constant`` or ``cosine`` decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {schedule!r}")


# --- one update --------------------------------------------------------------------------------------


@dataclass
class Episode:
    """What the loss needs from one finished rollout episode."""

    token_ids: list[int]
    policy_mask: list[int]
    reward: float
    group: int  # episodes of the same question share a group
    engine_logprobs: list[float] | None = None  # one per policy token, as the engine reported them
    process_advantages: list[float] | None = None  # P_{i,t}: one per token of token_ids (0 off policy)


def grpo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    episodes: Sequence[Episode],
    config: GRPOConfig,
    pad_id: int,
    reference_model: torch.nn.Module | None = None,
    max_grad_norm: float | None = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    behaviour_logprobs: bool = False,
) -> dict[str, float]:
    """One GRPO update on a batch of episodes; returns its metrics. ``behaviour_logprobs``: the
    batch was sampled by older weights, and each episode's ``engine_logprobs`` are logπ_old (the
    module docstring's off-policy ρ)."""
    config.validate()
    rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    groups = torch.tensor([e.group for e in episodes])
    advantages = group_advantages(rewards, groups, config.scale_advantages_by_std, config.advantage_eps)
    metrics = {
        "advantage/mean": advantages.mean().item(),
        "advantage/std": advantages.std().item() if len(episodes) > 1 else 0.0,
        "advantage/max": advantages.max().item(),
        "advantage/min": advantages.min().item(),
    }
    keep = informative_groups(rewards, groups)
    metrics["groups/equal_reward_fraction"] = 1.0 - keep.float().mean().item()
    if config.oversample > 1:
        keep = first_groups(keep, groups, config.questions_per_step)
    if config.filter_equal_reward_groups or config.oversample > 1:
        metrics["groups/trained"] = float(groups[keep].unique().numel())
        episodes = [e for e, kept in zip(episodes, keep.tolist(), strict=True) if kept]
        advantages = advantages[keep]
    if not episodes or not any(any(e.policy_mask) for e in episodes):
        if scheduler is not None:
            scheduler.step()
        return {**metrics, "update/skipped": 1.0}

    batch = pad_trajectories([e.token_ids for e in episodes], [e.policy_mask for e in episodes], pad_id)
    process = process_advantage_matrix(episodes, batch)
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
    ref_logp = None
    if config.kl_beta > 0:
        ref_module, ref_ctx = reference_context(model, reference_model)
        with ref_ctx:
            ref_logp = batch_logprobs(ref_module, batch, config.micro_batch_size, temperature, shared_groups)

    sums = {"loss": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "entropy": 0.0, "ratio": 0.0}
    first_epoch_tokens = 0.0
    grad_norms = []
    trainable = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(config.epochs):
        order = torch.randperm(len(batch), generator=generator)
        for minibatch in order.split(minibatch_size):
            optimizer.zero_grad(set_to_none=True)
            minibatch_mask = batch.targets_mask(minibatch, int(batch.lengths[minibatch].max()))
            num_tokens, num_sequences = minibatch_mask.sum().item(), len(minibatch)
            if config.shared_prefix:
                chunks = group_micro_batches(minibatch, shared_groups, batch.lengths, config.micro_batch_size)
            elif config.lean_update:
                chunks = micro_batches(minibatch, batch.lengths, config.micro_batch_size)
            else:
                chunks = minibatch.split(config.micro_batch_size)
            for rows in chunks:
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
                terms = grpo_token_loss(logp, old, A, ref, config)
                loss = aggregate_loss(
                    terms.loss, mask, config.loss_agg, num_tokens, num_sequences, config.max_response_tokens
                )
                loss.backward()
                sums["loss"] += loss.item()
                if epoch == 0:
                    first_epoch_tokens += mask.sum().item()
                    sums["kl"] += (terms.kl * mask).sum().item()
                    sums["clip_low"] += (terms.clipped_low * mask).sum().item()
                    sums["clip_high"] += (terms.clipped_high * mask).sum().item()
                    sums["entropy"] += (entropy * mask).sum().item()
                    sums["ratio"] += (terms.ratio * mask).sum().item()
            grad_norms.append(clip_grad_norm(trainable, max_grad_norm))
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()

    optimizer_steps = config.epochs * math.ceil(len(batch) / minibatch_size)
    tokens = max(first_epoch_tokens, 1.0)
    metrics.update(
        {
            "loss": sums["loss"] / optimizer_steps,
            "kl": sums["kl"] / tokens,
            "clip_fraction/low": sums["clip_low"] / tokens,
            "clip_fraction/high": sums["clip_high"] / tokens,
            "entropy": sums["entropy"] / tokens,
            "ratio/mean": sums["ratio"] / tokens,
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "update/optimizer_steps": float(optimizer_steps),
            "update/policy_tokens": first_epoch_tokens,
            "update/sequences": float(len(batch)),
            "update/skipped": 0.0,
        }
    )
    gap = engine_logprob_gap(episodes, batch, trainer_logp)
    if gap is not None:
        metrics["logprob_gap/engine_vs_trainer"] = gap
    return metrics


def process_advantage_matrix(episodes: Sequence[Episode], batch: PaddedBatch) -> torch.Tensor | None:
    """P_{i,t} ``[N, T − start]`` in the batch's target columns, or None when no episode has any."""
    if all(e.process_advantages is None for e in episodes):
        return None
    process = torch.zeros(len(batch), batch.input_ids.shape[1] - batch.start)
    for row, episode in enumerate(episodes):
        if episode.process_advantages is None:
            continue
        if len(episode.process_advantages) != len(episode.token_ids):
            raise ValueError(f"episode {row}: {len(episode.process_advantages)} process advantages for {len(episode.token_ids)} tokens")
        values = torch.tensor(episode.process_advantages[batch.start :], dtype=torch.float32)
        process[row, : len(values)] = values
    return process


def policy_columns(episode: Episode, batch: PaddedBatch) -> list[int]:
    """The batch's target columns of the episode's policy tokens, in order: where its engine
    logprobs belong."""
    return [t - batch.start for t, m in enumerate(episode.policy_mask) if m]


def engine_logprob_matrix(episodes: Sequence[Episode], batch: PaddedBatch) -> torch.Tensor:
    """The episodes' engine logprobs ``[N, T − start]`` at their policy tokens' columns (0
    elsewhere): logπ_behav of an off-policy batch. Every episode must carry one per policy token."""
    old = torch.zeros(len(batch), batch.input_ids.shape[1] - batch.start)
    for row, episode in enumerate(episodes):
        positions = policy_columns(episode, batch)
        if episode.engine_logprobs is None or len(episode.engine_logprobs) != len(positions):
            have = "none" if episode.engine_logprobs is None else len(episode.engine_logprobs)
            raise ValueError(
                f"episode {row}: an off-policy update needs the engine's logprob of every policy token "
                f"(logπ_behav); it has {have} for {len(positions)} policy tokens"
            )
        old[row, positions] = torch.tensor(episode.engine_logprobs, dtype=torch.float32)
    return old


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The total gradient norm before clipping; clip to ``max_norm`` when it is set."""
    limit = max_norm if max_norm else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(parameters, limit))


def engine_logprob_gap(episodes: Sequence[Episode], batch: PaddedBatch, trainer_logp: torch.Tensor) -> float | None:
    """Mean |engine logprob − trainer logπ_old| over policy tokens, for episodes with engine logprobs."""
    gaps = []
    for row, episode in enumerate(episodes):
        if episode.engine_logprobs is None:
            continue
        positions = policy_columns(episode, batch)
        if len(positions) != len(episode.engine_logprobs):
            continue
        trainer = trainer_logp[row, positions]
        gaps.append((torch.tensor(episode.engine_logprobs) - trainer).abs())
    if not gaps:
        return None
    return torch.cat(gaps).mean().item()
