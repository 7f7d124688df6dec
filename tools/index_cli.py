"""``agentenv index build|info``: build a BM25 index from a corpus file, or describe one.

Usage::

    agentenv index build --corpus wiki-18.jsonl.gz --out runs/wiki18-bm25 [--backend tantivy] [--overwrite]
    agentenv index info runs/wiki18-bm25

A build is written beside ``--out`` and renamed into place when it is complete: a failed build
leaves nothing behind, and ``--overwrite`` replaces an index only with a finished one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from agentenv.corpora.loaders import load_corpus
from agentenv.tools.bm25 import BACKENDS, MANIFEST, BM25Index, read_manifest


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
    info = actions.add_parser("info", help="print an index's backend, size and parameters")
    info.add_argument("index_dir", type=Path, help="index directory")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            count, backend = build_index(args.corpus, args.out, args.backend, args.overwrite)
            print(f"indexed {count} passages ({backend}) into {args.out}")
        else:
            _print_info(args.index_dir, read_manifest(args.index_dir))
    except (OSError, ValueError) as error:
        print(f"agentenv index {args.action}: error: {error}", file=sys.stderr)
        return 1
    return 0


def build_index(corpus: Path, out: Path, backend: str, overwrite: bool = False) -> tuple[int, str]:
    """Index ``corpus`` into ``out`` (new, empty, or with ``overwrite`` an index to replace);
    return (passages, backend). Nothing is left behind when the build fails."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace it")
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"--out {out} holds no BM25 index ({MANIFEST}); --overwrite replaces only an index")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        index = BM25Index.build(load_corpus(corpus), backend=backend, out_dir=staging / "index")
        count, backend = len(index), index.backend
        del index  # tantivy keeps the files open while the object lives
        if out.exists():
            # Move the old index aside first: `out` is never missing an index for long, and never half one.
            (staging / "old").mkdir()
            out.rename(staging / "old" / out.name)
        (staging / "index").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count, backend


def _print_info(directory: Path, manifest: dict[str, Any]) -> None:
    size_bytes = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    rows = {"index": directory, **manifest, "disk": f"{size_bytes / 1e6:.1f} MB"}
    width = max(map(len, rows)) + 2
    for key, value in rows.items():
        print(f"{key:<{width}}{value}")
