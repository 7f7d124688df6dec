"""BM25 at wiki-18's size: corpus, `agentenv index build`, the API and `agentenv serve-retriever`.

    python bench/wikipedia_scale.py                          # 1 M, 5 M, 10 M, 21 M passages (hours)
    python bench/wikipedia_scale.py --sizes 20000,100000     # a check of the bench (~2 min)

wiki-18 (Search-R1's and FlashRAG's Wikipedia, DPR's December 2018 dump) is 21 M passages; our
other benchmarks stop at 1 M. Real wiki-18 cannot be shipped or downloaded here, so each size runs
over a synthetic corpus of its shape, written once per (passages, seed) under ``--work`` and reused:

* JSONL lines ``{"id", "contents"}``, contents ``"Title"\\ntext``, gzipped, ids "1", "2", ... as in
  wiki-18. DPR cut each article into disjoint 100-word blocks, so a passage has 100 words but the
  last of its article, which has 1 to 100 (uniform here). An article has 3.6 passages on average
  (geometric): 21 M passages over the ~5.8 M articles English Wikipedia had at the end of 2018.
  Every passage of an article carries its title: 1 to 3 words, drawn as the text's non-stopwords.
* Words: Zipf's law with exponent 1 (frequency of the r-th word ~ 1 / r), the usual fit for word
  frequencies in English text, over 1 M words. Its 33 most frequent words are Lucene's English stop
  set, which the tokenizer drops: they take 28 % of the words, about their share of English prose
  ("the" alone 6.9 %), so a 100-word block indexes ~72 tokens (passages average 86 words and ~64
  tokens with their title). bench/retrieval.py's 50 k-word corpus is too small a vocabulary for
  21 M passages, and without stopwords its most common word is in every passage. The other words
  are "w0", "w1", ... by rank, as bench/retrieval.py names its words, so the server's load test,
  which sends bench/retrieval.py's queries (3-8 of its words), finds them here. Real wiki-18 has
  more distinct terms (names, numbers, typos) with a few postings each: a larger term dictionary
  than here, and no more search work.
* Queries: 3 to 12 words (uniform) from the same distribution, stopwords included. Their content
  words are as frequent as the text's, so posting lists are longer than a real question's rare
  entity names would give: a pessimistic mix for latency.

For each size, in this order:

1. The corpus (generated, with its rate, unless cached).
2. ``agentenv index build --corpus F --out D --passages N`` as a subprocess (its progress bar shows
   here): wall time, the index's size on disk, and the build's peak memory, read from /proc every
   50 ms: peak RSS (VmHWM), and peak RssAnon, the memory beyond the page cache. Merging segments
   maps them, so RSS also holds index pages the kernel can drop; the goal is on RssAnon.
3. Through our API, in a worker process: ``BM25Index.load(D)`` (pruned, the default), 5 warm-up
   queries, then ``--queries`` queries one at a time, top 3 (p50, p95, p99); the same queries on
   ``BM25Index.load(D, prune=False)``, whose top 3 (ids and order) the pruned search must match;
   then one ``search_batch`` of 512 other queries on the default threads (queries/s).
4. ``agentenv serve-retriever`` on D, loaded by bench/retrieval_load.py's ``load_test`` (``--clients``
   loopback clients, 1 query of top 3 per request, ``--requests`` requests): time from the process
   start to its first /health answer, its RSS then and after the load (total, and RssAnon: memory
   beyond the index pages it maps, which the page cache holds and can drop).

Prints one JSON line per size, then the goals, checked at the largest size: build <= 30 min, build
peak RssAnon <= 4 GB, server RssAnon <= 2 GB, p50 <= 10 ms, p95 <= 50 ms, search_batch >= 200 queries/s,
server >= 150 requests/s with 0 errors, pruned top 3 == full top 3 on every query; exits 1 when one
is missed. Writes a growth curve (build time, index size, p50 and p95 against passages) and, at the
default sizes or with ``--record``, appends a table to bench/RESULTS.md and writes the curve to
bench/wikipedia-scale.png (otherwise into ``--work``). Indexes are deleted after measuring unless
``--keep-indexes`` (21 M: about 11 GB); corpora are kept (21 M: about 5 GB).

bench/retrieval_anchors.py runs the same corpus and queries through Pyserini's Lucene BM25 and PISA
beside ours (build, latency, agreement of the top 10); with ``--reuse-indexes`` it queries the index
that ``--keep-indexes`` left here instead of building ours again.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import retrieval_load  # noqa: E402
from common import (  # noqa: E402
    BENCH,
    OUT,
    append_section,
    command_line,
    machine,
    process_memory_mb,
    run_worker,
    wait_watching_memory,
)
from retrieval import WARMUP_QUERIES, percentile_ms, timed_searches  # noqa: E402
from tqdm import tqdm  # noqa: E402

from agentenv.tools.bm25 import STOPWORDS, BM25Index  # noqa: E402

DEFAULT_SIZES = [1_000_000, 5_000_000, 10_000_000, 21_000_000]
WIKI18_PASSAGES = 21_015_324

# The corpus model (see the module docstring). Bump CORPUS_VERSION when it changes: cached corpora
# are named after it.
CORPUS_VERSION = 1
VOCABULARY_SIZE = 1_000_000
ZIPF_EXPONENT = 1.0
# Lucene's English stop set, most frequent first (by their frequency in English text).
STOPWORDS_BY_RANK = (
    "the of and to a in is that for it as was with on by at be this are or an not but they their "
    "there if will no such into these then"
).split()
WORDS_PER_PASSAGE = 100
PASSAGES_PER_ARTICLE = 3.6
TITLE_WORDS = (1, 3)
ARTICLES_PER_CHUNK = 4096
QUERY_WORDS = (3, 12)

K = 3
BATCH_QUERIES = 512

GOAL_BUILD_S = 30 * 60
GOAL_BUILD_RSS_MB = 4096
GOAL_SERVER_RSS_ANON_MB = 2048
GOAL_P50_MS = 10.0
GOAL_P95_MS = 50.0
GOAL_BATCH_QUERIES_PER_S = 200.0
GOAL_REQUESTS_PER_S = 150.0


# --- the corpus ------------------------------------------------------------------------------------


class Vocabulary:
    """The Zipf words: sampling ranks, and turning ranks into text without a Python loop a word."""

    def __init__(self):
        assert set(STOPWORDS_BY_RANK) == STOPWORDS, "the stop set changed: update STOPWORDS_BY_RANK"
        self.words = STOPWORDS_BY_RANK + [f"w{rank}" for rank in range(VOCABULARY_SIZE - len(STOPWORDS_BY_RANK))]
        weights = 1.0 / np.arange(1, VOCABULARY_SIZE + 1) ** ZIPF_EXPONENT
        self._cdf = np.cumsum(weights / weights.sum())
        self._cdf[-1] = 1.0
        # Each word and a space, zero-padded to 8 bytes ("w999966 " is the longest): one uint64 a word.
        self._padded = np.array([f"{word} ".encode() for word in self.words], dtype="S8").view(np.uint64)
        self._bytes = np.array([len(word) + 1 for word in self.words])

    def sample(self, rng: np.random.Generator, count: int, content_only: bool = False) -> np.ndarray:
        """``count`` word ranks (inverse CDF); ``content_only``: no stopword, as in a title."""
        floor = self._cdf[len(STOPWORDS_BY_RANK) - 1] if content_only else 0.0
        return np.searchsorted(self._cdf, floor + rng.random(count) * (1 - floor), side="right")

    def text(self, ranks: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The words, each followed by a space, and the byte offset after each."""
        padded = self._padded[ranks].view(np.uint8)
        return padded[padded != 0].tobytes(), np.cumsum(self._bytes[ranks])

    def phrases(self, rng: np.random.Generator, lengths: np.ndarray, content_only: bool = False) -> list[str]:
        """One string of ``length`` sampled words per length."""
        words = [self.words[rank] for rank in self.sample(rng, int(lengths.sum()), content_only).tolist()]
        ends = np.cumsum(lengths).tolist()
        return [" ".join(words[end - length : end]) for end, length in zip(ends, lengths.tolist(), strict=True)]


