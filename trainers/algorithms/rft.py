"""Rejection-sampling fine-tuning (RFT): sample, keep what the verifier accepts, imitate it; repeat.

One round (``mode: rft``: a training step is a round, ``max_steps`` rounds). B questions
q_1 … q_B each get N trajectories o_{b,1} … o_{b,N} from the rollout engine (π_θ at
``engine.temperature``, the same rollout driver and environments as GRPO) and a reward r_{b,n} from
the environment's verifier. With τ = ``min_reward``, the accepted set S is::

    keep: threshold   S = {(b, n) : r_{b,n} ≥ τ}                               rejection sampling
                                                                               (STaR, Zelikman et al.
                                                                               2022; RFT, Yuan et al.
                                                                               2023)
    keep: best        S = {(b, n*_b) : r_{b,n*_b} ≥ τ},  n*_b = argmax_n r_{b,n}  best-of-N (RAFT,
                                                                               Dong et al. 2023); the
                                                                               first sample on ties
    distinct: true    of trajectories of one question with the same tokens, only the first is kept
                      (Yuan et al. keep distinct reasoning paths, §3.3)

and the round fine-tunes on S with the SFT loss of ``trainers/algorithms/sft.py`` (``sft_update``): with
m_{s,t} = 1 on the tokens the policy generated and 0 on prompt, tool output and padding
(``Trajectory.policy_mask``), for a minibatch M ⊆ S::

    L(θ) = − Σ_{s∈M} Σ_t m_{s,t} log π_θ(o_{s,t} | o_{s,<t}) / Σ_{s∈M} Σ_t m_{s,t}

(log π at temperature 1, the model's own distribution, as SFT). ``epochs`` passes over S in
shuffled minibatches of ``minibatch_size`` trajectories, each one optimizer step. Each round continues from the current weights (RAFT does;
ReST-EM restarts from the base model every iteration, Singh et al. 2023). A round in which nothing is
accepted makes no update. Logged: the acceptance rate |S| / (B·N), per question kind, and the share
of questions with at least one accepted trajectory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agentenv.trainers.algorithms.registry import Algorithm, UpdateInputs, register
from agentenv.trainers.algorithms.sft import sft_update

KEEP_RULES = ("threshold", "best")


@dataclass(frozen=True)
class RFTConfig:
    """YAML section ``rft`` (``mode: rft``; ``max_steps`` is the number of rounds K)."""

    questions_per_round: int = 8  # B
    samples_per_question: int = 8  # N
    keep: str = "threshold"  # threshold: every sample with r ≥ min_reward | best: the best per question
    min_reward: float = 1.0  # τ; 1.0 under the ReSearch reward: a perfect answer within the free searches
    distinct: bool = True  # drop repeated identical trajectories of one question
    epochs: int = 1  # passes over the accepted set per round
    minibatch_size: int = 16  # accepted trajectories per optimizer step
    micro_batch_size: int = 4  # trajectories per forward pass (gradient accumulation)

    def validate(self) -> None:
        if self.keep not in KEEP_RULES:
            raise ValueError(f"rft.keep must be one of {list(KEEP_RULES)}, got {self.keep!r}")
        for name in ("questions_per_round", "samples_per_question", "epochs", "minibatch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"rft.{name} must be at least 1, got {getattr(self, name)!r}")


def accepted(rewards: Sequence[float], groups: Sequence[int], trajectories: Sequence[Sequence[int]],
             config: RFTConfig) -> list[bool]:
    """The filter: for episode i (reward ``rewards[i]``, question ``groups[i]``, token ids
    ``trajectories[i]``), whether it is in S."""
    keep = [r >= config.min_reward for r in rewards]
    if config.keep == "best":
        best: dict[int, int] = {}
        for i, (reward, group) in enumerate(zip(rewards, groups, strict=True)):
            if group not in best or reward > rewards[best[group]]:
                best[group] = i
        keep = [kept and best[group] == i for i, (kept, group) in enumerate(zip(keep, groups, strict=True))]
    if config.distinct:
        seen: set[tuple[int, tuple[int, ...]]] = set()
        for i, (group, ids) in enumerate(zip(groups, trajectories, strict=True)):
            key = (group, tuple(ids))
            if keep[i] and key in seen:
                keep[i] = False
            elif keep[i]:
                seen.add(key)
    return keep


def acceptance_stats(kinds: Sequence[str], groups: Sequence[int], keep: Sequence[bool]) -> dict[str, float]:
    """``rft/acceptance_rate`` overall and per question kind (``rft/acceptance_rate/<kind>``), the
    accepted count and ``rft/questions_covered``: the share of questions with an accepted sample."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_group: dict[int, bool] = defaultdict(bool)
    for kind, group, kept in zip(kinds, groups, keep, strict=True):
        by_kind[kind].append(kept)
        by_group[group] |= kept
    stats = {
        "rft/acceptance_rate": sum(keep) / max(len(keep), 1),
        "rft/accepted": float(sum(keep)),
        "rft/questions_covered": sum(by_group.values()) / max(len(by_group), 1),
    }
    for kind, flags in sorted(by_kind.items()):
        stats[f"rft/acceptance_rate/{kind}"] = sum(flags) / len(flags)
    return stats


def rft_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trajectories: Sequence[Any],
    config: RFTConfig,
    pad_id: int,
    max_grad_norm: float | None = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Fine-tune on the accepted ``trajectories`` (``Trajectory`` objects): ``epochs`` passes in
    shuffled minibatches, one optimizer step each. Returns the metrics."""
    config.validate()
    if not trajectories:
        return {"update/skipped": 1.0, "update/optimizer_steps": 0.0}
    return sft_update(
        model, optimizer, trajectories, pad_id, config.micro_batch_size, max_grad_norm,
        epochs=config.epochs, minibatch_size=config.minibatch_size, generator=generator or torch.Generator(),
    )


def _update(inputs: UpdateInputs, config: RFTConfig) -> dict[str, float]:
    episodes = inputs.episodes
    groups = [e.group for e in episodes]
    keep = accepted([e.reward for e in episodes], groups, [e.token_ids for e in episodes], config)
    kept = [e.trajectory for e, k in zip(episodes, keep, strict=True) if k]
    metrics = rft_update(inputs.model, inputs.optimizer, kept, config, inputs.pad_id,
                         max_grad_norm=inputs.max_grad_norm, generator=inputs.generator)
    metrics.update(acceptance_stats([e.question.get("kind") or "unknown" for e in episodes], groups, keep))
    return metrics


register(Algorithm(
    name="rft",
    config_class=RFTConfig,
    update=_update,
    rollout_shape=lambda config: (config.questions_per_round, config.samples_per_question),
))
