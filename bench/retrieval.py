"""Retrieval backends side by side: build time, peak memory, query latency, throughput, agreement.

    nice .venv/bin/python bench/retrieval.py                          # 100 k passages (~3 min)
    nice .venv/bin/python bench/retrieval.py --sizes 100000 1000000   # the full table

Passages are synthetic: 100 words drawn from a Zipf distribution (s = 1) over a 50 k vocabulary;
queries are 3-8 words from the same distribution. Each (size, backend) runs in its own subprocess,
so peak RSS is that backend's alone; the corpus is generated there as a stream and the time spent
generating it is subtracted from the build time. Latency is one query at a time on the index
re-opened with ``BM25Index.load``; throughput is one ``search_batch`` call over the same queries.
Agreement is the mean fraction of rank-bm25's top 10 found in tantivy's top 10, over the queries
both ran. rank-bm25 scores every passage for every query term, so its query count is capped at
``REFERENCE_BUDGET / passages`` (20 queries at 1 M passages).

Prints one JSON line per configuration and appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
from common import RESULTS, machine, peak_rss_mb, run_worker

VOCABULARY_SIZE = 50_000
WORDS_PER_PASSAGE = 100
QUERY_WORDS = (3, 8)
ZIPF_EXPONENT = 1.0
BACKENDS = ("rank_bm25", "tantivy")
# rank-bm25 does passages x query-terms work per query: cap passages x queries at this.
REFERENCE_BUDGET = 20_000_000
WARMUP_QUERIES = 5
K = 10


def _vocabulary() -> list[str]:
    return [f"w{rank}" for rank in range(VOCABULARY_SIZE)]


def _zipf_probabilities() -> np.ndarray:
    weights = 1.0 / np.arange(1, VOCABULARY_SIZE + 1) ** ZIPF_EXPONENT
    return weights / weights.sum()


def synthetic_passages(
    count: int, seed: int = 0, timer: list[float] | None = None
) -> Iterator[dict[str, str]]:
    """``count`` Zipf passages, generated in chunks; seconds spent generating are added to ``timer[0]``."""
    rng = np.random.default_rng(seed)
    vocabulary, probabilities = _vocabulary(), _zipf_probabilities()
    chunk = 10_000
    for start in range(0, count, chunk):
        began = time.perf_counter()
        word_ids = rng.choice(
            VOCABULARY_SIZE, size=(min(chunk, count - start), WORDS_PER_PASSAGE), p=probabilities
        )
        passages = [
            {"id": str(start + row), "title": "", "text": " ".join([vocabulary[i] for i in ids])}
            for row, ids in enumerate(word_ids.tolist())
        ]
        if timer is not None:
            timer[0] += time.perf_counter() - began
        yield from passages


def synthetic_queries(count: int, seed: int = 0) -> list[str]:
    """Queries of 3-8 words from the passages' distribution (a seed stream of their own)."""
    rng = np.random.default_rng([seed, 1])
    vocabulary, probabilities = _vocabulary(), _zipf_probabilities()
    queries = []
    # One query at a time, so the first n queries are the same whatever the count.
    for _ in range(count):
        length = rng.integers(QUERY_WORDS[0], QUERY_WORDS[1] + 1)
        queries.append(
            " ".join(
                vocabulary[i] for i in rng.choice(VOCABULARY_SIZE, size=length, p=probabilities)
            )
        )
    return queries


def timed_query_count(backend: str, passages: int, requested: int) -> int:
    if backend == "rank_bm25":
        return max(1, min(requested, REFERENCE_BUDGET // passages))
    return requested


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(seconds, q)) * 1000, 3)


def timed_searches(index, queries: list[str], k: int) -> tuple[list[float], list[list]]:
    """Each query through ``index.search``, one at a time: the seconds each took, and its hits."""
    latencies, found = [], []
    for query in queries:
        began = time.perf_counter()
        found.append(index.search(query, k))
        latencies.append(time.perf_counter() - began)
    return latencies, found