LINE = b'{"id": "%d", "contents": "\\"%b\\"\\n%b"}\n'


def corpus_chunks(passages: int, seed: int) -> Iterator[tuple[int, bytes]]:
    """The corpus as (passages, JSONL bytes) blocks of whole articles (the last one cut to size)."""
    rng = np.random.default_rng(seed)
    vocabulary = Vocabulary()
    written = 0
    while written < passages:
        per_article = rng.geometric(1 / PASSAGES_PER_ARTICLE, ARTICLES_PER_CHUNK)
        article_of = np.repeat(np.arange(ARTICLES_PER_CHUNK), per_article)[: passages - written]
        is_last = np.append(article_of[1:] != article_of[:-1], True)
        words = np.where(is_last, rng.integers(1, WORDS_PER_PASSAGE + 1, len(article_of)), WORDS_PER_PASSAGE)
        text, word_ends = vocabulary.text(vocabulary.sample(rng, int(words.sum())))
        ends = word_ends[np.cumsum(words) - 1]
        starts = np.append(0, ends[:-1])
        title_words = rng.integers(TITLE_WORDS[0], TITLE_WORDS[1] + 1, article_of[-1] + 1)
        titles = [title.title().encode() for title in vocabulary.phrases(rng, title_words, content_only=True)]
        block = b"".join(
            LINE % (written + row + 1, titles[article], text[start : end - 1])  # without the last space
            for row, (article, start, end) in enumerate(zip(article_of.tolist(), starts.tolist(), ends.tolist(), strict=True))
        )
        yield len(article_of), block
        written += len(article_of)


