"""DPO on trajectory pairs: the loss and one update step, read top to bottom.

A pair (x, y⁺, y⁻) is two trajectories of the same question x: y⁺ chosen, y⁻ rejected. With
m_t = 1 on the tokens the policy generated and 0 on prompt, tool output and padding
(``Trajectory.policy_mask``), a trajectory's log-probability counts its policy tokens only; tool
output is context the policy conditions on, not an action it took::

    log π(y)  = Σ_t m_t log π(y_t | y_<t)                           (÷ Σ_t m_t if ``length_normalize``)
    h         = [log π_θ(y⁺) − log π_ref(y⁺)] − [log π_θ(y⁻) − log π_ref(y⁻)]
    ℓ_sigmoid = −log σ(β h)                                         DPO (Rafailov et al. 2023, eq. 7)
    ℓ_ipo     = (h − 1/(2β))²                                       IPO (Azar et al. 2023, eq. 17, τ = β)
    r̂(y)      = β (log π_θ(y) − log π_ref(y))                       the implicit reward (logged)

and the loss is the mean of ℓ over the pairs of a minibatch. Its gradient moves only policy
tokens' log-probs: ∂ℓ_sigmoid/∂log π_θ(y⁺) = −β σ(−β h), ∂ℓ_sigmoid/∂log π_θ(y⁻) = +β σ(−β h).
Log-probs are at temperature 1 (the model's own distribution, as in the DPO paper).

π_ref is fixed for the whole run (``reference``): ``start``, a frozen copy of the policy DPO starts
from (after ``model.init_from`` or the SFT warm start: the SFT model, as in the paper, §4); or, with
LoRA, ``base``: the policy with its adapter disabled (no second copy; the base model before any
LoRA warm start), as GRPO's KL reference is.

Pairs come from a JSONL file this code wrote (``pairs``), or from rollouts (``pairs: null``): each
step samples N trajectories for each of B questions and pairs, per question, the highest-reward
sample (chosen) with the lowest (rejected) when their rewards differ by more than
``min_reward_gap``: the first sample on ties (online DPO on the verifier's ranking; Xu et al. 2024
pair best and worst of a reward model's ranking the same way). Those pairs are appended to
``<run>/pairs.jsonl`` in the pairs format of ``trainers/algorithms/reward_model.py`` (TRL's columns plus both
trajectories' segments), which another DPO run, or ``agentenv rm train``, can train on.

One update (``dpo_update``): log π_ref of both sides once, without gradients; then ``epochs`` passes
over the pairs in shuffled minibatches, each one optimizer step, each split into micro-batches of
pairs (the chosen and the rejected side of a pair in the same forward pass, so the loss of each
pair is whole) whose gradients accumulate to exactly the minibatch's loss; gradient-norm
clipping (the shared ``optimize``); the loop sets the learning rate once a step.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from agentenv.trainers.algorithms.logprobs import (
    REFERENCES,
    batch_logprobs,
    micro_batches,
    pad_trajectories,
    reference_context,
    token_logprobs,
)
from agentenv.trainers.algorithms.registry import Algorithm, UpdateInputs, register
from agentenv.trainers.algorithms.update import optimize, trainable_parameters, trained_stats

DPO_LOSSES = ("sigmoid", "ipo")
PAIRS_FILE = "pairs.jsonl"  # a run on rollouts appends its pairs here, for dpo.pairs of another run


@dataclass(frozen=True)
class DPOConfig:
    """YAML section ``dpo`` (``mode: dpo``)."""

    beta: float = 0.1  # β
    loss: str = "sigmoid"  # sigmoid: DPO | ipo
    length_normalize: bool = False  # log π(y) as the mean over policy tokens instead of the sum
    reference: str = "start"  # start: a frozen copy of the starting policy | base: LoRA adapter disabled
    pairs: str | None = None  # a pairs file with trajectories (<run>/pairs.jsonl, agentenv rm's); null: rollouts
    pairs_per_step: int = 8  # from a file: pairs per step
    questions_per_step: int = 4  # from rollouts: B
    samples_per_question: int = 4  # from rollouts: N (one pair per question: best and worst)
    min_reward_gap: float = 0.0  # a pair needs r⁺ − r⁻ > this
    epochs: int = 1  # passes over each step's pairs
    minibatch_size: int | None = None  # pairs per optimizer step; None: all of the step's
    micro_batch_size: int = 2  # pairs per forward pass (two sequences each)

    def validate(self) -> None:
        if self.loss not in DPO_LOSSES:
            raise ValueError(f"dpo.loss must be one of {list(DPO_LOSSES)}, got {self.loss!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"dpo.reference must be one of {list(REFERENCES)}, got {self.reference!r}")
        if self.beta <= 0:
            raise ValueError(f"dpo.beta must be positive, got {self.beta!r}")
        if self.samples_per_question < 2:
            raise ValueError(
                f"dpo.samples_per_question must be at least 2, got {self.samples_per_question}: "
                "a pair is two samples of one question"
            )
        for name in ("pairs_per_step", "questions_per_step", "epochs", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"dpo.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"dpo.minibatch_size must be at least 1 or null, got {self.minibatch_size!r}")
        if self.min_reward_gap < 0:
            raise ValueError(f"dpo.min_reward_gap must be ≥ 0, got {self.min_reward_gap!r}")


# --- pairs --------------------------------------------------------------------------------------------
# One pairs format for the project: ``trainers/algorithms/reward_model.py``'s (TRL's prompt/chosen/rejected
# columns, plus the question, both rewards and both trajectories' segments), so the pairs a DPO run
# writes train a reward model and the rollout pairs of ``agentenv rm`` train DPO. Imported where
# used: reward_model.py imports the training config, which imports this module.


def pairs_from_rollout(episodes: Sequence[Any], tokenizer: Any, min_reward_gap: float = 0.0) -> list[Any]:
    """One ``PreferencePair`` per question of a rollout (``trainers.rollout.rollout.Episode``s): its
    highest-reward sample against its lowest, the first on ties, if r⁺ − r⁻ > ``min_reward_gap``."""
    from agentenv.trainers.algorithms.reward_model import rollout_pair

    by_group: dict[int, list[Any]] = defaultdict(list)
    for episode in episodes:
        by_group[episode.group].append(episode)
    pairs = []
    for members in by_group.values():
        best = max(members, key=lambda e: e.reward)  # max and min return the first of equals
        worst = min(members, key=lambda e: e.reward)
        if best.reward - worst.reward > min_reward_gap:
            pairs.append(rollout_pair(best, worst, tokenizer))
    return pairs


def append_pairs(path: str | Path, step: int, pairs: Sequence[Any]) -> None:
    """Append ``pairs`` to a JSONL file in reward_model.py's format, each tagged with the ``step``."""
    from agentenv.trainers.algorithms.reward_model import pair_to_record

    with Path(path).open("a") as file:
        for pair in pairs:
            file.write(json.dumps({**pair_to_record(pair), "step": step}) + "\n")


