"""``agentenv index build|info``: build a BM25 index from a corpus file, or describe one.

Usage::

    agentenv index build --corpus wiki-18.jsonl.gz --out runs/wiki18-bm25 [--backend tantivy]
    agentenv index info runs/wiki18-bm25
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentenv.tools.bm25 import BACKENDS, BM25Index, read_manifest
from agentenv.tools.retrieval_client import split_contents


def _read_corpus(path: Path) -> Iterator[dict[str, str]]:
    """Passages from JSONL (``.gz`` allowed): ``{"id","title","text"}`` or wiki-18's ``{"id","contents"}``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from None
            if (
                not isinstance(row, dict)
                or "id" not in row
                or not ("text" in row or "contents" in row)
            ):
                raise ValueError(
                    f"{path}:{line_number}: expected an object with 'id' and 'text' (or wiki-18's 'contents')"
                )
            if "text" in row:
                yield {"id": row["id"], "title": row.get("title") or "", "text": row["text"]}
            else:
                title, text = split_contents(row["contents"])
                yield {"id": row["id"], "title": title, "text": text}


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
                _read_corpus(args.corpus), backend=args.backend, out_dir=args.out
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
