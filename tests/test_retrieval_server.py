"""The retrieval server speaks Search-R1's protocol; the client retries, parses, and fails clearly."""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agentenv.tools import BM25Index, RetrieverClient, search_tool
from agentenv.tools.bm25 import Hit
from agentenv.tools.retrieval_client import RetrieverError, parse_response
from agentenv.tools.server import RetrieverServer, running_server

PASSAGES = [
    {"id": "ouaga", "title": "Ouagadougou", "text": "Ouagadougou is the capital of Burkina Faso."},
    {
        "id": "bobo",
        "title": "Bobo-Dioulasso",
        "text": "Bobo-Dioulasso is the second city of Burkina Faso.",
    },
    {"id": "nile", "title": "Nile", "text": "The Nile is a river in Africa."},
    {"id": "lyon", "title": "Lyon", "text": "Lyon is a city in France."},
]


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(PASSAGES, show_progress=False)


@pytest.fixture(scope="module")
def url(index):
    with running_server(index) as base_url:
        yield base_url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _retrieve(url, payload):
    return httpx.post(f"{url}/retrieve", json=payload)


# --- the protocol ---------------------------------------------------------------------------


def test_health_reports_backend_and_size(url):
    response = httpx.get(f"{url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "backend": "tantivy", "passages": 4}


def test_retrieve_with_scores_answers_documents_and_scores_per_query(url, index):
    response = _retrieve(
        url, {"queries": ["capital of Burkina Faso", "river"], "topk": 2, "return_scores": True}
    )
    assert response.status_code == 200
    first, second = response.json()["result"]
    assert first[0] == {
        "document": {
            "id": "ouaga",
            "contents": '"Ouagadougou"\nOuagadougou is the capital of Burkina Faso.',
        },
        "score": index.search("capital of Burkina Faso", k=1)[0].score,
    }
    assert len(first) == 2
    assert [item["document"]["id"] for item in second] == ["nile"]


def test_retrieve_without_scores_answers_documents_only(url):
    response = _retrieve(url, {"queries": ["river"], "topk": 1})
    assert response.json() == {
        "result": [[{"id": "nile", "contents": '"Nile"\nThe Nile is a river in Africa.'}]]
    }


def test_topk_defaults_to_three_as_in_search_r1(url):
    result = _retrieve(url, {"queries": ["city Burkina Faso France capital"]}).json()["result"]
    assert len(result[0]) == 3


def test_an_empty_batch_gets_an_empty_result(url):
    assert _retrieve(url, {"queries": []}).json() == {"result": []}


def test_one_query_string_is_answered_as_a_batch_of_one(url):
    # SkyRL-gym's search tool posts one string under "query"; SkyRL's own retrieval_server.py
    # answers it with a list holding one list, and the tool reads result[0].
    single = _retrieve(url, {"query": "capital of Burkina Faso", "topk": 2, "return_scores": True})
    batch = _retrieve(
        url, {"queries": ["capital of Burkina Faso"], "topk": 2, "return_scores": True}
    )
    assert single.status_code == 200
    assert single.json() == batch.json()
    assert len(single.json()["result"]) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object, got list"),
        (b"{}", "the body needs 'queries' (a list of strings, as Search-R1 sends) or 'query'"),
        (b'{"query": ["capital"]}', "'query' must be a string, got list; send a list as 'queries'"),
        (b'{"query": "capital", "queries": ["river"]}', "give 'queries' or 'query', not both"),
        (json.dumps({"query": "x" * 1001}).encode(), "query 0 is 1001 characters long"),
        (b'{"queries": "capital"}', "'queries' must be a list of strings"),
        (b'{"queries": ["capital", 7]}', "'queries' must be a list of strings"),
        (
            json.dumps({"queries": ["q"] * 257}).encode(),
            "257 queries in one request; the limit is 256",
        ),
        (
            json.dumps({"queries": ["ok", "x" * 1001]}).encode(),
            "query 1 is 1001 characters long; the limit is 1000",
        ),
        (b'{"queries": ["q"], "topk": 0}', "'topk' must be an integer from 1 to 100, got 0"),
        (b'{"queries": ["q"], "topk": 101}', "'topk' must be an integer from 1 to 100, got 101"),
        (b'{"queries": ["q"], "topk": "3"}', "'topk' must be an integer from 1 to 100, got '3'"),
        (b'{"queries": ["q"], "topk": 2.5}', "'topk' must be an integer from 1 to 100, got 2.5"),
        (b'{"queries": ["q"], "topk": true}', "'topk' must be an integer from 1 to 100, got True"),
        (
            b'{"queries": ["q"], "return_scores": "yes"}',
            "'return_scores' must be true or false, got 'yes'",
        ),
    ],
)
def test_bad_request_bodies_get_400_with_a_message(url, body, message):
    response = httpx.post(
        f"{url}/retrieve", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_body_over_one_megabyte_gets_413(url):
    response = httpx.post(f"{url}/retrieve", content=b" " * (2 << 20))
    assert response.status_code == 413
    assert "the limit is 1048576" in response.json()["error"]


def test_a_body_without_content_length_gets_411(url):
    # A generator body goes out chunked, without Content-Length.
    response = httpx.post(f"{url}/retrieve", content=iter([b'{"queries": ["q"]}']))
    assert response.status_code == 411
    assert "Content-Length" in response.json()["error"]


def test_an_invalid_content_length_gets_400(url):
    connection = http.client.HTTPConnection(*url.removeprefix("http://").split(":"))
    connection.putrequest("POST", "/retrieve")
    connection.putheader("Content-Length", "lots")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400
    assert "invalid Content-Length 'lots'" in json.loads(response.read())["error"]
    connection.close()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/retrieve", 405),
        ("POST", "/health", 405),
        ("GET", "/search", 404),
        ("POST", "/search", 404),
    ],
)
def test_wrong_paths_and_methods_get_json_errors(url, method, path, status):
    response = httpx.request(
        method, f"{url}{path}", json={"queries": ["q"]} if method == "POST" else None
    )
    assert response.status_code == status
    assert "error" in response.json()


