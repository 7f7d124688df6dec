"""Reliability under hostile input: the reliability review's attacks, replayed against today's code.

    nice .venv/bin/python bench/reliability.py      # about 30 s on 2 cores (make bench-reliability)

Every case is a real attack on real parts, no mocks: misbehaving HTTP servers written with the
socket module on 127.0.0.1 (trickling, endless, resetting, oversized, malformed answers) against
``RetrieverClient`` and the search tool; raw requests with ambiguous framing and hostile bodies
against ``agentenv serve-retriever``'s server (``running_server`` over a two-passage index);
hostile actions through ``step_batch`` of real ``ToolEnv``s with the embedded tokenizer;
out-of-range ``--set`` values through ``load_config`` and YAML alias bombs through ``agentenv
train --print-config``; damaged corpora through ``python -m agentenv.cli index build`` in a
subprocess; damaged checkpoints, saved from a tiny model, through ``load_checkpoint``.

Each case prints one JSON line: ``item`` (the review's finding), ``case``, ``before`` (what the
review measured on the old code), ``after_s`` (seconds the attack took), ``after_rss_mb`` (how far
the peak RSS rose above the RSS at the attack's start: the kernel's peak is reset before each
attack; null for the index builds, whose memory is their subprocess's), ``outcome`` (the exception
class and the start of its message, or what was observed) and ``bounded``, computed from what
happened: the right error class or observation, within a generous time bound (3x the configured
timeout, or the goal the review set), under 200 MB of RSS growth, the budget held. The cases that
could fill memory or never end run in a subprocess of their own (``--case``), killed after
``CASE_TIMEOUT_S``. A summary line ends the run, a table is appended to bench/RESULTS.md, and the
exit status is 1 if any case is not bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded tokenizer is on disk; no hub access
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import append_section, machine, peak_rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 10.0  # RetrieverClient's default deadline
TRICKLE_TIMEOUT_S = 2.0
MAX_RSS_GROWTH_MB = 200
PARSE_GOAL_S = 1.0
FORMAT_GOAL_S = 2.0
CASE_TIMEOUT_S = 120  # a subprocess case still running by then is not bounded
PASSAGES = [
    {"id": "ouaga", "title": "Ouagadougou", "text": "Ouagadougou is the capital of Burkina Faso."},
    {"id": "nile", "title": "Nile", "text": "The Nile is a river in Africa."},
]
QUERIES = {"capital of Burkina Faso": "ouaga", "river in Africa": "nile"}
QUESTION = {"question": "What is the capital of Peru?", "answers": ["Lima"]}
HUGE_INTEGER = "1" * 4301  # past Python's int-string limit: json.loads raises ValueError
NESTED = "[" * 1000 + "]" * 1000  # past the recursion limit: json.loads raises RecursionError


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Measured:
    seconds: float = 0.0
    rss_mb: float = 0.0


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process, from /proc/self/status."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its RSS now (Linux 4.0+); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measured() -> Iterator[Measured]:
    """Seconds over the ``with`` block, and how far the peak RSS rose above the RSS at its start.
    The kernel's peak is reset first, so an earlier case's peak cannot hide this one's; where it
    cannot be reset, the growth of the lifetime peak (which undercounts) stands in."""
    exact = reset_peak_rss()
    result, rss, began = Measured(), memory_mb("VmRSS") if exact else peak_rss_mb(), time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - began
        result.rss_mb = (memory_mb("VmHWM") if exact else peak_rss_mb()) - rss


def attempt(call: Callable[[], object]) -> tuple[object, Exception | None]:
    """(what ``call`` returned, None), or (None, the exception it raised)."""
    try:
        return call(), None
    except Exception as error:  # noqa: BLE001 - what escapes is the measurement
        return None, error


def described(error: BaseException | None) -> str:
    if error is None:
        return "no exception"
    return f"{type(error).__name__}: {str(error)[:150]}"


def result(took: Measured, outcome: str, bounded: bool) -> dict:
    """A case's measurements; no case may grow the peak RSS by MAX_RSS_GROWTH_MB or more."""
    return {"after_s": round(took.seconds, 3), "after_rss_mb": round(took.rss_mb, 1), "outcome": outcome,
            "bounded": bool(bounded) and took.rss_mb < MAX_RSS_GROWTH_MB}


@cache
def tokenizer():
    from agentenv.models import load_tokenizer

    return load_tokenizer("embedded")


@cache
def tiny_index():
    from agentenv.tools import BM25Index

    return BM25Index.build(PASSAGES, show_progress=False)


# --- a misbehaving HTTP server, on a socket of its own ------------------------------------------------


