"""BM25 search through our API, pruned against the full search it replaced, in one run.

    python bench/retrieval_speed.py                        # builds 1 M passages, then ~4 min
    python bench/retrieval_speed.py --index /tmp/bm25-1m   # an index of the same passages, kept

Both paths search the same tantivy index over bench/retrieval.py's synthetic Zipf passages:

* ``pruned``: ``BM25Index.load(dir)`` (the default), which skips the postings of the common query
  terms wherever it can show they cannot change the top k (``_TantivyBackend._pruned_hits``);
* ``exhaustive``: ``BM25Index.load(dir, prune=False)``, the search without pruning: tantivy's Python
  binding scores every posting of every query term.

Each path runs in a process of its own: 5 warm-up queries, then ``--queries`` queries one at a time
through ``BM25Index.search`` (p50, p95) and the search tool (format included), then all of them in
one ``search_batch`` call (queries/s), top-10 each, with one search thread and with the default
(one per CPU). Both must return the same hits (ids, scores, order; checked). Then ``bench/retrieval_load.py``'s load test serves the same index (or
``--server-index``) with and without ``--no-prune``: ``--clients`` loopback clients, one query of
top 3 per request.

Goals: pruned p50 <= 1.5 ms and p95 <= 10 ms at 1 M passages, batch queries/s >= 3x
exhaustive's on one thread (the batch without pruning), server requests/s >= 2x with 0 errors. ``--profile`` records both API workers with
py-spy into bench/out/profile-retrieval-{pruned,exhaustive}.txt (read them with profile_top.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, command_line, machine, run_worker  # noqa: E402
from retrieval import (  # noqa: E402
    WARMUP_QUERIES,
    percentile_ms,
    synthetic_passages,
    synthetic_queries,
    timed_searches,
)
from retrieval_load import load_test  # noqa: E402

from agentenv.tools import BM25Index  # noqa: E402

PATHS = ("pruned", "exhaustive")
K = 10
GOAL_P50_MS = 1.5
GOAL_P95_MS = 10.0
GOAL_BATCH_RATIO = 3.0
GOAL_SERVER_RATIO = 2.0


def worker(path: str, index_dir: str, queries: int, seed: int) -> dict:
    from agentenv.tools.search import search_tool

    index = BM25Index.load(index_dir, prune=path == "pruned")
    texts = synthetic_queries(queries + WARMUP_QUERIES, seed)
    warmup, timed = texts[:WARMUP_QUERIES], texts[WARMUP_QUERIES:]
    index.search_batch(warmup, K)
    latencies, found = timed_searches(index, timed, K)
    hits = [[[hit.id, hit.score] for hit in result] for result in found]
    # The tool as the environment calls it: k 3 and a 512-word budget (search_tool's defaults).
    tool = search_tool(index)
    tool_latencies = []
    for query in timed:
        began = time.perf_counter()
        tool.run({"query": query})
        tool_latencies.append(time.perf_counter() - began)
    batch_s = {}
    for threads in (1, None):
        batched = BM25Index.load(index_dir, prune=path == "pruned", threads=threads)
        batched.search_batch(warmup, K)
        began = time.perf_counter()
        batched.search_batch(timed, K)
        batch_s[threads] = time.perf_counter() - began
    return {
        "path": path,
        "passages": len(index),
        "timed_queries": len(timed),
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "tool_p50_ms": percentile_ms(tool_latencies, 50),
        "tool_p95_ms": percentile_ms(tool_latencies, 95),
        "batch_queries_per_s_1_thread": round(len(timed) / batch_s[1], 1),
        "batch_threads": batched.threads,
        "batch_queries_per_s": round(len(timed) / batch_s[None], 1),
        "hits": hits,
    }


def goals(rows: dict[str, dict], same_hits: bool) -> list[tuple[str, bool]]:
    """Each goal in the module docstring as (what was measured against what, met)."""
    pruned, exhaustive = rows["pruned"], rows["exhaustive"]
    batch_ratio = pruned["batch_queries_per_s"] / exhaustive["batch_queries_per_s_1_thread"]
    server_ratio = pruned["requests_per_s"] / exhaustive["requests_per_s"]
    return [
        (f"p50 {pruned['p50_ms']:.2f} ms (goal <= {GOAL_P50_MS} ms)", pruned["p50_ms"] <= GOAL_P50_MS),
        (f"p95 {pruned['p95_ms']:.2f} ms (goal <= {GOAL_P95_MS:g} ms)", pruned["p95_ms"] <= GOAL_P95_MS),
        (
            f"batch queries/s ({pruned['batch_threads']} threads) {batch_ratio:.2f}x exhaustive's on 1 thread "
            f"(goal >= {GOAL_BATCH_RATIO:g}x)",
            batch_ratio >= GOAL_BATCH_RATIO,
        ),
        (
            f"server requests/s {server_ratio:.2f}x exhaustive with {pruned['errors']} errors "
            f"(goal >= {GOAL_SERVER_RATIO:g}x, 0 errors)",
            server_ratio >= GOAL_SERVER_RATIO and pruned["errors"] == 0,
        ),
        (f"the same hits (ids, scores, order): {'yes' if same_hits else 'NO'}", same_hits),
    ]


def _index(directory: str | None, passages: int, scratch: str) -> str:
    if directory:
        return directory
    directory = f"{scratch}/index"
    BM25Index.build(synthetic_passages(passages), out_dir=directory, show_progress=False)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1_000_000, help="when --index is not given")
    parser.add_argument("--index", help="an index of bench/retrieval.py's synthetic passages")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-index", help="the index to serve; default: --index")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="record the API workers with py-spy")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.index, args.queries, args.seed)
        Path(args.out).write_text(json.dumps(result))
        return 0

    machine_at_start = machine()
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as scratch:
        index_dir = _index(args.index, args.passages, scratch)
        server_dir = args.server_index or index_dir
        rows = {}
        for path in PATHS:
            rows[path] = run_worker(
                __file__,
                ["--worker", path, "--index", index_dir, "--queries", str(args.queries), "--seed", str(args.seed)],
                profile=f"retrieval-{path}" if args.profile else None,
            )
        same_hits = rows["pruned"].pop("hits") == rows["exhaustive"].pop("hits")
        server_passages = len(BM25Index.load(server_dir))
        for path in PATHS:
            server = load_test(
                server_dir, args.clients, args.requests, 60.0, 1, 3, [] if path == "pruned" else ["--no-prune"]
            )
            rows[path].update(
                requests_per_s=server["requests_per_s"],
                server_p50_ms=server["p50_ms"],
                server_p95_ms=server["p95_ms"],
                errors=server["errors"],
            )
    checked = goals(rows, same_hits)
    for path in PATHS:
        print(json.dumps(rows[path]), flush=True)
    print(json.dumps({"goals": [{"goal": text, "met": met} for text, met in checked]}))
    append_section(
        "Retrieval speed: pruned search against the full search", command_line("retrieval_speed.py"),
        [
            machine_at_start,
            f"{rows['pruned']['passages']:,} Zipf passages (bench/retrieval.py), {args.queries} queries of 3-8 words, "
            f"top {K}, one at a time through BM25Index.search, the search tool (k 3, 512 words) and one search_batch "
            f"(on 1 thread and on one per CPU); "
            f"server: {server_passages:,} passages, {args.clients} loopback clients, 1 query of top 3 per request, on the same cores",
            "; ".join(f"{text}: {'met' if met else 'missed'}" for text, met in checked),
        ],
        [("path", "path"), ("passages", "passages"), ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"),
         ("tool p50 ms", "tool_p50_ms"), ("tool p95 ms", "tool_p95_ms"),
         ("batch queries/s, 1 thread", "batch_queries_per_s_1_thread"), ("threads", "batch_threads"),
         ("batch queries/s", "batch_queries_per_s"),
         ("server requests/s", "requests_per_s"), ("server p50 ms", "server_p50_ms"),
         ("server p95 ms", "server_p95_ms"), ("server errors", "errors")],
        [rows[path] for path in PATHS],
    )
    return 0 if all(met for _, met in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