def test_an_unknown_method_gets_a_json_error_from_the_stdlib_handler(url):
    response = httpx.request("BREW", f"{url}/retrieve")
    assert response.status_code == 501
    assert "Unsupported method ('BREW')" in response.json()["error"]


# --- the client -----------------------------------------------------------------------------


def test_client_results_equal_the_local_index(url, index):
    queries = ["capital of Burkina Faso", "city", "zeppelin"]
    with RetrieverClient(url) as client:
        assert client.search_batch(queries, k=3) == index.search_batch(queries, k=3)


def test_search_tool_over_http_formats_like_the_local_one(url, index):
    with RetrieverClient(url) as client:
        remote = search_tool(client).run({"query": "capital of Burkina Faso"})
    assert remote == search_tool(index).run({"query": "capital of Burkina Faso"})


def test_client_reports_what_the_server_refused(url):
    with (
        RetrieverClient(url) as client,
        pytest.raises(RetrieverError, match=r"HTTP 400.*'topk' must be an integer"),
    ):
        client.search_batch(["capital"], k=101)


def test_parse_search_r1_and_flashrag_responses():
    document = {"id": "7", "contents": '"Nile"\nA river.'}
    nile = Hit(id="7", title="Nile", text="A river.", score=2.5)
    unscored = Hit(id="7", title="Nile", text="A river.", score=0.0)
    # Search-R1 with and without return_scores.
    assert parse_response({"result": [[{"document": document, "score": 2.5}], []]}, 2) == [
        [nile],
        [],
    ]
    assert parse_response({"result": [[document]]}, 1) == [[unscored]]
    # FlashRAG /batch_search: documents per query, or (documents per query, scores per query).
    assert parse_response([[document], [document]], 2) == [[unscored], [unscored]]
    assert parse_response([[[document], []], [[2.5], []]], 2) == [[nile], []]
    # Search-R1's own BM25 server adds title and text beside contents.
    assert parse_response([[{"id": 1, "title": "T", "text": "x", "contents": '"T"\nx'}]], 1) == [
        [Hit("1", "T", "x", 0.0)]
    ]
    with pytest.raises(ValueError, match="results for 2 queries"):
        parse_response({"result": [[document]]}, 2)
    with pytest.raises(ValueError, match="a query's results must be a list, got dict"):
        parse_response({"result": [document, document]}, 2)  # flat is for one query only
    with pytest.raises(ValueError, match="needs 'contents' or 'text'"):
        parse_response({"result": [[{"id": "7"}]]}, 1)