def wiki_queries(count: int, seed: int) -> list[str]:
    """Queries of 3-12 words from the corpus's distribution (a seed stream of their own)."""
    rng = np.random.default_rng([seed, 1])
    return Vocabulary().phrases(rng, rng.integers(QUERY_WORDS[0], QUERY_WORDS[1] + 1, count))


def ensure_corpus(work: Path, passages: int, seed: int) -> tuple[Path, dict]:
    """The cached corpus of this size and seed, written first (streamed, gzip level 1) if missing."""
    path = work / f"wiki-shaped-v{CORPUS_VERSION}-{passages}-seed{seed}.jsonl.gz"
    if path.exists():
        return path, {"generate_s": None, "generate_passages_per_s": None, "corpus_mb": _mb(path)}
    work.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # renamed once complete: never a cut corpus
    began = time.perf_counter()
    # One thread compresses a block while this one makes the next (zlib releases the GIL).
    with tqdm(total=passages, unit=" passages", desc="corpus", unit_scale=True) as bar, \
            gzip.open(partial, "wb", compresslevel=1) as file, ThreadPoolExecutor(1) as compressor:
        written = None
        for count, block in corpus_chunks(passages, seed):
            if written is not None:
                written.result()
            written = compressor.submit(file.write, block)
            bar.update(count)
        written.result()
    seconds = time.perf_counter() - began
    partial.rename(path)
    rate = passages / seconds
    print(f"generated {passages:,} passages in {seconds:.0f} s ({rate:,.0f} passages/s; "
          f"wiki-18's {WIKI18_PASSAGES:,} would take ~{WIKI18_PASSAGES / rate / 60:.0f} min)", file=sys.stderr)
    return path, {"generate_s": round(seconds, 1), "generate_passages_per_s": round(rate), "corpus_mb": _mb(path)}


def _mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


# --- the build -------------------------------------------------------------------------------------


