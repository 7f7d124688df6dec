"""Trajectory rewards: small pure functions of a finished episode, composed with weights.

Every term is computed and logged on its own (``Reward.__call__`` returns the components), so a
curve shows which part of the reward moved. The default is ReSearch's answer reward plus a
search-budget penalty::

    reward = research_answer_reward + search_budget_penalty

ReSearch (Chen et al. 2025, public code ``compute_score``): invalid format → 0; valid format and
answer F1 > 0 → F1; valid format and F1 = 0 → 0.1.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

# ReSearch's reward for a well-formed trajectory whose answer shares no token with the gold.
RESEARCH_FORMAT_ONLY_REWARD = 0.1


@dataclass(frozen=True)
class EpisodeOutcome:
    """What a reward may look at: the finished episode, never the model or the text stream."""

    answer: str | None
    gold_answers: tuple[str, ...]
    tool_calls: dict[str, int] = field(default_factory=dict)
    failed_tool_calls: int = 0
    format_valid: bool = False
    finish_reason: str = "answer"


# --- answer verification (SQuAD evaluation script semantics) ---------------------------------


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse white space (SQuAD)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, gold_answers: Sequence[str]) -> float:
    if prediction is None:
        return 0.0
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in gold_answers))


def token_f1(prediction: str | None, gold_answers: Sequence[str]) -> float:
    """Best token-level F1 against any gold answer."""
    if prediction is None:
        return 0.0
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in gold_answers:
        expected = normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if not predicted or not expected:
            best = max(best, float(predicted == expected))
            continue
        if common == 0:
            continue
        precision, recall = common / len(predicted), common / len(expected)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


# --- reward terms: EpisodeOutcome -> float ----------------------------------------------------


def exact_match_reward(outcome: EpisodeOutcome) -> float:
    return exact_match(outcome.answer, outcome.gold_answers)


def f1_reward(outcome: EpisodeOutcome) -> float:
    return token_f1(outcome.answer, outcome.gold_answers)


def format_reward(outcome: EpisodeOutcome) -> float:
    return float(outcome.format_valid)


def research_answer_reward(outcome: EpisodeOutcome) -> float:
    """ReSearch: 0 for invalid format, else answer F1, or 0.1 when the F1 is 0."""
    if not outcome.format_valid:
        return 0.0
    f1 = token_f1(outcome.answer, outcome.gold_answers)
    return f1 if f1 > 0 else RESEARCH_FORMAT_ONLY_REWARD


def search_budget_penalty(
    outcome: EpisodeOutcome,
    free_calls: int = 2,
    cost_per_extra_call: float = 0.1,
    cost_per_call: float = 0.0,
    tool: str = "search",
) -> float:
    """A non-positive penalty: ``-(cost_per_call · n + cost_per_extra_call · max(0, n − free_calls))``."""
    calls = outcome.tool_calls.get(tool, 0)
    return -(cost_per_call * calls + cost_per_extra_call * max(0, calls - free_calls))


def failed_call_penalty(outcome: EpisodeOutcome, cost_per_failure: float = 0.05) -> float:
    """Optional: a cost per malformed or failing tool call."""
    return -cost_per_failure * outcome.failed_tool_calls


# --- composition -------------------------------------------------------------------------------

RewardTerm = Callable[[EpisodeOutcome], float]


@dataclass(frozen=True)
class Reward:
    """A weighted sum of named terms. Calling it returns ``(total, components)``.

    ``components`` holds every term (unweighted) plus ``exact_match`` and ``f1``, which are always
    logged even when they carry no weight.
    """

    terms: tuple[tuple[str, RewardTerm, float], ...]

    def __call__(self, outcome: EpisodeOutcome) -> tuple[float, dict[str, float]]:
        components = {name: float(term(outcome)) for name, term, _ in self.terms}
        total = sum(weight * components[name] for name, _, weight in self.terms)
        components.setdefault("exact_match", exact_match_reward(outcome))
        components.setdefault("f1", f1_reward(outcome))
        return total, components


@dataclass(frozen=True)
class RewardConfig:
    """The knobs users set from YAML; ``build()`` turns them into a ``Reward``."""

    answer: str = "research"  # research | f1 | exact_match
    answer_weight: float = 1.0
    format_weight: float = 0.0
    search_free_calls: int = 2
    search_cost_per_extra_call: float = 0.1
    search_cost_per_call: float = 0.0
    failed_call_cost: float = 0.0
    # A learned term: a reward model's score of the finished trajectory, which the trainer adds in
    # batches after each rollout (trainers/algorithms/learned_reward.py); the environment never sees it.
    model: str | None = None  # `agentenv rm train`'s run or model folder
    model_weight: float = 1.0
    model_normalize: str = "batch"  # none | group | batch
    # Process rewards: term name -> weight, credit for single turns (agentenv/process_rewards.py),
    # which GRPO adds to the advantages of the turn's tokens; {} for none.
    process: dict[str, float] = field(default_factory=dict)

    def build(self) -> Reward:
        answers = {"research": research_answer_reward, "f1": f1_reward, "exact_match": exact_match_reward}
        if self.answer not in answers:
            raise ValueError(f"reward.answer must be one of {sorted(answers)}, got {self.answer!r}")
        terms: list[tuple[str, RewardTerm, float]] = [
            (f"{self.answer}_answer" if self.answer != "research" else "research_answer",
             answers[self.answer], self.answer_weight),
        ]
        if self.format_weight:
            terms.append(("format", format_reward, self.format_weight))
        penalty = partial(
            search_budget_penalty,
            free_calls=self.search_free_calls,
            cost_per_extra_call=self.search_cost_per_extra_call,
            cost_per_call=self.search_cost_per_call,
        )
        terms.append(("search_budget_penalty", penalty, 1.0))
        if self.failed_call_cost:
            terms.append(("failed_call_penalty", partial(failed_call_penalty, cost_per_failure=self.failed_call_cost), 1.0))
        return Reward(tuple(terms))
