"""The experiment's figures, drawn from ``results.json`` data and the runs' ``metrics.jsonl``.

* ``em-by-method.png`` — EM with its 95 % interval, one panel per held-out set;
* ``dev-curve.png`` — held-out (dev) EM against the training step of every run that logged one,
  with the training reward beside it, and where a run was scored by a learned reward model
  (``reward.model``) a third panel of that score on the training rollouts and on dev: the reward-
  hacking (Goodhart) picture, a learned score that rises while dev EM does not;
* ``em-vs-searches.png`` — EM against searches per question, one point per method and set (rag at
  one search, closed-book at none; an agent evaluated with search budgets, a line through k = 0, 1, …);
* ``em-by-kind.png`` — EM per question kind on each held-out set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Each figure is drawn by a ``draw_*`` function that returns it (so tests can read its panels and
# series) and saved by the function of the figure's name, which returns the PNG's path.


def _figure(width: float, height: float) -> Figure:
    """A bare matplotlib Figure: no pyplot state, so nothing to close after saving."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def draw_em_by_method(results: dict[str, Any]) -> Figure:
    """One panel per held-out set: a bar of EM per row with its 95 % interval."""
    sets = list(results["sets"].items())
    fig = _figure(0.4 + 4.6 * len(sets), 3.8)
    axes = fig.subplots(1, len(sets), squeeze=False)
    for ax, (name, block) in zip(axes[0], sets, strict=True):
        rows = block["rows"]
        labels = list(rows)
        em = [rows[r]["exact_match"] for r in labels]
        errors = [[e - rows[r]["exact_match_ci95"][0] for r, e in zip(labels, em, strict=True)],
                  [rows[r]["exact_match_ci95"][1] - e for r, e in zip(labels, em, strict=True)]]
        colours = ["#c44e52" if r == results["reference"] else "#4c72b0" for r in labels]
        ax.bar(range(len(labels)), em, yerr=errors, capsize=4, color=colours)
        for x, (r, value) in enumerate(zip(labels, em, strict=True)):
            ax.annotate(f"{value:.2f}", (x, rows[r]["exact_match_ci95"][1]), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
        n = max((rows[r]["questions"] for r in labels), default=0)
        ax.set_title(f"{name} (n = {n})", fontsize=10)
        ax.set_ylabel("exact match (95 % CI)")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    return fig


def em_by_method(results: dict[str, Any], path: Path) -> Path:
    return _save(draw_em_by_method(results), path, dpi=120)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw_dev_curve(runs: dict[str, Path], window: int = 10) -> Figure | None:
    """Dev EM and F1, then the training reward and EM, then (when a run was scored by a learned
    reward model) that score, against the step; None when no run logged a dev evaluation."""
    from agentenv.trainers.evaluation.plot import moving_average, series

    curves = {name: _metrics(run_dir) for name, run_dir in runs.items()}
    curves = {name: records for name, records in curves.items() if any("dev/exact_match" in r for r in records)}
    if not curves:
        return None
    learned = any("dev/reward_model_score" in r for records in curves.values() for r in records)
    fig = _figure(16.5 if learned else 11, 3.8)
    axes = fig.subplots(1, 3 if learned else 2)
    dev_ax, reward_ax = axes[0], axes[1]
    for index, (name, records) in enumerate(curves.items()):
        colour = f"C{index}"
        steps, em = series(records, "dev/exact_match")
        dev_ax.plot(steps, em, marker="o", markersize=3, color=colour, label=f"{name}: dev EM")
        steps, f1 = series(records, "dev/f1")
        dev_ax.plot(steps, f1, linestyle=":", color=colour, label=f"{name}: dev F1")
        steps, reward = series(records, "reward/mean")
        if reward:
            reward_ax.plot(steps, reward, color=colour, alpha=0.25, linewidth=0.8)
            reward_ax.plot(steps, moving_average(reward, window), color=colour, label=f"{name}: reward (moving mean of {window})")
        # The rollouts' own exact match beside the reward: under a learned reward the two can part.
        steps, rollout_em = series(records, "exact_match")
        if rollout_em:
            reward_ax.plot(steps, moving_average(rollout_em, window), linestyle="--", color=colour, label=f"{name}: EM")
        if learned:
            steps, score = series(records, "reward/reward_model_score")
            if score:
                axes[2].plot(steps, moving_average(score, window), color=colour, label=f"{name}: rollouts")
            steps, score = series(records, "dev/reward_model_score")
            if score:
                axes[2].plot(steps, score, marker="o", markersize=3, linestyle="--", color=colour, label=f"{name}: dev")
    dev_ax.set_title("held-out dev questions, greedy", fontsize=10)
    reward_ax.set_title("training rollouts (sampled): reward, exact match", fontsize=10)
    if learned:
        axes[2].set_title("learned reward model's raw score", fontsize=10)
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def dev_curve(runs: dict[str, Path], path: Path, window: int = 10) -> Path | None:
    fig = draw_dev_curve(runs, window)
    return None if fig is None else _save(fig, path, dpi=120)


def searches_per_question(row: dict[str, Any]) -> float:
    """Where a row sits on the searches axis: rag retrieves once before answering (one search),
    closed-book never; an agent row, the searches it made."""
    if row.get("mode") == "rag":
        return 1.0
    return row.get("tool_calls", {}).get("search", 0.0)


def draw_em_vs_searches(results: dict[str, Any]) -> Figure:
    """One point per row and held-out set: EM (95 % interval) against searches per question; an agent
    row evaluated with search budgets (``search_budgets``) is a line through its points at k = 0, 1, …
    searches an episode and its unlimited point."""
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    markers = "osD^v"
    for index, (set_name, block) in enumerate(results["sets"].items()):
        for row_index, (name, r) in enumerate(block["rows"].items()):
            colour, marker = f"C{row_index % 10}", markers[index % len(markers)]
            points = [(b["searches"], b["exact_match"], b["exact_match_ci95"]) for b in r.get("search_budgets", {}).values()]
            points.append((searches_per_question(r), r["exact_match"], r["exact_match_ci95"]))
            xs, ys, intervals = zip(*sorted(points, key=lambda p: p[0]), strict=True)
            errors = [[y - low for y, (low, _) in zip(ys, intervals, strict=True)],
                      [high - y for y, (_, high) in zip(ys, intervals, strict=True)]]
            ax.errorbar(xs, ys, yerr=errors, fmt=f"{marker}-" if len(xs) > 1 else marker, color=colour, markersize=4,
                        capsize=2, linewidth=0.8, label=name if index == 0 else None)
            x, y = searches_per_question(r), r["exact_match"]
            ax.annotate(set_name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("searches per question")
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("answers against searching (marker: held-out set)", fontsize=10)
    return fig


def em_vs_searches(results: dict[str, Any], path: Path) -> Path:
    return _save(draw_em_vs_searches(results), path, dpi=120)


def draw_em_by_kind(results: dict[str, Any]) -> Figure:
    """One panel per held-out set: a horizontal bar of EM per question kind for each row."""
    sets = list(results["sets"].items())
    heights = [len({k for r in b["rows"].values() for k in r["exact_match_by_kind"]}) for _, b in sets]
    fig = _figure(6.5 * len(sets), 0.9 + 0.45 * max(heights, default=1))
    axes = fig.subplots(1, len(sets), squeeze=False)
    for ax, (set_name, block) in zip(axes[0], sets, strict=True):
        rows = block["rows"]
        kinds = sorted({k for r in rows.values() for k in r["exact_match_by_kind"]})
        width = 0.8 / max(len(rows), 1)
        for i, (name, r) in enumerate(rows.items()):
            values = [r["exact_match_by_kind"].get(k, {}).get("exact_match", 0.0) for k in kinds]
            ax.barh([y + i * width for y in range(len(kinds))], values, height=width, label=name, color=f"C{i}")
        ax.set_yticks([y + 0.4 - width / 2 for y in range(len(kinds))], kinds, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("exact match")
        ax.set_title(set_name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    return fig


def em_by_kind(results: dict[str, Any], path: Path) -> Path:
    return _save(draw_em_by_kind(results), path, dpi=110)


def draw_all(experiment: Any, results: dict[str, Any]) -> list[Path]:
    """Every figure the data supports; returns their paths."""
    out = experiment.out
    paths = []
    if any(block["rows"] for block in results["sets"].values()):
        paths += [em_by_method(results, out / "em-by-method.png"), em_vs_searches(results, out / "em-vs-searches.png"),
                  em_by_kind(results, out / "em-by-kind.png")]
    curve = dev_curve({name: experiment.run_dir(name) for name in experiment.runs}, out / "dev-curve.png")
    if curve is not None:
        paths.append(curve)
    return paths
