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
errors, reset connections and 5xx answers are retried with exponential backoff; whatever still fails
raises :class:`RetrieverError` with the URL and the cause, which the search tool shows the policy as
an error observation of an unavailable tool.

A server cannot hold the client or fill its memory: each request has a deadline of ``timeout_s``
from connecting to the last byte of the answer (httpx's own timeouts bound each read, so a server
sending a byte just before each one runs out would hold it for ever); an answer is read as a stream
and refused past :meth:`RetrieverClient.max_response_bytes` (4 MiB a query, 16 MiB in all, as
``agentenv serve-retriever`` limits its own); each query's hits are cut to ``k`` and each title and
text to ``max_passage_chars`` as they are read; and an answer that is not what the protocol says
(not JSON, nested too deeply, a number where a string belongs) raises :class:`RetrieverDown`, never
another exception, so that it is the retriever's failure rather than the policy's.

Several servers (``RetrieverClient([url_1, url_2, ...])``, or ``retriever_url: [...]`` in an
environment's kwargs) share each batch: a turn's queries are split into contiguous parts, one per
server, sent at the same time. A server that cannot be reached (or times out) is skipped for
``down_for_s`` and its part goes to the next live server; so does one whose answer is over the
byte cap or nonsense. Only when every server fails does the batch fail.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from agentenv.corpora.loaders import split_wiki18_contents
from agentenv.tools.bm25 import Hit
from agentenv.tools.server import MAX_HITS, max_response_bytes

# Titles and texts longer than this are cut as they are read: 10 000 characters are some 2 500
# tokens, five times the search tool's default budget for a whole observation (a wiki-18 passage
# is some 600 characters). Formatting tokenizes each passage a dozen times over, so a megabyte
# passage would take seconds where 10 000 characters take milliseconds.
MAX_PASSAGE_CHARS = 10_000
# A cut passage ends with the search tool's own mark for a cut, so the policy can tell.
CUT_MARK = "…"
# An error answer (4xx, 5xx) is read this far, for the message it carries.
MAX_ERROR_BYTES = 1 << 16
# A request goes out in pieces of this size, each bounded by what is left of the deadline (one
# write's timeout holds for every partial send within it).
WRITE_PIECE_BYTES = 1 << 16


class RetrieverError(RuntimeError):
    """The retrieval server could not be reached, refused the request, or answered nonsense."""


class RetrieverDown(RetrieverError):
    """The server could not be reached, kept failing (5xx, reset connections), did not answer in
    time, or answered too much or nonsense: another server may answer the same request."""


def _cut(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[: max_chars - len(CUT_MARK)] + CUT_MARK


def _score(value: Any) -> float:
    # bool is an int to Python, not a number to JSON; float() overflows past 1e308.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a score must be a number, got {type(value).__name__}")
    try:
        score = float(value)
    except OverflowError:
        raise ValueError("a score is too large for a float") from None
    if not math.isfinite(score):
        raise ValueError(f"a score must be a finite number, got {score}")
    return score


def _hit_from_document(document: Any, score: Any, max_chars: int | None) -> Hit:
    if not isinstance(document, dict):
        raise ValueError(f"a document must be a JSON object, got {type(document).__name__}")
    if "text" in document:
        title, text = document.get("title") or "", document["text"]
    elif "contents" in document:
        contents = document["contents"]
        if not isinstance(contents, str):
            raise ValueError(
                f"a document's 'contents' must be a string, got {type(contents).__name__}"
            )
        title, text = split_wiki18_contents(contents)
    else:
        raise ValueError(f"a document needs 'contents' or 'text', got keys {sorted(document)}")
    if not isinstance(title, str) or not isinstance(text, str):
        raise ValueError(
            "a document's title and text must be strings, "
            f"got {type(title).__name__} and {type(text).__name__}"
        )
    document_id = document.get("id")
    if document_id is None:
        document_id = ""
    elif isinstance(document_id, bool) or not isinstance(document_id, (str, int)):
        raise ValueError(
            f"a document's 'id' must be a string or an integer, got {type(document_id).__name__}"
        )
    return Hit(
        id=str(document_id),
        title=_cut(title, max_chars),
        text=_cut(text, max_chars),
        score=_score(score),
    )


def _hits_from_items(items: Any, scores: Any, k: int | None, max_chars: int | None) -> list[Hit]:
    """One query's results: ``{"document", "score"}`` pairs, or bare documents with scores apart."""
    if not isinstance(items, list):
        raise ValueError(f"a query's results must be a list, got {type(items).__name__}")
    if scores is None:
        scores = [0.0] * len(items)
    if not isinstance(scores, list) or len(scores) != len(items):
        raise ValueError("scores do not line up with the documents")
    # Hits past k are dropped unread: a server may send more than it was asked for.
    if k is not None:
        items, scores = items[:k], scores[:k]
    return [
        _hit_from_document(item["document"], item.get("score", 0.0), max_chars)
        if isinstance(item, dict) and "document" in item
        else _hit_from_document(item, score, max_chars)
        for item, score in zip(items, scores, strict=True)
    ]


def _is_flat(results: Any) -> bool:
    """True for one query's results given as a bare list of documents rather than a list of lists."""
    return isinstance(results, list) and all(isinstance(item, dict) for item in results)


def parse_response(
    payload: Any, num_queries: int, k: int | None = None, max_passage_chars: int | None = None
) -> list[list[Hit]]:
    """Hits per query from a Search-R1 or FlashRAG response body, with or without scores.

    For one query, a flat list of documents (or ``{"document", "score"}`` pairs) is that query's
    results. Documents without scores get score 0.0. Each query keeps its first ``k`` hits, and
    each title and text its first ``max_passage_chars`` characters (the last one a cut mark);
    None keeps all. Raises ValueError, and nothing else, for any other payload.
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
        return [_hits_from_items(items, None, k, max_passage_chars) for items in per_query]
    return [
        _hits_from_items(items, query_scores, k, max_passage_chars)
        for items, query_scores in zip(per_query, scores, strict=True)
    ]


class RetrieverClient:
    """Search one or several retrieval servers over HTTP, with pooled connections and bounded retries.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8000`` (Search-R1 ``/retrieve`` is appended), or
            a full endpoint URL ending in ``/retrieve`` or FlashRAG's ``/batch_search``; or a list
            of such servers, which share every batch (the module docstring).
        timeout_s: Deadline for each request, from connecting to the answer's last byte. A timeout
            is not retried: a slow server would only get slower under repeated requests.
        max_retries: Extra attempts after a connection error, a reset connection or a 5xx answer.
        backoff_s: Wait before the first retry; doubles for each further one.
        down_for_s: With several servers, how long one that failed is skipped.
        max_queries_per_request: A larger batch goes to a server as several requests of at most
            this many queries, one after the other (256: ``agentenv serve-retriever``'s limit), and
            of at most 4096 passages (queries × k, that server's limit too). A rollout's turn is
            one batch of every environment's queries, B·G of them.
        max_passage_chars: Longer titles and texts are cut to this many characters as they are
            read, before the search tool formats them.

    Thread-safe; close it (or use it as a context manager) to release its connections.
    """

    def __init__(
        self, url: str | Sequence[str], timeout_s: float = 10.0, max_retries: int = 3, backoff_s: float = 0.2,
        down_for_s: float = 30.0, max_queries_per_request: int = 256,
        max_passage_chars: int = MAX_PASSAGE_CHARS,
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
        if max_passage_chars < len(CUT_MARK):
            raise ValueError(
                f"max_passage_chars must be at least {len(CUT_MARK)}, got {max_passage_chars}"
            )
        self.max_passage_chars = max_passage_chars
        self._deadline = _Deadline()
        # identity: a compressed answer could hold far more than the byte cap counts.
        self._http = httpx.Client(
            timeout=timeout_s,
            transport=_transport_with_deadline(self._deadline),
            headers={"Accept-Encoding": "identity"},
        )
        self._pool = ThreadPoolExecutor(len(self.servers)) if len(self.servers) > 1 else None

    def max_response_bytes(self, num_queries: int) -> int:
        """The most bytes read of an answer for ``num_queries`` queries; more is refused."""
        return max_response_bytes(num_queries)

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
        size = min(self.max_queries_per_request, max(1, MAX_HITS // max(k, 1)))
        return [hits for start in range(0, len(queries), size) for hits in self._request(server, queries[start : start + size], k)]

    def _request(self, server: _Server, queries: list[str], k: int) -> list[list[Hit]]:
        if server.flashrag:
            body = {"query": list(queries), "top_n": k, "return_score": True}
        else:
            body = {"queries": list(queries), "topk": k, "return_scores": True}
        content = self._post(server.url, body, len(queries))
        try:
            return parse_response(json.loads(content), len(queries), k, self.max_passage_chars)
        except RecursionError:  # deeper than Python's JSON parser goes
            problem = "JSON nested too deeply"
        except ValueError as error:  # not JSON, not UTF-8, a number of over 4300 digits, a bad shape
            problem = str(error)
        raise RetrieverDown(f"retriever at {server.url} sent an unexpected response: {_clip(problem)}")

    def _post(self, url: str, body: dict[str, Any], num_queries: int) -> bytes:
        """The body of the answer to ``body``, retried after a connection error or a 5xx answer."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                with self._deadline.running(self.timeout_s):
                    status, content = self._exchange(url, body, num_queries)
            except httpx.TimeoutException:
                raise RetrieverDown(
                    f"retriever at {url} did not answer within {self.timeout_s} s"
                ) from None
            except httpx.ConnectError as error:
                problem = f"cannot connect ({str(error) or type(error).__name__})"
            # A reset (or a pooled keep-alive connection the server closed under us), while the
            # request went out or the answer came back.
            except (httpx.ReadError, httpx.WriteError) as error:
                problem = f"connection lost ({type(error).__name__}: {error})"
            # The server closed the connection without answering, or answered something that is
            # not HTTP.
            except httpx.RemoteProtocolError as error:
                problem = f"HTTP protocol error ({error})"
            except httpx.TransportError as error:
                raise RetrieverError(
                    f"retriever at {url}: request failed ({type(error).__name__}: {error})"
                ) from None
            else:
                if status < 500:
                    break
                problem = f"HTTP {status}: {_text(content)[:200]}"
            if attempt + 1 < attempts:
                time.sleep(self.backoff_s * 2**attempt)
        else:
            raise RetrieverDown(
                f"retriever at {url} failed after {attempts} attempt(s): {problem}"
            )
        if status >= 400:
            raise RetrieverError(
                f"retriever at {url} refused the request (HTTP {status}): {_error_message(content)}"
            )
        return content

    def _exchange(self, url: str, body: dict[str, Any], num_queries: int) -> tuple[int, bytes]:
        """One POST: the answer's status and body, read as a stream up to the byte cap."""
        cap = self.max_response_bytes(num_queries)
        with self._http.stream("POST", url, json=body) as response:
            if response.status_code >= 400:
                return response.status_code, _read_at_most(response, MAX_ERROR_BYTES)
            encoding = response.headers.get("Content-Encoding", "identity")
            if encoding.strip().lower() != "identity":
                raise RetrieverDown(
                    f"retriever at {url} sent an unexpected response: Content-Encoding "
                    f"{_clip(encoding)!r}, though the request asked for identity"
                )
            declared = response.headers.get("Content-Length", "")
            # Refused before a byte of it is read. (h11 has checked that it is a number.)
            if declared.isdigit() and (len(declared) > 18 or int(declared) > cap):
                raise RetrieverDown(
                    f"retriever at {url} sent an answer of {_clip(declared)} bytes; "
                    f"the limit for {num_queries} queries is {cap}"
                )
            chunks, size = [], 0
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > cap:
                    raise RetrieverDown(
                        f"retriever at {url} sent an answer of over {cap} bytes; "
                        f"the limit for {num_queries} queries is {cap}"
                    )
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

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


# --- a deadline for a whole request ---------------------------------------------------------


class _Deadline(threading.local):
    """When the request this thread is making must be over (``time.monotonic()``; inf: none)."""

    at = math.inf

    @contextmanager
    def running(self, seconds: float) -> Iterator[None]:
        self.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self.at = math.inf

    def left(self, timeout: float | None, expired: type[Exception]) -> float:
        """``timeout`` cut to what is left of the deadline; raises ``expired`` once it has passed."""
        left_s = self.at - time.monotonic()
        if left_s <= 0:
            raise expired("the request's deadline has passed")
        return left_s if timeout is None else min(timeout, left_s)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, with every connect, read and write bounded by the deadline of the
    request being made on this thread; httpx's timeouts are per operation, and a server that sends
    a byte before each one runs out would hold a request for ever."""

    def __init__(self, deadline: _Deadline):
        self.deadline = deadline
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = self.deadline.left(timeout, httpcore.ConnectTimeout)
        stream = self._sockets.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self.deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        timeout = self.deadline.left(timeout, httpcore.ConnectTimeout)
        stream = self._sockets.connect_unix_socket(path, timeout, socket_options)
        return _DeadlineStream(stream, self.deadline)

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline):
        self._stream = stream
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self.deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_PIECE_BYTES):
            piece = buffer[start : start + WRITE_PIECE_BYTES]
            self._stream.write(piece, self.deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout = self.deadline.left(timeout, httpcore.ConnectTimeout)
        stream = self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _DeadlineStream(stream, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _transport_with_deadline(deadline: _Deadline) -> httpx.HTTPTransport:
    """httpx's transport over a connection pool whose sockets keep ``deadline``.

    httpx takes no network backend of its own; its transport's pool (``_pool``) is where httpcore
    takes one. Limits and TLS are httpx's defaults. (With a transport given, httpx no longer reads
    proxies from the environment: retrieval servers are reached directly.)
    """
    ssl_context = httpx.create_ssl_context()
    transport = httpx.HTTPTransport(verify=ssl_context)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context,
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=_DeadlineBackend(deadline),
    )
    return transport


# --- reading answers --------------------------------------------------------------------------


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of a streamed answer's body; the rest is left unread."""
    chunks, size = [], 0
    for chunk in response.iter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _text(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _error_message(content: bytes) -> str:
    try:
        return _clip(str(json.loads(content)["error"]))
    except (ValueError, RecursionError, KeyError, TypeError):
        return _text(content)[:200]
