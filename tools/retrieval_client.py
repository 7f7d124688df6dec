"""A client for retrieval servers: ours (``agentenv serve-retriever``), Search-R1's and FlashRAG's.

Requests follow the server's URL:

- ``http://host:port`` or ``.../retrieve``: the Search-R1 protocol,
  ``POST {"queries": [...], "topk": k, "return_scores": true}`` ->
  ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``.
- ``.../batch_search``: FlashRAG's serving script (as ReSearch runs it),
  ``POST {"query": [...], "top_n": k, "return_score": true}`` -> ``[[documents...], [[scores...]]]``.

A single query's results may also come as one flat list, ``{"result": [documents...]}`` or
``[documents...]``, rather than a list holding one list; both read the same.

Documents carry ``contents = '"Title"\\ntext'`` (wiki-18) or separate ``title`` and ``text``. Connection
errors and 5xx answers are retried with exponential backoff; whatever still fails raises
:class:`RetrieverError` with the URL and the cause, which the search tool shows the policy as an
error observation.

Several servers (``RetrieverClient([url_1, url_2, ...])``, or ``retriever_url: [...]`` in an
environment's kwargs) share each batch: a turn's queries are split into contiguous parts, one per
server, sent at the same time. A server that cannot be reached (or times out) is skipped for
``down_for_s`` and its part goes to the next live server; only when every server fails does the
batch fail.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx

from agentenv.corpora.loaders import split_wiki18_contents
from agentenv.tools.bm25 import Hit


class RetrieverError(RuntimeError):
    """The retrieval server could not be reached, refused the request, or answered nonsense."""


class RetrieverDown(RetrieverError):
    """The server could not be reached, kept failing (5xx) or did not answer in time: another
    server may answer the same request."""


def _hit_from_document(document: Any, score: float) -> Hit:
    if not isinstance(document, dict):
        raise ValueError(f"a document must be a JSON object, got {type(document).__name__}")
    if "text" in document:
        title, text = document.get("title") or "", document["text"]
    elif "contents" in document:
        title, text = split_wiki18_contents(document["contents"])
    else:
        raise ValueError(f"a document needs 'contents' or 'text', got keys {sorted(document)}")
    return Hit(id=str(document.get("id", "")), title=title, text=text, score=float(score))


def _hits_from_items(items: Any, scores: Any = None) -> list[Hit]:
    """One query's results: ``{"document", "score"}`` pairs, or bare documents with scores apart."""
    if not isinstance(items, list):
        raise ValueError(f"a query's results must be a list, got {type(items).__name__}")
    if scores is None:
        scores = [0.0] * len(items)
    if not isinstance(scores, list) or len(scores) != len(items):
        raise ValueError("scores do not line up with the documents")
    return [
        _hit_from_document(item["document"], item.get("score", 0.0))
        if isinstance(item, dict) and "document" in item
        else _hit_from_document(item, score)
        for item, score in zip(items, scores, strict=True)
    ]


def _is_flat(results: Any) -> bool:
    """True for one query's results given as a bare list of documents rather than a list of lists."""
    return isinstance(results, list) and all(isinstance(item, dict) for item in results)


def parse_response(payload: Any, num_queries: int) -> list[list[Hit]]:
    """Hits per query from a Search-R1 or FlashRAG response body, with or without scores.

    For one query, a flat list of documents (or ``{"document", "score"}`` pairs) is that query's
    results. Documents without scores get score 0.0. Raises ValueError if the shape is none of these.
    """
    if isinstance(payload, dict) and "result" in payload:
        per_query, scores = payload["result"], None
    elif (
        isinstance(payload, list)
        and len(payload) == 2
        and isinstance(payload[0], list)
        and len(payload[0]) == num_queries
        and all(isinstance(results, list) for results in payload[0])
        and isinstance(payload[1], list)
        and len(payload[1]) == num_queries
    ):
        # FlashRAG with return_score: a pair (documents per query, scores per query).
        per_query, scores = payload
    elif isinstance(payload, list):
        per_query, scores = payload, None
    else:
        raise ValueError(f"expected {{'result': [...]}} or a list, got {type(payload).__name__}")
    if num_queries == 1 and _is_flat(per_query):
        per_query = [per_query]
    if not isinstance(per_query, list) or len(per_query) != num_queries:
        raise ValueError(f"expected results for {num_queries} queries")
    if scores is None:
        return [_hits_from_items(items) for items in per_query]
    return [
        _hits_from_items(items, query_scores)
        for items, query_scores in zip(per_query, scores, strict=True)
    ]


