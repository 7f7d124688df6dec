"""BM25 search over a local corpus of passages ``{"id", "title", "text"}``.

Two backends sit behind one class, :class:`BM25Index`, and share one tokenizer, so their rankings
can be compared term for term:

- ``tantivy`` (the default): a Rust index on disk, memory-mapped when loaded; passages live in its
  stored fields. Queries are built from term queries, never from tantivy's query-string parser, so
  model text with quotes, colons or brackets cannot break a search. Passages that cannot reach the
  top k are skipped before they are scored (``_TantivyBackend._pruned_hits``); the hits are the same.
- ``rank_bm25``: ``rank_bm25.BM25Okapi`` (k1 = 1.2, b = 0.75), a pure-Python reference that scores
  every passage for every query term. Fine for tiny corpora and as the yardstick in tests. Its
  passages live in a JSONL file with an array of byte offsets; ``load`` re-tokenizes them.

Example::

    index = BM25Index.build(passages, out_dir="runs/index")   # streams the passages
    index = BM25Index.load("runs/index")
    index.search("capital of Burkina Faso", k=3)               # -> [Hit(id, title, text, score)]

An index is a directory holding the backend's files and ``index.json`` (backend, passage count,
BM25 parameters), which ``agentenv index info`` prints.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rank_bm25
import tantivy
from tqdm import tqdm

BACKENDS = ("tantivy", "rank_bm25")
MANIFEST = "index.json"
FORMAT_VERSION = 1

# tantivy fixes k1 and b at these values; the reference backend is configured to match.
BM25_K1 = 1.2
BM25_B = 0.75

# Pruning (see _TantivyBackend._pruned_hits): query terms whose score bounds add up to at most this
# share of the largest term's bound are left out of a first pass, which keeps POOL_PER_HIT * k
# passages; at most CANDIDATES_PER_HIT * k of them are scored in full. Tuned on 1 M Zipf passages
# (bench/retrieval_speed.py's, with other queries than its own): since candidates are picked by
# their row fast field, rescoring 40 x k costs less than the full search a tighter cap falls back
# to (p95 12.3 -> 8.7 ms against a cap of 6 x k and a pool of 20 x k).
SKIPPED_TERMS_BOUND_SHARE = 0.1
POOL_PER_HIT = 40
CANDIDATES_PER_HIT = 40
# Pruning costs two more searches, about what scoring 300 k postings costs (measured at 1 M
# passages): below this many skipped postings the full search is faster.
MIN_SKIPPED_POSTINGS = 500_000
# tantivy adds float32 scores; this margin on the bounds covers their rounding (< 1e-5 relative for
# any query the search tool accepts).
FLOAT32_MARGIN = 1e-4

# Lucene's default English stop set (EnglishAnalyzer), which Pyserini's BM25 baselines use.
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such "
    "that the their then there these they this to was will with".split()
)
# Longer runs of letters or digits are hashes or encoded blobs, not words; tantivy also refuses
# terms above 64 kB, so dropping them keeps both backends on the same tokens.
MAX_TOKEN_CHARS = 100
# Runs of Unicode letters and digits: `\w` without the underscore.
_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercase, split on anything that is not a letter or digit, drop stopwords.

    >>> tokenize("The Eiffel Tower (built 1887-1889): 330 m")
    ['eiffel', 'tower', 'built', '1887', '1889', '330', 'm']
    """
    return [
        token
        for token in _TOKEN.findall(text.lower())
        if token not in STOPWORDS and len(token) <= MAX_TOKEN_CHARS
    ]


@dataclass(frozen=True)
class Hit:
    """One retrieved passage and its BM25 score (higher is better; scales differ by backend)."""

    id: str
    title: str
    text: str
    score: float


@dataclass(frozen=True)
class _Passage:
    id: str
    title: str
    text: str

    @property
    def tokens(self) -> list[str]:
        # The title is indexed with the text, as Pyserini does with wiki-18's `contents`.
        return tokenize(f"{self.title} {self.text}")