def build_index(corpus: Path, index_dir: Path, passages: int) -> dict:
    """`agentenv index build` in a subprocess: wall time, index size, the build's peak memory (read
    from /proc while it runs)."""
    shutil.rmtree(index_dir, ignore_errors=True)
    command = [sys.executable, "-m", "agentenv.cli", "index", "build", "--corpus", str(corpus),
               "--out", str(index_dir), "--passages", str(passages)]
    began = time.perf_counter()
    # Its progress bar and closing line go to this terminal, beside ours: stdout is for JSON lines.
    build = subprocess.Popen(command, stdout=sys.stderr)
    peak = wait_watching_memory(build)
    build_s = time.perf_counter() - began
    if build.returncode:
        raise subprocess.CalledProcessError(build.returncode, command)
    return {"build_s": round(build_s, 1), "build_peak_rss_mb": peak["VmHWM"], "build_peak_rss_anon_mb": peak["RssAnon"],
            "index_mb": _mb(index_dir)}


# --- the API (in a worker process) -----------------------------------------------------------------


def api_worker(index_dir: str, queries: int, seed: int) -> dict:
    """Latency pruned and full, their agreement, and search_batch throughput, on one index."""
    texts = wiki_queries(WARMUP_QUERIES + queries + BATCH_QUERIES, seed)
    warmup, timed, batch = texts[:WARMUP_QUERIES], texts[WARMUP_QUERIES:-BATCH_QUERIES], texts[-BATCH_QUERIES:]
    began = time.perf_counter()
    pruned = BM25Index.load(index_dir)
    load_s = time.perf_counter() - began
    pruned.search_batch(warmup, K)
    latencies, found = timed_searches(pruned, timed, K)
    full_latencies, full_found = timed_searches(BM25Index.load(index_dir, prune=False), timed, K)
    same = [[hit.id for hit in a] == [hit.id for hit in b] for a, b in zip(found, full_found, strict=True)]
    began = time.perf_counter()
    pruned.search_batch(batch, K)
    batch_s = time.perf_counter() - began
    return {
        "load_s": round(load_s, 3),
        "timed_queries": len(timed),
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "full_p50_ms": percentile_ms(full_latencies, 50),
        "full_p95_ms": percentile_ms(full_latencies, 95),
        "same_top_k": round(sum(same) / len(same), 4),
        "batch_threads": pruned.threads,
        "batch_queries_per_s": round(len(batch) / batch_s, 1),
    }


# --- the server ------------------------------------------------------------------------------------


class _WatchedServer(subprocess.Popen):
    """``load_test``'s server process (it starts it as ``subprocess.Popen``), timed to its first
    /health answer and weighed then and when ``load_test`` stops it, after the load."""

    started: list[_WatchedServer] = []

    def __init__(self, command: list[str], **kwargs):
        began = time.perf_counter()
        super().__init__(command, **kwargs)
        port = command[command.index("--port") + 1]
        _wait_for_health(self, f"http://127.0.0.1:{port}/health")
        self.startup_s = time.perf_counter() - began
        self.memory_started = process_memory_mb(self.pid)
        self.memory_loaded: dict = {}
        _WatchedServer.started.append(self)

    def terminate(self) -> None:
        if self.poll() is None:
            self.memory_loaded = process_memory_mb(self.pid)
        super().terminate()


def _wait_for_health(server: subprocess.Popen, url: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"agentenv serve-retriever exited with status {server.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g} s")