def read_pairs(path: str | Path, vocab_size: int | None = None) -> list[Any]:
    """The pairs of a JSONL (or Parquet) file in reward_model.py's format that carry both
    trajectories (``chosen_segments``, ``rejected_segments``): DPO scores the ids the policy
    sampled and needs to know which of them it wrote. JSON only: nothing in the file is executed.
    A pair that does not fit raises ValueError naming the file, the pair and the side."""
    from agentenv.trainers.algorithms.reward_model import read_preference_pairs

    pairs = read_preference_pairs(path)
    if not pairs:
        raise ValueError(f"{path} holds no pairs")
    for number, pair in enumerate(pairs, 1):
        where = f"{path}: pair {number}"
        if pair.chosen_trajectory is None:
            raise ValueError(
                f"{where} is text only; DPO needs both trajectories' token ids and sources "
                "('chosen_segments', 'rejected_segments'), as pairs from rollouts have them"
            )
        for side, trajectory in (("chosen", pair.chosen_trajectory), ("rejected", pair.rejected_trajectory)):
            if vocab_size is not None and any(not 0 <= t < vocab_size for t in trajectory.token_ids):
                raise ValueError(f"{where}: {side} holds ids outside the tokenizer's vocabulary (0 … {vocab_size - 1})")
            if not any(trajectory.policy_mask):
                raise ValueError(f"{where}: {side} has no policy segment: nothing the policy wrote to score")
    return pairs


def _reward_gap(pair: Any) -> float | None:
    if pair.chosen_reward is None or pair.rejected_reward is None:
        return None
    return float(pair.chosen_reward) - float(pair.rejected_reward)


# --- the loss -------------------------------------------------------------------------------------------


