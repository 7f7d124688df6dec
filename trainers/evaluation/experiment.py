"""`agentenv experiment`: train every row of a comparison, evaluate each on held-out questions, one table.

    agentenv experiment --config configs/experiment-geo.yaml [--stage train|eval|report] [--only RUN ...]

An experiment config (YAML) names:

* ``base``: the training config every run starts from (``configs/cpu-smollm2.yaml``);
* ``runs``: training runs in order, each a list of ``--set`` overrides on ``base``, trained into
  ``OUT/<name>`` with ``agentenv train``. ``model.init_from=<an earlier run's name>`` starts a run
  from that run's final weights (GRPO from the SFT-only agent: both rows share one warm start),
  its questions going on where that run's stopped;
* ``rows``: what the table compares, each a model (a run's name, ``embedded`` or a folder)
  evaluated in one mode (``agent``, ``rag`` or ``closed-book``);
* ``evals``: the held-out sets (``questions``, an optional ``limit``, and for a domain of its own a
  ``corpus`` file, indexed once with ``agentenv index build``), and ``eval_settings``: keys that
  override, for every row, the environment its run trained in (``max_turns``, ``max_turn_tokens``,
  ``max_total_tokens``, ``max_observation_tokens``, ``passages``, ``batch_size``, ``engine``);
  without them each row is evaluated under its own run's environment spec;
* ``reference``: the row every other row is compared to, with a paired bootstrap interval on the
  EM difference over the same questions.

Every stage resumes: a finished run is reused and an unfinished one continues from its newest
checkpoint; an evaluation is reused when its ``summary.json`` is of the same checkpoint and
questions. Each evaluation runs ``agentenv eval`` in a process of its own, so one engine's memory
is gone before the next loads. ``OUT`` receives ``results.md``, ``results.json`` and the plots
``em-by-method.png``, ``dev-curve.png``, ``em-vs-searches.png`` and ``em-by-class.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentenv.trainers.loop.config import ConfigError, load_config, load_yaml, training_changes

MODES = ("agent", "rag", "closed-book")
STAGES = ("train", "eval", "report")


@dataclass(frozen=True)
class Row:
    name: str
    model: str  # a run's name, "embedded", or a folder
    mode: str


@dataclass(frozen=True)
class EvalSet:
    name: str
    questions: str
    limit: int | None = None
    corpus: str | None = None  # a domain of its own: indexed into OUT/indexes/<name>
    search_budgets: tuple[int, ...] = ()  # agent rows also evaluated with at most k searches an episode


@dataclass(frozen=True)
class Experiment:
    out: Path
    base: str
    runs: dict[str, list[str]]
    rows: list[Row]
    evals: list[EvalSet]
    reference: str
    eval_settings: dict[str, Any] = field(default_factory=dict)

    def run_dir(self, name: str) -> Path:
        return self.out / name

    def model_of(self, row: Row) -> str:
        return str(self.run_dir(row.model)) if row.model in self.runs else row.model


EVAL_SETTINGS = ("max_turns", "max_turn_tokens", "max_total_tokens", "max_observation_tokens", "passages",
                 "batch_size", "engine")


def load_experiment(path: str | Path, out: str | None = None) -> Experiment:
    """Read and check an experiment config; errors name the key."""
    path = Path(path)
    data = load_yaml(path.read_text(), str(path)) or {}
    unknown = set(data) - {"out", "base", "runs", "rows", "evals", "reference", "eval_settings"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}")
    for key in ("base", "rows", "evals", "reference"):
        if key not in data:
            raise ConfigError(f"{path}: '{key}' is missing")
    runs = {str(name): [str(o) for o in (overrides or [])] for name, overrides in (data.get("runs") or {}).items()}
    rows = []
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict) or set(row) != {"name", "model", "mode"}:
            raise ConfigError(f"{path}: rows[{i}] must have exactly 'name', 'model' and 'mode', got {row!r}")
        if row["mode"] not in MODES:
            raise ConfigError(f"{path}: rows[{i}].mode {row['mode']!r} is not one of {list(MODES)}")
        rows.append(Row(str(row["name"]), str(row["model"]), row["mode"]))
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: row names must be unique, got {names}")
    if data["reference"] not in names:
        raise ConfigError(f"{path}: reference {data['reference']!r} is not a row name ({names})")
    evals = []
    for name, spec in data["evals"].items():
        unknown = set(spec) - {"questions", "limit", "corpus", "search_budgets"}
        if "questions" not in spec or unknown:
            raise ConfigError(f"{path}: evals.{name} needs 'questions' (and may have 'limit', 'corpus', "
                              f"'search_budgets'), got {spec!r}")
        budgets = spec.get("search_budgets") or []
        if not isinstance(budgets, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in budgets):
            raise ConfigError(f"{path}: evals.{name}.search_budgets must be a list of searches (integers ≥ 0), got {budgets!r}")
        evals.append(EvalSet(str(name), str(spec["questions"]), spec.get("limit"), spec.get("corpus"), tuple(budgets)))
    experiment = Experiment(
        out=Path(out or data.get("out") or Path("runs") / path.stem),
        base=str(data["base"]),
        runs=runs,
        rows=rows,
        evals=evals,
        reference=str(data["reference"]),
        eval_settings=dict(data.get("eval_settings") or {}),
    )
    unknown = set(experiment.eval_settings) - set(EVAL_SETTINGS)
    if unknown:
        raise ConfigError(f"{path}: eval_settings: unknown key(s) {sorted(unknown)}; allowed: {list(EVAL_SETTINGS)}")
    for position, name in enumerate(runs):  # fail now on a bad override, not an hour into the experiment
        run_config(experiment, name)
        for override in runs[name]:
            key, _, value = override.partition("=")
            if key.strip() == "model.init_from" and value.strip() in list(runs)[position:]:
                raise ConfigError(f"{path}: runs.{name} starts from {value.strip()}, which is trained later; list it first")
    return experiment


def run_config(experiment: Experiment, name: str):
    """The training config of run ``name``: ``base`` + its overrides; a run name in
    ``model.init_from`` becomes that run's folder."""
    overrides = []
    for override in experiment.runs[name]:
        key, _, value = override.partition("=")
        if key.strip() == "model.init_from" and value.strip() in experiment.runs:
            override = f"model.init_from={experiment.run_dir(value.strip())}"
        overrides.append(override)
    try:
        return load_config(experiment.base, overrides)
    except ConfigError as error:
        raise ConfigError(f"runs.{name}: {error}") from error


