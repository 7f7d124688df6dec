"""``agentenv index build|info``: build a BM25 index from a corpus file, or describe one.

Usage::

    agentenv index build --corpus wiki-18.jsonl.gz --out runs/wiki18-bm25 [--backend tantivy]
    agentenv index info runs/wiki18-bm25
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agentenv.corpora.loaders import load_corpus
from agentenv.tools.bm25 import BACKENDS, BM25Index, read_manifest


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
    info = actions.add_parser("info", help="print an index's backend, size and parameters")
    info.add_argument("index_dir", type=Path, help="index directory")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            index = BM25Index.build(
                load_corpus(args.corpus), backend=args.backend, out_dir=args.out
            )
            print(f"indexed {len(index)} passages ({index.backend}) into {args.out}")
        else:
            _print_info(args.index_dir, read_manifest(args.index_dir))
    except (OSError, ValueError) as error:
        print(f"agentenv index {args.action}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _print_info(directory: Path, manifest: dict[str, Any]) -> None:
    size_bytes = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    rows = {"index": directory, **manifest, "disk": f"{size_bytes / 1e6:.1f} MB"}
    width = max(map(len, rows)) + 2
    for key, value in rows.items():
        print(f"{key:<{width}}{value}")
