"""``agentenv search "query" --index DIR -k 3``: print the ranked passages for a query."""

from __future__ import annotations

import argparse
import sys

from agentenv.tools.bm25 import BM25Index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="what to search for")
    parser.add_argument(
        "--index", required=True, help="index directory from `agentenv index build`"
    )
    parser.add_argument("-k", type=int, default=3, help="passages to show (default: 3)")


def run(args: argparse.Namespace) -> int:
    try:
        index = BM25Index.load(args.index)
        hits = index.search(args.query, args.k)
    except (OSError, ValueError) as error:
        print(f"agentenv search: error: {error}", file=sys.stderr)
        return 1
    if not hits:
        print("no passage contains any of the query's terms")
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank}. [{hit.score:.3f}] {hit.title} (id {hit.id})\n   {hit.text}\n")
    return 0