class RetrieverClient:
    """Search one or several retrieval servers over HTTP, with pooled connections and bounded retries.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8000`` (Search-R1 ``/retrieve`` is appended), or
            a full endpoint URL ending in ``/retrieve`` or FlashRAG's ``/batch_search``; or a list
            of such servers, which share every batch (the module docstring).
        timeout_s: Per-request timeout (connect, read, write). A timeout is not retried: a slow
            server would only get slower under repeated requests.
        max_retries: Extra attempts after a connection error or a 5xx answer.
        backoff_s: Wait before the first retry; doubles for each further one.
        down_for_s: With several servers, how long one that failed is skipped.
        max_queries_per_request: A larger batch goes to a server as several requests of at most
            this many queries, one after the other (256: ``agentenv serve-retriever``'s limit). A
            rollout's turn is one batch of every environment's queries, B·G of them.

    Thread-safe; close it (or use it as a context manager) to release its connections.
    """

    def __init__(
        self, url: str | Sequence[str], timeout_s: float = 10.0, max_retries: int = 3, backoff_s: float = 0.2,
        down_for_s: float = 30.0, max_queries_per_request: int = 256,
    ):
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("url: give at least one retrieval server")
        self.servers = [_Server(u) for u in urls]
        self.url, self.flashrag = self.servers[0].url, self.servers[0].flashrag
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.down_for_s = down_for_s
        if max_queries_per_request < 1:
            raise ValueError(f"max_queries_per_request must be at least 1, got {max_queries_per_request}")
        self.max_queries_per_request = max_queries_per_request
        self._http = httpx.Client(timeout=timeout_s)
        self._pool = ThreadPoolExecutor(len(self.servers)) if len(self.servers) > 1 else None

    def search(self, query: str, k: int) -> list[Hit]:
        """The ``k`` best passages for one query."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The ``k`` best passages for each query: each server gets its share of the batch, in
        requests of at most ``max_queries_per_request`` queries. Raises :class:`RetrieverError`."""
        if not queries:
            return []
        if self._pool is None:
            return self._search(self.servers[0], queries, k)
        now = time.monotonic()
        live = [server for server in self.servers if server.down_until <= now] or self.servers
        parts = contiguous_parts(len(queries), len(live))
        futures = [
            self._pool.submit(self._search_with_failover, live, first, queries[start:stop], k)
            for first, (start, stop) in enumerate(parts)
        ]
        return [hits for future in futures for hits in future.result()]

    def _search_with_failover(self, live: list[_Server], first: int, queries: list[str], k: int) -> list[list[Hit]]:
        """``queries`` on ``live[first]``, else on the next live servers in turn."""
        problems = []
        for server in live[first:] + live[:first]:
            if server.down_until > time.monotonic() and server is not live[first]:
                problems.append(f"retriever at {server.url} is down (it failed moments ago)")
                continue  # found down by another part of this batch
            try:
                return self._search(server, queries, k)
            except RetrieverDown as error:
                server.down_until = time.monotonic() + self.down_for_s
                problems.append(str(error))
        raise RetrieverError(f"every retriever failed: {'; '.join(problems)}")

    def _search(self, server: _Server, queries: list[str], k: int) -> list[list[Hit]]:
        size = self.max_queries_per_request
        return [hits for start in range(0, len(queries), size) for hits in self._request(server, queries[start : start + size], k)]

    def _request(self, server: _Server, queries: list[str], k: int) -> list[list[Hit]]:
        if server.flashrag:
            body = {"query": list(queries), "top_n": k, "return_score": True}
        else:
            body = {"queries": list(queries), "topk": k, "return_scores": True}
        response = self._post(server.url, body)
        try:
            return parse_response(response.json(), len(queries))
        except ValueError as error:
            raise RetrieverError(
                f"retriever at {server.url} sent an unexpected response: {error}"
            ) from None

    def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                response = self._http.post(url, json=body)
            except httpx.TimeoutException:
                raise RetrieverDown(
                    f"retriever at {url} did not answer within {self.timeout_s} s"
                ) from None
            # RemoteProtocolError: the server closed a pooled keep-alive connection under us.
            except (httpx.ConnectError, httpx.RemoteProtocolError) as error:
                problem = f"cannot connect ({str(error) or type(error).__name__})"
            except httpx.TransportError as error:
                raise RetrieverError(
                    f"retriever at {url}: request failed ({type(error).__name__}: {error})"
                ) from None
            else:
                if response.status_code < 500:
                    break
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            if attempt + 1 < attempts:
                time.sleep(self.backoff_s * 2**attempt)
        else:
            raise RetrieverDown(
                f"retriever at {url} failed after {attempts} attempt(s): {problem}"
            )
        if response.status_code >= 400:
            raise RetrieverError(
                f"retriever at {url} refused the request (HTTP {response.status_code}): {_error_message(response)}"
            )
        return response

    def close(self) -> None:
        self._http.close()
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> RetrieverClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Server:
    """One server's endpoint, its protocol, and until when it is skipped."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must look like http://host:port, got {url!r}")
        path = parts.path.rstrip("/")
        self.url = url.rstrip("/") + ("/retrieve" if not path else "")
        self.flashrag = path.endswith("/batch_search")
        self.down_until = 0.0


def contiguous_parts(count: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of up to ``parts`` contiguous, non-empty parts of ``count`` items, sizes
    differing by at most one (a turn's queries across servers; a batch's questions across Ray
    workers, trainers/rollout/workers.py)."""
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(min(parts, count)):
        stop = start + base + (part < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
