"""The ``search`` tool: BM25 passages for a query, formatted the way Search-R1 shows them.

The observation lists the top ``k`` passages as numbered lines, ``Doc 1 (Title: ...) text``, cut to
a token budget so one search cannot flood the context. All calls of a turn go to the retriever as
one batch (one index pass, or one HTTP request). The retriever is anything with
``search_batch(queries, k) -> list[list[Hit]]``: a local :class:`~agentenv.tools.bm25.BM25Index`
or a :class:`~agentenv.tools.retrieval_client.RetrieverClient` talking to a server.

Example::

    search = search_tool(BM25Index.load("runs/index"), k=3, max_tokens=512, tokenizer=tokenizer)
    search.run({"query": "capital of Burkina Faso"}).text
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from agentenv.tools.base import Retrieved, Tool, ToolError, ToolUnavailable
from agentenv.tools.bm25 import Hit
from agentenv.tools.retrieval_client import RetrieverError

# A cut passage ends with this mark, so the policy can tell it was shortened.
ELLIPSIS = "…"
NO_RESULTS = "No passages matched the query."


class Retriever(Protocol):
    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]: ...


def whitespace_token_count(text: str) -> int:
    """Words separated by whitespace: the budget's unit when no tokenizer is given."""
    return len(text.split())


def hf_token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Count tokens as a Hugging Face tokenizer does, without special tokens."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncate_to_tokens(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest whole-word prefix of ``text`` that, with an ellipsis, fits ``max_tokens``."""
    if count_tokens(text) <= max_tokens:
        return text
    word_ends = [match.end() for match in re.finditer(r"\S+", text)]

    def fits(words: int) -> bool:
        return count_tokens(text[: word_ends[words - 1]] + ELLIPSIS) <= max_tokens

    # Binary search on the number of words kept; every accepted prefix was counted, so the
    # result fits even where a subword tokenizer's counts are not additive.
    low, high = 0, len(word_ends)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return text[: word_ends[low - 1]] + ELLIPSIS if low else ""


def _fair_shares(lengths: list[int], budget: int) -> list[int]:
    """Split ``budget`` so short items keep their full length and long ones share what is left."""
    shares = [0] * len(lengths)
    remaining = budget
    by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
    for position, item in enumerate(by_length):
        shares[item] = min(lengths[item], remaining // (len(lengths) - position))
        remaining -= shares[item]
    return shares


def format_passages(
    hits: list[Hit], max_tokens: int, count_tokens: Callable[[str], int] = whitespace_token_count
) -> str:
    """Number the hits as ``Doc i (Title: t) text``, one per line, within ``max_tokens`` in total."""
    if not hits:
        return NO_RESULTS
    lines = [
        f"Doc {rank} (Title: {hit.title}) {hit.text}" for rank, hit in enumerate(hits, start=1)
    ]
    lengths = [count_tokens(line) for line in lines]
    budget = max_tokens
    while True:
        shares = _fair_shares(lengths, budget)
        text = "\n".join(
            truncate_to_tokens(line, share, count_tokens)
            for line, share in zip(lines, shares, strict=True)
        )
        # The line breaks can cost tokens of their own; give the overshoot back and try again.
        overshoot = count_tokens(text) - max_tokens
        if overshoot <= 0 or budget <= 0:
            return text
        budget -= overshoot


def search_tool(
    retriever: Retriever,
    k: int = 3,
    max_tokens: int = 512,
    tokenizer: Any = None,
    max_query_chars: int = 1000,
) -> Tool:
    """The ``search`` tool over a local index or a retrieval server.

    Args:
        retriever: A :class:`BM25Index`, a :class:`RetrieverClient`, or anything with
            ``search_batch(queries, k) -> list[list[Hit]]``.
        k: Passages per query.
        max_tokens: Budget for one observation (all ``k`` passages together).
        tokenizer: A Hugging Face tokenizer to count the budget in its tokens; whitespace-separated
            words if None.
        max_query_chars: Longer queries are refused with an error observation.
    """
    if k < 1 or max_tokens < k:
        raise ValueError(f"need k >= 1 and max_tokens >= k, got k={k}, max_tokens={max_tokens}")
    count_tokens = whitespace_token_count if tokenizer is None else hf_token_counter(tokenizer)

    def problem(query: str) -> ToolError | None:
        if not query.strip():
            return ToolError("empty query; write a few keywords to search for")
        if len(query) > max_query_chars:
            return ToolError(f"query is {len(query)} characters long; the limit is {max_query_chars}")
        return None

    def search_many(calls: list[dict[str, Any]]) -> list[Retrieved | ToolError]:
        """One retriever call for the good queries; a bad query fails alone, a dead retriever fails all."""
        results: list[Retrieved | ToolError | None] = [problem(call["query"]) for call in calls]
        good = [i for i, result in enumerate(results) if result is None]
        if good:
            try:
                hits = retriever.search_batch([calls[i]["query"] for i in good], k)
            except RetrieverError as error:
                raise ToolUnavailable(f"search failed: {error}") from None
            for i, passages in zip(good, hits, strict=True):
                results[i] = Retrieved(format_passages(passages, max_tokens, count_tokens), tuple(hit.id for hit in passages))
        return results

    def search(query: str) -> Retrieved:
        """Search the knowledge corpus and return the most relevant passages.

        Args:
            query: A few keywords or a short question, e.g. "capital of Burkina Faso".
        """
        result = search_many([{"query": query}])[0]
        if isinstance(result, ToolError):
            raise result
        return result

    return Tool.from_function(search, name="search", batch_function=search_many, returns_passages=True)