def sequence_logprobs(logp: torch.Tensor, mask: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """log π(y) per row of per-token log-probs ``[n, T]``: the sum over policy tokens (the mean with
    ``length_normalize``)."""
    summed = (logp * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0) if length_normalize else summed


@dataclass
class PairLoss:
    """The per-pair terms of the objective, each ``[m]``."""

    loss: torch.Tensor  # ℓ
    margin: torch.Tensor  # h
    chosen_reward: torch.Tensor  # r̂(y⁺)
    rejected_reward: torch.Tensor  # r̂(y⁻)


def dpo_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    loss: str = "sigmoid",
) -> PairLoss:
    """ℓ per pair from the sequence log-probs of both sides under π_θ and π_ref."""
    chosen_ratio = chosen_logp - ref_chosen_logp
    rejected_ratio = rejected_logp - ref_rejected_logp
    h = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        value = -F.logsigmoid(beta * h)
    elif loss == "ipo":
        value = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"dpo.loss must be one of {list(DPO_LOSSES)}, got {loss!r}")
    return PairLoss(value, h.detach(), (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())


# --- one update --------------------------------------------------------------------------------------------


def dpo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pairs: Sequence[Any],
    config: DPOConfig,
    pad_id: int,
    reference_model: torch.nn.Module | None = None,
    max_grad_norm: float | None = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One DPO update on ``pairs`` (``PreferencePair``s with both trajectories); returns its
    metrics. ``reference_model`` is π_ref when it is a frozen copy; without it the LoRA ``model``
    with its adapter disabled is."""
    config.validate()
    if not pairs:
        return {"update/skipped": 1.0, "dpo/pairs": 0.0}
    P = len(pairs)
    sides = [p.chosen_trajectory for p in pairs] + [p.rejected_trajectory for p in pairs]  # rows i, P + i: pair i
    batch = pad_trajectories([s.token_ids for s in sides], [s.policy_mask for s in sides], pad_id)
    every_row = torch.arange(len(batch))
    ref_module, ref_ctx = reference_context(model, reference_model)
    with ref_ctx:
        ref_token_logp = batch_logprobs(ref_module, batch, 2 * config.micro_batch_size)
    full_mask = batch.targets_mask(every_row, batch.input_ids.shape[1])
    ref_logp = sequence_logprobs(ref_token_logp, full_mask, config.length_normalize)
    pair_lengths = torch.maximum(batch.lengths[:P], batch.lengths[P:])

    model.train()
    sums = defaultdict(float)

    def micro_loss(epoch: int, minibatch: torch.Tensor, pair_rows: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([pair_rows, pair_rows + P])
        width = int(batch.lengths[rows].max())
        mask = batch.targets_mask(rows, width)
        logp, _ = token_logprobs(
            model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start, target_mask=mask,
        )
        sequence = sequence_logprobs(logp, mask, config.length_normalize)
        m = len(pair_rows)
        terms = dpo_loss(sequence[:m], sequence[m:], ref_logp[pair_rows], ref_logp[pair_rows + P], config.beta, config.loss)
        if epoch == 0:
            sums["margin"] += terms.margin.sum().item()
            sums["accuracy"] += (terms.chosen_reward > terms.rejected_reward).float().sum().item()
            sums["chosen_reward"] += terms.chosen_reward.sum().item()
            sums["rejected_reward"] += terms.rejected_reward.sum().item()
            sums["chosen_logp"] += sequence[:m].detach().sum().item()
            sums["rejected_logp"] += sequence[m:].detach().sum().item()
        return terms.loss.sum() / len(minibatch)

    update = optimize(
        optimizer, trainable_parameters(model), P,
        lambda minibatch: micro_batches(minibatch, pair_lengths, config.micro_batch_size), micro_loss,
        epochs=config.epochs, minibatch_size=config.minibatch_size, max_grad_norm=max_grad_norm, generator=generator,
    )
    gaps = [gap for gap in map(_reward_gap, pairs) if gap is not None]
    metrics = {
        **update,
        "dpo/pairs": float(P),
        "dpo/margin": sums["margin"] / P,
        "dpo/accuracy": sums["accuracy"] / P,
        "dpo/rewards/chosen": sums["chosen_reward"] / P,
        "dpo/rewards/rejected": sums["rejected_reward"] / P,
        "dpo/logp/chosen": sums["chosen_logp"] / P,
        "dpo/logp/rejected": sums["rejected_logp"] / P,
        **trained_stats(full_mask.sum().item(), len(batch), sum(len(side) for side in sides)),
    }
    if gaps:
        metrics["dpo/reward_gap"] = sum(gaps) / len(gaps)
    return metrics


def _update(inputs: UpdateInputs, config: DPOConfig) -> dict[str, float]:
    pairs = inputs.items
    if pairs is None:
        pairs = pairs_from_rollout(inputs.episodes, inputs.tokenizer, config.min_reward_gap)
        append_pairs(inputs.run_dir / PAIRS_FILE, inputs.step, pairs)
    return dpo_update(
        inputs.model, inputs.optimizer, pairs, config, inputs.pad_id,
        reference_model=inputs.reference_model,
        max_grad_norm=inputs.max_grad_norm,
        generator=inputs.generator,
    )


def _pairs_file(config: DPOConfig, tokenizer: Any) -> list[Any] | None:
    if not config.pairs:
        return None
    try:
        return read_pairs(config.pairs, len(tokenizer))
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"dpo.pairs: {error}") from None


register(Algorithm(
    name="dpo",
    config_class=DPOConfig,
    update=_update,
    rollout_shape=lambda config: (config.questions_per_step, config.samples_per_question),
    reference_copy=lambda config, lora_enabled: config.reference == "start",
    offline_items=_pairs_file,
    offline_items_per_step=lambda config: config.pairs_per_step,
    step_files=(PAIRS_FILE,),
))
