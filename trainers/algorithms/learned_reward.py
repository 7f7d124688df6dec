"""The learned reward term: a reward model's score of every finished episode, added to its reward.

    reward:
      model: runs/rm-geo          # `agentenv rm train`'s run folder (or its model folder)
      model_weight: 0.5
      model_normalize: batch      # none | group | batch

The environment's reward R_k of episode k (the verifier and every other term of
``agentenv.rewards``) is computed one episode at a time when it finishes; a reward model needs a
forward pass, so the trainer scores the whole rollout at once afterwards. With r_k = RM(τ_k), the
reward model's score of the whole trajectory τ_k, w = ``model_weight``, ε = 1e-6, g(k) the G
samples of k's question and b all B·G episodes of the step::

    z_k = r_k                                               none
    z_k = (r_k − mean_{j∈g(k)} r_j) / (std_{j∈g(k)} r_j + ε)  group
    z_k = (r_k − mean_{j∈b} r_j) / (std_{j∈b} r_j + ε)        batch   (std: the population's)
    R_k ← R_k + w · z_k

Two components are logged beside the environment's own: ``reward_model_score`` (r_k, what the
reward model says: the curve to watch for reward hacking) and ``reward_model`` (w · z_k, what was
added). Why normalise: Bradley-Terry fixes only differences of scores, so a reward model's offset
and scale are arbitrary and w would mean something else for every model; ``batch`` makes w the
size of one standard deviation of the learned term against the verifier's [0, 1], and keeps the
differences between questions. ``group`` keeps only the ranking within a question (what GRPO's
group advantage looks at anyway) at a fixed scale; ``none`` trusts the model's own scale.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NORMALIZATIONS = ("none", "group", "batch")
EPSILON = 1e-6


def normalized_scores(scores: Sequence[float], groups: Sequence[int], how: str) -> list[float]:
    """z_k of the module docstring for every score; ``groups[k]`` is the question of episode k."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"model_normalize must be one of {list(NORMALIZATIONS)}, got {how!r}")
    if how == "none":
        return [float(s) for s in scores]
    if how == "batch":
        groups = [0] * len(scores)
    members: dict[int, list[float]] = defaultdict(list)
    for score, group in zip(scores, groups, strict=True):
        members[group].append(float(score))
    moments = {g: (statistics.fmean(v), statistics.pstdev(v)) for g, v in members.items()}
    return [(s - moments[g][0]) / (moments[g][1] + EPSILON) for s, g in zip(scores, groups, strict=True)]


class LearnedReward:
    """``reward.model`` at work: ``apply(episodes)`` scores finished episodes in batches and adds
    the weighted, normalised term to each one's reward and components."""

    def __init__(self, path: str | Path, weight: float = 1.0, normalize: str = "batch",
                 batch_size: int = 8, tokenizer: Any = None):
        from agentenv.trainers.algorithms.reward_model import load_reward_model

        if normalize not in NORMALIZATIONS:
            raise ValueError(f"model_normalize must be one of {list(NORMALIZATIONS)}, got {normalize!r}")
        self.model = load_reward_model(path)
        if tokenizer is not None and self.model.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{path}: the reward model's tokenizer is not the policy's; it scores the policy's token ids as they are")
        self.weight, self.normalize, self.batch_size = weight, normalize, batch_size

    def score(self, trajectories: Sequence[Any]) -> list[float]:
        return self.model.score(list(trajectories), batch_size=self.batch_size)

    def apply(self, episodes: Sequence[Any]) -> list[float]:
        """Add w · z_k to every episode's ``reward`` (rollout ``Episode``s, changed in place);
        returns the raw scores r_k."""
        scores = self.score([episode.trajectory for episode in episodes])
        terms = normalized_scores(scores, [episode.group for episode in episodes], self.normalize)
        for episode, score, term in zip(episodes, scores, terms, strict=True):
            episode.reward += self.weight * term
            episode.reward_components["reward_model_score"] = score
            episode.reward_components["reward_model"] = self.weight * term
        return scores
