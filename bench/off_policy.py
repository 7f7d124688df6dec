"""One step off the policy (``rollout.off_policy_steps: 1``) against on-policy training, same run.

    .venv/bin/python bench/off_policy.py                          # tiny-random: about a minute here
    .venv/bin/python bench/off_policy.py --model embedded --steps 6   # SmolLM2-135M, ~10 min on 2 cores

Both configurations train the same GRPO run (configs/tiny-test.yaml's calculator environment, a
nudge after a turn without a call, B questions x G samples, ``--steps`` steps) with one Ray rollout
worker of one CPU (the transformers engine) and a trainer of one torch thread, so that the two
sides have a core each:

* ``on-policy``: each step samples, then updates, then syncs the weights — the step takes
  rollout + update + sync;
* ``off-policy``: the worker samples step t+1 while the trainer updates on step t, so the step
  takes about max(rollout, update) + sync.

Step times are medians over steps 2..N (step 1 of the off-policy run samples on-policy, with
nothing to overlap). Goal: the off-policy step saves at least half of what overlapping can save,
min(rollout, update) of the on-policy run's medians. The script prints one JSON line per
configuration and one comparison, appends a table to bench/RESULTS.md and exits with status 1
when the goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import append_section, command_line, machine, median

ROOT = Path(__file__).resolve().parents[1]
SAVED_SHARE_GOAL = 0.5


def bench_config(model: str, questions: int, group_size: int, steps: int, off_policy: bool):
    from agentenv.trainers.loop.config import load_config

    return load_config(ROOT / "configs" / "tiny-test.yaml", [
        f"model.name={model}", f"max_steps={steps}", "engine.kind=transformers",
        f"grpo.questions_per_step={questions}", f"grpo.group_size={group_size}",
        "env.kwargs.on_no_call=nudge", "env.kwargs.max_turn_tokens=32", "env.kwargs.max_total_tokens=1024",
        "engine.workers=1", "engine.worker_num_cpus=1", f"rollout.off_policy_steps={int(off_policy)}",
        "checkpoint.every=1000",
    ])


def run(model: str, questions: int, group_size: int, steps: int) -> tuple[list[dict], dict]:
    import torch

    from agentenv.trainers.loop.metrics import read_jsonl
    from agentenv.trainers.loop.train import train

    torch.set_num_threads(1)  # the trainer's core; the worker holds the other
    rows = []
    for name, off_policy in (("on-policy", False), ("off-policy", True)):
        with tempfile.TemporaryDirectory(prefix="bench-off-policy-") as run_dir:
            train(bench_config(model, questions, group_size, steps, off_policy), run_dir)
            records = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r["step"] >= 2]
        rows.append({
            "configuration": name,
            "steps_timed": len(records),
            "step_s": round(median([r["time/step_s"] for r in records]), 3),
            "rollout_wait_s": round(median([r["time/rollout_s"] for r in records]), 3),
            "update_s": round(median([r["time/train_s"] for r in records]), 3),
            "sync_s": round(median([r["time/sync_s"] for r in records]), 3),
            "behaviour_lag": median([r["rollout/behaviour_lag"] for r in records]),
            "reward_mean": round(sum(r["reward/mean"] for r in records) / len(records), 3),
        })
    on, off = rows
    overlappable = min(on["rollout_wait_s"], on["update_s"])
    saved = on["step_s"] - off["step_s"]
    comparison = {
        "off_policy_step_time_ratio": round(off["step_s"] / on["step_s"], 3),
        "saved_s": round(saved, 3),
        "overlappable_s": round(overlappable, 3),
        "saved_share": round(saved / overlappable, 3) if overlappable > 0 else None,
        "saved_share_goal": SAVED_SHARE_GOAL,
        "goal_met": overlappable > 0 and saved >= SAVED_SHARE_GOAL * overlappable and off["behaviour_lag"] == 1,
    }
    return rows, comparison


COLUMNS = [
    ("configuration", "configuration"), ("steps timed", "steps_timed"), ("step s", "step_s"),
    ("rollout (wait) s", "rollout_wait_s"), ("update s", "update_s"), ("sync s", "sync_s"),
    ("behaviour lag", "behaviour_lag"), ("training reward", "reward_mean"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random", help="model.name: tiny-random or embedded (SmolLM2-135M)")
    parser.add_argument("--questions", type=int, default=4, help="B: questions per step")
    parser.add_argument("--group-size", type=int, default=4, help="G: samples per question")
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps per configuration (step 1 is not timed)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    machine_at_start = machine()
    rows, comparison = run(args.model, args.questions, args.group_size, args.steps)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps(comparison), flush=True)
    notes = [
        f"{machine_at_start}; model {args.model}, 1 Ray rollout worker (1 CPU, transformers engine) and a "
        f"1-thread trainer; B={args.questions} x G={args.group_size} calculator questions, up to 2 turns of "
        f"32 tokens; medians over steps 2..{args.steps}",
        "rollout (wait) s: the time a step waits for its batch (off-policy: it was sampled during the last "
        "update); sync s includes waiting for the rollout in flight",
        f"off-policy / on-policy step time **{comparison['off_policy_step_time_ratio']}x**; saved "
        f"{comparison['saved_s']} s of the {comparison['overlappable_s']} s that overlap can save "
        f"(goal >= {SAVED_SHARE_GOAL:.0%}: {'met' if comparison['goal_met'] else 'missed'})",
    ]
    append_section("One step off the policy", command_line("off_policy.py"), notes, COLUMNS, rows)
    return 0 if comparison["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