@contextlib.contextmanager
def hostile_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """Accept connections on 127.0.0.1, read one HTTP request from each, then let
    ``answer(connection)`` misbehave; yields the URL. Every answer is finite, so that a client
    that is not bounded still ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def handle(connection: socket.socket) -> None:
        with connection:
            try:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(1 << 16)
                    if not chunk:
                        return
                    received += chunk
                head, _, body = received.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(body) < length:
                    chunk = connection.recv(1 << 16)
                    if not chunk:
                        return
                    body += chunk
                answer(connection)
            except OSError:  # the client hung up, as it should on a hostile answer
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def http_head(content_length: int | None) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    if content_length is not None:
        head += f"Content-Length: {content_length}\r\n"
    return (head + "\r\n").encode()


def document(i: int, text: str = "x") -> dict:
    return {"id": str(i), "contents": f'"T{i}"\n{text}'}


def answering(body: bytes) -> Callable[[socket.socket], None]:
    return lambda connection: connection.sendall(http_head(len(body)) + body)


def trickling(whole: bytes, every_s: float) -> Callable[[socket.socket], None]:
    def answer(connection: socket.socket) -> None:
        for byte in whole:
            connection.sendall(bytes([byte]))
            time.sleep(every_s)

    return answer


def endless(connection: socket.socket) -> None:
    """A body without a length that never ends (64 MiB at most, so that an unbounded client ends)."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    connection.sendall(http_head(None) + b'{"result": [[')
    chunk = b'{"id": "1", "contents": "\\"T\\"\\nx"}, ' * 2048
    for _ in range((64 << 20) // len(chunk)):
        connection.sendall(chunk)


def million_documents(connection: socket.socket) -> None:
    """10^6 documents for one query, with their Content-Length, generated as they are sent."""
    count, item = 1_000_000, json.dumps(document(0)).encode() + b", "
    head, tail = b'{"result": [[', b'{"id": "1", "contents": "x"}]]}'
    connection.sendall(http_head(len(head) + count * len(item) + len(tail)) + head)
    for _ in range(count // 10_000):
        connection.sendall(item * 10_000)
    connection.sendall(tail)


def resetting(connection: socket.socket) -> None:
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()  # a reset (RST), not a FIN


# --- raw requests to the real server ---------------------------------------------------------------


def exchange(url: str, request: bytes, within_s: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends for ``request``; True when it closed the connection within ``within_s``."""
    host, port = url.removeprefix("http://").split(":")
    deadline, received = time.monotonic() + within_s, b""
    with socket.create_connection((host, int(port)), timeout=within_s) as connection:
        connection.sendall(request)
        while (left_s := deadline - time.monotonic()) > 0:
            connection.settimeout(left_s)
            try:
                chunk = connection.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                return received, True
            received += chunk
    return received, False


def answers(received: bytes) -> list[tuple[int, dict, bytes]]:
    """(status, headers, body) of each whole answer in ``received``."""
    found = []
    while b"\r\n\r\n" in received:
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", len(rest)))
        found.append((int(lines[0].split(" ", 2)[1]), headers, rest[:length]))
        received = rest[length:]
    return found


def post(body: bytes, headers: bytes = b"") -> bytes:
    return b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


# --- 1. more than 256 searches in one turn ----------------------------------------------------------


def searches_over_one_request() -> dict:
    from agentenv.tools import RetrieverClient
    from agentenv.tools.server import running_server

    queries = list(QUERIES) * 640
    with running_server(tiny_index()) as url, RetrieverClient(url) as client:
        with measured() as took:
            results, error = attempt(lambda: client.search_batch(queries, k=3))
    if error is not None:
        return result(took, described(error), False)
    answered = sum(bool(hits) and hits[0].id == QUERIES[query] for query, hits in zip(queries, results, strict=True))
    return result(took, f"{answered} of {len(queries)} queries answered in one search_batch", answered == len(queries))


# --- 2. deadlines and size caps in the client ------------------------------------------------------------


def client_error(answer: Callable[[socket.socket], None], timeout_s: float = TIMEOUT_S) -> tuple[Measured, Exception | None]:
    from agentenv.tools import RetrieverClient

    with hostile_server(answer) as url, RetrieverClient(url, timeout_s=timeout_s) as client:
        with measured() as took:
            _, error = attempt(lambda: client.search_batch(["q"], k=3))
    return took, error


def trickling_server() -> dict:
    from agentenv.tools.retrieval_client import RetrieverDown

    body = json.dumps({"result": [[document(0)]]}).encode()
    took, error = client_error(trickling(http_head(len(body)) + body, every_s=0.5), timeout_s=TRICKLE_TIMEOUT_S)
    return result(took, described(error), isinstance(error, RetrieverDown) and took.seconds < 3 * TRICKLE_TIMEOUT_S)


def endless_answer() -> dict:
    from agentenv.tools.retrieval_client import RetrieverDown

    took, error = client_error(endless)
    bounded = isinstance(error, RetrieverDown) and took.seconds < 3 * TIMEOUT_S
    return result(took, described(error), bounded)


def million_documents_for_k_3() -> dict:
    from agentenv.tools.retrieval_client import RetrieverDown

    took, error = client_error(million_documents)
    bounded = isinstance(error, RetrieverDown) and took.seconds < 3 * TIMEOUT_S
    return result(took, described(error), bounded)


def megabyte_passages() -> dict:
    """Three passages of a megabyte each, formatted by the search tool in the policy's tokens."""
    from agentenv.tools import RetrieverClient, search_tool

    body = json.dumps({"result": [[document(i, "word " * 200_000) for i in range(3)]]}).encode()
    with hostile_server(answering(body)) as url, RetrieverClient(url) as client:
        search = search_tool(client, k=3, tokenizer=tokenizer())
        _ = search.parameters  # read once, importing transformers: not part of the formatting
        with measured() as took:
            output = search.run({"query": "q"})
    tokens = len(tokenizer().encode(output.text, add_special_tokens=False))
    outcome = f"observation of {tokens} tokens ({len(output.text)} chars): {output.text[:90]!r}"
    return result(took, outcome, output.ok and tokens <= 512 and took.seconds < FORMAT_GOAL_S)


# --- 3. a reset connection ------------------------------------------------------------------------


def resetting_then_healthy() -> dict:
    from agentenv.tools import RetrieverClient
    from agentenv.tools.server import running_server

    with (
        hostile_server(resetting) as bad,
        running_server(tiny_index()) as good,
        RetrieverClient([bad, good]) as client,
    ):
        with measured() as took:
            results, error = attempt(lambda: client.search_batch(list(QUERIES), k=1))
        down = client.servers[0].down_until > time.monotonic()
    if error is not None:
        return result(took, described(error), False)
    ids = [hits[0].id for hits in results]
    outcome = f"answered {ids} (the healthy server took the resetting one's part); resetting one marked down: {down}"
    return result(took, outcome, ids == list(QUERIES.values()) and took.seconds < 3 * TIMEOUT_S)


# --- 4. a malformed 200 answer --------------------------------------------------------------------


def malformed_answer(body: bytes) -> dict:
    """The search tool's observation in a real environment when the retriever answers ``body``."""
    from agentenv import ToolEnv, step_batch
    from agentenv.tools import RetrieverClient, search_tool

    with hostile_server(answering(body)) as url, RetrieverClient(url, max_retries=0) as client:
        env = ToolEnv([search_tool(client, tokenizer=tokenizer())], tokenizer=tokenizer())
        env.reset(options=QUESTION)
        with measured() as took:
            results, error = attempt(lambda: step_batch([env], ["<search>capital of Peru</search>"]))
    if error is not None:
        return result(took, described(error), False)
    call = results[0][4]["turns"][-1]["calls"][0]
    # The retriever's failure, not the policy's: an answer after it is still well formed.
    *_, info = env.step("<answer>Lima</answer>")
    bounded = call["unavailable"] and "sent an unexpected response" in call["output"] and info["format_valid"]
    outcome = f"unavailable={call['unavailable']}, format valid after it: {info['format_valid']}: {call['output'][:120]}"
    return result(took, outcome, bounded)


def deeply_nested_answer() -> dict:
    return malformed_answer(b"[" * 100_000 + b"]" * 100_000)


def contents_a_number() -> dict:
    return malformed_answer(b'{"result": [[{"id": "1", "contents": 5}]]}')


# --- 5. the server's framing and bodies -----------------------------------------------------------


def server_answer(request: bytes) -> dict:
    """A raw request to the real server: one 4xx answer, Connection: close, the connection closed."""
    from agentenv.tools.server import running_server

    with running_server(tiny_index()) as url:
        with measured() as took:
            received, closed = exchange(url, request)
    found = answers(received)
    if not found:
        return result(took, f"no answer; {len(received)} bytes received", False)
    status, headers, body = found[0]
    outcome = (f"{len(found)} answer(s), {len(received)} bytes; HTTP {status}, Connection: {headers.get('connection')}, "
               f"closed: {closed}: {body.decode('utf-8', 'replace')[:110]}")
    bounded = (400 <= status < 500 and headers.get("connection") == "close" and closed
               and len(found) == 1 and len(received) < 1 << 16)
    return result(took, outcome, bounded)


def content_length_shorter_than_body() -> dict:
    return server_answer(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + SMUGGLED)


def chunked_beside_content_length() -> dict:
    chunked = b'12\r\n{"queries": ["q"]}\r\n0\r\n\r\n'
    return server_answer(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         + b"Content-Length: %d\r\n\r\n" % len(chunked) + chunked + SMUGGLED)


def deep_json_body() -> dict:
    return server_answer(post(b"[" * 100_000 + b"]" * 100_000))


def topk_10_to_5000() -> dict:
    return server_answer(post(b'{"queries": ["q"], "topk": 1' + b"0" * 5000 + b"}"))


def number_of_4301_digits() -> dict:
    return server_answer(post(b'{"queries": ["q"], "x": 1' + b"0" * 4300 + b"}"))


def queries_times_topk() -> dict:
    return server_answer(post(json.dumps({"queries": ["capital of Burkina Faso"] * 256, "topk": 100}).encode()))


# --- 6. nothing a policy writes escapes step_batch ------------------------------------------------------


@cache
def scale_tool():
    from agentenv.tools import Tool

    def scale(value: float, factor: float) -> str:
        """Multiply.

        Args:
            value: The number.
            factor: By how much.
        """
        return str(value * factor)

    return Tool.from_function(scale)


def hostile_call_in_a_batch(parser: str, hostile: str, good: str) -> dict:
    """Three environments step at once, the middle one with ``hostile``; then all three answer."""
    from agentenv import ToolEnv, step_batch
    from agentenv.tools import calculator

    tools = [calculator] if parser == "json" else [scale_tool()]
    # Room for the whole action: a digit is a token.
    envs = [ToolEnv(tools, tokenizer=tokenizer(), parser=parser, max_turn_tokens=6000, max_total_tokens=8192)
            for _ in range(3)]
    for env in envs:
        env.reset(options=QUESTION)
    with measured() as took:
        results, error = attempt(lambda: step_batch(envs, [good, hostile, good]))
    if error is not None:
        return result(took, f"escaped step_batch: {described(error)}", False)
    failed = [info["failed_tool_calls"] for *_, info in results]
    output = results[1][4]["turns"][-1]["calls"][0]["output"]
    after, error = attempt(lambda: step_batch(envs, ["<answer>42</answer>"] * 3))
    next_ok = error is None and all(terminated for _, _, terminated, _, _ in after)
    outcome = f"failed calls {failed}; next step_batch works: {next_ok}; the call's observation: {output[:100]}"
    return result(took, outcome, failed == [0, 1, 0] and output.startswith("Error") and next_ok)


def json_call(arguments: str) -> str:
    return f'<tool_call>{{"name": "calculator", "arguments": {arguments}}}</tool_call>'


def json_huge_integer() -> dict:
    return hostile_call_in_a_batch("json", json_call(f'{{"expression": {HUGE_INTEGER}}}'), json_call('{"expression": "6*7"}'))


def json_double_encoded_nesting() -> dict:
    return hostile_call_in_a_batch("json", json_call(f'"{NESTED}"'), json_call('{"expression": "6*7"}'))


def tags_huge_integer() -> dict:
    return hostile_call_in_a_batch("tags", f'<scale>{{"value": {HUGE_INTEGER}, "factor": 2}}</scale>',
                                   '<scale>{"value": 21, "factor": 2}</scale>')


def tags_nesting() -> dict:
    return hostile_call_in_a_batch("tags", f'<scale>{{"value": {NESTED}, "factor": 2}}</scale>',
                                   '<scale>{"value": 21, "factor": 2}</scale>')


# --- 7. token budgets -------------------------------------------------------------------------------


@cache
def long_passage_index():
    from agentenv.tools import BM25Index

    text = " ".join(["Lima is the capital of Peru, on the Pacific coast."] * 60)
    return BM25Index.build([{"id": f"p{i}", "title": f"Peru {i}", "text": f"{i} {text}"} for i in range(5)],
                           show_progress=False)


def search_env(**kwargs):
    from agentenv import ToolEnv
    from agentenv.tools import calculator, search_tool

    env = ToolEnv([search_tool(long_passage_index(), k=3, tokenizer=tokenizer()), calculator], tokenizer=tokenizer(), **kwargs)
    env.reset(options=QUESTION)
    return env


def many_searches_one_turn() -> dict:
    env = search_env(max_observation_tokens=500, max_turn_tokens=2048, max_calls_per_turn=49)
    with measured() as took:
        *_, info = env.step("<search>Peru capital</search>" * 49)
    tool_tokens = len(info["trajectory"].segments[-1].token_ids)
    outcome = f"49 searches run: tool segment of {tool_tokens} tokens (max_observation_tokens 500)"
    return result(took, outcome, info["tool_calls"].get("search") == 49 and tool_tokens <= 500)


def context_over_many_turns() -> dict:
    env = search_env(max_total_tokens=4096, max_turns=30, max_observation_tokens=700)
    longest, done = 0, False
    with measured() as took:
        while not done:
            obs, _, terminated, truncated, info = env.step("<search>Peru capital</search>")
            longest, done = max(longest, len(obs)), terminated or truncated
    outcome = (f"context peaked at {longest} tokens (max_total_tokens 4096) over {info['num_turns']} turns; "
               f"finish {info['finish_reason']}")
    return result(took, outcome, longest <= 4096 and info["finish_reason"] == "max_tokens")


def action_over_turn_budget() -> dict:
    from agentenv import step_batch

    env = search_env(max_turn_tokens=256)
    action = tokenizer().encode(" word" * 3001, add_special_tokens=False)[:3001]
    with measured() as took:
        [(*_, info)] = step_batch([env], [action], [[-1.0] * len(action)])
    kept = len(info["trajectory"].segments[1].token_ids)
    outcome = f"a {len(action)}-token action: {kept} tokens kept, truncated_action_tokens {info['truncated_action_tokens']}"
    return result(took, outcome, kept <= 256 and info["truncated_action_tokens"] == len(action) - kept)


# --- 8. parsing time -----------------------------------------------------------------------------------


def parse_time(text: str, check: Callable[[object], bool]) -> dict:
    from agentenv.parsing import TagParser
    from agentenv.tools import calculator, search_tool

    tools = {"search": search_tool(tiny_index()), "calculator": calculator}
    with measured() as took:
        turn = TagParser().parse(text, tools)
    outcome = f"{len(text):,} chars parsed: {len(turn.tool_calls):,} calls, answer of {len(turn.answer or ''):,} chars"
    return result(took, outcome, check(turn) and took.seconds < PARSE_GOAL_S)


def unclosed_search_tags() -> dict:
    return parse_time("<search>" * 131_072, lambda turn: len(turn.tool_calls) == 131_072
                      and {call.error for call in turn.tool_calls} == {"unclosed <search> tag"})


def unclosed_boxed() -> dict:
    body = "\\boxed{" * 18_000
    return parse_time(f"<answer>{body}</answer>", lambda turn: turn.answer == body)


# --- 9. the calculator's precision -----------------------------------------------------------------------


def calculated(expression: str, exact: str) -> dict:
    from agentenv.tools import calculator

    with measured() as took:
        text = calculator.run({"expression": expression}).text
    return result(took, f"{expression} -> {text}", text == exact)


# --- 10. config values out of range -------------------------------------------------------------------


def refused_override(override: str) -> dict:
    from agentenv.trainers.loop.config import ConfigError, load_config

    key = override.partition("=")[0]
    with measured() as took:
        _, error = attempt(lambda: load_config(REPO / "configs/cpu-smollm2.yaml", [override]))
    message = str(error)
    bounded = isinstance(error, ConfigError) and message.startswith(key) and "\n" not in message and len(message) < 300
    return result(took, f"--set {override}: {described(error)}", bounded)


# --- 11. YAML alias bombs -----------------------------------------------------------------------------


def alias_bomb(levels: int, width: int = 10) -> str:
    """``width ** levels`` values in a few hundred bytes: each level is ``width`` aliases of the one before."""
    lines = ["env:", "  kwargs:", f"    l0: &l0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"    l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def print_config(text: str) -> dict:
    """``agentenv train --config FILE --print-config`` in this process: exit code, stderr."""
    import agentenv.trainers.loop.command  # noqa: F401 - imported before the measurement, as the CLI would
    from agentenv.cli import main

    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as folder:
        path = Path(folder) / "bomb.yaml"
        path.write_text(text)
        stdout, stderr = io.StringIO(), io.StringIO()
        with measured() as took, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code, error = attempt(lambda: main(["train", "--config", str(path), "--print-config"]))
        err = stderr.getvalue()
        shown = err.strip().replace(folder, "$TMP")
    outcome = (f"{len(text)}-byte config: exit {code}, stdout {len(stdout.getvalue()):,} chars, "
               f"stderr {err.count(chr(10))} line(s) of {len(err):,} chars: {shown[:110]}")
    if error is not None:
        outcome = described(error)
    bounded = code == 2 and err.count("\n") == 1 and len(err) < 1000 and took.seconds < 5.0
    return result(took, outcome, bounded)


def six_alias_levels() -> dict:
    return print_config(alias_bomb(levels=6))


def seven_alias_levels() -> dict:
    return print_config(alias_bomb(levels=7))


def aliased_value_in_an_error() -> dict:
    # 8 100 values (under the alias bound) where two numbers belong: the error quotes them.
    return print_config("env:\n  kwargs:\n    l: &l [" + ", ".join(["x"] * 90) + "]\noptim:\n  betas: ["
                        + ", ".join(["*l"] * 90) + "]\n")


# --- 12. damaged corpora --------------------------------------------------------------------------------


def corpus_lines(count: int = 2000) -> bytes:
    return "".join(json.dumps({"id": f"p{i}", "title": f"Place {i}", "text": f"Place {i} lies {i * 7 % 13} km "
                                                                         f"from river {i % 5}."}) + "\n"
                   for i in range(count)).encode()


def index_build(name: str, data: bytes) -> dict:
    """``python -m agentenv.cli index build`` on a corpus file holding ``data``: exit code, stderr's last line."""
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as folder:
        corpus, out = Path(folder) / name, Path(folder) / "index"
        corpus.write_bytes(data)
        with measured() as took:
            done = subprocess.run([sys.executable, "-m", "agentenv.cli", "index", "build", "--corpus", str(corpus),
                                   "--out", str(out)], capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
        left_behind = sorted(path.name for path in Path(folder).iterdir()) != [name]
    last = done.stderr.rstrip("\n").rpartition("\n")[2]
    bounded = (done.returncode == 1 and "Traceback" not in done.stderr and last.startswith("agentenv index build: error: ")
               and f"{corpus}, line " in last and len(last) < 500 and not left_behind)
    outcome = f"exit {done.returncode}: {last.replace(folder, '$TMP')[:150]}"
    return {**result(took, outcome, bounded), "after_rss_mb": None}  # the memory is the subprocess's


def truncated_gzip() -> dict:
    data = gzip.compress(corpus_lines(), mtime=0)
    return index_build("corpus.jsonl.gz", data[: len(data) // 2])


def bit_flipped_gzip() -> dict:
    data = bytearray(gzip.compress(corpus_lines(), mtime=0))
    data[len(data) // 2] ^= 0x10
    return index_build("corpus.jsonl.gz", bytes(data))


def deeply_nested_line() -> dict:
    return index_build("corpus.jsonl", corpus_lines(1) + b"[" * 200_000 + b"]" * 200_000 + b"\n")


def repeated_passage_ids() -> dict:
    return index_build("corpus.jsonl", corpus_lines(3) + corpus_lines(1))


# --- 13. damaged checkpoints ----------------------------------------------------------------------------


class CreatesFile:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, as it could call anything."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@cache
def saved_checkpoint() -> Path:
    """A real checkpoint of a tiny model (step 1, cursor 2), in a folder removed at exit."""
    import atexit

    import torch

    from agentenv.models import tiny_random_model
    from agentenv.trainers.loop.checkpoint import save_checkpoint

    model = tiny_random_model(tokenizer())
    run = Path(tempfile.mkdtemp(prefix="bench-reliability-run-"))
    atexit.register(shutil.rmtree, run, ignore_errors=True)
    return save_checkpoint(run, 1, model, torch.optim.AdamW(model.parameters(), lr=0.01), {"cursor": 2, "phase": "grpo"}, {})


def damaged_checkpoint(damage: Callable[[Path], None], field: str) -> dict:
    """``load_checkpoint`` (what --resume calls) on a copy of the checkpoint that ``damage`` changed."""
    import torch

    from agentenv.models import tiny_random_model
    from agentenv.trainers.loop.checkpoint import load_checkpoint
    from agentenv.trainers.loop.errors import ConfigError

    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as folder:
        checkpoint = Path(folder) / "step_000001"
        shutil.copytree(saved_checkpoint(), checkpoint)
        damage(checkpoint)
        model = tiny_random_model(tokenizer())
        with measured() as took:
            _, error = attempt(lambda: load_checkpoint(checkpoint, model, torch.optim.AdamW(model.parameters(), lr=0.01)))
        ran = (checkpoint / "the-payload-ran").exists()
        message = str(error)
        bounded = (isinstance(error, ConfigError) and message.startswith(str(checkpoint)) and field in message
                   and "\n" not in message and not ran)
        outcome = f"{type(error).__name__}: {str(error).replace(folder, '$TMP')[:150]}" + ("; the payload ran" if ran else "")
    return result(took, outcome, bounded)


def edit_state(**fields) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        state = json.loads((checkpoint / "state.json").read_text())
        (checkpoint / "state.json").write_text(json.dumps({**state, **fields}))

    return damage


def unsafe_rng() -> dict:
    import torch

    def damage(checkpoint: Path) -> None:
        torch.save({"python": CreatesFile(checkpoint / "the-payload-ran")}, checkpoint / "rng.pt")

    return damaged_checkpoint(damage, "rng.pt")


def truncated_state() -> dict:
    def damage(checkpoint: Path) -> None:
        (checkpoint / "state.json").write_text((checkpoint / "state.json").read_text()[:20])

    return damaged_checkpoint(damage, "state.json")


def step_a_string() -> dict:
    return damaged_checkpoint(edit_state(step="1"), "'step'")


def cursor_past_the_steps() -> dict:
    return damaged_checkpoint(edit_state(cursor=10**12), "'cursor'")


# --- the cases -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    item: int
    name: str
    before: str
    run: Callable[[], dict]
    # Run in a subprocess of its own, so that its peak RSS is its own: the cases that could fill memory.
    isolated: bool = False


CONFIG_BEFORE = "trained silently"
CASES = [
    Case(1, "1 280 queries in one search_batch against the real server", "a turn with more than 256 searches failed whole "
         "(server caps a request at 256 queries)", searches_over_one_request),
    Case(2, "server trickles a byte every 0.5 s, timeout_s=2", "held the client past 46 s with timeout_s=10 (unbounded)",
         trickling_server),
    Case(2, "endless body", "grew the client past 1.5 GB in 8 s", endless_answer, isolated=True),
    Case(2, "10^6 documents for k=3", "accepted whole (12 s, +869 MB) and formatted (20 s)", million_documents_for_k_3,
         isolated=True),
    Case(2, "three 1 MB passages formatted by the search tool", "8 s to format", megabyte_passages),
    Case(3, "[resetting server, healthy server]", "not retried, not failed over: the whole batch failed",
         resetting_then_healthy),
    Case(4, "200 answer of JSON nested 100 000 deep", "RecursionError escaped; reported as the policy's failed call",
         deeply_nested_answer),
    Case(4, '200 answer with "contents": 5', "AttributeError escaped; reported as the policy's failed call",
         contents_a_number),
    Case(5, "Content-Length shorter than the body", "rest read as next request", content_length_shorter_than_body),
    Case(5, "Transfer-Encoding: chunked beside Content-Length", "Content-Length used", chunked_beside_content_length),
    Case(5, "JSON body nested 100 000 deep", "deep JSON body (listed: no 4xx)", deep_json_body),
    Case(5, "topk 10^5000", "topk 10^5000 (listed: no 4xx)", topk_10_to_5000),
    Case(5, "a 4 301-digit number in the body", "a 4 301-digit number (listed: no 4xx)", number_of_4301_digits),
    Case(5, "256 queries x topk 100", "returned 19 MB", queries_times_topk),
    Case(6, "JSON call, a 4 301-digit integer", "ValueError escaped step_batch; other envs left broken", json_huge_integer),
    Case(6, "JSON call, double-encoded arguments nested 1 000 deep", "RecursionError escaped step_batch; other envs "
         "left broken", json_double_encoded_nesting),
    Case(6, "tags parser's JSON form, a 4 301-digit integer", "ValueError escaped step_batch; other envs left broken",
         tags_huge_integer),
    Case(6, "tags parser's JSON form, nested 1 000 deep", "RecursionError escaped step_batch; other envs left broken",
         tags_nesting),
    Case(7, "49 searches in one turn, max_observation_tokens 500", "645-token tool segment", many_searches_one_turn),
    Case(7, "searches until the context is full, max_total_tokens 4 096", "context reached 4 740 tokens",
         context_over_many_turns),
    Case(7, "3 001-token action, max_turn_tokens 256", "3 001-token action accepted", action_over_turn_budget),
    Case(8, "131 072 unclosed <search> tags (1 MiB)", "30 s", unclosed_search_tags),
    Case(8, "\\boxed{ x 18 000 in an answer", "9 s", unclosed_boxed),
    Case(9, "1411750001*1.5", "2117625002", lambda: calculated("1411750001*1.5", "2117625001.5")),
    Case(9, "12345678901.5", "1.23456789e+10", lambda: calculated("12345678901.5", "12345678901.5")),
    Case(9, "1e16+1", "1e+16", lambda: calculated("1e16+1", "10000000000000001")),
    *[
        Case(10, f"--set {override}", CONFIG_BEFORE, lambda override=override: refused_override(override))
        for override in ["optim.lr=.nan", "optim.lr=nan", "engine.temperature=.nan", "engine.temperature=.inf",
                         "engine.top_p=.inf", "engine.top_p=5", "optim.max_grad_norm=-1", "optim.max_grad_norm=.nan",
                         "optim.weight_decay=-5", "optim.betas=[2, -1]", "lora.dropout=1.5", "optim.min_lr_ratio=-3"]
    ],
    Case(11, "6 alias levels, --print-config", "17.5 s and 455 MB (355-byte config)", six_alias_levels, isolated=True),
    Case(11, "7 alias levels, --print-config", "never finished", seven_alias_levels, isolated=True),
    Case(11, "8 100 aliased values where optim.betas belongs", "a 34.7 MB error message", aliased_value_in_an_error,
         isolated=True),
    Case(12, "truncated .jsonl.gz", "raw traceback", truncated_gzip),
    Case(12, "bit-flipped .jsonl.gz", "raw traceback", bit_flipped_gzip),
    Case(12, "a line of JSON nested 200 000 deep", "raw traceback", deeply_nested_line),
    Case(12, "duplicate passage ids", "indexed silently", repeated_passage_ids),
    Case(13, "unsafe rng.pt (pickle payload)", "refused, reported as a raw traceback", unsafe_rng),
    Case(13, "truncated state.json", "raw JSONDecodeError on --resume", truncated_state),
    Case(13, '"step": "1" in state.json', "raw TypeError on --resume", step_a_string),
    Case(13, "cursor 10^12 after 1 step", "accepted", cursor_past_the_steps),
]


def key(case: Case) -> str:
    return f"{case.item}:{case.name}"


def run_case(case: Case) -> dict:
    """The case's measurements; an exception that escapes the case itself is a case not bounded."""
    try:
        return case.run()
    except Exception as error:  # noqa: BLE001 - reported, not raised: the other cases still run
        return {"after_s": None, "after_rss_mb": None, "outcome": f"the case raised {described(error)}", "bounded": False}


def run_isolated(case: Case) -> dict:
    """The case in a subprocess of its own (``--case``), within CASE_TIMEOUT_S."""
    with tempfile.NamedTemporaryFile(suffix=".json", prefix="bench-") as out:
        try:
            done = subprocess.run([sys.executable, __file__, "--case", key(case), "--out", out.name],
                                  capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"after_s": CASE_TIMEOUT_S, "after_rss_mb": None, "outcome": f"still running after {CASE_TIMEOUT_S} s",
                    "bounded": False}
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or [""])[-1]
            return {"after_s": None, "after_rss_mb": None, "outcome": f"worker exit {done.returncode}: {tail[:150]}",
                    "bounded": False}
        return json.loads(Path(out.name).read_text())


def after_text(record: dict) -> str:
    """The after column of RESULTS.md: time, RSS growth, outcome (escaped for a table cell)."""
    measures = [f"{record['after_s']} s"] if record["after_s"] is not None else []
    if record["after_rss_mb"] is not None:
        measures.append(f"+{record['after_rss_mb']} MB")
    outcome = record["outcome"].replace("|", "\\|").replace("\n", " ")
    return ", ".join(measures) + ": " + (outcome if len(outcome) <= 120 else outcome[:120] + "…")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a worker: one isolated case
        [case] = [case for case in CASES if key(case) == args.case]
        Path(args.out).write_text(json.dumps(run_case(case)))
        return

    machine_at_start = machine()
    began = time.perf_counter()
    records = []
    for case in CASES:
        measured_case = run_isolated(case) if case.isolated else run_case(case)
        record = {"item": case.item, "case": case.name, "before": case.before, **measured_case}
        print(json.dumps(record, ensure_ascii=False), flush=True)
        records.append(record)
    bounded = sum(record["bounded"] for record in records)
    print(json.dumps({"bench": "reliability", "cases": len(records), "bounded": bounded}), flush=True)
    append_section(
        "Reliability under hostile input",
        "python bench/reliability.py " + " ".join(sys.argv[1:]),
        [f"{machine_at_start}; {time.perf_counter() - began:.0f} s in all",
         "before: what the reliability review measured on the old code; after: this run (seconds, growth of peak RSS "
         "except for the index builds, which run in a subprocess, and the outcome); bounded: the right error or "
         f"observation, within 3x the timeout or the goal, under {MAX_RSS_GROWTH_MB} MB, the budget held",
         f"{bounded} of {len(records)} cases bounded"],
        [("item", "item"), ("case", "case"), ("before", "before"), ("after", "after"), ("bounded", "bounded")],
        [{**record, "after": after_text(record), "bounded": "yes" if record["bounded"] else "**no**"} for record in records],
    )
    sys.exit(0 if bounded == len(records) else 1)


if __name__ == "__main__":
    main()
