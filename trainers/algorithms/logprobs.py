"""Padded batches of trajectories and their per-token log-probabilities: what every objective reads.

A batch holds N trajectories right-padded to one length T. Per-token tensors cover the target
positions ``start … T−1`` (``start``: the shortest prompt, so no earlier position is a policy token):
column j holds the token at position ``start + j``, scored by the logits at position ``start + j − 1``.
Only ``policy`` tokens (``Trajectory.policy_mask``) are targets of any loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agentenv.trajectory import Episode


def pad_episodes(episodes: Sequence[Episode], pad_id: int) -> PaddedBatch:
    """``pad_trajectories`` of the episodes' token ids and policy masks."""
    return pad_trajectories([e.token_ids for e in episodes], [e.policy_mask for e in episodes], pad_id)


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


# What a DPO or PPO reference policy is: "start", a frozen copy of the policy the phase starts from,
# or "base", the LoRA policy with its adapter disabled.
REFERENCES = ("start", "base")


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


# --- the engine's logprobs in the batch's columns ----------------------------------------------------


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


@dataclass(frozen=True)
class LogprobGap:
    """|engine logprob − trainer logπ_old| over the policy tokens of a batch: the mean, the largest,
    and where the largest is (the row in the batch and the token's position in its trajectory)."""

    mean: float
    max: float
    row: int
    position: int

    def metrics(self, episodes: Sequence[Episode]) -> dict[str, object]:
        """``logprob_gap/engine_vs_trainer`` (mean), ``…_max``, and ``…_worst``: which episode and token."""
        episode = episodes[self.row]
        worst = {"id": episode.question.get("id"), "group": episode.group, "row": self.row,
                 "position": self.position, "token_id": episode.token_ids[self.position]}
        return {"logprob_gap/engine_vs_trainer": self.mean, "logprob_gap/engine_vs_trainer_max": self.max,
                "logprob_gap/engine_vs_trainer_worst": worst}


def engine_logprob_gap(
    episodes: Sequence[Episode], batch: PaddedBatch, trainer_logp: torch.Tensor, rows: Sequence[int] | None = None,
) -> LogprobGap | None:
    """The gap over policy tokens of the episodes with engine logprobs (of ``rows`` only, where the
    trainer read only those); None when none has them."""
    total, count, worst = 0.0, 0, (-1.0, 0, 0)
    read = range(len(episodes)) if rows is None else rows
    for row in read:
        episode = episodes[row]
        if episode.engine_logprobs is None:
            continue
        positions = policy_columns(episode, batch)
        if not positions or len(positions) != len(episode.engine_logprobs):
            continue
        gaps = (torch.tensor(episode.engine_logprobs) - trainer_logp[row, positions]).abs()
        total, count = total + gaps.sum().item(), count + len(positions)
        largest = int(gaps.argmax())
        if gaps[largest].item() > worst[0]:
            worst = (gaps[largest].item(), row, positions[largest] + batch.start)
    if not count:
        return None
    return LogprobGap(total / count, worst[0], worst[1], worst[2])