def test_parse_one_query_answered_as_a_flat_list():
    # A server answering a single "query" may send that query's documents without the outer list.
    document = {"id": "7", "contents": '"Nile"\nA river.'}
    nile = Hit(id="7", title="Nile", text="A river.", score=2.5)
    unscored = Hit(id="7", title="Nile", text="A river.", score=0.0)
    assert parse_response({"result": [{"document": document, "score": 2.5}]}, 1) == [[nile]]
    assert parse_response({"result": [document, document]}, 1) == [[unscored, unscored]]
    assert parse_response([document], 1) == [[unscored]]
    assert parse_response({"result": []}, 1) == [[]]


# --- SkyRL-gym's own search tool, from its released wheel (the test extra) ------------------


def _skyrl_passages(hits):
    """What skyrl_gym/tools/search.py's _passages2string makes of one query's hits."""
    return "".join(f'Doc {rank}: "{hit.title}"\n{hit.text}\n' for rank, hit in enumerate(hits, 1))


def test_skyrl_gym_search_tool_reads_our_answers(url, index):
    from skyrl_gym.tools import SearchToolGroup

    tool = SearchToolGroup(search_url=f"{url}/retrieve", topk=2, log_requests=False)
    observation = tool.execute_tool("search", "capital of Burkina Faso")
    expected = _skyrl_passages(index.search("capital of Burkina Faso", k=2))
    assert json.loads(observation) == {"result": expected}


def test_skyrl_gym_search_env_steps_on_our_server(url, index):
    from skyrl_gym.envs.search.env import SearchEnv, SearchEnvConfig

    env = SearchEnv(
        SearchEnvConfig(search_url=f"{url}/retrieve", topk=1),
        extras={"reward_spec": {"ground_truth": {"target": ["Ouagadougou"]}}, "max_turns": 3},
    )
    env.init([{"role": "user", "content": "What is the capital of Burkina Faso?"}])
    searched = env.step("<search>capital of Burkina Faso</search>")
    expected = _skyrl_passages(index.search("capital of Burkina Faso", k=1))
    assert searched["observations"] == [
        {
            "role": "user",
            "content": "\n<information>" + json.dumps({"result": expected}) + "</information>\n",
        }
    ]
    answered = env.step("<answer>Ouagadougou</answer>")
    assert answered["done"] and answered["reward"] == 1.0