def serve_and_load(index_dir: Path, clients: int, requests: int) -> dict:
    """``agentenv serve-retriever`` under ``load_test``: start-up, memory, requests/s, errors.

    ``load_test`` starts the server itself; for its duration ``subprocess.Popen`` is _WatchedServer
    (nothing else starts a process meanwhile).
    """
    _WatchedServer.started.clear()
    with mock.patch.object(retrieval_load.subprocess, "Popen", _WatchedServer):
        load = retrieval_load.load_test(str(index_dir), clients, requests, 120.0, 1, K)
    server = _WatchedServer.started[0]
    return {
        "server_start_s": round(server.startup_s, 2),
        "server_rss_mb_started": server.memory_started.get("VmRSS"),
        "server_rss_anon_mb_started": server.memory_started.get("RssAnon"),
        "server_rss_mb_loaded": server.memory_loaded.get("VmRSS"),
        "server_rss_anon_mb_loaded": server.memory_loaded.get("RssAnon"),
        "requests_per_s": load["requests_per_s"],
        "server_p50_ms": load["p50_ms"],
        "server_p95_ms": load["p95_ms"],
        "server_errors": load["errors"],
    }


# --- one size, the goals, the outputs --------------------------------------------------------------


def measure_size(passages: int, args: argparse.Namespace) -> dict:
    corpus, generation = ensure_corpus(args.work, passages, args.seed)
    index_dir = args.work / f"index-{passages}-seed{args.seed}"
    row = {"passages": passages, **generation, **build_index(corpus, index_dir, passages)}
    row.update(run_worker(__file__, ["--worker", "--index", str(index_dir), "--queries", str(args.queries), "--seed", str(args.seed)]))
    row.update(serve_and_load(index_dir, args.clients, args.requests))
    if not args.keep_indexes:
        shutil.rmtree(index_dir)
    return row


