"""Misbehaving peers, over real sockets on 127.0.0.1.

Hostile servers against the client: trickling, endless or oversized answers, resets and malformed
JSON each become an "unavailable" observation within the request's deadline and a bounded amount
of memory, and go to the next server when there is one. Hostile clients against the server:
ambiguous framing is refused with 400 and the connection closed, so nothing is read as a request
that was not meant as one.
"""

import json
import re
import socket
import socketserver
import struct
import threading
import time
import tracemalloc
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentenv.tools import BM25Index, RetrieverClient, search_tool
from agentenv.tools import server as server_module
from agentenv.tools.bm25 import Hit
from agentenv.tools.retrieval_client import RetrieverError, parse_response
from agentenv.tools.server import MAX_HITS, running_server

PASSAGES = [
    {"id": "ouaga", "title": "Ouagadougou", "text": "Ouagadougou is the capital of Burkina Faso."},
    {"id": "nile", "title": "Nile", "text": "The Nile is a river in Africa."},
]
QUERIES = ["capital of Burkina Faso", "river in Africa"]


@pytest.fixture(scope="module", autouse=True)
def _tool_schema_read():
    # A tool reads its schema on its first call, importing transformers (seconds) the first time
    # in a process; read here, so that the timed tests below time the client alone.
    assert search_tool(None).parameters["required"] == ["query"]


@pytest.fixture(scope="module")
def healthy_url():
    with running_server(BM25Index.build(PASSAGES, show_progress=False)) as url:
        yield url


# --- a server that answers whatever a test tells it to ---------------------------------------


class _HostileServer(socketserver.ThreadingTCPServer):
    """Reads one request per connection, then hands the socket to ``answer(connection, server)``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer):
        self.answer = answer
        self.requests = 0
        self.sent = 0  # bytes the answers got into the socket
        super().__init__(("127.0.0.1", 0), _HostileHandler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HostileHandler(socketserver.BaseRequestHandler):
    def handle(self):
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.request.recv(1 << 16)
            if not chunk:
                return
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            chunk = self.request.recv(1 << 16)
            if not chunk:  # the client hung up mid-body
                return
            body += chunk
        self.server.requests += 1
        try:
            self.server.answer(self.request, self.server)
        except OSError:  # the client hung up, as it should on a hostile answer
            pass


@contextmanager
def _hostile_server(answer):
    server = _HostileServer(answer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _head(content_length=None):
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    if content_length is not None:
        head += f"Content-Length: {content_length}\r\n"
    return (head + "\r\n").encode()


def _answering(body):
    """An answer that sends ``body`` whole, then closes."""
    body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def answer(connection, server):
        connection.sendall(_head(len(body)) + body)
        server.sent += len(body)

    return answer


def _document(i, text="x"):
    return {"id": str(i), "contents": f'"T{i}"\n{text}'}


def _unavailable(client, queries=QUERIES):
    """The search tool's observations for ``queries``: each must be an unavailable-tool error."""
    outputs = search_tool(client).run_batch([{"query": query} for query in queries])
    assert all(not output.ok and output.unavailable for output in outputs), outputs
    return outputs[0].text


# --- the client: a deadline for the whole answer ----------------------------------------------


def _trickling(whole_answer):
    # One byte every 50 ms beats any per-read timeout; 5 s at most, so the test ends either way.
    def answer(connection, server):
        for byte in whole_answer[:100]:
            connection.sendall(bytes([byte]))
            server.sent += 1
            time.sleep(0.05)

    return answer


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickling_server_is_cut_off_at_the_deadline(part):
    body = json.dumps({"result": [[_document(0, "y" * 2000)]]}).encode()
    whole = _head(len(body)) + body
    start = whole.index(b"\r\n\r\n") + 4 if part == "body" else 0
    skip_ahead = whole[:start]

    def answer(connection, server):
        connection.sendall(skip_ahead)
        _trickling(whole[start:])(connection, server)

    with _hostile_server(answer) as server, RetrieverClient(server.url, timeout_s=1.0, max_retries=0) as client:
        began = time.monotonic()
        message = _unavailable(client, ["q"])
        took = time.monotonic() - began
    assert "did not answer within 1.0 s" in message
    assert took < 1.5, f"held {took:.1f} s past a 1 s deadline"


# --- the client: a cap on the answer's size ---------------------------------------------------

ENDLESS_LIMIT = 64 << 20  # what the endless server sends at most, so that a failing test ends