# --- training ----------------------------------------------------------------------------------


def total_steps(config) -> int:
    return config.max_steps if config.mode == "sft" else config.sft.steps + config.max_steps


def train_runs(experiment: Experiment, only: list[str] | None = None) -> None:
    from agentenv.trainers.loop.checkpoint import latest_checkpoint, read_state
    from agentenv.trainers.loop.train import train

    for name in experiment.runs:
        if only is not None and name not in only:
            continue
        config = run_config(experiment, name)
        run_dir = experiment.run_dir(name)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            # The rule of `agentenv train --resume`: a run may be lengthened or shortened (unless a
            # cosine schedule's length is max_steps) and logged or checkpointed differently.
            changes = training_changes(load_config(run_dir / "config.yaml"), config)
            if changes:
                raise ConfigError(
                    f"{run_dir} was trained with another config than runs.{name} gives now "
                    f"({'; '.join(changes)}); move it away or choose another --out"
                )
            if read_state(checkpoint)["step"] >= total_steps(config):
                print(f"experiment: run {name} is complete ({checkpoint})", file=sys.stderr)
                continue
        print(f"\n=== experiment: training {name} into {run_dir} ===", file=sys.stderr, flush=True)
        train(config, run_dir, resume=checkpoint is not None)


# --- evaluation --------------------------------------------------------------------------------


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def index_for(experiment: Experiment, eval_set: EvalSet) -> Path | None:
    """The BM25 index of ``eval_set.corpus``, built once with ``agentenv index build``."""
    if eval_set.corpus is None:
        return None
    index = experiment.out / "indexes" / eval_set.name
    if not (index / "index.json").is_file():
        index.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "agentenv.cli", "index", "build", "--corpus", eval_set.corpus, "--out", str(index)],
            check=True,
        )
    return index


