"""Rollout throughput: the vLLM engine against the transformers engine, on one policy.

    .venv/bin/python bench/rollout.py                              # ~20 min on 2 cores
    .venv/bin/python bench/rollout.py --policy runs/demo/train     # any --model of `agentenv eval`

Both engines serve the same policy, the same questions (geo:dev), the same sampling (temperature 1,
one seed per repeat) and the same limits: those of configs/cpu-smollm2.yaml (4 turns of at most 64
tokens, 1536 tokens in all, 3 passages of at most 256 tokens per search). The default policy is 8
SFT steps of that config, trained into bench/out/sft-policy on first use (~5 min): an untrained
135M model never writes a tool call, and a multi-turn benchmark without tool calls measures nothing.

Two workloads:

* ``single-turn``: `agentenv eval`'s closed-book environment, one generation per episode;
* ``multi-turn``: the training environment (search over the shipped geo index + calculator).

Each engine runs in its own subprocess: load, one warm-up rollout, then ``--repeats`` timed
rollouts of B questions x G samples (one training step's rollout); medians are reported.

Where the time goes. ``generation`` is time inside ``engine.generate``; ``env`` is everything else
(resets, parsing, tool calls, tokenizing tool output; trainers/rollout/rollout.py measures both).
The prompt of turns 2, 3, ... is the whole episode so far: the engine must read the new tool
output, and without a prefix cache it computes the whole history again. After each timed rollout
every later turn is replayed with a one-token generation, twice: on its whole context, after
showing the engine the context up to the tool output (so vLLM's prefix cache holds what it held in
the rollout): ``turn 2+ prefill``; and on the new tokens alone. The difference is ``re-prefill``:
work on tokens the engine had already seen. Non-generation overhead = env + re-prefill, as a share
of the rollout (reading the tool output is work any engine must do; it counts as generation).

Goals: vLLM >= 2x the transformers engine's generated tokens/s; overhead <= 10 % of
rollout time. The script prints one JSON line per (workload, engine) and one per comparison,
appends a table to bench/RESULTS.md, and exits with status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, append_section, command_line, machine, median, peak_rss_mb, run_worker

ENGINES = ("transformers", "vllm")
WORKLOADS = ("single-turn", "multi-turn")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu-smollm2.yaml"
DEFAULT_POLICY = OUT / "sft-policy"
SFT_STEPS = 8
SPEEDUP_GOAL = 2.0
OVERHEAD_GOAL = 0.10


def ensure_default_policy() -> str:
    """bench/out/sft-policy: 8 SFT steps of the CPU config, trained once with `agentenv train`."""
    if not (DEFAULT_POLICY / "checkpoints").is_dir() or not any((DEFAULT_POLICY / "checkpoints").iterdir()):
        print(f"training the benchmark policy ({SFT_STEPS} SFT steps) into {DEFAULT_POLICY} ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "agentenv.cli", "train", "--config", str(CONFIG), "--out", str(DEFAULT_POLICY),
             "--set", "mode=sft", "--set", f"max_steps={SFT_STEPS}", "--set", "logging.tensorboard=false",
             "--resume"],
            check=True,
        )
    return str(DEFAULT_POLICY)


# --- one engine, in its own process ---------------------------------------------------------------


def make_environments(workload: str, count: int, tokenizer, search_index=None):
    """``count`` environments of the CPU training config (multi-turn), or closed-book ones with its
    turn limits (single-turn)."""
    from agentenv.spec import EnvSpec
    from agentenv.trainers.loop.build import make_envs
    from agentenv.trainers.loop.config import load_config

    config = load_config(CONFIG)
    if workload == "multi-turn":
        if search_index is not None:
            config.env.kwargs["index"] = search_index
        return make_envs(config, tokenizer, count)
    limits = {key: config.env.kwargs[key] for key in ("max_turn_tokens", "max_total_tokens")}
    return EnvSpec("agentenv/ClosedBookQA-v0", {**limits, "questions": None}).factory(tokenizer).make(count)


def later_turn_contexts(batch) -> list[list[tuple[list[int], list[int]]]]:
    """For turns 2, 3, ...: (what the engine saw before the tool output, the turn's whole prompt)
    of every episode that reached that turn, grouped by turn as the rollout batched them."""
    turns: list[list[tuple[list[int], list[int]]]] = []
    for episode in batch.episodes:
        seen: list[int] = []
        context: list[int] = []
        policy_turn = 0
        for segment in episode.trajectory.segments:
            if segment.source == "policy":
                if policy_turn >= 1:
                    while len(turns) < policy_turn:
                        turns.append([])
                    turns[policy_turn - 1].append((list(seen), list(context)))
                policy_turn += 1
                seen = context + list(segment.token_ids)  # generated tokens are in the engine's cache too
            context = context + list(segment.token_ids)
    return turns


def recomputed_history_tokens(engine, turns) -> tuple[int, int]:
    """(history tokens the engine computes again at later turns, new tokens it reads there), for
    the ``turns`` of ``later_turn_contexts``.

    vLLM's prefix cache keeps whole blocks, so it recomputes the tail of the history past the last
    full block; the transformers engine keeps nothing between calls and recomputes all of it."""
    from agentenv.trainers.rollout.engines import VLLMEngine

    pairs = [pair for turn in turns for pair in turn]
    if isinstance(engine, VLLMEngine):
        recomputed = sum(len(seen) % engine.block_size for seen, _ in pairs)
    else:
        recomputed = sum(len(seen) for seen, _ in pairs)
    return recomputed, sum(len(context) - len(seen) for seen, context in pairs)


def time_later_prefill(engine, turns) -> tuple[float, float]:
    """(seconds to prefill the prompts of turns 2, 3, ... as the rollout did, seconds to prefill only
    their new tokens), for the ``turns`` of ``later_turn_contexts``: the difference is re-prefill,
    work on tokens the engine had already seen."""
    from agentenv.trainers.rollout.engines import SamplingConfig, VLLMEngine

    one_token = SamplingConfig(temperature=1.0, max_new_tokens=1, seed=0)
    as_in_rollout = new_tokens_only = 0.0
    for turn in turns:
        if isinstance(engine, VLLMEngine):
            # Forget the rollout's cache (it holds this turn's tool output), then cache what the
            # rollout had cached when this turn began.
            engine.llm.reset_prefix_cache()
            engine.generate([seen for seen, _ in turn], one_token)
        started = time.perf_counter()
        engine.generate([context for _, context in turn], one_token)
        as_in_rollout += time.perf_counter() - started
        if isinstance(engine, VLLMEngine):
            engine.llm.reset_prefix_cache()
        started = time.perf_counter()
        engine.generate([context[len(seen):] for seen, context in turn], one_token)
        new_tokens_only += time.perf_counter() - started
    return as_in_rollout, new_tokens_only


def load_engine(kind: str, policy: str, vllm_block_size: int | None = None):
    """(engine, tokenizer, description, seconds to load)."""
    from agentenv.trainers.rollout.policy import load_policy_engine

    started = time.perf_counter()
    options = {"block_size": vllm_block_size} if kind == "vllm" and vllm_block_size else {}
    engine, tokenizer, description = load_policy_engine(policy, kind, **options)
    return engine, tokenizer, description, time.perf_counter() - started


def measure_workload(engine, envs, questions: list[dict], group_size: int, repeats: int) -> dict:
    """A warm-up rollout, then ``repeats`` timed ones on fresh questions; medians of their measures."""
    from agentenv.trainers.rollout.engines import SamplingConfig
    from agentenv.trainers.rollout.rollout import rollout

    B = len(envs) // group_size
    if B * (repeats + 1) > len(questions):
        raise SystemExit(f"{B} questions x {repeats + 1} rollouts needs more than {len(questions)} questions")
    runs = []
    for repeat in range(repeats + 1):  # repeat 0 warms up (vLLM's compiled graphs, stop-string tables)
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=envs[0].max_turn_tokens, seed=1000 * repeat)
        began = time.perf_counter()
        batch = rollout(engine, envs, questions[B * repeat : B * (repeat + 1)], group_size, sampling)
        wall_s = time.perf_counter() - began
        if repeat == 0:
            continue
        turns = later_turn_contexts(batch)
        later_prefill_s, new_tokens_s = time_later_prefill(engine, turns)
        reprefill_s = max(0.0, later_prefill_s - new_tokens_s)
        recomputed_tokens, new_prompt_tokens = recomputed_history_tokens(engine, turns)
        episodes = batch.episodes
        runs.append({
            "rollout_s": wall_s,
            "generation_s": batch.generation_seconds,
            "env_s": batch.env_seconds,
            "later_prefill_s": later_prefill_s,
            "reprefill_s": reprefill_s,
            "recomputed_tokens": recomputed_tokens,
            "new_prompt_tokens": new_prompt_tokens,
            "generated_tokens": batch.generated_tokens,
            "tokens_per_s": batch.generated_tokens_per_s,
            "overhead_share": (batch.env_seconds + reprefill_s) / wall_s,
            "env_share": batch.env_seconds / wall_s,
            "turns": sum(e.num_turns for e in episodes) / len(episodes),
            "tool_calls": sum(sum(e.tool_calls.values()) for e in episodes) / len(episodes),
            "context_tokens": sum(len(e.trajectory) for e in episodes) / len(episodes),
        })
    return {"episodes": len(envs), "repeats": repeats,
            **{key: round(median([run[key] for run in runs]), 3) for key in runs[0]}}


def measure_engine(kind: str, policy: str, workloads: list[str], questions_per_rollout: int, group_size: int,
                   repeats: int, vllm_block_size: int | None = None) -> dict:
    """Load one engine, then measure each workload on geo:dev questions."""
    from agentenv.envs import load_question_set

    engine, tokenizer, description, startup_s = load_engine(kind, policy, vllm_block_size)
    questions = load_question_set("geo:dev")
    results = {"engine": kind, "policy": description, "startup_s": round(startup_s, 1), "workloads": {}}
    for workload in workloads:
        envs = make_environments(workload, questions_per_rollout * group_size, tokenizer)
        results["workloads"][workload] = measure_workload(engine, envs, questions, group_size, repeats)
    results["peak_rss_mb"] = peak_rss_mb()
    return results


# --- the comparison ------------------------------------------------------------------------------------


def compare(rows: dict[str, dict]) -> list[dict]:
    """vLLM against transformers per workload, with the goals."""
    comparisons = []
    for workload in rows["vllm"]["workloads"]:
        fast, slow = rows["vllm"]["workloads"][workload], rows["transformers"]["workloads"][workload]
        speedup = fast["tokens_per_s"] / slow["tokens_per_s"]
        comparisons.append({
            "workload": workload,
            "tokens_per_s_ratio": round(speedup, 2),
            "rollout_time_ratio": round(slow["rollout_s"] / fast["rollout_s"], 2),
            "speedup_goal": SPEEDUP_GOAL,
            "speedup_goal_met": speedup >= SPEEDUP_GOAL,
            "vllm_overhead_share": fast["overhead_share"],
            "overhead_goal": OVERHEAD_GOAL,
            "overhead_goal_met": fast["overhead_share"] <= OVERHEAD_GOAL,
        })
    return comparisons


COLUMNS = [
    ("workload", "workload"), ("engine", "engine"), ("episodes", "episodes"), ("rollout s", "rollout_s"),
    ("generation s", "generation_s"), ("env s", "env_s"), ("turn 2+ prefill s", "later_prefill_s"),
    ("re-prefill s", "reprefill_s"), ("history tokens recomputed", "recomputed_tokens"),
    ("new prompt tokens, turns 2+", "new_prompt_tokens"),
    ("generated tokens", "generated_tokens"), ("tokens/s", "tokens_per_s"), ("overhead share", "overhead_share"),
    ("turns/episode", "turns"), ("tool calls/episode", "tool_calls"), ("tokens/episode", "context_tokens"),
    ("start-up s", "startup_s"), ("peak RSS MB", "peak_rss_mb"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help=f"any `agentenv eval --model` value (default: {DEFAULT_POLICY}, trained on first use)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--questions", type=int, default=4, help="B: questions per rollout")
    parser.add_argument("--group-size", type=int, default=4, help="G: samples per question")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per workload, after one warm-up")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--vllm-block-size", type=int, help="KV-cache block size (default: the engine's)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = measure_engine(args.worker, args.policy, args.workloads, args.questions, args.group_size, args.repeats,
                                args.vllm_block_size)
        Path(args.out).write_text(json.dumps(result))
        return 0

    machine_at_start = machine()
    policy = args.policy or ensure_default_policy()
    shared = ["--policy", policy, "--workloads", *args.workloads, "--questions", str(args.questions),
              "--group-size", str(args.group_size), "--repeats", str(args.repeats)]
    if args.vllm_block_size:
        shared += ["--vllm-block-size", str(args.vllm_block_size)]
    results = {kind: run_worker(__file__, ["--worker", kind, *shared]) for kind in args.engines}
    rows = []
    for workload in args.workloads:
        for kind in args.engines:
            row = {"workload": workload, "engine": kind, **results[kind]["workloads"][workload],
                   "startup_s": results[kind]["startup_s"], "peak_rss_mb": results[kind]["peak_rss_mb"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    comparisons = compare(results) if set(args.engines) == set(ENGINES) else []
    for comparison in comparisons:
        print(json.dumps(comparison), flush=True)
    notes = [
        f"{machine_at_start}; policy {results[args.engines[0]]['policy']}; B={args.questions} questions x G={args.group_size} "
        f"from geo:dev per rollout, median of {args.repeats} after a warm-up; limits of configs/cpu-smollm2.yaml",
        "overhead share = (env + re-prefill) / rollout; turn 2+ prefill = reading the prompts of later turns as the rollout did; re-prefill = that minus reading only their new tokens (the history computed again)",
        *[f"{c['workload']}: vLLM/transformers tokens/s **{c['tokens_per_s_ratio']}x** (goal >= {SPEEDUP_GOAL}x: "
          f"{'met' if c['speedup_goal_met'] else 'missed'}), rollout time {c['rollout_time_ratio']}x; vLLM overhead share "
          f"{c['vllm_overhead_share']:.1%} (goal <= {OVERHEAD_GOAL:.0%}: {'met' if c['overhead_goal_met'] else 'missed'})"
          for c in comparisons],
    ]
    append_section("Rollout engines", command_line("rollout.py"), notes, COLUMNS, rows)
    missed = [c for c in comparisons if not (c["speedup_goal_met"] and c["overhead_goal_met"])]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
