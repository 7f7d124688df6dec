"""Process rewards: credit for single turns of an episode, beside the outcome reward of the whole.

An outcome reward says how the episode ended; a process reward says which step helped (Lightman et
al. 2023 and DeepSeekMath's process supervision, §4.1.3). For search agents the steps that can be
judged without a learned model are the tool calls. Each term is a pure function of one turn, the
turns before it and the gold answers (a search is a call to a tool that returns passages,
``Tool.returns_passages``, as the shipped ``search`` does)::

    search_found_answer   1 if a search of the turn returned text containing a gold answer
                          (normalised as exact match normalises: case, punctuation, articles)
    repeated_query        the number of the turn's search queries already searched in the episode
    failed_call           the number of the turn's calls that failed (unknown tool, bad arguments,
                          a call the tool refused or over the per-turn cap; not a tool that was down)

With weights w (``reward.process``, e.g. ``{search_found_answer: 0.2, repeated_query: -0.1}``),
turn k of episode i earns the credit::

    c_{i,k} = Σ_term w_term · term(turn k, turns 1 … k−1, gold answers of i)

GRPO adds c_{i,k} to the advantage of every token the policy generated in turn k (trainers/algorithms/grpo.py:
A_{i,t} = A_i + c_{i,k(t)}), raw, so a weight is in the units of a standardised group advantage.
The credit lands on the turn that earned it, not on every turn before it (no return-to-go): a
search that found the answer is rewarded, the turns that led to it keep only the outcome's
advantage. Per-turn means of every term are logged as ``process/<term>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentenv.search_behaviour import Turn, contains_answer, passage_calls, query_text


def search_found_answer(turn: Turn, earlier: Sequence[Turn], gold_answers: Sequence[str]) -> float:
    """1.0 if a successful search of the turn returned a gold answer in its text."""
    return float(any(call["ok"] and contains_answer(call["output"], gold_answers) for call in passage_calls(turn)))


def repeated_query(turn: Turn, earlier: Sequence[Turn], gold_answers: Sequence[str]) -> float:
    """How many of the turn's search queries were already searched in an earlier turn, or earlier
    in this one."""
    seen = {query_text(call) for previous in earlier for call in passage_calls(previous)}
    repeats = 0
    for call in passage_calls(turn):
        query = query_text(call)
        repeats += query in seen
        seen.add(query)
    return float(repeats)


def failed_call(turn: Turn, earlier: Sequence[Turn], gold_answers: Sequence[str]) -> float:
    """How many of the turn's calls failed by the policy's doing (a tool that was down does not
    count, as it does not count against the format)."""
    return float(sum(not call["ok"] and not call.get("unavailable", False) for call in turn["calls"]))


PROCESS_TERMS: dict[str, Callable[[Turn, Sequence[Turn], Sequence[str]], float]] = {
    "search_found_answer": search_found_answer,
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


def turn_terms(turns: Sequence[Turn], gold_answers: Sequence[str], names: Sequence[str]) -> list[dict[str, float]]:
    """Every named term for every turn: ``[{term: value}, ...]``, one dict per turn."""
    return [{name: PROCESS_TERMS[name](turn, turns[:k], gold_answers) for name in names} for k, turn in enumerate(turns)]


def turn_credits(turns: Sequence[Turn], gold_answers: Sequence[str], weights: Mapping[str, float]) -> list[float]:
    """c_{i,k} for every turn k of one episode."""
    return weighted_credits(turn_terms(turns, gold_answers, list(weights)), weights)


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