def _as_passage(row: Any, position: int) -> _Passage:
    expected = "expected a dict with 'id', 'text' and optionally 'title'"
    if not isinstance(row, dict):
        raise ValueError(f"passage {position}: got {type(row).__name__}; {expected}")
    for key in ("id", "text"):
        if key not in row:
            raise ValueError(f"passage {position}: missing {key!r}; {expected}")
    title, text = row.get("title") or "", row["text"]
    if not isinstance(title, str) or not isinstance(text, str):
        raise ValueError(
            f"passage {position} (id {row['id']!r}): 'title' and 'text' must be strings"
        )
    return _Passage(str(row["id"]), title, text)


class _Backend(Protocol):
    name: str

    def __len__(self) -> int: ...

    def search_tokens(self, tokens: list[str], k: int) -> list[Hit]: ...

    def get(self, passage_id: str) -> dict[str, str]: ...


class _TantivyBackend:
    """Passages in tantivy's stored fields; ``body`` holds our tokens joined by spaces."""

    name = "tantivy"
    # RAM the writer fills before it flushes a segment to disk: more RAM, fewer segments to merge.
    WRITER_HEAP_BYTES = 256_000_000

    def __init__(self, index: tantivy.Index, prune: bool = True):
        self._schema = index.schema
        index.reload()
        # One searcher for the life of the index: it is thread-safe and releases the GIL in search.
        self._searcher = index.searcher()
        self.prune = prune
        self._has_rows = self._has_fast_field("row")

    @staticmethod
    def _schema_for_new_index() -> tantivy.Schema:
        builder = tantivy.SchemaBuilder()
        # A stored text id with the `raw` tokenizer: `get(id)` is a term query on it. (An unsigned
        # id declared fast=True crashed the Python binding here.)
        builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
        # Bytes fields can be stored without being indexed; text fields are always indexed.
        builder.add_bytes_field("title", stored=True, indexed=False)
        builder.add_bytes_field("text", stored=True, indexed=False)
        # Pre-tokenized by `tokenize`; `whitespace` only splits it again. BM25 needs term
        # frequencies but no positions (no phrase queries).
        builder.add_text_field("body", tokenizer_name="whitespace", index_option="freq")
        # The passage's position in the corpus, indexed and a fast (columnar) field: the pruned
        # search reads its candidates' rows without decompressing their stored documents.
        builder.add_unsigned_field("row", indexed=True, fast=True)
        return builder.build()

    def _has_fast_field(self, name: str) -> bool:
        # Indexes built before the `row` field have none; their pruned search reads stored ids.
        try:
            self._searcher.fast_field_values(name, [])
        except ValueError:
            return False
        return True

    @classmethod
    def build(cls, passages: Iterable[_Passage], directory: Path) -> _TantivyBackend:
        index = tantivy.Index(cls._schema_for_new_index(), path=str(directory))
        # One indexing thread adds passages in corpus order, so equal scores rank the same way on
        # every rebuild; with two, passages landed in segments at random and the agreement test
        # varied from run to run. The second thread built 100 k synthetic passages only ~20 %
        # faster here: tokenizing in Python, not tantivy, is most of the build time.
        writer = index.writer(heap_size=cls.WRITER_HEAP_BYTES, num_threads=1)
        try:
            for row, passage in enumerate(passages):
                document = tantivy.Document(
                    id=passage.id,
                    title=passage.title.encode(),
                    text=passage.text.encode(),
                    body=" ".join(passage.tokens),
                )
                document.add_unsigned("row", row)  # a plain int would be taken for a signed one
                writer.add_document(document)
        except BaseException:
            # A bad passage: drop the writer now, which joins its indexing thread. Left to the
            # traceback, that thread writes segment files after the caller has removed the folder.
            del writer
            raise
        writer.commit()
        writer.wait_merging_threads()
        return cls(index)

    @classmethod
    def load(cls, directory: Path, prune: bool = True) -> _TantivyBackend:
        return cls(tantivy.Index.open(str(directory)), prune)

    def __len__(self) -> int:
        return self._searcher.num_docs

    def search_tokens(self, tokens: list[str], k: int) -> list[Hit]:
        if not tokens:
            return []
        scored = self._pruned_hits(tokens, k) if self.prune else None
        if scored is None:
            scored = self._searcher.search(self._any_of(tokens), k, count=False).hits
        return [self._hit(address, score) for score, address in scored]

    def _any_of(self, tokens: list[str]) -> tantivy.Query:
        # One SHOULD clause per query token, repeats included: BM25 sums over query terms, and
        # rank_bm25 counts a repeated term twice as well.
        return tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "body", token))
                for token in tokens
            ]
        )

    def _score_bound(self, token: str) -> float:
        """More than ``token`` adds to any passage's score: tantivy's BM25 weight, idf x (1 + k1).

        A term scores idf x (1 + k1) x tf / (tf + k1 x (1 - b + b x length / mean length)), and the
        fraction is below 1. idf is tantivy's, ln(1 + (N - n + 0.5) / (n + 0.5)).
        """
        passages, containing = self._searcher.num_docs, self._searcher.doc_freq("body", token)
        return math.log1p((passages - containing + 0.5) / (containing + 0.5)) * (1 + BM25_K1)

    def _pruned_hits(
        self, tokens: list[str], k: int
    ) -> list[tuple[float, tantivy.DocAddress]] | None:
        """The top ``k`` of the full query, scoring few passages in full; None where it cannot tell.

        The Python binding collects hits through a MultiCollector, which never runs tantivy's
        block-max WAND: every posting of every query term is scored. Words found in most passages
        ("born" or "first" in Wikipedia, "w0" in the benchmark's Zipf corpus) have long posting
        lists and tiny idf: they cost most of a search and change few rankings. MaxScore (Turtle
        and Flood, 1995) skips their postings, in three steps built from tantivy queries:

        1. Leave out the terms whose score bounds add up to a small share of the largest one
           (the common words), and search the rest for a pool of POOL_PER_HIT x k passages.
        2. The pool's k-th score is a floor for the full query's k-th score (the left-out terms
           only add). A passage after the first m of the pool scores at most the next one's score
           plus the left-out bounds; take the smallest m for which that is below the floor.
        3. Score those m candidates with the full query (behind a zero-scored filter on their rows)
           and keep the best k. Every passage left out scores below the floor, so these are the
           full query's top k, scored by the same union of term scorers as a plain search and
           ranked by the same collector (ties by address).

        None (search in full) where the terms left out would have cost less than pruning does,
        or the bounds are too loose to keep the candidates under CANDIDATES_PER_HIT x k.
        """
        bounds = {token: self._score_bound(token) for token in tokens}
        largest = max(bounds.values())
        skipped, skipped_bound = set(), 0.0
        for token in sorted(bounds, key=bounds.get)[:-1]:
            added = bounds[token] * tokens.count(token)
            if skipped_bound + added > SKIPPED_TERMS_BOUND_SHARE * largest:
                break
            skipped.add(token)
            skipped_bound += added
        skipped_postings = sum(
            self._searcher.doc_freq("body", token) for token in tokens if token in skipped
        )
        if not skipped or skipped_postings < MIN_SKIPPED_POSTINGS:
            return None
        pool_size = POOL_PER_HIT * k
        pool = self._searcher.search(
            self._any_of([token for token in tokens if token not in skipped]),
            pool_size,
            count=False,
        ).hits
        if len(pool) < k:
            return None
        floor = pool[k - 1][0] * (1 - FLOAT32_MARGIN)
        skipped_bound *= 1 + FLOAT32_MARGIN
        if skipped_bound >= floor:
            return None
        outside = (m for m in range(k, len(pool)) if pool[m][0] + skipped_bound < floor)
        # A pool shorter than asked for holds every passage with a term that was searched.
        candidates = next(outside, len(pool) if len(pool) < pool_size else None)
        if candidates is None or candidates > CANDIDATES_PER_HIT * k:
            return None
        only_candidates = tantivy.Query.const_score_query(
            self._passages_at([address for _, address in pool[:candidates]]), 0.0
        )
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Must, only_candidates), (tantivy.Occur.Must, self._any_of(tokens))]
        )
        return self._searcher.search(query, k, count=False).hits

    def _passages_at(self, addresses: list[tantivy.DocAddress]) -> tantivy.Query:
        """A query that matches exactly the passages at these addresses."""
        if not self._has_rows:
            # Each stored document read decompresses a block of the store: ~14 µs a candidate here.
            ids = [self._searcher.doc(address).get_first("id") for address in addresses]
            return tantivy.Query.term_set_query(self._schema, "id", ids)
        # A disjunction of term queries on the indexed rows: a term set on the numeric field took
        # 4x as long (60 candidates of 200 k passages).
        rows = self._searcher.fast_field_values("row", addresses)
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "row", row)) for row in rows]
        )

    def get(self, passage_id: str) -> dict[str, str]:
        query = tantivy.Query.term_query(self._schema, "id", passage_id)
        hits = self._searcher.search(query, 1, count=False).hits
        if not hits:
            raise KeyError(passage_id)
        hit = self._hit(hits[0][1], 0.0)
        return {"id": hit.id, "title": hit.title, "text": hit.text}

    def _hit(self, address: tantivy.DocAddress, score: float) -> Hit:
        document = self._searcher.doc(address)
        return Hit(
            id=document.get_first("id"),
            title=document.get_first("title").decode(),
            text=document.get_first("text").decode(),
            score=float(score),
        )


