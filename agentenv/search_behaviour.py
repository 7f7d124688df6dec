"""What the agent's searches did: per episode, and as the metrics a training step and an evaluation log.

A search is a call to a tool that returns passages (``Tool.returns_passages``: the shipped
``search``, or a retriever of one's own) that ran. From the calls the environment records
(``info["turns"]``) and the question's gold answers, one episode gets::

    searches               passage calls that ran
    duplicate queries      queries equal to an earlier query of the episode (normalised as exact
                           match normalises: case, punctuation, articles)
    near-duplicate queries not equal, but sharing ≥ 80 % of their words with an earlier one
                           (Jaccard of the word sets)
    question copies        queries that are the question itself, normalised
    found                  a gold answer appears, as whole words, in something a search returned
    gold passages found    of the passages the question needs (its ``entities``, where the data
                           names them), how many a search returned (by id: ``Retrieved`` results)
    verdict                "no search" · "not found" (searched, never saw a gold answer)
                           · "found, read right" (saw it, answered it: EM 1)
                           · "found, misread" (saw it, answered something else)

The verdicts split a wrong answer into "could not find it" and "found it and misread", which decide
different fixes (the retriever and the queries, or reading). Over many episodes (``search_metrics``)::

    search/per_episode           searches per episode; search/episodes_with_{0,1,2,3+}: the histogram
    search/duplicate_rate        duplicate queries / queries   (and near_duplicate_rate, question_copy_rate)
    search/answer_recall         episodes that found a gold answer / episodes that searched
    search/passage_recall        gold passages returned / gold passages needed, over the episodes
                                 that searched for a question that names them (a two-hop question
                                 needs two: 0.5 is "found the first hop only")
    search/reading_accuracy      EM over the episodes that found it
    search/verdict/<verdict>     the share of episodes with each verdict (no_search, not_found,
                                 found_read_right, found_misread; they sum to 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentenv.rewards import exact_match, normalize_answer

NEAR_DUPLICATE_JACCARD = 0.8
# Each verdict and the name its share is logged under (search/verdict/<name>).
VERDICTS = {"no search": "no_search", "not found": "not_found", "found, read right": "found_read_right",
            "found, misread": "found_misread"}
HISTOGRAM_BINS = ("0", "1", "2", "3+")

Turn = Mapping[str, Any]  # {"calls": [{"tool", "arguments", "ok", "unavailable", "output", "passages"}, ...]}


def passage_calls(turn: Turn) -> list[dict[str, Any]]:
    """The turn's calls to tools that return passages, with arguments (refused ones included; a
    call whose arguments did not parse has none).
    Records written before the environment marked such tools count calls to ``search``."""
    return [
        call for call in turn["calls"]
        if call.get("passages", call["tool"] == "search") and isinstance(call.get("arguments"), dict) and call["arguments"]
    ]


def retrieved_ids(turns: Sequence[Turn]) -> set[str]:
    """The ids of the passages the turns' searches that ran returned (``Retrieved`` results)."""
    return {str(i) for turn in turns for call in passage_calls(turn) if call["ok"] for i in call.get("passage_ids", ())}


def query_text(call: Mapping[str, Any]) -> str:
    """A passage call's query, normalised: its ``query`` argument, else its arguments' values."""
    arguments = call["arguments"]
    text = arguments["query"] if "query" in arguments else " ".join(str(v) for v in arguments.values())
    return normalize_answer(str(text))


def contains_answer(text: str, gold_answers: Sequence[str]) -> bool:
    """A gold answer appears in ``text`` as whole words, both normalised."""
    padded = f" {normalize_answer(text)} "
    return any(gold and f" {gold} " in padded for gold in (normalize_answer(g) for g in gold_answers))


@dataclass(frozen=True)
class SearchRecord:
    searches: int
    queries: int  # passage calls with arguments, whether or not they ran
    duplicate_queries: int
    near_duplicate_queries: int
    question_copies: int
    found: bool
    verdict: str
    gold_passages: int = 0
    gold_passages_found: int = 0


def search_record(
    turns: Sequence[Turn], question: str, gold_answers: Sequence[str], answer: str | None,
    gold_passages: Sequence[str] = (),
) -> SearchRecord:
    """What one episode's searches did (the module docstring's fields)."""
    calls = [call for turn in turns for call in passage_calls(turn)]
    question_text = normalize_answer(question)
    seen: list[str] = []
    duplicates = near = copies = 0
    for call in calls:
        query = query_text(call)
        if query in seen:
            duplicates += 1
        elif any(_jaccard(query, earlier) >= NEAR_DUPLICATE_JACCARD for earlier in seen):
            near += 1
        copies += bool(query) and query == question_text
        seen.append(query)
    ran = [call for call in calls if call["ok"]]
    found = any(contains_answer(call["output"], gold_answers) for call in ran)
    needed = {str(p) for p in gold_passages}
    if not ran:
        verdict = "no search"
    elif not found:
        verdict = "not found"
    else:
        verdict = "found, read right" if exact_match(answer, gold_answers) else "found, misread"
    return SearchRecord(len(ran), len(calls), duplicates, near, copies, found, verdict, len(needed), len(needed & retrieved_ids(turns)))


def episode_search_record(episode: Any) -> SearchRecord:
    """``search_record`` of an ``Episode`` (or anything with ``turns``, ``question``, ``answer``)."""
    question = episode.question or {}
    return search_record(episode.turns, question.get("question", ""), question.get("answers", ()), episode.answer,
                         question.get("entities") or ())


def search_metrics(records: Sequence[SearchRecord], prefix: str = "search/") -> dict[str, float]:
    """The module docstring's aggregate metrics over episodes' records."""
    if not records:
        return {}
    n = len(records)
    queries = sum(r.queries for r in records)
    searched = [r for r in records if r.searches]
    found = [r for r in searched if r.found]
    metrics = {f"{prefix}per_episode": sum(r.searches for r in records) / n}
    for label in HISTOGRAM_BINS:
        count = sum(_bin(r.searches) == label for r in records)
        metrics[f"{prefix}episodes_with_{label}"] = count / n
    metrics[f"{prefix}duplicate_rate"] = sum(r.duplicate_queries for r in records) / max(queries, 1)
    metrics[f"{prefix}near_duplicate_rate"] = sum(r.near_duplicate_queries for r in records) / max(queries, 1)
    metrics[f"{prefix}question_copy_rate"] = sum(r.question_copies for r in records) / max(queries, 1)
    metrics[f"{prefix}answer_recall"] = len(found) / len(searched) if searched else 0.0
    named = [r for r in searched if r.gold_passages]
    if named:
        metrics[f"{prefix}passage_recall"] = sum(r.gold_passages_found for r in named) / sum(r.gold_passages for r in named)
    metrics[f"{prefix}reading_accuracy"] = (
        sum(r.verdict == "found, read right" for r in found) / len(found) if found else 0.0
    )
    for verdict, name in VERDICTS.items():
        metrics[f"{prefix}verdict/{name}"] = sum(r.verdict == verdict for r in records) / n
    return metrics


def _bin(searches: int) -> str:
    return str(searches) if searches < 3 else "3+"


def _jaccard(a: str, b: str) -> float:
    words_a, words_b = set(a.split()), set(b.split())
    if not words_a or not words_b:
        return 0.0
    return len(words_a & words_b) / len(words_a | words_b)
