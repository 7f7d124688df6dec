"""`agentenv train`'s command line: read the config, run the loop (trainers/loop/train.py), print
where the run is and how to evaluate it; on Ctrl-C or a dead worker, how to resume it.

    agentenv train --config configs/cpu-smollm2.yaml [--set grpo.group_size=8 ...] [--resume] [--out runs/NAME]
    agentenv train --config configs/cpu-smollm2.yaml --print-config     # every key, resolved, as YAML
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import yaml

from agentenv.trainers.loop.checkpoint import latest_checkpoint, read_state
from agentenv.trainers.loop.config import ConfigError, TrainConfig, load_config, to_dict
from agentenv.trainers.loop.health import InvariantViolation
from agentenv.trainers.loop.metrics import read_jsonl
from agentenv.trainers.loop.train import TrainingInterrupted, resume_command, train
from agentenv.trainers.rollout.workers import WorkerError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set grpo.group_size=8 (repeatable; values are YAML)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue from the newest checkpoint in --out, under the run's own config.yaml",
    )
    parser.add_argument(
        "--allow-config-change", action="store_true",
        help="on --resume, accept --config/--set values that change what training computes",
    )
    parser.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (every key) as YAML and exit",
    )


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.out or Path("runs") / (Path(args.config).stem if args.config else "default"))
    # A resume without --config continues under the run's own config (--set still applies on top).
    saved = run_dir / "config.yaml"
    path = saved if args.resume and args.config is None and saved.is_file() else args.config
    try:
        config = load_config(path, args.overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"agentenv train: error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    started = time.perf_counter()
    try:
        train(config, run_dir, resume=args.resume, allow_config_change=args.allow_config_change)
    except (ConfigError, FileNotFoundError) as error:
        print(f"agentenv train: error: {error}", file=sys.stderr)
        return 2
    except (WorkerError, InvariantViolation) as error:
        print(f"agentenv train: error: {error}\nresume from the newest checkpoint with: {resume_command(run_dir)}",
              file=sys.stderr)
        return 1
    except TrainingInterrupted:
        return 130  # the checkpoint and the resume command are printed already
    except KeyboardInterrupt:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            print(f"\nagentenv train: interrupted before the first checkpoint of {run_dir}", file=sys.stderr)
        else:
            print(f"\nagentenv train: interrupted; the newest checkpoint is {checkpoint}\n"
                  f"resume with: {resume_command(run_dir)}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a process that Ctrl-C stopped
    print(training_summary(config, run_dir, time.perf_counter() - started))
    return 0


def training_summary(config: TrainConfig, run_dir: Path, seconds: float) -> str:
    """What a finished ``agentenv train`` prints: the step reached, the last logged metrics, the run
    folder, the checkpoint and how to evaluate it."""
    checkpoint = latest_checkpoint(run_dir)
    step = read_state(checkpoint)["step"] if checkpoint is not None else 0
    total = config.max_steps if config.mode == "sft" else config.sft.steps + config.max_steps
    metrics_file = run_dir / "metrics.jsonl"
    records = {r["step"]: r for r in read_jsonl(metrics_file)} if metrics_file.is_file() else {}
    shown = []
    if records:
        last = records[max(records)]
        shown = [f"{key} {last[key]:.3f}" for key in ("reward/mean", "exact_match", "sft/nll") if key in last]
        dev = [r for _, r in sorted(records.items()) if "dev/exact_match" in r]
        if dev:
            shown.append(f"dev/exact_match {dev[-1]['dev/exact_match']:.3f} (step {dev[-1]['step']})")
    # The run's own environment (env_spec.json) is what `agentenv eval --model RUN` evaluates in.
    evaluate = f"agentenv eval --model {shlex.quote(str(run_dir))} --questions {held_out_questions(config)}"
    lines = [
        f"agentenv train: done: step {step} of {total} in {datetime.timedelta(seconds=round(seconds))}",
        f"  run folder: {run_dir}",
    ]
    if shown:
        lines.append(f"  step {max(records)}: {', '.join(shown)}")
    if checkpoint is not None:
        lines.append(f"  checkpoint: {checkpoint}")
    lines.append(f"  evaluate it, e.g.: {evaluate}")
    return "\n".join(lines)


def held_out_questions(config: TrainConfig) -> str:
    """The test split of the shipped question sets a run trained on ("geo:train+zipcodes:train" ->
    "geo:test+zipcodes:test"); a placeholder for questions of one's own or generated ones."""
    from agentenv.envs import CLOSED_BOOK_QA_ID, RAG_QA_ID, SEARCH_QA_ID

    questions = config.env.kwargs.get("questions")
    if questions is None and config.env.id in (SEARCH_QA_ID, RAG_QA_ID, CLOSED_BOOK_QA_ID):
        questions = "geo:train"  # their default
    parts = questions.split("+") if isinstance(questions, str) else []
    if parts and all(part.endswith(":train") for part in parts):
        return "+".join(part.removesuffix(":train") + ":test" for part in parts)
    return "YOUR_HELD_OUT_QUESTIONS.jsonl"