class _PassageStore:
    """Passages as JSONL plus an array of line offsets, read through mmap (thread-safe, no seek)."""

    JSONL = "passages.jsonl"
    OFFSETS = "offsets.npy"

    def __init__(self, directory: Path):
        self._offsets = np.load(directory / self.OFFSETS, mmap_mode="r", allow_pickle=False)
        with open(directory / self.JSONL, "rb") as file:
            self._data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    @classmethod
    def write(cls, passages: Iterable[_Passage], directory: Path) -> Iterator[_Passage]:
        """Append each passage to the store and pass it on, so one pass over a stream does both."""
        offsets = [0]
        with open(directory / cls.JSONL, "wb") as file:
            for passage in passages:
                line = json.dumps({"id": passage.id, "title": passage.title, "text": passage.text})
                offsets.append(offsets[-1] + file.write(line.encode() + b"\n"))
                yield passage
        np.save(directory / cls.OFFSETS, np.asarray(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> dict[str, str]:
        return json.loads(self._data[self._offsets[row] : self._offsets[row + 1]])

    def __iter__(self) -> Iterator[dict[str, str]]:
        return (self[row] for row in range(len(self)))


class _RankBM25Backend:
    """The reference: ``rank_bm25.BM25Okapi`` over the same tokens, passages in a JSONL store."""

    name = "rank_bm25"

    def __init__(self, tokenized_passages: list[list[str]], store: _PassageStore):
        self._bm25 = rank_bm25.BM25Okapi(tokenized_passages, k1=BM25_K1, b=BM25_B)
        self._store = store

    @functools.cached_property
    def _row_of_id(self) -> dict[str, int]:
        return {passage["id"]: row for row, passage in enumerate(self._store)}

    @classmethod
    def build(cls, passages: Iterable[_Passage], directory: Path) -> _RankBM25Backend:
        tokenized = [passage.tokens for passage in _PassageStore.write(passages, directory)]
        return cls(tokenized, _PassageStore(directory))

    @classmethod
    def load(cls, directory: Path, prune: bool = True) -> _RankBM25Backend:
        del prune  # rank_bm25 scores every passage for every query; nothing to prune
        store = _PassageStore(directory)
        return cls([_as_passage(passage, row).tokens for row, passage in enumerate(store)], store)

    def __len__(self) -> int:
        return len(self._store)

    def search_tokens(self, tokens: list[str], k: int) -> list[Hit]:
        if not tokens:
            return []
        scores = self._bm25.get_scores(tokens)
        # Only passages that contain a query term, as tantivy returns; ties broken by row.
        matching = np.flatnonzero(scores > 0)
        best = matching[np.lexsort((matching, -scores[matching]))][:k]
        return [Hit(score=float(scores[row]), **self._store[row]) for row in best]

    def get(self, passage_id: str) -> dict[str, str]:
        return self._store[self._row_of_id[passage_id]]


_BACKEND_CLASSES = {"tantivy": _TantivyBackend, "rank_bm25": _RankBM25Backend}


def _require_empty_directory(directory: Path, what: str) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{what} {directory} is not empty; pass a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)


def _usable_cpus() -> int:
    # The CPUs this process may run on (a container's or taskset's share), where the OS says.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class BM25Index:
    """A BM25 index over passages ``{"id", "title", "text"}``; build it, save it, load it, search it.

    Create one with :meth:`build` or :meth:`load`. Searching is thread-safe, and
    :meth:`search_batch` spreads its queries over ``threads`` threads.
    """

    def __init__(
        self,
        backend: _Backend,
        directory: Path,
        temporary: tempfile.TemporaryDirectory | None = None,
        threads: int | None = None,
    ):
        self._backend = backend
        self.directory = directory
        # Keeps an index built without `out_dir` alive on disk as long as this object lives.
        self._temporary = temporary
        self.threads = _usable_cpus() if threads is None else threads
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads!r}")
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    @classmethod
    def build(
        cls,
        passages: Iterable[dict[str, Any]],
        backend: str = "tantivy",
        out_dir: str | Path | None = None,
        show_progress: bool = True,
        threads: int | None = None,
        total: int | None = None,
    ) -> BM25Index:
        """Index passages in one streaming pass.

        Args:
            passages: Dicts with ``id`` and ``text`` and optionally ``title``; any iterable,
                consumed once. Ids are compared as strings and should be unique: ``get`` returns
                the first passage with an id.
            backend: ``"tantivy"`` (fast, on disk) or ``"rank_bm25"`` (pure-Python reference).
            out_dir: A new or empty directory for the index; a temporary one if None (deleted
                when the index is garbage-collected; :meth:`save` it to keep it).
            show_progress: Show a tqdm bar counting passages.
            threads: As in :meth:`load`.
            total: How many passages to expect, for the bar's total and time left where
                ``passages`` has no ``len`` (a stream read from a file); only the bar reads it.
        """
        if backend not in _BACKEND_CLASSES:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if hasattr(passages, "__len__"):
            total = len(passages)
        progress = tqdm(
            passages,
            total=total,
            unit=" passages",
            desc=f"indexing ({backend})",
            disable=not show_progress,
        )
        checked = (_as_passage(row, position) for position, row in enumerate(progress))
        # Peek before touching the disk: neither backend can build over zero passages.
        first = next(checked, None)
        if first is None:
            raise ValueError("no passages to index: the input was empty")
        temporary = None
        if out_dir is None:
            temporary = tempfile.TemporaryDirectory(prefix="agentenv-bm25-")
            directory = Path(temporary.name)
        else:
            directory = Path(out_dir)
            _require_empty_directory(directory, "out_dir")
        backend_index = _BACKEND_CLASSES[backend].build(
            itertools.chain([first], checked), directory
        )
        progress.close()
        index = cls(backend_index, directory, temporary, threads)
        index._write_manifest()
        return index

    @classmethod
    def load(cls, directory: str | Path, prune: bool = True, threads: int | None = None) -> BM25Index:
        """Open a saved index; tantivy's files are memory-mapped, not read into RAM.

        Args:
            directory: The index directory.
            prune: tantivy only: skip passages that cannot reach the top k before scoring them.
                False scores every passage that holds a query term; the hits are the same, found
                several times slower on large corpora (benchmarks compare the two).
            threads: How many threads :meth:`search_batch` searches with (None: one per CPU this
                process may use). tantivy releases the GIL while it searches, so they run in
                parallel; 1 searches the batch in the caller's thread.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        try:
            backend = _BACKEND_CLASSES[manifest["backend"]].load(directory, prune)
        except (ValueError, EOFError) as error:  # tantivy's and numpy's word for a damaged file
            raise ValueError(
                f"{directory}: the {manifest['backend']} index is damaged and cannot be loaded "
                f"({_clipped(str(error))}); rebuild it with `agentenv index build --overwrite`"
            ) from None
        return cls(backend, directory, threads=threads)

    def save(self, directory: str | Path) -> None:
        """Copy the index into a new or empty directory (nothing to do if it already lives there)."""
        directory = Path(directory)
        if directory.exists() and directory.resolve() == self.directory.resolve():
            return
        _require_empty_directory(directory, "save directory")
        # tantivy's lock files belong to the process that holds the index open.
        shutil.copytree(
            self.directory,
            directory,
            ignore=shutil.ignore_patterns(".tantivy-*.lock"),
            dirs_exist_ok=True,
        )

    @property
    def backend(self) -> str:
        """The backend's name: ``"tantivy"`` or ``"rank_bm25"``."""
        return self._backend.name

    def __len__(self) -> int:
        return len(self._backend)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` best passages for ``query``, best first; fewer if fewer contain a query term."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """:meth:`search` for each query; one list of hits per query, in order."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        tokenized = [tokenize(query) for query in queries]
        if self.threads == 1 or len(tokenized) < 2:
            return [self._backend.search_tokens(tokens, k) for tokens in tokenized]
        # One share per thread (every threads-th query, so slow queries spread out): a future per query
        # costs more than a search of a small index (measured: 0.8x one thread at 5 000 passages).
        shares = [tokenized[i :: self.threads] for i in range(self.threads)]
        searched = list(self._thread_pool().map(lambda share: [self._backend.search_tokens(t, k) for t in share], shares))
        return [searched[i % self.threads][i // self.threads] for i in range(len(tokenized))]

    def _thread_pool(self) -> ThreadPoolExecutor:
        # One pool for every caller (a server's request threads too), made in the process that
        # uses it: a pool copied into a forked child has no threads and would never run its work.
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bm25")
            self._pool_pid = os.getpid()
        return self._pool

    def get(self, passage_id: str) -> dict[str, str]:
        """The passage ``{"id", "title", "text"}`` with this id; ``KeyError`` if there is none."""
        return self._backend.get(str(passage_id))

    def _write_manifest(self) -> None:
        manifest = {
            "format_version": FORMAT_VERSION,
            "backend": self.backend,
            "passages": len(self),
            "k1": BM25_K1,
            "b": BM25_B,
            "tokenizer": "lowercase; runs of letters and digits; Lucene English stopwords",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (self.directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _clipped(message: str, limit: int = 300) -> str:
    # tantivy quotes the damaged file's content in its errors.
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The ``index.json`` of an index directory, checked; raises ValueError naming the problem."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a BM25 index: {MANIFEST} is missing (build one with `agentenv index build`)"
        )
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(
            f"{path}: not valid JSON ({_clipped(str(error))}); the index is damaged: rebuild it with "
            "`agentenv index build --overwrite`"
        ) from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}; the index is damaged")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')!r}; this agentenv reads {FORMAT_VERSION}"
        )
    if manifest.get("backend") not in _BACKEND_CLASSES:
        raise ValueError(
            f"{path}: unknown backend {manifest.get('backend')!r}; expected one of {', '.join(BACKENDS)}"
        )
    return manifest