def evaluated_checkpoint(experiment: Experiment, row: Row) -> str | None:
    """What the row's evaluation is of: the run's final checkpoint (None while the run is not
    finished), or the model as named."""
    from agentenv.trainers.loop.checkpoint import latest_checkpoint, read_state

    if row.model not in experiment.runs:
        return row.model
    checkpoint = latest_checkpoint(experiment.run_dir(row.model))
    if checkpoint is None or read_state(checkpoint)["step"] < total_steps(run_config(experiment, row.model)):
        return None
    return str(checkpoint)


def eval_dir(experiment: Experiment, row: Row, eval_set: EvalSet) -> Path:
    return experiment.out / "eval" / eval_set.name / slug(row.name)


def evaluate_rows(experiment: Experiment, only: list[str] | None = None) -> None:
    # Each row runs under its run's own environment (agentenv eval reads the run's env_spec.json);
    # eval_settings override single keys for every row (a row of no run gets eval's defaults).
    settings = {"batch_size": 32, "engine": "auto", **experiment.eval_settings}
    for eval_set in experiment.evals:
        index = index_for(experiment, eval_set)
        for row in experiment.rows:
            if only is not None and row.model not in only:
                continue
            out = eval_dir(experiment, row, eval_set)
            checkpoint = evaluated_checkpoint(experiment, row)
            if checkpoint is None:
                print(f"experiment: {row.name} waits for run {row.model} to finish training", file=sys.stderr)
                continue
            budgets = list(eval_set.search_budgets) if row.mode == "agent" else []
            of = {"checkpoint": checkpoint, "questions": eval_set.questions,
                  "limit": eval_set.limit, "mode": row.mode, "settings": settings}
            if budgets:
                of["search_budgets"] = budgets
            if (out / "summary.json").is_file() and (out / "of.json").is_file():
                previous = json.loads((out / "of.json").read_text())
                if {k: v for k, v in previous.items() if k != "code"} == of:
                    print(f"experiment: reusing {out}", file=sys.stderr)
                    continue
            print(f"\n=== experiment: {row.name} on {eval_set.name} ===", file=sys.stderr, flush=True)
            argv = [sys.executable, "-m", "agentenv.cli", "eval", "--model", experiment.model_of(row),
                    "--questions", eval_set.questions, "--mode", row.mode, "--out", str(out)]
            for key, value in settings.items():
                argv += [f"--{key.replace('_', '-')}", str(value)]
            if eval_set.limit:
                argv += ["--limit", str(eval_set.limit)]
            if index is not None:
                argv += ["--index", str(index)]
            if budgets:
                argv += ["--search-budgets", *map(str, budgets)]
            (out / "of.json").unlink(missing_ok=True)
            subprocess.run(argv, check=True)
            (out / "of.json").write_text(json.dumps({**of, "code": code_version()}, indent=2) + "\n")


