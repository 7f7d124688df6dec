"""``agentenv serve-retriever``: a BM25 index over HTTP, speaking Search-R1's retrieval protocol.

``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": bool}`` answers
``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``, one list per query, as
Search-R1's ``search_r1/search/retrieval_server.py`` does; without ``return_scores`` each list holds
the documents alone. One query string, ``{"query": "...", "topk": k, "return_scores": bool}``, as
SkyRL-gym's search tool (``skyrl_gym/tools/search.py``) posts it, is answered in the same shape with
one list, as SkyRL's own ``retrieval_server.py`` answers it and as that tool reads it
(``result[0]``). ``contents`` is ``'"Title"\\ntext'``, the wiki-18 layout Search-R1's prompts split
back into title and text. ``GET /health`` reports the backend and the passage count.

Any trainer that speaks this protocol can use our index, and our :class:`RetrieverClient` can use
theirs (an e5 + FAISS server on wiki-18, say). Bad requests get a 4xx answer with
``{"error": message}``, and their connection is closed after it (``Connection: close``): what
follows a request the server refused may have been framed otherwise than the client meant, so
none of it is read as a request. A body is framed by one ``Content-Length`` of digits alone, and
a ``Transfer-Encoding`` is refused (with a ``Content-Length`` beside it, 400: the body could be
read two ways); a body sent with a GET is read and dropped. Every malformed body (not JSON, nested
too deeply, a number of over 4300 digits) is answered 400, never with a dropped connection, which
a client would take for a lost connection and resend. A request asks for at most ``MAX_HITS``
passages (queries × topk), and an answer weighs at most :func:`max_response_bytes`. A search that
fails, a Rust panic inside tantivy included, is answered 500 naming the error.

Each connection is served by a thread of its own (tantivy releases the GIL while it searches, so
connections are served in parallel), within two limits that keep stalled or flooding clients from
taking the server down:

- ``max_connections`` (``--max-connections``, default 512): connections served at once. One more
  is answered ``503`` with ``{"error": ...}``, ``Retry-After: 1`` and ``Connection: close`` by the
  accept loop itself, without a thread. SkyRL-gym's search tool and our client retry a 503;
  Search-R1's rollout posts once and does not, so keep the limit above what its workers open.
- ``read_timeout_s`` (``--read-timeout-s``, default 10): the deadline for a whole request, from
  the moment the server starts waiting for it to the last byte of its body. A connection that
  stalls mid-body gets ``408`` and is closed; one that stalls mid-header, or sits idle between
  keep-alive requests that long, is closed (uvicorn, which serves Search-R1's and SkyRL's
  retrievers, closes idle connections after 5 s). It is a deadline, not a per-receive timeout: a
  client that trickles one byte at a time is cut off all the same. An answer the client does not
  read within ``read_timeout_s`` is dropped.

From Python (tests, benchmarks)::

    with running_server(index) as url:       # a free port on 127.0.0.1
        RetrieverClient(url).search_batch(["capital of Burkina Faso"], k=3)
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import math
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from agentenv.tools.bm25 import BM25Index, Hit

logger = logging.getLogger(__name__)

DEFAULT_TOPK = 3  # Search-R1's retrieval_server.py default (--topk 3)
MAX_TOPK = 100
MAX_QUERIES = 256
# Passages one request may ask for, queries × topk: 256 queries at topk 16, or 40 at topk 100.
MAX_HITS = 4096
MAX_QUERY_CHARS = 1000
MAX_BODY_BYTES = 1 << 20
# What an answer may weigh: 4 MiB a query (three passages of a megabyte, or MAX_TOPK of 40 KB; a
# wiki-18 passage is under 1 KB), and 16 MiB in all whatever the batch (MAX_HITS passages of 4 KB),
# which bounds the memory one answer takes: parsed, its JSON takes some ten times its bytes.
# RetrieverClient holds every server to the same limits.
MAX_RESPONSE_BYTES_PER_QUERY = 4 << 20
MAX_RESPONSE_BYTES = 16 << 20
# An oversized body is read and dropped up to this size, so the client gets to read the 413
# instead of a reset connection; anything bigger is cut off.
MAX_DISCARDED_BYTES = 16 << 20
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_READ_TIMEOUT_S = 10.0
# The listen backlog. The stdlib's 5 overflows as soon as clients connect faster than the accept
# loop starts threads, and each connection past it waits for a SYN retransmit (1 s, then 3 s...):
# 600 connections took 99 s to open beside 200 stalled ones, with 5.
LISTEN_BACKLOG = 1024
# A connection answered 503, or closed after a 4xx answer, is closed up to this long after the
# answer, reading and dropping what the client still sends: closing a socket with unread bytes
# sends a reset, which can lose the answer before the client reads it. At most MAX_LINGERING
# connections answered 503 wait at once, the oldest closed first (each holds a file descriptor).
CLOSE_LINGER_S = 1.0
MAX_LINGERING = 128


class BadRequest(Exception):
    """A request the server refuses; ``status`` is the 4xx code, the message says what was wrong."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def max_response_bytes(num_queries: int) -> int:
    """The most an answer for ``num_queries`` queries may weigh, in bytes."""
    return min(MAX_RESPONSE_BYTES, max(1, num_queries) * MAX_RESPONSE_BYTES_PER_QUERY)