def _endless(declared_length):
    def answer(connection, server):
        # A small send buffer, so that the bytes counted are close to the bytes the client read.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        connection.sendall(_head(declared_length) + b'{"result": [[')
        chunk = b'{"id": "1", "contents": "\\"T\\"\\nx"}, ' * 2048
        while server.sent < ENDLESS_LIMIT:
            connection.sendall(chunk)
            server.sent += len(chunk)

    return answer


@pytest.mark.parametrize("declared_length", [None, 10**12], ids=["until-close", "huge-length"])
def test_an_endless_answer_is_cut_at_the_byte_cap(declared_length):
    with _hostile_server(_endless(declared_length)) as server, RetrieverClient(server.url, max_retries=0) as client:
        tracemalloc.start()
        try:
            message = _unavailable(client, ["q"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    cap = client.max_response_bytes(1)
    assert f"the limit for 1 queries is {cap}" in message
    assert peak < 4 * cap, f"client memory peaked at {peak / 2**20:.0f} MiB"
    assert server.sent < cap + (8 << 20), f"the client read {server.sent / 2**20:.0f} MiB"


def test_a_million_documents_for_k_3_are_refused_unread():
    documents = b", ".join([json.dumps(_document(0)).encode()] * 1_000_000)
    body = b'{"result": [[' + documents + b"]]}"
    with _hostile_server(_answering(body)) as server, RetrieverClient(server.url, max_retries=0) as client:
        began = time.monotonic()
        message = _unavailable(client, ["q"])
        took = time.monotonic() - began
    assert f"answer of {len(body)} bytes" in message
    assert took < 1.0


def test_more_hits_than_asked_for_are_cut_to_k():
    body = {"result": [[_document(i) for i in range(50)]]}
    with _hostile_server(_answering(body)) as server, RetrieverClient(server.url) as client:
        (hits,) = client.search_batch(["q"], k=3)
    assert [hit.id for hit in hits] == ["0", "1", "2"]


def test_long_passages_are_cut_before_they_are_formatted(tokenizer):
    # Three passages of 300 000 characters: under the byte cap, far over any observation.
    words = "word " * 60_000
    body = {"result": [[_document(i, words) for i in range(3)]]}
    with _hostile_server(_answering(body)) as server, RetrieverClient(server.url) as client:
        (hits,) = client.search_batch(["q"], k=3)
        assert all(len(hit.text) <= client.max_passage_chars for hit in hits)
        began = time.monotonic()
        output = search_tool(client, k=3, tokenizer=tokenizer).run({"query": "q"})
        took = time.monotonic() - began
    assert output.ok and output.text.startswith("Doc 1 (Title: T0) word word")
    assert took < 1.0, f"formatting took {took:.1f} s"


@pytest.mark.parametrize("hostile", ["trickling", "endless"])
def test_an_answer_past_the_deadline_or_the_cap_fails_over_to_the_next_server(hostile, healthy_url):
    body = json.dumps({"result": [[_document(0)]]}).encode()
    answer = _trickling(_head(len(body)) + body) if hostile == "trickling" else _endless(None)
    with (
        _hostile_server(answer) as server,
        RetrieverClient([server.url, healthy_url], timeout_s=1.0, max_retries=0) as client,
    ):
        began = time.monotonic()
        results = client.search_batch(QUERIES, k=1)
        took = time.monotonic() - began
        assert client.servers[0].down_until > time.monotonic()
    assert [hits[0].id for hits in results] == ["ouaga", "nile"]
    assert took < 2.0, f"the batch took {took:.1f} s"


def test_a_batch_over_the_passages_a_request_may_ask_for_goes_as_several_requests(healthy_url):
    # 50 queries at k=100 ask for 5000 passages, more than one request may (the server says 400).
    assert 50 * 100 > MAX_HITS
    with RetrieverClient(healthy_url) as client:
        results = client.search_batch(["capital of Burkina Faso"] * 50, k=100)
    assert len(results) == 50 and all(hits[0].id == "ouaga" for hits in results)


# --- the client: resets are retried, then the next server asked -------------------------------


def _resetting(times):
    """Resets the connection (RST, not FIN) for the first ``times`` requests, then answers."""

    def answer(connection, server):
        if server.requests > times:
            return _answering({"result": [[_document(0)]]})(connection, server)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()

    return answer


def test_a_reset_connection_is_retried():
    with (
        _hostile_server(_resetting(times=2)) as server,
        RetrieverClient(server.url, max_retries=2, backoff_s=0.01) as client,
    ):
        assert client.search_batch(["q"], k=1) == [[Hit("0", "T0", "x", 0.0)]]
    assert server.requests == 3


def test_a_resetting_server_fails_over_to_the_next(healthy_url):
    with (
        _hostile_server(_resetting(times=10**9)) as server,
        RetrieverClient([server.url, healthy_url], max_retries=1, backoff_s=0.01) as client,
    ):
        results = client.search_batch(QUERIES, k=1)
        assert client.servers[0].down_until > time.monotonic()
    assert [hits[0].id for hits in results] == ["ouaga", "nile"]
    assert server.requests == 2


def test_every_server_resetting_is_an_unavailable_tool():
    with (
        _hostile_server(_resetting(times=10**9)) as first,
        _hostile_server(_resetting(times=10**9)) as second,
        RetrieverClient([first.url, second.url], max_retries=1, backoff_s=0.01) as client,
    ):
        message = _unavailable(client)
    assert "every retriever failed" in message and "connection lost" in message


# --- the client: a malformed answer is the server's fault --------------------------------------

MALFORMED = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "contents not a string": b'{"result": [[{"id": "1", "contents": 5}]]}',
    "contents null": b'{"result": [[{"id": "1", "contents": null}]]}',
    "text not a string": b'{"result": [[{"id": "1", "title": "T", "text": ["x"]}]]}',
    "title not a string": b'{"result": [[{"id": "1", "title": {"a": 1}, "text": "x"}]]}',
    "id a list": b'{"result": [[{"id": [1, 2], "contents": "x"}]]}',
    "score a list": b'{"result": [[{"document": {"id": "1", "contents": "x"}, "score": [1]}]]}',
    "score a huge integer": b'{"result": [[{"document": {"id": "1", "contents": "x"}, "score": 1'
    + b"0" * 400
    + b"}]]}",
    "a 4301-digit number": b'{"result": [[{"id": 1' + b"0" * 4300 + b', "contents": "x"}]]}',
    "flashrag scores a string": b'[[[{"id": "1", "contents": "x"}]], ["high"]]',
    "not JSON": b"<html>502 Bad Gateway</html>",
    "result a number": b'{"result": 5}',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_answer_makes_the_tool_unavailable_not_the_call_wrong(body):
    with _hostile_server(_answering(body)) as server, RetrieverClient(server.url, max_retries=0) as client:
        with pytest.raises(RetrieverError, match="sent an unexpected response"):
            client.search_batch(["q"], k=1)
        message = _unavailable(client, ["q"])
    assert "sent an unexpected response" in message
    assert server.requests == 2  # once for each batch: nothing re-sent call by call


@pytest.mark.parametrize("body", [MALFORMED["deep nesting"], MALFORMED["contents null"]], ids=["deep", "null"])
def test_a_malformed_answer_fails_over_to_the_next_server(body, healthy_url):
    with (
        _hostile_server(_answering(body)) as server,
        RetrieverClient([server.url, healthy_url], max_retries=0) as client,
    ):
        results = client.search_batch(QUERIES, k=1)
    assert [hits[0].id for hits in results] == ["ouaga", "nile"]


_KEYS = st.sampled_from(["result", "document", "contents", "text", "title", "id", "score"]) | st.text(max_size=3)
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.sampled_from([10**400, -(10**400)])
    | st.floats(allow_nan=True) | st.text(max_size=5)
)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(payload=_JSON, num_queries=st.integers(1, 3))
def test_parse_response_raises_only_value_error(payload, num_queries):
    try:
        results = parse_response(payload, num_queries, k=2)
    except ValueError:
        return
    assert len(results) == num_queries
    assert all(len(hits) <= 2 and all(isinstance(hit.text, str) for hit in hits) for hits in results)


# --- the server: framing that could be read two ways is refused --------------------------------


def _exchange(url, request, within_s=2.0):
    """Everything the server sends for ``request`` until it closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=within_s) as connection:
        connection.sendall(request)
        deadline = time.monotonic() + within_s
        received = b""
        while True:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = connection.recv(1 << 16)
            except TimeoutError:
                pytest.fail(f"the server kept the connection open; it sent {received[:300]!r}")
            if not chunk:
                return received
            received += chunk


def _answers(received):
    """(status, headers, JSON body) of each whole answer in ``received``; a partly arrived last one is left out."""
    answers = []
    while b"\r\n\r\n" in received:
        head, _, rest = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.decode().partition(":") for line in head.split(b"\r\n")[1:])
        }
        length = int(headers["content-length"])
        if len(rest) < length:
            break
        answers.append((status, headers, json.loads(rest[:length])))
        received = rest[length:]
    return answers


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_body_longer_than_its_content_length_is_not_read_as_a_second_request(healthy_url):
    request = b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + SMUGGLED
    ((status, headers, body),) = _answers(_exchange(healthy_url, request))
    assert status == 400 and headers["connection"] == "close"
    assert "the body needs 'queries'" in body["error"]


def test_transfer_encoding_beside_content_length_is_refused(healthy_url):
    chunked = b'12\r\n{"queries": ["q"]}\r\n0\r\n\r\n'
    request = (
        b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(chunked)
        + chunked
        + SMUGGLED
    )
    ((status, headers, body),) = _answers(_exchange(healthy_url, request))
    assert status == 400 and headers["connection"] == "close"
    assert "both Transfer-Encoding and Content-Length" in body["error"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (b"Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding 'gzip, chunked' is not supported"),
        (b"Transfer-Encoding: identity\r\n", "Transfer-Encoding 'identity' is not supported"),
        (b"Content-Length: 1_8\r\n", "invalid Content-Length '1_8'"),
        (b"Content-Length: +18\r\n", "invalid Content-Length '+18'"),
        (b"Content-Length: 18\r\nContent-Length: 2\r\n", "several Content-Length headers"),
    ],
)
def test_framing_headers_read_one_way_only_are_accepted(healthy_url, headers, message):
    request = b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" + headers + b'\r\n{"queries": ["q"]}' + SMUGGLED
    ((status, answer_headers, body),) = _answers(_exchange(healthy_url, request))
    assert status == 400 and answer_headers["connection"] == "close"
    assert message in body["error"]


def test_a_get_with_a_body_reads_it_before_the_next_request(healthy_url):
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + SMUGGLED
    host, port = healthy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=2) as connection:
        connection.sendall(request)
        received = b""
        while len(_answers(received)) < 2:  # a status line can arrive before its body
            chunk = connection.recv(1 << 16)
            if not chunk:  # the server closed the connection
                break
            received += chunk
    assert [status for status, _, _ in _answers(received)] == [200, 200]


# --- the server: every bad body is answered, none dropped --------------------------------------


def _post(body, headers=b""):
    return b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


BAD_BODIES = {
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "body is nested too deeply to read as JSON"),
    "topk 10^5000": (b'{"queries": ["q"], "topk": 1' + b"0" * 5000 + b"}", "body is not valid JSON"),
    "a 4301-digit number": (b'{"queries": ["q"], "x": 1' + b"0" * 4300 + b"}", "body is not valid JSON"),
    "topk 10^4000": (
        b'{"queries": ["q"], "topk": 1' + b"0" * 4000 + b"}",
        "'topk' must be an integer from 1 to 100, got 1000",
    ),
    "queries x topk": (
        json.dumps({"queries": ["q"] * 50, "topk": 100}).encode(),
        f"50 queries at topk 100 ask for 5000 passages; the limit is {MAX_HITS}",
    ),
}


@pytest.mark.parametrize(("body", "message"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_every_bad_body_is_answered_400_rather_than_dropped(healthy_url, body, message):
    ((status, headers, answer),) = _answers(_exchange(healthy_url, _post(body)))
    assert status == 400 and headers["connection"] == "close"
    assert message in answer["error"] and len(answer["error"]) < 300


def test_an_answer_over_its_size_limit_is_refused(healthy_url, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_RESPONSE_BYTES_PER_QUERY", 100)
    body = json.dumps({"queries": ["capital of Burkina Faso"], "topk": 2, "return_scores": True})
    ((status, _, answer),) = _answers(_exchange(healthy_url, _post(body.encode())))
    assert status == 400
    assert "the limit for 1 queries is 100: ask for fewer queries or a smaller topk" in answer["error"]


def test_a_rust_panic_in_the_search_is_a_500_that_names_it(monkeypatch):
    class PanicException(BaseException):
        """As pyo3 raises a Rust panic (tantivy's): not an Exception."""

    def panic(queries, k):
        raise PanicException("index out of bounds: the len is 0 but the index is 0")

    index = BM25Index.build(PASSAGES, show_progress=False)
    monkeypatch.setattr(index, "search_batch", panic)
    with running_server(index) as url:
        received = _exchange(url, _post(b'{"queries": ["q"]}', b"Connection: close\r\n"))
        ((status, _, answer),) = _answers(received)
        assert status == 500
        assert answer["error"] == "search failed: PanicException: index out of bounds: the len is 0 but the index is 0"
        ((status, _, _),) = _answers(_exchange(url, SMUGGLED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")))
        assert status == 200  # and the server serves on
