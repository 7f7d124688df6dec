"""`agentenv diagnose RUN`: what a group-based RL run (GRPO, RLOO) fed its updates, by question class.

A run's reward can rise while the agent gives up a tool on the questions that need it. This reads
the run's ``episodes.jsonl`` (a line per training episode) and its ``config.yaml`` and answers, per
question class, the questions that tell why:

* **Drift**: reward, EM and calls per tool in each third of the run's steps.
* **Informative groups**: the share of groups whose rewards differ (only those carry a gradient),
  beside the share holding at least one right answer (pass@G): where pass@G is low, an outcome
  reward leaves most groups of that class all-wrong and the update never sees them.
* **Tool use inside a group** (for each tool): in the groups where some samples called the tool
  and some did not, the mean reward and advantage of each side, paired by group, and how the two
  sides ended (right answer, well-formed wrong answer, bad format). If skipping the tool is paid
  as well as using it, nothing teaches the agent to keep it.
* **Where the update pushes**: each episode's coefficient on ∇ log π(o_i) (the gradient of its
  whole sequence's log-likelihood) under each loss aggregation, A_i times the sum of its tokens'
  weights — token-mean: A_i·L_i/Σ_j L_j, seq-mean-token-mean: A_i/N, seq-mean-token-sum-norm:
  A_i·L_i/(L_max·N) — summed by class, by tool use and by length quartile, each step's
  coefficients scaled to Σ|c| = 1. A negative sum on tool-using episodes is a push away from the
  tool; a sum that falls with length is a push towards shorter episodes. Summed over classes, it
  is what the shared weights see; step by step, beside the classes each step's batch held, it shows
  whether a tool's fate is decided by the few steps that hold a question needing it.

The advantages are recomputed from the logged rewards with the run's own settings (group mean,
divided by the group std where ``scale_advantages_by_std``; RLOO's leave-one-out mean), and groups
with all-equal rewards carry none, as in the update; under dynamic sampling (``oversample`` > 1)
only the first B groups whose rewards differ are trained, and the rest carry none either.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def read_episodes(run_dir: Path) -> list[dict[str, Any]]:
    from agentenv.trainers.loop.metrics import EPISODES_FILE, read_jsonl

    path = run_dir / EPISODES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no episode log. Runs write it while they roll out (logging.episodes: true, the default); "
            "SFT-only runs and runs from before it existed have none"
        )
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{path}: no episodes yet")
    return records


def advantages(rewards: Sequence[float], estimator: str, scale_by_std: bool, eps: float = 1e-6) -> list[float]:
    """A group's advantages as the update computes them: GRPO's (r − mean) [/ (std + eps)] or RLOO's
    r − mean of the others."""
    n = len(rewards)
    if n < 2 or max(rewards) == min(rewards):
        return [0.0] * n
    mean = sum(rewards) / n
    if estimator == "rloo":
        return [r - (mean * n - r) / (n - 1) for r in rewards]
    if scale_by_std:
        std = statistics.stdev(rewards)
        return [(r - mean) / (std + eps) for r in rewards]
    return [r - mean for r in rewards]


def coefficients(episodes: Sequence[dict[str, Any]], aggregation: str, max_tokens: int) -> list[float]:
    """Each trained episode's coefficient on ∇ log π(o_i) in one step's loss (the module docstring)."""
    trained = [e for e in episodes if e["advantage"] != 0.0]
    total_tokens = max(sum(e["policy_tokens"] for e in trained), 1)
    count = max(len(trained), 1)
    result = []
    for e in episodes:
        A, L = e["advantage"], e["policy_tokens"]
        if aggregation == "token-mean":
            result.append(A * L / total_tokens)
        elif aggregation == "seq-mean-token-mean":
            result.append(A / count)
        else:
            result.append(A * L / (max_tokens * count))
    return result


def annotate(records: list[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """The records with ``advantage`` and ``push/<aggregation>`` (scaled per step) filled in."""
    mode = config.get("mode", "grpo")
    section = config.get(mode) or {}
    scale = bool(section.get("scale_advantages_by_std", mode == "grpo"))
    kwargs = (config.get("env") or {}).get("kwargs") or {}
    max_tokens = int(section.get("max_response_tokens") or kwargs.get("max_total_tokens") or 1536)
    oversample = float(section.get("oversample") or 1.0)
    questions_per_step = int(section.get("questions_per_step") or 0)
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_step[record["step"]].append(record)
    for step_records in by_step.values():
        groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for record in step_records:
            groups[record["group"]].append(record)
        trained = 0
        for members in groups.values():
            group_advantages = advantages([m["reward"] for m in members], mode, scale)
            # Dynamic sampling trains the first B groups whose rewards differ, in rollout order.
            if any(group_advantages):
                trained += 1
                if oversample > 1 and trained > questions_per_step:
                    group_advantages = [0.0] * len(members)
            for record, advantage in zip(members, group_advantages, strict=True):
                record["advantage"] = advantage
        for aggregation in AGGREGATIONS:
            pushes = coefficients(step_records, aggregation, max_tokens)
            norm = sum(abs(p) for p in pushes) or 1.0
            for record, push in zip(step_records, pushes, strict=True):
                record[f"push/{aggregation}"] = push / norm
    return records


def outcome(record: dict[str, Any]) -> str:
    if not record["format_valid"]:
        return "bad format"
    return "right" if record["reward_components"].get("exact_match", 0.0) >= 1.0 else "wrong"


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def diagnose(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """The report as a dict (the module docstring's four parts), by question class."""
    records = annotate(records, config)
    tools = sorted({tool for r in records for tool in r["tool_calls"]})
    classes = sorted({r["class"] or "all" for r in records})
    steps = sorted({r["step"] for r in records})
    thirds = [steps[i * len(steps) // 3 : (i + 1) * len(steps) // 3] or steps for i in range(3)]
    report: dict[str, Any] = {"steps": [steps[0], steps[-1]], "episodes": len(records), "tools": tools, "classes": {}}
    for cls in classes:
        of_class = [r for r in records if (r["class"] or "all") == cls]
        entry: dict[str, Any] = {"episodes": len(of_class)}
        entry["drift"] = []
        for part in thirds:
            in_part = [r for r in of_class if r["step"] in set(part)]
            entry["drift"].append({
                "steps": [part[0], part[-1]],
                "reward": _mean(r["reward"] for r in in_part),
                "exact_match": _mean(r["reward_components"].get("exact_match", 0.0) for r in in_part),
                **{f"{tool}_calls": _mean(r["tool_calls"].get(tool, 0) for r in in_part) for tool in tools},
            })
        groups: dict[tuple[int, Any], list[dict[str, Any]]] = defaultdict(list)
        for r in of_class:
            groups[(r["step"], r["group"])].append(r)
        entry["groups"] = len(groups)
        entry["informative_groups"] = _mean(float(len({m["reward"] for m in g}) > 1) for g in groups.values())
        entry["solved_groups"] = _mean(
            float(any(m["reward_components"].get("exact_match", 0.0) > 0 for m in g)) for g in groups.values()
        )
        entry["tool_use"] = {tool: tool_use(groups.values(), tool) for tool in tools}
        entry["push"] = {
            aggregation: {
                "all": sum(r[f"push/{aggregation}"] for r in of_class),
                **{f"with {tool}": sum(r[f"push/{aggregation}"] for r in of_class if r["tool_calls"].get(tool, 0))
                   for tool in tools},
                **{f"without {tool}": sum(r[f"push/{aggregation}"] for r in of_class if not r["tool_calls"].get(tool, 0))
                   for tool in tools},
            }
            for aggregation in AGGREGATIONS
        }
        report["classes"][cls] = entry
    # The sum over classes is what the shared weights see: a tool pushed up on the questions that
    # need it and down on the others moves by the difference.
    report["push_by_tool"] = {
        tool: {
            aggregation: {
                "with": sum(r[f"push/{aggregation}"] for r in records if r["tool_calls"].get(tool, 0)),
                "episodes_with": sum(bool(r["tool_calls"].get(tool, 0)) for r in records),
            }
            for aggregation in AGGREGATIONS
        }
        for tool in tools
    }
    report["push_by_length"] = push_by_length(records)
    report["by_step"] = by_step(records, tools, classes, configured_aggregation(config))
    return report


def configured_aggregation(config: dict[str, Any]) -> str:
    configured = (config.get(config.get("mode", "grpo")) or {}).get("loss_agg") or "token-mean"
    return configured if configured in AGGREGATIONS else "token-mean"


def by_step(records: Sequence[dict[str, Any]], tools: Sequence[str], classes: Sequence[str], aggregation: str) -> list[dict[str, Any]]:
    """Per step: the groups of each class it trained on and the push (under ``aggregation``) on the
    episodes that called each tool. A step whose batch holds no question that needs a tool can
    only push against its misuse."""
    steps: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        steps[record["step"]].append(record)
    rows = []
    for step, of_step in sorted(steps.items()):
        trained = {(r["class"] or "all", r["group"]) for r in of_step if r["advantage"] != 0.0}
        rows.append({
            "step": step,
            "trained_groups": {cls: sum(1 for c, _ in trained if c == cls) for cls in classes},
            **{f"push with {tool}": sum(r[f"push/{aggregation}"] for r in of_step if r["tool_calls"].get(tool, 0))
               for tool in tools},
        })
    return rows


def tool_use(groups: Iterable[list[dict[str, Any]]], tool: str) -> dict[str, Any]:
    """Paired by group: the groups where some samples called ``tool`` and some did not."""
    mixed = [g for g in groups if 0 < sum(bool(m["tool_calls"].get(tool, 0)) for m in g) < len(g)]
    used = [[m for m in g if m["tool_calls"].get(tool, 0)] for g in mixed]
    skipped = [[m for m in g if not m["tool_calls"].get(tool, 0)] for g in mixed]
    differences = [_mean(m["reward"] for m in u) - _mean(m["reward"] for m in s) for u, s in zip(used, skipped, strict=True)]
    flat_used = [m for g in used for m in g]
    flat_skipped = [m for g in skipped for m in g]
    return {
        "mixed_groups": len(mixed),
        "reward_with": _mean(m["reward"] for m in flat_used),
        "reward_without": _mean(m["reward"] for m in flat_skipped),
        "advantage_with": _mean(m["advantage"] for m in flat_used),
        "advantage_without": _mean(m["advantage"] for m in flat_skipped),
        "reward_difference": _mean(differences),
        "groups_tool_better": _mean(float(d > 0) for d in differences),
        "groups_tool_worse": _mean(float(d < 0) for d in differences),
        "outcomes_with": outcome_shares(flat_used),
        "outcomes_without": outcome_shares(flat_skipped),
    }


def outcome_shares(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {name: _mean(float(outcome(r) == name) for r in records) or 0.0 for name in ("right", "wrong", "bad format")}


def push_by_length(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summed push of each quartile of episode length (policy tokens), under each aggregation."""
    lengths = sorted(r["policy_tokens"] for r in records)
    edges = [lengths[len(lengths) * q // 4] for q in (1, 2, 3)]
    bins: list[list[dict[str, Any]]] = [[], [], [], []]
    for r in records:
        bins[sum(r["policy_tokens"] >= edge for edge in edges)].append(r)
    return [
        {
            "policy_tokens": [min(r["policy_tokens"] for r in b), max(r["policy_tokens"] for r in b)] if b else None,
            "episodes": len(b),
            "mean_advantage": _mean(r["advantage"] for r in b),
            **{aggregation: sum(r[f"push/{aggregation}"] for r in b) for aggregation in AGGREGATIONS},
        }
        for b in bins
    ]


# --- the printed report ----------------------------------------------------------------------------


def _f(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_report(report: dict[str, Any], configured: str) -> str:
    tools = report["tools"]
    lines = [f"{report['episodes']} episodes, steps {report['steps'][0]}–{report['steps'][1]}", ""]
    lines += ["## Drift by class (thirds of the run)", "",
              "| class | steps | reward | EM | " + " | ".join(f"{t}/ep" for t in tools) + " |",
              "|---|---|---:|---:|" + "---:|" * len(tools)]
    for cls, entry in report["classes"].items():
        for part in entry["drift"]:
            calls = " | ".join(_f(part[f"{t}_calls"]) for t in tools)
            lines.append(f"| {cls} | {part['steps'][0]}–{part['steps'][1]} | {_f(part['reward'])} | "
                         f"{_f(part['exact_match'])} | {calls} |")
    lines += ["", "## Tool use inside groups (groups where some samples used the tool and some did not)", "",
              "| class | tool | mixed groups | reward with | without | paired diff | tool better / worse | "
              "advantage with | without | right / wrong / bad format with | without |",
              "|---|---|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for cls, entry in report["classes"].items():
        for tool, use in entry["tool_use"].items():
            if not use["mixed_groups"]:
                continue
            shares = [" / ".join(f"{use[k][n]:.2f}" for n in ("right", "wrong", "bad format"))
                      for k in ("outcomes_with", "outcomes_without")]
            lines.append(
                f"| {cls} | {tool} | {use['mixed_groups']} | {_f(use['reward_with'])} | {_f(use['reward_without'])} | "
                f"{_f(use['reward_difference'], True)} | {_f(use['groups_tool_better'])} / {_f(use['groups_tool_worse'])} | "
                f"{_f(use['advantage_with'], True)} | {_f(use['advantage_without'], True)} | {shares[0]} | {shares[1]} |"
            )
    lines += ["", "## Informative groups and the update's push (Σ of per-step-normalised coefficients; "
              f"configured aggregation: {configured})", "",
              "| class | groups | pass@G | informative | " + " | ".join(AGGREGATIONS) + " | "
              + " | ".join(f"with {t} ({configured})" for t in tools) + " |",
              "|---|---:|---:|---:|" + "---:|" * (len(AGGREGATIONS) + len(tools))]
    for cls, entry in report["classes"].items():
        pushes = " | ".join(_f(entry["push"][a]["all"], True) for a in AGGREGATIONS)
        with_tool = " | ".join(_f(entry["push"][configured][f"with {t}"], True) for t in tools)
        lines.append(f"| {cls} | {entry['groups']} | {_f(entry['solved_groups'])} | {_f(entry['informative_groups'])} | "
                     f"{pushes} | {with_tool} |")
    lines += ["", "## The push on episodes that called each tool, all classes together", "",
              "| tool | episodes with it | " + " | ".join(AGGREGATIONS) + " |",
              "|---|---:|" + "---:|" * len(AGGREGATIONS)]
    for tool, by_aggregation in report["push_by_tool"].items():
        count = by_aggregation[AGGREGATIONS[0]]["episodes_with"]
        lines.append(f"| {tool} | {count} | " + " | ".join(_f(by_aggregation[a]["with"], True) for a in AGGREGATIONS) + " |")
    classes = list(report["classes"])
    lines += ["", f"## Step by step: trained groups of each class, and the push ({configured}) on each tool's episodes", "",
              "| step | " + " | ".join(f"{c} groups" for c in classes) + " | "
              + " | ".join(f"push with {t}" for t in tools) + " |",
              "|---:|" + "---:|" * (len(classes) + len(tools))]
    for row in report["by_step"]:
        lines.append(f"| {row['step']} | " + " | ".join(str(row["trained_groups"][c]) for c in classes) + " | "
                     + " | ".join(_f(row[f"push with {t}"], True) for t in tools) + " |")
    lines += ["", "## The push by episode length (quartiles of policy tokens)", "",
              "| policy tokens | episodes | mean advantage | " + " | ".join(AGGREGATIONS) + " |",
              "|---|---:|---:|" + "---:|" * len(AGGREGATIONS)]
    for b in report["push_by_length"]:
        span = f"{b['policy_tokens'][0]}–{b['policy_tokens'][1]}" if b["policy_tokens"] else "—"
        lines.append(f"| {span} | {b['episodes']} | {_f(b['mean_advantage'], True)} | "
                     + " | ".join(_f(b[a], True) for a in AGGREGATIONS) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a training run folder (with episodes.jsonl and config.yaml)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--from-step", type=int, default=None, help="only episodes from this step on")


def run(args: argparse.Namespace) -> int:
    from agentenv.trainers.loop.config import load_yaml

    config_path = args.run / "config.yaml"
    try:
        records = read_episodes(args.run)
        config = load_yaml(config_path.read_text(), str(config_path)) if config_path.is_file() else {}
    except (FileNotFoundError, ValueError) as error:
        print(f"agentenv diagnose: {error}", file=sys.stderr)
        return 2
    if args.from_step is not None:
        records = [r for r in records if r["step"] >= args.from_step]
        if not records:
            print(f"agentenv diagnose: no episodes from step {args.from_step} on", file=sys.stderr)
            return 2
    report = diagnose(records, config)
    print(format_report(report, configured_aggregation(config)))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0
