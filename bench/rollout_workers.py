"""Rollout throughput on Ray workers (engine.workers 1 and 2) against the in-process engine.

    .venv/bin/python bench/rollout_workers.py                        # SmolLM2-135M, ~10 min on 2 cores
    .venv/bin/python bench/rollout_workers.py --model tiny-random    # seconds: the fixed costs alone

All three run the same policy (the transformers engine, full weights, fp32), the same questions of
the calculator environment (B questions x G samples, up to 2 turns of at most 32 tokens, a nudge
after a turn without a call), the same sampling (temperature 1, seed r for repeat r) in one run:

* ``in-process``: ``rollout()`` with the engine in the benchmark's process (``--threads`` torch
  threads, default 2), what ``engine.workers: 0`` does;
* ``1 worker``: one Ray actor with as many CPUs (``worker_num_cpus``, hence threads): the same
  compute in another process, so the difference is what Ray adds (the call, pickling the batch back);
* ``2 workers``: two actors of one CPU (one thread) each, half the questions each.

On a machine shared with other work, small matmuls on 2 threads can stall in OpenMP's barriers
while the other work holds a core: ``--threads 1`` then measures Ray's overhead without that.

Each configuration: start (workers: actors, model load), one weight sync (``update_weights``:
``ray.put`` once, every worker loads it; ``time/sync_s`` of training), one warm-up rollout, then
``--repeats`` timed rollouts; medians. Every timed rollout of the workers must return the episodes
of the in-process rollout with the same seed, token for token.

Goal: one worker's rollout takes at most 1.2x the in-process one (Ray's overhead). On 2 cores two
workers cannot beat one process by much: they split the same two cores. The script prints one JSON
line per configuration and one comparison, appends a table to bench/RESULTS.md, and exits with
status 1 when the goal is missed or an episode differs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import append_section, command_line, machine, median

ROOT = Path(__file__).resolve().parents[1]
OVERHEAD_GOAL = 1.2


def bench_config(model: str, workers: int, num_cpus: float):
    from agentenv.trainers.loop.config import load_config

    return load_config(ROOT / "configs" / "tiny-test.yaml", [
        f"model.name={model}", "lora.enabled=false", "engine.kind=transformers",
        "env.kwargs.on_no_call=nudge", "env.kwargs.max_turn_tokens=32", "env.kwargs.max_total_tokens=1024",
        f"engine.workers={workers}", f"engine.worker_num_cpus={num_cpus}",
    ])


def fingerprint(batch) -> list[tuple]:
    return [(e.group, tuple(e.trajectory.token_ids), e.reward) for e in batch.episodes]


def measure(name: str, engine, rollout_fn, sync_fn, repeats: int, started: float) -> tuple[dict, list]:
    """Start-up (already spent since ``started``), one sync, a warm-up, then timed rollouts."""
    import torch  # noqa: F401

    startup_s = time.perf_counter() - started
    began = time.perf_counter()
    sync_fn()
    sync_s = time.perf_counter() - began
    rollout_fn(seed=10_000)  # warm-up
    times, tokens, episodes, prints = [], [], 0, []
    for repeat in range(repeats):
        began = time.perf_counter()
        batch = rollout_fn(seed=repeat)
        times.append(time.perf_counter() - began)
        tokens.append(batch.generated_tokens)
        episodes = len(batch.episodes)
        prints.append(fingerprint(batch))
    rollout_s = median(times)
    row = {
        "configuration": name,
        "episodes": episodes,
        "rollout_s": round(rollout_s, 3),
        "rollout_s_spread": round(statistics.pstdev(times), 3),
        "generated_tokens": int(median(tokens)),
        "tokens_per_s": round(median(tokens) / rollout_s, 1),
        "episodes_per_s": round(episodes / rollout_s, 2),
        "sync_s": round(sync_s, 3),
        "startup_s": round(startup_s, 1),
    }
    return row, prints


def run(model: str, questions_per_rollout: int, group_size: int, repeats: int, threads: int) -> tuple[list[dict], dict]:
    import ray
    import torch

    from agentenv.trainers.loop.build import load_policy, load_policy_tokenizer, make_envs
    from agentenv.trainers.rollout.engines import SamplingConfig, TransformersEngine
    from agentenv.trainers.rollout.rollout import rollout
    from agentenv.trainers.rollout.workers import RolloutWorkers

    torch.set_num_threads(threads)
    config = bench_config(model, 0, 1)
    tokenizer = load_policy_tokenizer(config)
    policy = load_policy(config, tokenizer)
    envs = make_envs(config, tokenizer, questions_per_rollout * group_size)
    questions = envs[0].questions[:questions_per_rollout]

    def sampling(seed: int) -> SamplingConfig:
        return SamplingConfig(temperature=1.0, max_new_tokens=envs[0].max_turn_tokens, seed=seed)

    rows = []
    started = time.perf_counter()
    engine = TransformersEngine(policy.model, tokenizer)
    row, reference = measure(
        "in-process", engine, lambda seed: rollout(engine, envs, questions, group_size, sampling(seed)),
        lambda: engine.update_weights(policy.model), repeats, started,
    )
    row["same_episodes"] = True
    rows.append(row)

    ray.init(num_cpus=max(2, threads), include_dashboard=False, log_to_driver=False)
    try:
        for name, workers, num_cpus in (("1 worker", 1, threads), ("2 workers", 2, 1)):
            started = time.perf_counter()
            pool = RolloutWorkers(bench_config(model, workers, num_cpus))
            try:
                row, prints = measure(
                    name, pool, lambda seed, pool=pool: pool.rollout(questions, group_size, sampling(seed)),
                    lambda pool=pool: pool.update_weights(policy.model), repeats, started,
                )
            finally:
                pool.close()
            row["same_episodes"] = prints == reference
            rows.append(row)
    finally:
        ray.shutdown()

    by_name = {row["configuration"]: row for row in rows}
    overhead = by_name["1 worker"]["rollout_s"] / by_name["in-process"]["rollout_s"]
    comparison = {
        "one_worker_time_ratio": round(overhead, 3),
        "two_workers_speedup": round(by_name["in-process"]["rollout_s"] / by_name["2 workers"]["rollout_s"], 3),
        "overhead_goal": OVERHEAD_GOAL,
        "overhead_goal_met": overhead <= OVERHEAD_GOAL,
        "same_episodes": all(row["same_episodes"] for row in rows),
    }
    return rows, comparison


COLUMNS = [
    ("configuration", "configuration"), ("episodes", "episodes"), ("rollout s", "rollout_s"),
    ("spread s", "rollout_s_spread"), ("generated tokens", "generated_tokens"), ("tokens/s", "tokens_per_s"),
    ("episodes/s", "episodes_per_s"), ("sync s", "sync_s"), ("start-up s", "startup_s"),
    ("same episodes", "same_episodes"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="model.name: embedded (SmolLM2-135M) or tiny-random")
    parser.add_argument("--questions", type=int, default=4, help="B: questions per rollout")
    parser.add_argument("--group-size", type=int, default=4, help="G: samples per question")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per configuration, after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in-process and of the 1-worker configuration")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    machine_at_start = machine()
    rows, comparison = run(args.model, args.questions, args.group_size, args.repeats, args.threads)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps(comparison), flush=True)
    notes = [
        f"{machine_at_start}; model {args.model}, transformers engine, fp32, full weights, {args.threads} thread(s) "
        f"in-process and in the 1-worker configuration; B={args.questions} x "
        f"G={args.group_size} calculator questions, up to 2 turns of 32 tokens; median of {args.repeats} after a warm-up",
        "1 worker: Ray's overhead alone; 2 workers: one CPU each; sync = one update_weights "
        "(ray.put once, every worker loads it)",
        f"1 worker / in-process rollout time **{comparison['one_worker_time_ratio']}x** (goal <= {OVERHEAD_GOAL}x: "
        f"{'met' if comparison['overhead_goal_met'] else 'missed'}); 2 workers: {comparison['two_workers_speedup']}x "
        f"the in-process speed; same episodes as in-process: {comparison['same_episodes']}",
    ]
    append_section("Rollout workers on Ray", command_line("rollout_workers.py"), notes, COLUMNS, rows)
    return 0 if comparison["overhead_goal_met"] and comparison["same_episodes"] else 1


if __name__ == "__main__":
    sys.exit(main())
