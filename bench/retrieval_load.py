"""The retrieval server under concurrent clients: requests/s, latency percentiles, errors.

    nice .venv/bin/python bench/retrieval_load.py                      # 100 k synthetic passages
    nice .venv/bin/python bench/retrieval_load.py --index runs/wiki18  # an existing index

Starts ``agentenv serve-retriever`` in a subprocess on 127.0.0.1 (its own GIL), then runs
``--clients`` threads, each with its own ``RetrieverClient`` (one pooled connection, like one
rollout worker), sending ``--queries-per-request`` synthetic queries per request until
``--requests`` requests are done or ``--duration-s`` has passed. Clients and server share this
machine's cores, so the numbers are a floor for a server on a host of its own.

Prints one JSON line and appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from common import RESULTS, machine
from retrieval import synthetic_passages, synthetic_queries

from agentenv.tools import BM25Index, RetrieverClient
from agentenv.tools.retrieval_client import RetrieverError


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load_test(
    index_dir: str,
    clients: int,
    requests: int,
    duration_s: float,
    queries_per_request: int,
    k: int,
    server_arguments: Sequence[str] = (),
) -> dict:
    """Serve ``index_dir`` (``agentenv serve-retriever ... SERVER_ARGUMENTS``) and load it."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "agentenv.cli",
        "serve-retriever",
        "--index",
        index_dir,
        "--port",
        str(port),
        *server_arguments,
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        # The server prints its first line once its socket is bound.
        print(server.stdout.readline().strip(), file=sys.stderr)
        queries = synthetic_queries(1000, seed=1)
        next_request = itertools.count()
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        deadline = time.perf_counter() + duration_s

        def client_loop() -> None:
            with RetrieverClient(f"http://127.0.0.1:{port}", max_retries=0) as client:
                while time.perf_counter() < deadline:
                    number = next(next_request)  # itertools.count is atomic under the GIL
                    if number >= requests:
                        return
                    batch = [
                        queries[(number * queries_per_request + i) % len(queries)]
                        for i in range(queries_per_request)
                    ]
                    began = time.perf_counter()
                    try:
                        client.search_batch(batch, k)
                    except RetrieverError as error:
                        with lock:
                            errors.append(str(error))
                        continue
                    with lock:
                        latencies.append(time.perf_counter() - began)

        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed_s = time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(timeout=10)
    answered = len(latencies)
    return {
        "clients": clients,
        "queries_per_request": queries_per_request,
        "k": k,
        "requests": answered + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "elapsed_s": round(elapsed_s, 2),
        "requests_per_s": round(answered / elapsed_s, 1),
        "queries_per_s": round(answered * queries_per_request / elapsed_s, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2) if latencies else None,
        "p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 2) if latencies else None,
    }


def append_results(row: dict, passages: int, command: str, machine_at_start: str) -> None:
    lines = [
        f"\n## Retrieval server under load, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`{command}`  ",
        f"{machine_at_start}; server and clients on the same cores; {passages:,} passages (tantivy)\n",
        "| clients | queries/request | k | requests | errors | elapsed s | requests/s | queries/s | p50 ms | p95 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['clients']} | {row['queries_per_request']} | {row['k']} | {row['requests']} | {row['errors']} | {row['elapsed_s']} "
        f"| {row['requests_per_s']} | {row['queries_per_s']} | {row['p50_ms']} | {row['p95_ms']} |",
    ]
    with RESULTS.open("a") as file:
        file.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--index", help="an index directory; default: build one over --passages synthetic passages"
    )
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5000, help="stop after this many requests")
    parser.add_argument("--duration-s", type=float, default=60.0, help="or after this many seconds")
    parser.add_argument("--queries-per-request", type=int, default=1)
    parser.add_argument(
        "-k", type=int, default=3, help="passages per query (the search tool's default)"
    )
    args = parser.parse_args()
    machine_at_start = machine()

    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        index_dir = args.index
        if index_dir is None:
            index_dir = f"{scratch}/index"
            BM25Index.build(
                synthetic_passages(args.passages), out_dir=index_dir, show_progress=False
            )
        passages = len(BM25Index.load(index_dir))
        row = load_test(
            index_dir,
            args.clients,
            args.requests,
            args.duration_s,
            args.queries_per_request,
            args.k,
        )
    print(json.dumps({"passages": passages, **row}), flush=True)
    append_results(
        row, passages, "python bench/retrieval_load.py " + " ".join(sys.argv[1:]), machine_at_start
    )


if __name__ == "__main__":
    main()
