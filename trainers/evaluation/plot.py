"""`agentenv plot RUN_DIR`: a training run's ``metrics.jsonl`` as PNG curves.

One figure, one panel per question a user asks of a run: is the reward going up (and which
component moves it), is the agent answering correctly, how much does it search, is the policy
drifting from the reference, are responses getting longer. Raw values are drawn thin, a moving
average thick.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (panel title, regular expression over metric names). A panel with no matching metric is left out.
PANELS: tuple[tuple[str, str], ...] = (
    ("SFT warm start: NLL of oracle policy tokens", r"^sft/nll$"),
    ("reward and its components", r"^reward/(mean|research_answer|format|search_budget_penalty|failed_call_penalty|f1_answer|exact_match_answer)$"),
    ("exact match / F1", r"^(exact_match|reward/f1)$"),
    ("held-out dev questions, greedy: EM / F1", r"^dev/(exact_match|f1)$"),
    ("held-out dev questions: tool calls per question", r"^dev/tools/.+_calls$"),
    ("groups with all-equal rewards (no gradient)", r"^groups/equal_reward_fraction$"),
    ("tool calls per episode", r"^episode/\w+_calls$"),
    ("KL to reference", r"^(train/)?kl$"),
    ("response length (policy tokens)", r"^episode/response_tokens$"),
    ("turns per episode", r"^episode/turns$"),
    ("entropy", r"^(train/)?entropy$"),
    ("clip fraction", r"^clip_fraction/(low|high)$"),
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is this a training run folder?)")
    from agentenv.trainers.loop.metrics import read_jsonl

    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{path}: no metrics yet")
    return records


def moving_average(values: list[float], window: int) -> list[float]:
    out, total, queue = [], 0.0, []
    for value in values:
        queue.append(value)
        total += value
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def draw_run(run_dir: str | Path, window: int = 5) -> Figure:
    """The figure of the panels that the run's metrics support: per metric, a thin raw line and a
    thick moving average labelled with the metric's name."""
    if window < 1:
        raise ValueError(f"window must be at least 1 step, got {window}")
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state to close

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    keys = sorted({k for r in records for k in r if k != "step"})
    panels = [(title, [k for k in keys if re.match(pattern, k)]) for title, pattern in PANELS]
    panels = [(title, matched) for title, matched in panels if matched]
    if not panels:
        raise ValueError(f"{run_dir}: none of the plotted metrics are in the log (found: {', '.join(keys[:12])} …)")
    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(6.2 * columns, 2.9 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (title, matched) in zip(axes.flat, panels, strict=False):
        for index, key in enumerate(matched):
            steps, values = series(records, key)
            colour = f"C{index}"
            ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
            ax.plot(steps, moving_average(values, window), color=colour, linewidth=1.8, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{run_dir.name} — {len(records)} steps (thin: raw, thick: moving average of {window})", fontsize=11)
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path, out: str | Path | None = None, window: int = 5) -> Path:
    """Draw the panels that the run's metrics support; return the PNG's path."""
    fig = draw_run(run_dir, window)
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run folder (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")
    parser.add_argument("--window", type=int, default=5, help="moving-average window in steps")


def run(args: argparse.Namespace) -> int:
    if args.window < 1:
        print(f"agentenv plot: error: --window must be at least 1, got {args.window}", file=sys.stderr)
        return 2
    try:
        path = plot_run(args.run_dir, args.out, args.window)
    except (FileNotFoundError, ValueError) as error:
        print(f"agentenv plot: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0