class _FlashRAGHandler(BaseHTTPRequestHandler):
    """FlashRAG's /batch_search as ReSearch serves it: (documents per query, scores per query)."""

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/batch_search" and request["return_score"] is True
        documents = [
            [
                {"id": f"{i}", "contents": f'"{query}"\nabout {query}'}
                for i in range(request["top_n"])
            ]
            for query in request["query"]
        ]
        scores = [
            [float(request["top_n"] - i) for i in range(request["top_n"])] for _ in request["query"]
        ]
        body = json.dumps([documents, scores]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_client_speaks_flashrag_batch_search():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlashRAGHandler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        with RetrieverClient(f"http://127.0.0.1:{server.server_address[1]}/batch_search") as client:
            results = client.search_batch(["Nile", "Lyon"], k=2)
    finally:
        server.shutdown()
        server.server_close()
    assert results == [
        [Hit("0", "Nile", "about Nile", 2.0), Hit("1", "Nile", "about Nile", 1.0)],
        [Hit("0", "Lyon", "about Lyon", 2.0), Hit("1", "Lyon", "about Lyon", 1.0)],
    ]


def test_client_refuses_a_url_without_a_scheme():
    with pytest.raises(
        ValueError, match="url must look like http://host:port, got 'localhost:8000'"
    ):
        RetrieverClient("localhost:8000")


class _FlakyHandler(BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then one passage in Search-R1's format."""

    failures = 0
    requests = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        failing = type(self).requests <= type(self).failures
        body = (
            b'{"error": "warming up"}'
            if failing
            else json.dumps({"result": [[{"id": "1", "contents": '"T"\nx'}]]}).encode()
        )
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def _flaky_server(failures):
    handler = type("Handler", (_FlakyHandler,), {"failures": failures, "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_client_retries_5xx_until_the_server_answers():
    with (
        _flaky_server(failures=2) as (url, handler),
        RetrieverClient(url, max_retries=3, backoff_s=0.01) as client,
    ):
        assert client.search_batch(["q"], k=1) == [[Hit("1", "T", "x", 0.0)]]
        assert handler.requests == 3


def test_client_gives_up_after_its_retries():
    with (
        _flaky_server(failures=10) as (url, handler),
        RetrieverClient(url, max_retries=1, backoff_s=0.01) as client,
    ):
        with pytest.raises(RetrieverError, match=r"failed after 2 attempt\(s\): HTTP 503"):
            client.search_batch(["q"], k=1)
        assert handler.requests == 2


def test_a_dead_server_raises_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    with RetrieverClient(url, max_retries=2, backoff_s=0.01) as client:
        with pytest.raises(
            RetrieverError,
            match=rf"retriever at {url}/retrieve failed after 3 attempt\(s\): cannot connect",
        ):
            client.search_batch(["q"], k=1)


def test_a_dead_server_is_an_error_observation_for_the_policy():
    url = f"http://127.0.0.1:{_free_port()}"
    with RetrieverClient(url, max_retries=1, backoff_s=0.01) as client:
        outputs = search_tool(client).run_batch([{"query": "capital"}, {"query": "river"}])
    assert [output.ok for output in outputs] == [False, False]
    assert outputs[0].text.startswith(f"Error (search): search failed: retriever at {url}/retrieve")


@pytest.fixture(scope="module")
def second_url():
    """A second server whose passages carry a marked title: its answers show who answered."""
    marked = [{**passage, "title": passage["title"] + " (B)"} for passage in PASSAGES]
    with running_server(BM25Index.build(marked, show_progress=False)) as base_url:
        yield base_url


QUERIES = ["capital of Burkina Faso", "second city of Burkina Faso", "river in Africa", "city in France"]


def test_several_servers_share_a_batch_in_order(url, second_url):
    with RetrieverClient([url, second_url]) as client:
        results = client.search_batch(QUERIES, k=1)
    assert [hits[0].id for hits in results] == ["ouaga", "bobo", "nile", "lyon"]
    assert [hits[0].title.endswith("(B)") for hits in results] == [False, False, True, True]


def test_a_dead_server_among_several_is_skipped_and_its_queries_answered_elsewhere(url, second_url):
    dead = f"http://127.0.0.1:{_free_port()}"
    with RetrieverClient([url, dead, second_url], max_retries=0) as client:
        first = client.search_batch(QUERIES[:3], k=1)
        assert [hits[0].id for hits in first] == ["ouaga", "bobo", "nile"]
        assert [hits[0].title.endswith("(B)") for hits in first] == [False, True, True]  # the dead one's query went on
        assert client.servers[1].down_until > time.monotonic()  # and it is skipped from now on
        second = client.search_batch(QUERIES, k=1)
    assert [hits[0].title.endswith("(B)") for hits in second] == [False, False, True, True]


def test_when_every_server_is_dead_the_batch_fails_naming_them():
    dead = [f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"]
    with RetrieverClient(dead, max_retries=0) as client:
        with pytest.raises(RetrieverError, match=rf"every retriever failed: retriever at {dead[0]}/retrieve.*{dead[1]}/retrieve"):
            client.search_batch(QUERIES, k=1)


def test_a_server_slower_than_the_timeout_is_not_waited_for():
    class SlowHandler(_FlakyHandler):
        def do_POST(self):
            time.sleep(1.0)

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        with RetrieverClient(
            f"http://127.0.0.1:{server.server_address[1]}", timeout_s=0.2
        ) as client:
            with pytest.raises(RetrieverError, match="did not answer within 0.2 s"):
                client.search_batch(["q"], k=1)
    finally:
        server.shutdown()
        server.server_close()


# --- stalled and flooding clients -----------------------------------------------------------

STALLED_BODY = b'POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"queries": ['
STALLED_HEADERS = b"GET /health HTTP/1.1\r\nHost: x\r\n"


def _open_stalled(url, count, request):
    """``count`` connections that send the start of ``request`` and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    connections = []
    for _ in range(count):
        connection = socket.create_connection((host, int(port)), timeout=10)
        connection.sendall(request)
        connections.append(connection)
    return connections


def _read_until_closed(connection, deadline):
    """All the server sends before it closes the connection; fails if it is open at ``deadline``."""
    received = b""
    while True:
        connection.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = connection.recv(1 << 16)  # raises TimeoutError if the server keeps it open
        if not chunk:
            return received
        received += chunk


def _threads_settle_at(count, within_s):
    deadline = time.monotonic() + within_s
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count()


def test_stalled_clients_leave_health_and_queries_answered_and_are_closed_at_the_deadline(index):
    with running_server(index, read_timeout_s=1.0) as url:
        threads_before = threading.active_count()
        mid_body = _open_stalled(url, 100, STALLED_BODY)
        mid_headers = _open_stalled(url, 50, STALLED_HEADERS)
        try:
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            with RetrieverClient(url, timeout_s=5, max_retries=0) as client:
                assert client.search("capital of Burkina Faso", k=1)[0].id == "ouaga"
            deadline = time.monotonic() + 10
            answers = [_read_until_closed(c, deadline) for c in mid_body + mid_headers]
        finally:
            for connection in mid_body + mid_headers:
                connection.close()
        # A stalled body is told why; a stalled header is just closed, as the stdlib does.
        assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers[:100])
        assert b"the 1000-byte body did not arrive within 1 s" in answers[0]
        assert set(answers[100:]) == {b""}
        assert _threads_settle_at(threads_before, within_s=5) <= threads_before


def test_a_client_trickling_its_headers_is_cut_off_at_the_deadline(index):
    # One byte every 0.1 s beats any per-receive timeout; the deadline bounds the whole request.
    with running_server(index, read_timeout_s=1.0) as url:
        (connection,) = _open_stalled(url, 1, b"GET /health HTTP/1.1\r\n")
        cut_off = False
        try:
            for _ in range(100):  # 10 s of trickling at most
                time.sleep(0.1)
                try:
                    connection.sendall(b"X")
                except OSError:  # the server reset the connection
                    cut_off = True
                    break
                connection.settimeout(0.01)
                try:
                    if connection.recv(1) == b"":  # the server closed the connection
                        cut_off = True
                        break
                except TimeoutError:
                    pass
        finally:
            connection.close()
        assert cut_off


def test_a_connection_past_the_limit_gets_503_with_a_json_error(index):
    with running_server(index, max_connections=3, read_timeout_s=1.0) as url:
        stalled = _open_stalled(url, 3, STALLED_BODY)
        try:
            refused = httpx.get(f"{url}/health", timeout=5)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert refused.json() == {
                "error": "the server is serving its limit of 3 connections (--max-connections); "
                "retry shortly"
            }
            # Our client retries a 503 and gets through once the stalled ones are cut off.
            with RetrieverClient(url, timeout_s=5, max_retries=6, backoff_s=0.1) as client:
                assert client.search("river", k=1)[0].id == "nile"
        finally:
            for connection in stalled:
                connection.close()


def test_limits_must_be_positive(index):
    with pytest.raises(ValueError, match="max_connections must be at least 1, got 0"):
        RetrieverServer(index, port=0, max_connections=0)
    with pytest.raises(ValueError, match="read_timeout_s must be positive, got 0"):
        RetrieverServer(index, port=0, read_timeout_s=0)


# --- the command line -----------------------------------------------------------------------


def test_serve_retriever_command_answers_on_its_port(index, tmp_path):
    index.save(tmp_path / "index")
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "agentenv.cli",
        "serve-retriever",
        "--index",
        str(tmp_path / "index"),
        "--port",
        str(port),
        "--max-connections",
        "16",
        "--read-timeout-s",
        "2.5",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The first line is printed once the socket is bound.
        assert server.stdout.readline().startswith(
            f"serving 4 passages (tantivy) on http://127.0.0.1:{port}"
        )
        with RetrieverClient(f"http://127.0.0.1:{port}") as client:
            assert client.search("capital of Burkina Faso", k=1)[0].id == "ouaga"
    finally:
        server.terminate()
        server.wait(timeout=10)