def code_version() -> str | None:
    """The commit the package runs from (``+dirty`` with uncommitted changes), recorded with each
    evaluation: rows evaluated by different code are flagged in the report."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


# --- the report --------------------------------------------------------------------------------


def run_budget(experiment: Experiment, name: str) -> dict[str, Any] | None:
    """What a run cost: SFT steps and oracle examples; the steps of its mode after SFT (GRPO, RFT
    rounds, DPO, PPO) and the trajectories they sampled (none for DPO on a file of pairs); optimizer
    steps; wall time on this machine, steps that a kill made it redo included (``redone_steps``, from
    metrics.redone.jsonl). A run started from another (``model.init_from``) includes it.
    None for a run that has not logged a step yet (its parent's cost is not its own)."""
    from agentenv.trainers import algorithms
    from agentenv.trainers.loop.metrics import REDONE_METRICS

    config = run_config(experiment, name)
    path = experiment.run_dir(name) / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    redone_path = path.with_name(REDONE_METRICS)
    redone = [json.loads(line) for line in redone_path.read_text().splitlines()] if redone_path.is_file() else []
    steps = [r for r in records if "phase" in r]
    sft = [r for r in steps if r["phase"] == "sft"]
    trained = [r for r in steps if r["phase"] != "sft"]
    questions, samples = algorithms.get(config.mode).rollout_shape(getattr(config, config.mode))
    samples_each_step = 0 if config.mode == "dpo" and config.dpo.pairs else questions * samples
    budget = {
        "sft_steps": len(sft),
        "sft_examples": len(sft) * config.sft.questions_per_step,
        "mode": config.mode,
        "mode_steps": len(trained),
        "samples": len(trained) * samples_each_step,
        "optimizer_steps": len(sft) + int(sum(r.get("update/optimizer_steps", 0) for r in trained)),
        "wall_s": sum(r.get("time/step_s", 0.0) + r.get("time/dev_eval_s", 0.0) for r in records + redone),
        "redone_steps": sum("phase" in r for r in redone),
    }
    init_from = config.model.init_from
    parent = next((n for n in experiment.runs if init_from and Path(init_from) == experiment.run_dir(n)), None)
    before = run_budget(experiment, parent) if parent is not None else None
    if before is not None:  # the row's budget includes its warm start
        for key in ("sft_steps", "sft_examples", "optimizer_steps", "wall_s", "redone_steps"):
            budget[key] += before[key]
    return budget


def collect(experiment: Experiment) -> dict[str, Any]:
    from agentenv.trainers.evaluation.evaluate import load_summary, paired_difference

    results: dict[str, Any] = {"reference": experiment.reference, "sets": {}, "budgets": {}}
    for row in experiment.rows:
        budget = run_budget(experiment, row.model) if row.model in experiment.runs else {}
        results["budgets"][row.name] = budget
    for eval_set in experiment.evals:
        summaries = {}
        for row in experiment.rows:
            out = eval_dir(experiment, row, eval_set)
            if (out / "summary.json").is_file():
                modes = load_summary(out)["modes"]
                summaries[row.name] = {**modes[row.mode], "mode": row.mode, "budgets": {
                    m.rsplit("@", 1)[1]: s for m, s in modes.items() if m.startswith(f"{row.mode}@")}}
                of = json.loads((out / "of.json").read_text()) if (out / "of.json").is_file() else {}
                results.setdefault("code", {})[f"{eval_set.name}/{row.name}"] = of.get("code")
        reference = summaries.get(experiment.reference)
        table = {}
        for name, summary in summaries.items():
            entry = {key: summary[key] for key in ("questions", "exact_match", "exact_match_ci95", "f1",
                                                   "valid_format", "exact_match_by_kind")}
            entry["tool_calls"] = summary.get("tool_calls", {})
            entry["exact_match_by_class"] = summary.get("exact_match_by_class", {})
            entry["mode"] = summary["mode"]
            if summary.get("search"):
                entry["search"] = summary["search"]  # what the searches did: recall, reading, verdicts
            # EM with at most k searches an episode: the row's points of EM against searches.
            entry["search_budgets"] = {
                k: {"exact_match": s["exact_match"], "exact_match_ci95": s["exact_match_ci95"],
                    "searches": s.get("tool_calls", {}).get("search", 0.0)}
                for k, s in sorted(summary["budgets"].items(), key=lambda item: int(item[0]))
            }
            if reference is not None and name != experiment.reference:
                diff, low, high, n = paired_difference(summary, reference)
                entry["reference_minus_row"] = {"em": diff, "ci95": [low, high], "questions": n}
                entry["reference_minus_row_by_class"] = class_differences(summary, reference)
            table[name] = entry
        results["sets"][eval_set.name] = {"questions": eval_set.questions, "rows": table}
    return results


def class_differences(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Reference − row EM per question class (single-hop, two-hop, calculator), paired."""
    from agentenv.trainers.evaluation.stats import bootstrap_interval

    classes = row.get("question_classes") or reference.get("question_classes") or {}
    out = {}
    for name in sorted(set(classes.values())):
        ids = [q for q, c in classes.items() if c == name and q in row["per_question_exact_match"]
               and q in reference["per_question_exact_match"]]
        diffs = [reference["per_question_exact_match"][q] - row["per_question_exact_match"][q] for q in ids]
        if diffs:
            low, high = bootstrap_interval(diffs)
            out[name] = {"em": sum(diffs) / len(diffs), "ci95": [low, high], "questions": len(diffs)}
    return out


def format_report(experiment: Experiment, results: dict[str, Any]) -> str:
    reference = experiment.reference
    lines = []
    for set_name, block in results["sets"].items():
        rows = block["rows"]
        tools = sorted({tool for r in rows.values() for tool in r.get("tool_calls", {})})
        lines += [f"### {set_name} ({block['questions']})", "",
                  f"| method | n | EM [95 % CI] | F1 | {''.join(f'{tool}/q | ' for tool in tools)}valid format | "
                  f"{reference} − row (paired, 95 % CI) |",
                  "|---|---:|---|---:|" + "---:|" * len(tools) + "---:|---|"]
        for name, r in rows.items():
            low, high = r["exact_match_ci95"]
            diff = r.get("reference_minus_row")
            diff_text = f"{diff['em']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff else "—"
            lines.append(f"| {name} | {r['questions']} | {r['exact_match']:.3f} [{low:.3f}, {high:.3f}] | {r['f1']:.3f} | "
                         + "".join(f"{r.get('tool_calls', {}).get(tool, 0.0):.2f} | " for tool in tools)
                         + f"{r['valid_format']:.2f} | {diff_text} |")
        classes = sorted({c for r in rows.values() for c in r["exact_match_by_class"]})
        if classes:
            lines += ["", "| EM by class | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
            for name, r in rows.items():
                cells = []
                for c in classes:
                    entry = r["exact_match_by_class"].get(c)
                    cell = f"{entry['exact_match']:.3f} ({entry['n']})" if entry else "—"
                    diff = r.get("reference_minus_row_by_class", {}).get(c)
                    if diff:
                        cell += f"; ref − row {diff['em']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
                    cells.append(cell)
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        searching = {name: r["search"] for name, r in rows.items() if r.get("search")}
        if searching:
            # Gold-passage recall only where the questions name their passages and the searches recorded ids.
            passages = any("passage_recall" in s for s in searching.values())
            lines += ["", "| what the searches did | searches/episode | answer recall | "
                          + "gold passage recall | " * passages + "reading accuracy | no search | "
                          "not found | found, misread | found, read right | repeated queries |",
                      "|---|---:|---:|" + "---:|" * passages + "---:|---:|---:|---:|---:|---:|"]
            for name, s in searching.items():
                recall = (f"{s['passage_recall']:.3f} | " if "passage_recall" in s else "— | ") if passages else ""
                lines.append(f"| {name} | {s['per_episode']:.2f} | {s['answer_recall']:.3f} | {recall}{s['reading_accuracy']:.3f} | "
                             f"{s['verdict/no_search']:.3f} | {s['verdict/not_found']:.3f} | {s['verdict/found_misread']:.3f} | "
                             f"{s['verdict/found_read_right']:.3f} | {s['duplicate_rate']:.3f} |")
        budgeted = {name: r["search_budgets"] for name, r in rows.items() if r.get("search_budgets")}
        if budgeted:
            ks = sorted({int(k) for b in budgeted.values() for k in b})
            lines += ["", "| EM with at most k searches | " + " | ".join(f"k = {k}" for k in ks) + " | unlimited |",
                      "|---|" + "---:|" * (len(ks) + 1)]
            for name, b in budgeted.items():
                cells = [f"{b[str(k)]['exact_match']:.3f} ({b[str(k)]['searches']:.2f}/q)" if str(k) in b else "—" for k in ks]
                r = rows[name]
                cells.append(f"{r['exact_match']:.3f} ({r.get('tool_calls', {}).get('search', 0.0):.2f}/q)")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for name, r in rows.items():
            if "reference_minus_row" in r:
                lines.append(f"- {verdict(reference, name, r['reference_minus_row'])}")
        pending = [row.name for row in experiment.rows if row.name not in rows]
        if pending:
            lines.append(f"- not evaluated yet (training or evaluation unfinished): {', '.join(pending)}")
        lines.append("")
    versions = sorted({str(v) for v in results.get("code", {}).values()})
    if len(versions) > 1:
        lines += [f"Note: the rows were evaluated by different versions of the code ({', '.join(versions)}); "
                  "results.json lists which.", ""]
    lines += ["### budget (training on this machine)", "",
              "| method | SFT steps | SFT examples | steps after SFT | samples generated | optimizer steps | wall time |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, b in results["budgets"].items():
        if b is None:
            lines.append(f"| {name} | not trained yet | | | | | |")
        elif b:
            after = f"{b['mode_steps']} ({b['mode']})" if b["mode"] != "sft" else "0"
            count = b.get("redone_steps", 0)
            redone = f" ({count} step{'s' * (count > 1)} redone after a kill)" if count else ""
            lines.append(f"| {name} | {b['sft_steps']} | {b['sft_examples']} | {after} | {b['samples']} | "
                         f"{b['optimizer_steps']} | {b['wall_s'] / 60:.1f} min{redone} |")
        else:
            lines.append(f"| {name} | 0 | 0 | 0 | 0 | 0 | — |")
    return "\n".join(lines) + "\n"


def verdict(reference: str, name: str, difference: dict[str, Any]) -> str:
    """One line: is the reference better than the row, by the paired 95 % interval?"""
    low, high = difference["ci95"]
    if low > 0:
        word = "better than"
    elif high < 0:
        word = "worse than"
    else:
        word = "not clearly different from"
    return (f"{reference} is {word} {name}: EM {difference['em']:+.3f} [95 % CI {low:+.3f}, {high:+.3f}] "
            f"over {difference['questions']} questions")


def report(experiment: Experiment) -> str:
    from agentenv.trainers.evaluation import experiment_plots

    results = collect(experiment)
    text = format_report(experiment, results)
    (experiment.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (experiment.out / "results.md").write_text(text)
    plots = experiment_plots.draw_all(experiment, results)
    return text + "\nplots:\n" + "\n".join(f"  {path}" for path in plots) + "\n"


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. configs/experiment-geo.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: the config's 'out')")
    parser.add_argument("--stage", choices=STAGES, nargs="+", default=list(STAGES), help="stages to run (default: all)")
    parser.add_argument("--only", nargs="+", metavar="RUN", default=None,
                        help="train only these runs and evaluate only their rows (a row added to a finished "
                             "experiment); the report still covers every row evaluated so far")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        experiment = load_experiment(args.config, args.out)
        experiment.out.mkdir(parents=True, exist_ok=True)
        unknown = sorted(set(args.only or []) - set(experiment.runs))
        if unknown:
            raise ConfigError(f"--only {' '.join(unknown)}: not a run of {args.config} (its runs: {', '.join(experiment.runs)})")
        if "train" in args.stage:
            train_runs(experiment, args.only)
        if "eval" in args.stage:
            evaluate_rows(experiment, args.only)
        if "report" in args.stage:
            print(report(experiment))
    except (ConfigError, FileNotFoundError) as error:
        print(f"agentenv experiment: error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"agentenv experiment: error: {' '.join(error.cmd[2:5])} … failed (exit {error.returncode}); "
              "fix it and run the same command again: finished stages are reused", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # train() has checkpointed the step it was in (TrainingInterrupted)
        print(f"\nagentenv experiment: stopped; the same command resumes it: agentenv experiment --config {args.config}",
              file=sys.stderr)
        return 130
    minutes = (time.perf_counter() - started) / 60
    print(f"experiment: done in {math.floor(minutes)} min; outputs in {experiment.out}", file=sys.stderr)
    return 0
