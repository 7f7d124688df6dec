"""The `agentenv` command. Each subcommand lives in the module that owns its work.

A module listed here exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when its subcommand runs, so ``agentenv --help`` stays fast and needs neither torch nor vLLM.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("agentenv.tools.index_cli", "build or inspect a BM25 index over a corpus"),
    "search": ("agentenv.tools.search_cli", "query an index and print ranked passages"),
    "serve-retriever": ("agentenv.tools.server", "serve an index over HTTP (Search-R1 protocol)"),
    "train": ("agentenv.trainers.loop.command", "train an agent with GRPO (or SFT) from a YAML config"),
    "eval": ("agentenv.trainers.evaluation.evaluate", "evaluate a model on held-out questions"),
    "rm": ("agentenv.trainers.loop.reward_model_training", "train a reward model on preference pairs (Bradley-Terry)"),
    "experiment": ("agentenv.trainers.evaluation.experiment", "train and evaluate every row of a comparison, one table"),
    "probe": ("agentenv.trainers.loop.probe", "share of GRPO groups with all-equal rewards, by G and temperature"),
    "diagnose": ("agentenv.trainers.evaluation.diagnose", "what a GRPO/RLOO run fed its updates, by question class and tool use"),
    "plot": ("agentenv.trainers.evaluation.plot", "turn a training log into PNG curves"),
    "view": ("agentenv.trainers.evaluation.viewer", "the episodes of a run or an eval as one HTML page, coloured by source"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="agentenv", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"agentenv {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