def goals(row: dict) -> list[tuple[str, bool]]:
    """Each goal in the module docstring as (what was measured against what, met), for one size."""
    server_anon = max(value for value in (row["server_rss_anon_mb_started"], row["server_rss_anon_mb_loaded"]) if value is not None)
    return [
        (f"build {row['build_s'] / 60:.1f} min (goal <= {GOAL_BUILD_S / 60:g} min)", row["build_s"] <= GOAL_BUILD_S),
        (f"build peak RssAnon {row['build_peak_rss_anon_mb']:,.0f} MB (goal <= {GOAL_BUILD_RSS_MB:,} MB; "
         f"with mapped index pages {row['build_peak_rss_mb']:,.0f} MB)",
         row["build_peak_rss_anon_mb"] <= GOAL_BUILD_RSS_MB),
        (f"server RssAnon {server_anon:,.0f} MB (goal <= {GOAL_SERVER_RSS_ANON_MB:,} MB)", server_anon <= GOAL_SERVER_RSS_ANON_MB),
        (f"p50 {row['p50_ms']:.2f} ms (goal <= {GOAL_P50_MS:g} ms)", row["p50_ms"] <= GOAL_P50_MS),
        (f"p95 {row['p95_ms']:.2f} ms (goal <= {GOAL_P95_MS:g} ms)", row["p95_ms"] <= GOAL_P95_MS),
        (f"search_batch {row['batch_queries_per_s']:,.0f} queries/s (goal >= {GOAL_BATCH_QUERIES_PER_S:g})",
         row["batch_queries_per_s"] >= GOAL_BATCH_QUERIES_PER_S),
        (f"server {row['requests_per_s']:,.0f} requests/s with {row['server_errors']} errors "
         f"(goal >= {GOAL_REQUESTS_PER_S:g}, 0 errors)",
         row["requests_per_s"] >= GOAL_REQUESTS_PER_S and row["server_errors"] == 0),
        (f"pruned top {K} == full top {K} on {row['same_top_k']:.2%} of queries (goal: all)", row["same_top_k"] == 1.0),
    ]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [row["passages"] for row in rows]
    figure, (build, disk, latency) = plt.subplots(1, 3, figsize=(13, 4))
    build.plot(xs, [row["build_s"] / 60 for row in rows], marker="o")
    build.set_ylabel("build, minutes")
    disk.plot(xs, [row["index_mb"] / 1000 for row in rows], marker="o")
    disk.set_ylabel("index on disk, GB")
    for key, label, style in (("p50_ms", "pruned p50", "-"), ("p95_ms", "pruned p95", "--"), ("full_p50_ms", "full p50", ":")):
        latency.plot(xs, [row[key] for row in rows], marker="o", linestyle=style, label=label)
    latency.set_ylabel(f"one query, top {K}, ms")
    latency.legend(fontsize=8)
    for axes in (build, disk, latency):
        axes.set_xscale("log")
        axes.set_xticks(xs)
        axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: _count(value)))
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.set_xlabel("passages")
        axes.grid(alpha=0.3)
    figure.suptitle("BM25 (tantivy) on wiki-18-shaped Zipf passages", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _count(value: float) -> str:
    return f"{value / 1e6:g} M" if value >= 1e6 else f"{value / 1e3:g} k"


COLUMNS = [
    ("passages", "passages"), ("corpus MB (gz)", "corpus_mb"), ("generated passages/s", "generate_passages_per_s"),
    ("build s", "build_s"), ("build peak RSS MB", "build_peak_rss_mb"),
    ("build peak RssAnon MB", "build_peak_rss_anon_mb"), ("index MB", "index_mb"),
    ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"), ("p99 ms", "p99_ms"), ("full p50 ms", "full_p50_ms"),
    ("full p95 ms", "full_p95_ms"), ("same top 3", "same_top_k"), ("batch queries/s", "batch_queries_per_s"),
    ("server start s", "server_start_s"), ("server RSS MB", "server_rss_mb_loaded"),
    ("server RssAnon MB", "server_rss_anon_mb_loaded"), ("server requests/s", "requests_per_s"),
    ("server p95 ms", "server_p95_ms"), ("server errors", "server_errors"),
]


def record(rows: list[dict], checked: list[tuple[str, bool]], args: argparse.Namespace, machine_at_start: str) -> None:
    append_section(
        "BM25 at wiki-18 scale", command_line("wikipedia_scale.py"),
        [
            machine_at_start,
            f"wiki-18-shaped passages (Zipf s = {ZIPF_EXPONENT:g}, {VOCABULARY_SIZE:,} words, Lucene stopwords as the "
            f"top 33, {WORDS_PER_PASSAGE}-word blocks, {PASSAGES_PER_ARTICLE} a titled article), seed {args.seed}; "
            f"`agentenv index build`; {args.queries} queries of {QUERY_WORDS[0]}-{QUERY_WORDS[1]} words, top {K}, "
            f"one at a time (pruned, then full), one search_batch of {BATCH_QUERIES}; server: {args.clients} loopback "
            f"clients, 1 query of top {K} per request, on the same cores; RSS after the load",
            "At the largest size: " + "; ".join(f"{text}: {'met' if met else 'missed'}" for text, met in checked),
        ],
        COLUMNS, rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda text: [int(size) for size in text.split(",")], default=DEFAULT_SIZES,
                        help="passage counts, comma-separated (default: 1000000,5000000,10000000,21000000)")
    parser.add_argument("--work", type=Path, default=OUT / "wikipedia-scale", help="corpora and indexes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=1000, help="timed single queries")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--keep-indexes", action="store_true", help="keep each size's index in --work")
    parser.add_argument("--record", action="store_true",
                        help="append to bench/RESULTS.md and write bench/wikipedia-scale.png (default at the default sizes)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(api_worker(args.index, args.queries, args.seed)))
        return 0

    machine_at_start = machine()
    rows = []
    for passages in sorted(args.sizes):
        rows.append(measure_size(passages, args))
        print(json.dumps(rows[-1]), flush=True)
    checked = goals(rows[-1])
    print(json.dumps({"passages": rows[-1]["passages"], "goals": [{"goal": text, "met": met} for text, met in checked]}))
    recording = args.record or args.sizes == DEFAULT_SIZES
    figure = BENCH / "wikipedia-scale.png" if recording else args.work / "wikipedia-scale.png"
    plot(rows, figure)
    print(f"growth curve: {figure}", file=sys.stderr)
    if recording:
        record(rows, checked, args, machine_at_start)
    return 0 if all(met for _, met in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