def _shown(value: Any) -> str:
    """A value for an error message: a scalar's repr, cut short, or a container's type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return text if len(text) <= 50 else text[:50] + "…"
    return f"a {type(value).__name__}"


def parse_retrieve_request(body: bytes) -> tuple[list[str], int, bool]:
    """Check a ``/retrieve`` body; return (queries, topk, return_scores) or raise BadRequest.

    A single ``query`` string comes back as a list of one query.
    """
    try:
        payload = json.loads(body)
    except RecursionError:  # deeper than Python's JSON parser goes
        raise BadRequest(HTTPStatus.BAD_REQUEST, "body is nested too deeply to read as JSON") from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise BadRequest(
            HTTPStatus.BAD_REQUEST, f"body must be a JSON object, got {type(payload).__name__}"
        )
    if "queries" in payload and "query" in payload:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "give 'queries' or 'query', not both")
    if "query" in payload:
        query = payload["query"]
        if not isinstance(query, str):
            raise BadRequest(
                HTTPStatus.BAD_REQUEST,
                f"'query' must be a string, got {type(query).__name__}; send a list as 'queries'",
            )
        queries = [query]
    elif "queries" in payload:
        queries = payload["queries"]
        if not isinstance(queries, list) or not all(isinstance(query, str) for query in queries):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "'queries' must be a list of strings")
    else:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            "the body needs 'queries' (a list of strings, as Search-R1 sends) "
            "or 'query' (one string, as SkyRL-gym sends)",
        )
    if len(queries) > MAX_QUERIES:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"{len(queries)} queries in one request; the limit is {MAX_QUERIES}",
        )
    too_long = [i for i, query in enumerate(queries) if len(query) > MAX_QUERY_CHARS]
    if too_long:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"query {too_long[0]} is {len(queries[too_long[0]])} characters long; the limit is {MAX_QUERY_CHARS}",
        )
    # Search-R1 falls back to its default for a missing or null topk; so do we.
    topk = payload.get("topk")
    topk = DEFAULT_TOPK if topk is None else topk
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"'topk' must be an integer from 1 to {MAX_TOPK}, got {_shown(topk)}",
        )
    if len(queries) * topk > MAX_HITS:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"{len(queries)} queries at topk {topk} ask for {len(queries) * topk} passages; "
            f"the limit is {MAX_HITS} (queries × topk) in one request",
        )
    return_scores = payload.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"'return_scores' must be true or false, got {_shown(return_scores)}",
        )
    return queries, topk, return_scores


def document(hit: Hit) -> dict[str, str]:
    """A hit as a wiki-18 document: ``{"id", "contents": '"Title"\\ntext'}``."""
    return {"id": hit.id, "contents": f'"{hit.title}"\n{hit.text}'}


def retrieve_response(results: list[list[Hit]], return_scores: bool) -> dict[str, Any]:
    """The ``/retrieve`` answer for the hits of each query."""
    if return_scores:
        return {
            "result": [
                [{"document": document(hit), "score": hit.score} for hit in hits]
                for hits in results
            ]
        }
    return {"result": [[document(hit) for hit in hits] for hits in results]}


class _DeadlineReader(io.RawIOBase):
    """A connection's incoming bytes, every receive bounded by what is left of ``deadline``.

    A per-receive socket timeout alone lets a client hold a thread for ever by sending one byte
    just before each timeout; this bounds the whole request.
    """

    def __init__(self, connection: socket.socket, write_timeout_s: float):
        self.connection = connection
        self.write_timeout_s = write_timeout_s
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left_s = self.deadline - time.monotonic()
        if left_s <= 0:
            raise TimeoutError("the request did not arrive before its deadline")
        self.connection.settimeout(left_s)
        try:
            return self.connection.recv_into(buffer)
        finally:
            # Answers go out with a timeout of their own, not with what is left of the deadline.
            self.connection.settimeout(self.write_timeout_s)


class _RetrieverHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, so a pooled client skips a TCP handshake per request.
    protocol_version = "HTTP/1.1"
    # The stdlib writes headers and body in two sends; with Nagle's algorithm on, the body then
    # waits for the client's delayed ACK. Measured on loopback: p50 44 ms with it, 0.6 ms without.
    disable_nagle_algorithm = True
    # The stdlib's own errors (a malformed request line, an unknown method) as JSON too.
    error_content_type = "application/json"
    error_message_format = '{"error": "%(message)s"}'
    server: RetrieverServer

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # the stdlib sets it on the socket: for writes
        self._linger = False
        super().setup()
        self.rfile.close()  # reads go through the request's deadline instead
        self._reader = _DeadlineReader(self.connection, self.server.read_timeout_s)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The stdlib closes the connection on a TimeoutError while it reads the request line or
        # the headers; _read_body answers 408 for one in the body.
        self._reader.deadline = time.monotonic() + self.server.read_timeout_s
        super().handle_one_request()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            self._read_body(required=False)  # a body sent with a GET is no request of its own
            if path == "/retrieve":
                raise BadRequest(HTTPStatus.METHOD_NOT_ALLOWED, "use POST for /retrieve")
            if path != "/health":
                raise BadRequest(
                    HTTPStatus.NOT_FOUND, f"no such path {path!r}; use POST /retrieve or GET /health"
                )
        except BadRequest as error:
            self._refuse(error)
            return
        index = self.server.index
        self._send_json(
            HTTPStatus.OK, {"status": "ok", "backend": index.backend, "passages": len(index)}
        )

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = self._read_body(required=True)  # read first: the connection stays in step
            if path != "/retrieve":
                status = (
                    HTTPStatus.METHOD_NOT_ALLOWED if path == "/health" else HTTPStatus.NOT_FOUND
                )
                raise BadRequest(
                    status, f"no POST endpoint {path!r}; use POST /retrieve or GET /health"
                )
            queries, topk, return_scores = parse_retrieve_request(body)
        except BadRequest as error:
            self._refuse(error)
            return
        try:
            results = self.server.index.search_batch(queries, topk)
        except Exception as error:  # noqa: BLE001 - answer 500 and keep serving
            self._search_failed(queries, error)
            return
        except BaseException as error:
            # A Rust panic inside tantivy reaches Python as pyo3's PanicException, which derives
            # from BaseException (so that `except Exception` lets it through): one query's panic
            # is that request's 500, not the end of the thread and a dropped connection.
            if type(error).__name__ != "PanicException":
                raise
            self._search_failed(queries, error)
            return
        answer = _encode(retrieve_response(results, return_scores))
        limit = max_response_bytes(len(queries))
        if len(answer) > limit:
            self._refuse(
                BadRequest(
                    HTTPStatus.BAD_REQUEST,
                    f"the answer would be {len(answer)} bytes; the limit for {len(queries)} "
                    f"queries is {limit}: ask for fewer queries or a smaller topk",
                )
            )
            return
        self._send(HTTPStatus.OK, answer)

    def _search_failed(self, queries: list[str], error: BaseException) -> None:
        logger.error("search failed for %d queries", len(queries), exc_info=error)
        self._send_json(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            {"error": f"search failed: {type(error).__name__}: {str(error)[:500]}"},
        )

    def _read_body(self, required: bool) -> bytes:
        """The request's body, framed by its one Content-Length; raises BadRequest.

        Framing that could be read two ways is refused: a proxy in front of the server might read
        it the other way, and take what the server reads as a body for a request of its own.
        """
        lengths = self.headers.get_all("Content-Length") or []
        encodings = self.headers.get_all("Transfer-Encoding") or []
        if len(lengths) > 1:
            raise BadRequest(
                HTTPStatus.BAD_REQUEST,
                f"several Content-Length headers ({_shown(', '.join(lengths))}); send one",
            )
        if encodings and lengths:
            raise BadRequest(
                HTTPStatus.BAD_REQUEST,
                "both Transfer-Encoding and Content-Length: the body could be read either way; "
                "send Content-Length alone",
            )
        if encodings:
            encoding = ", ".join(encodings)
            if encoding.strip().lower() != "chunked":
                raise BadRequest(
                    HTTPStatus.BAD_REQUEST,
                    f"Transfer-Encoding {_shown(encoding)} is not supported; send the body with "
                    "Content-Length",
                )
            raise BadRequest(
                HTTPStatus.LENGTH_REQUIRED,
                "a Content-Length header is required (chunked bodies are not read)",
            )
        if not lengths:
            if required:
                raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return b""
        length_header = lengths[0].strip()
        # Digits alone: int() would also take "+18", "1_8", " 18" and non-ASCII digits.
        if not (length_header.isascii() and length_header.isdigit()):
            raise BadRequest(
                HTTPStatus.BAD_REQUEST, f"invalid Content-Length {_shown(length_header)}"
            )
        # More than 18 digits is over any limit (and int() refuses over 4300).
        length = int(length_header) if len(length_header) <= 18 else None
        if length is None or length > MAX_BODY_BYTES:
            self._discard(MAX_DISCARDED_BYTES if length is None else min(length, MAX_DISCARDED_BYTES))
            size = f"{length} bytes" if length is not None else "over 10^18 bytes"
            raise BadRequest(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body is {size}; the limit is {MAX_BODY_BYTES}",
            )
        try:
            return self.rfile.read(length)
        except TimeoutError:
            raise BadRequest(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the {length}-byte body did not arrive within {self.server.read_timeout_s:g} s "
                "of the request's start (--read-timeout-s)",
            ) from None

    def _discard(self, length: int) -> None:
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    return
                length -= len(chunk)
        except TimeoutError:
            pass  # answered all the same; the connection is closed after it

    def _refuse(self, error: BadRequest) -> None:
        """Answer a refused request, and close its connection once the answer is out."""
        self.close_connection = True
        self._linger = True
        self._send_json(error.status, {"error": str(error)})

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, _encode(payload))

    def _send(self, status: HTTPStatus, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        super().finish()
        if self._linger:
            _drain_before_close(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug("%s " + format, self.address_string(), *args)


class RetrieverServer(ThreadingHTTPServer):
    """An HTTP server answering ``/retrieve`` and ``/health`` from one :class:`BM25Index`.

    Args:
        index: The passages to search.
        host, port: Where to listen; port 0 picks a free one.
        max_connections: Connections served at once; one more is answered 503.
        read_timeout_s: Deadline for each whole request (and timeout for writing each answer).
    """

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        index: BM25Index,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ):
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if not read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be positive, got {read_timeout_s}")
        self.index = index
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lingering: deque[tuple[float, socket.socket]] = deque()
        self._busy_answer = _busy_answer(max_connections)
        super().__init__((host, port), _RetrieverHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        # Runs in the accept loop: a connection past the limit is answered here, without a thread.
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, connection: socket.socket) -> None:
        logger.debug("connection limit %d reached; answering 503", self.max_connections)
        try:
            connection.setblocking(False)
            connection.send(self._busy_answer)  # a few hundred bytes: a fresh socket takes them
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            connection.close()
            return
        self._lingering.append((time.monotonic() + CLOSE_LINGER_S, connection))
        while len(self._lingering) > MAX_LINGERING:
            _close_refused(self._lingering.popleft()[1])

    def service_actions(self) -> None:
        # serve_forever calls this after every accepted connection and every poll_interval.
        now = time.monotonic()
        while self._lingering and self._lingering[0][0] <= now:
            _close_refused(self._lingering.popleft()[1])

    def server_close(self) -> None:
        super().server_close()
        while self._lingering:
            _close_refused(self._lingering.popleft()[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets its connection or stops reading is routine under load, not a bug.
        if isinstance(sys.exception(), (ConnectionError, TimeoutError)):
            logger.debug("connection from %s dropped: %s", client_address, sys.exception())
        else:
            logger.exception("error while serving %s", client_address)


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _drain_before_close(connection: socket.socket) -> None:
    """End the answer (FIN), then read and drop what the client still sends, until it closes its
    end, for CLOSE_LINGER_S and MAX_DISCARDED_BYTES at most: a close with unread bytes would send
    a reset that can lose the answer before the client reads it."""
    try:
        connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + CLOSE_LINGER_S
        left = MAX_DISCARDED_BYTES
        while left > 0 and (left_s := deadline - time.monotonic()) > 0:
            connection.settimeout(left_s)
            chunk = connection.recv(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
    except OSError:  # TimeoutError included: the client kept its end open
        pass


def _busy_answer(max_connections: int) -> bytes:
    body = json.dumps(
        {
            "error": f"the server is serving its limit of {max_connections} connections "
            "(--max-connections); retry shortly"
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _close_refused(connection: socket.socket) -> None:
    # Drop what the client sent meanwhile, so the close is a FIN rather than a reset.
    try:
        connection.recv(1 << 16)
    except OSError:
        pass
    connection.close()


def serve(
    index: BM25Index,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> None:
    """Serve ``index`` until interrupted (Ctrl-C)."""
    with RetrieverServer(index, host, port, max_connections, read_timeout_s) as server:
        print(
            f"serving {len(index)} passages ({index.backend}) on {server.url}/retrieve", flush=True
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


@contextmanager
def running_server(
    index: BM25Index,
    host: str = "127.0.0.1",
    port: int = 0,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> Iterator[str]:
    """Serve ``index`` from a background thread for the ``with`` block; yields the base URL.

    ``port=0`` picks a free port.
    """
    server = RetrieverServer(index, host, port, max_connections, read_timeout_s)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index", required=True, help="index directory from `agentenv index build`"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="TCP port (default: 8000, as Search-R1)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"connections served at once; one more gets 503 (default: {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        help="seconds a client has to send a whole request, and the idle keep-alive limit "
        f"(default: {DEFAULT_READ_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--no-prune",
        action="store_true",
        help="score every passage that holds a query term (the same hits, slower; for benchmarks)",
    )


def run(args: argparse.Namespace) -> int:
    problem = None
    if not 0 <= args.port <= 65535:
        problem = f"--port {args.port}: a TCP port is 0 to 65535"
    else:
        try:
            index = BM25Index.load(args.index, prune=not args.no_prune)
        except (OSError, ValueError) as error:
            problem = f"--index: {error}"
    if problem is None:
        try:
            serve(index, args.host, args.port, args.max_connections, args.read_timeout_s)
        except ValueError as error:  # --max-connections, --read-timeout-s
            problem = str(error)
        except OSError as error:  # binding the socket: the port is taken, the host is not ours
            problem = _listen_problem(args.host, args.port, error)
    if problem is not None:
        print(f"agentenv serve-retriever: error: {problem}", file=sys.stderr)
        return 2
    return 0


def _listen_problem(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"{host}:{port} is already in use (another server listens there); choose another --port"
    if error.errno == errno.EACCES:
        return f"{host}:{port}: not allowed to listen there (ports below 1024 need root); choose another --port"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return f"--host {host}: not an address of this machine ({error.strerror or error})"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"
