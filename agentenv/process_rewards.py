"""Process rewards: credit for single turns of an episode, beside the outcome reward of the whole.

An outcome reward says how the episode ended; a process reward says which step helped (Lightman et
al. 2023 and DeepSeekMath's process supervision, §4.1.3). For search agents the steps that can be
judged without a learned model are the tool calls. Each term is a pure function of one turn, the
turns before it and what the training data knows about the question, its ``Gold`` (the answers,
and the passages it needs where the data names them, as geo questions' ``entities`` do). A search
is a call to a tool that returns passages (``Tool.returns_passages``, as the shipped ``search``
does)::

    search_found_answer   1 if a search of the turn returned text containing a gold answer
                          (normalised as exact match normalises: case, punctuation, articles)
    search_found_passage  the number of the question's gold passages that the turn's searches
                          returned and no earlier turn's did (by passage id: a search tool that
                          returns ``Retrieved`` records them; 0 where the question names none)
    repeated_query        the number of the turn's search queries already searched in the episode
    failed_call           the number of the turn's calls that failed (unknown tool, bad arguments,
                          a call the tool refused or over the per-turn cap; not a tool that was down)

``search_found_passage`` credits the step a two-hop question needs before any answer can be right:
finding the second passage. An outcome reward gives a group in which every answer was wrong no
gradient at all; this term still separates the samples that found the passages from those that
did not. Counting each passage once per episode bounds it by the passages the question needs, so
searching again for what was already found earns nothing.

With weights w (``reward.process``, e.g. ``{search_found_passage: 0.2, repeated_query: -0.1}``),
turn k of episode i earns the credit::

    c_{i,k} = Σ_term w_term · term(turn k, turns 1 … k−1, gold of i)

GRPO adds c_{i,k} to the advantage of every token the policy generated in turn k (trainers/algorithms/grpo.py:
A_{i,t} = A_i + c_{i,k(t)}), raw, so a weight is in the units of a standardised group advantage.
The credit lands on the turn that earned it, not on every turn before it (no return-to-go): a
search that found the answer is rewarded, the turns that led to it keep only the outcome's
advantage. Per-turn means of every term are logged as ``process/<term>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentenv.search_behaviour import (
    Turn,
    contains_answer,
    passage_calls,
    query_text,
    retrieved_ids,
)


@dataclass(frozen=True)
class Gold:
    """What the training data knows about a question: its answers, and the ids of the passages it
    needs (empty where the data does not say)."""

    answers: tuple[str, ...]
    passages: tuple[str, ...] = ()

    @classmethod
    def of(cls, question: Mapping[str, Any]) -> Gold:
        """A question record's gold: its ``answers`` and ``entities``."""
        return cls(tuple(question.get("answers") or ()), tuple(str(e) for e in question.get("entities") or ()))


def search_found_answer(turn: Turn, earlier: Sequence[Turn], gold: Gold) -> float:
    """1.0 if a successful search of the turn returned a gold answer in its text."""
    return float(any(call["ok"] and contains_answer(call["output"], gold.answers) for call in passage_calls(turn)))


def search_found_passage(turn: Turn, earlier: Sequence[Turn], gold: Gold) -> float:
    """How many gold passages the turn's searches returned for the first time in the episode."""
    return float(len((retrieved_ids([turn]) - retrieved_ids(earlier)) & set(gold.passages)))


def repeated_query(turn: Turn, earlier: Sequence[Turn], gold: Gold) -> float:
    """How many of the turn's search queries were already searched in an earlier turn, or earlier
    in this one."""
    seen = {query_text(call) for previous in earlier for call in passage_calls(previous)}
    repeats = 0
    for call in passage_calls(turn):
        query = query_text(call)
        repeats += query in seen
        seen.add(query)
    return float(repeats)


def failed_call(turn: Turn, earlier: Sequence[Turn], gold: Gold) -> float:
    """How many of the turn's calls failed by the policy's doing (a tool that was down does not
    count, as it does not count against the format)."""
    return float(sum(not call["ok"] and not call.get("unavailable", False) for call in turn["calls"]))


PROCESS_TERMS: dict[str, Callable[[Turn, Sequence[Turn], Gold], float]] = {
    "search_found_answer": search_found_answer,
    "search_found_passage": search_found_passage,
    "repeated_query": repeated_query,
    "failed_call": failed_call,
}


def check_weights(weights: Mapping[str, float]) -> None:
    """ValueError naming an unknown term or a weight that is not a number."""
    for name, weight in weights.items():
        if name not in PROCESS_TERMS:
            raise ValueError(f"reward.process: unknown term {name!r}; the terms are {sorted(PROCESS_TERMS)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"reward.process.{name}: the weight must be a number, got {weight!r}")


def turn_terms(turns: Sequence[Turn], gold: Gold, names: Sequence[str]) -> list[dict[str, float]]:
    """Every named term for every turn: ``[{term: value}, ...]``, one dict per turn."""
    return [{name: PROCESS_TERMS[name](turn, turns[:k], gold) for name in names} for k, turn in enumerate(turns)]


def turn_credits(turns: Sequence[Turn], gold: Gold, weights: Mapping[str, float]) -> list[float]:
    """c_{i,k} for every turn k of one episode."""
    return weighted_credits(turn_terms(turns, gold, list(weights)), weights)


def weighted_credits(terms: Sequence[Mapping[str, float]], weights: Mapping[str, float]) -> list[float]:
    """c_{i,k} from the turns' term values (``turn_terms``)."""
    return [sum(weights[name] * values[name] for name in weights) for values in terms]


def token_credits(trajectory: Any, credits: Sequence[float]) -> list[float]:
    """The credit of each token of ``trajectory``: its turn's c_{i,k} on the tokens of the k-th policy
    segment, 0 on prompt and tool output. A trajectory's policy segments are its turns, in order."""
    values: list[float] = []
    turn = 0
    for segment in trajectory.segments:
        if segment.source == "policy":
            credit = credits[turn] if turn < len(credits) else 0.0
            values.extend([credit] * len(segment.token_ids))
            turn += 1
        else:
            values.extend([0.0] * len(segment.token_ids))
    return values