def measure(backend: str, passages: int, queries: int, seed: int) -> dict:
    """Build, load and query one backend in this process; return its metrics and top-k ids."""
    from agentenv.tools import BM25Index

    # `import agentenv` loads the environments and transformers; the backend adds to this.
    import_rss_mb = peak_rss_mb()
    query_texts = synthetic_queries(
        timed_query_count(backend, passages, queries) + WARMUP_QUERIES, seed
    )
    warmup, timed = query_texts[:WARMUP_QUERIES], query_texts[WARMUP_QUERIES:]
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as directory:
        generation = [0.0]
        began = time.perf_counter()
        built = BM25Index.build(
            synthetic_passages(passages, seed, generation),
            backend=backend,
            out_dir=directory,
            show_progress=False,
        )
        build_s = time.perf_counter() - began - generation[0]
        del built
        began = time.perf_counter()
        index = BM25Index.load(directory)
        load_s = time.perf_counter() - began
        index_mb = (
            sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file()) / 1e6
        )

        index.search_batch(warmup, K)
        latencies, found = timed_searches(index, timed, K)
        top_ids = [[hit.id for hit in hits] for hits in found]
        began = time.perf_counter()
        index.search_batch(timed, K)
        batch_s = time.perf_counter() - began
    return {
        "passages": passages,
        "backend": backend,
        "build_s": round(build_s, 2),
        "load_s": round(load_s, 4),
        "import_rss_mb": import_rss_mb,
        "peak_rss_mb": peak_rss_mb(),
        "index_mb": round(index_mb, 1),
        "timed_queries": len(timed),
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "batch_queries_per_s": round(len(timed) / batch_s, 1),
        "top_ids": top_ids,
    }


def agreement(reference: list[list[str]], candidate: list[list[str]]) -> tuple[float, float]:
    """(mean recall of the reference's top k in the candidate's, share of equal first hits)."""
    pairs = [
        (expected, got) for expected, got in zip(reference, candidate, strict=False) if expected
    ]
    recall = np.mean([len(set(expected) & set(got)) / len(expected) for expected, got in pairs])
    same_first = np.mean([bool(got) and expected[0] == got[0] for expected, got in pairs])
    return round(float(recall), 3), round(float(same_first), 3)


def append_results(rows: list[dict], command: str, machine_at_start: str) -> None:
    lines = [
        f"\n## Retrieval backends, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`{command}`  ",
        f"{machine_at_start}; tantivy {version('tantivy')}, rank-bm25 {version('rank-bm25')}, Python {platform.python_version()}  ",
        f"Zipf passages (vocabulary {VOCABULARY_SIZE}, {WORDS_PER_PASSAGE} words), queries of {QUERY_WORDS[0]}-{QUERY_WORDS[1]} words, top-{K}, one query at a time; agreement = rank-bm25's top {K} found in tantivy's.\n",
        "| passages | backend | build s | load s | RSS after import MB | peak RSS MB | index MB | timed queries | p50 ms | p95 ms | batch queries/s | top-10 agreement | same top-1 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['passages']:,} | {row['backend']} | {row['build_s']} | {row['load_s']} | {row['import_rss_mb']} | {row['peak_rss_mb']} | {row['index_mb']} "
            f"| {row['timed_queries']} | {row['p50_ms']} | {row['p95_ms']} | {row['batch_queries_per_s']} "
            f"| {row.get('top10_agreement', '–')} | {row.get('same_top1', '–')} |"
        )
    with RESULTS.open("a") as file:
        file.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="passage counts")
    parser.add_argument(
        "--queries", type=int, default=1000, help="timed queries for tantivy (rank-bm25: capped)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.out).write_text(
            json.dumps(measure(args.worker, args.sizes[0], args.queries, args.seed))
        )
        return

    machine_at_start = machine()
    rows = []
    for passages in args.sizes:
        results = {
            backend: run_worker(
                __file__,
                ["--worker", backend, "--sizes", str(passages), "--queries", str(args.queries), "--seed", str(args.seed)],
            )
            for backend in BACKENDS
        }
        recall, same_first = agreement(
            results["rank_bm25"]["top_ids"], results["tantivy"]["top_ids"]
        )
        results["tantivy"].update(top10_agreement=recall, same_top1=same_first)
        for backend in BACKENDS:
            row = {key: value for key, value in results[backend].items() if key != "top_ids"}
            print(json.dumps(row), flush=True)
            rows.append(row)
    append_results(rows, "python bench/retrieval.py " + " ".join(sys.argv[1:]), machine_at_start)


if __name__ == "__main__":
    main()
