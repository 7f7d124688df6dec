"""``agentenv index build|info``: build a BM25 index from a corpus file, or describe one.

Usage::

    agentenv index build --corpus wiki-18.jsonl.gz --out runs/wiki18-bm25 [--backend tantivy] [--overwrite] [--passages 21015324]
    agentenv index info runs/wiki18-bm25

A build is written beside ``--out`` and renamed into place when it is complete: a failed build
leaves nothing behind, and ``--overwrite`` replaces an index only with a finished one. A killed
build (SIGKILL, the machine going down) cannot clean up after itself: its half-built folder, which
at wiki-18's size holds gigabytes, is removed by the next build into the same ``--out`` once the
process that wrote it is gone. A corpus
that cannot be read (truncated or damaged gzip, a line that is not JSON) or that gives two passages
one id fails the build with one line naming the file and the line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agentenv.corpora.loaders import DataFormatError, load_corpus, located_passages
from agentenv.tools.bm25 import BACKENDS, MANIFEST, BM25Index, read_manifest

# Inside a staging folder: the process building it, so that a later build can tell a killed one.
BUILDER_PID = "builder.pid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="index a JSONL corpus ({id,title,text} or wiki-18 {id,contents}; .gz allowed)"
    )
    build.add_argument("--corpus", required=True, type=Path, help="corpus file")
    build.add_argument(
        "--out", required=True, type=Path, help="new or empty directory for the index"
    )
    build.add_argument("--backend", choices=BACKENDS, default="tantivy", help="default: tantivy")
    build.add_argument(
        "--overwrite", action="store_true", help="replace the index in --out (once the new one is built)"
    )
    build.add_argument(
        "--passages", type=int, metavar="N",
        help="how many passages the corpus holds, if known (wiki-18: 21015324): gives the progress bar "
        "a total and the time left; nothing else reads it",
    )
    info = actions.add_parser("info", help="print an index's backend, size and parameters")
    info.add_argument("index_dir", type=Path, help="index directory")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            count, backend = build_index(args.corpus, args.out, args.backend, args.overwrite, args.passages)
            print(f"indexed {count} passages ({backend}) into {args.out}")
        else:
            _print_info(args.index_dir, read_manifest(args.index_dir))
    except (OSError, ValueError) as error:
        print(f"agentenv index {args.action}: error: {error}", file=sys.stderr)
        return 1
    return 0


def build_index(
    corpus: Path, out: Path, backend: str, overwrite: bool = False, expected_passages: int | None = None
) -> tuple[int, str]:
    """Index ``corpus`` into ``out`` (new, empty, or with ``overwrite`` an index to replace);
    return (passages, backend). Nothing is left behind when the build fails. ``expected_passages``
    is the progress bar's total."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace it")
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"--out {out} holds no BM25 index ({MANIFEST}); --overwrite replaces only an index")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_killed_builds(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    (staging / BUILDER_PID).write_text(str(os.getpid()))
    id_hashes = array("q")
    try:
        passages = _noting_id_hashes(load_corpus(corpus), id_hashes)
        index = BM25Index.build(passages, backend=backend, out_dir=staging / "index", total=expected_passages)
        count, backend = len(index), index.backend
        del index  # tantivy keeps the files open while the object lives
        _refuse_repeated_ids(corpus, id_hashes)
        if out.exists():
            # Move the old index aside first: `out` is never missing an index for long, and never half one.
            (staging / "old").mkdir()
            out.rename(staging / "old" / out.name)
        (staging / "index").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count, backend


def _remove_killed_builds(out: Path) -> None:
    """Remove the staging folders of earlier builds into ``out`` whose process no longer runs."""
    for staging in out.parent.glob(f".{out.name}.building-*"):
        try:
            pid = int((staging / BUILDER_PID).read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: a build from before the pid file, or something else
        if _running(pid):
            continue  # a build into the same --out is under way; the rename decides which one lands
        size = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
        shutil.rmtree(staging, ignore_errors=True)
        print(f"removed {staging} ({size / 1e6:.0f} MB), left by a build that was killed", file=sys.stderr)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _noting_id_hashes(passages: Iterable[dict], id_hashes: array) -> Iterator[dict]:
    # 8 bytes a passage (170 MB for wiki-18's 21 M) where a set of the ids would take gigabytes.
    for passage in passages:
        id_hashes.append(hash(passage["id"]))
        yield passage


def _refuse_repeated_ids(corpus: Path, id_hashes: array) -> None:
    """Raise DataFormatError naming the first passage whose id an earlier passage has, and how many
    do. Two passages under one id make ``get(id)`` and the passages a question cites (its
    ``entities``) ambiguous, and which of the two is right is the corpus owner's call, not ours: the
    build is refused rather than one of them kept. Equal hashes are checked against the ids
    themselves in a second read of the corpus, made only when some hashes are equal."""
    # Sorted in place, over the array's own buffer: a sorted copy would double the 8 bytes a passage.
    hashes = np.frombuffer(id_hashes, dtype=np.int64)
    hashes.sort()
    suspects = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not suspects:
        return
    first_use: dict[str, str] = {}
    repeats = []
    for location, passage in located_passages(corpus):
        if hash(passage["id"]) in suspects:
            if passage["id"] in first_use:
                repeats.append((location, passage["id"]))
            else:
                first_use[passage["id"]] = location
    if repeats:
        location, passage_id = repeats[0]
        raise DataFormatError(
            corpus, location,
            f"passage id {passage_id[:100]!r} was already used on {first_use[passage_id]}; ids must be unique "
            f"(passages that repeat an earlier id: {len(repeats)}): remove or renumber them",
        )


def _print_info(directory: Path, manifest: dict[str, Any]) -> None:
    size_bytes = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    rows = {"index": directory, **manifest, "disk": f"{size_bytes / 1e6:.1f} MB"}
    width = max(map(len, rows)) + 2
    for key, value in rows.items():
        print(f"{key:<{width}}{value}")
