"""The multi-turn GRPO update's tokens/s: the shared-prefix and lean paths against the path before them, in one run.

    python bench/update.py [--episodes 32] [--repeats 3] [--profile]

The workload is the training run's own: configs/cpu-smollm2.yaml (the embedded SmolLM2-135M with
LoRA r 16), and B·G = 32 episodes of the multi-turn geo search environment, played by the SFT
oracle through the real environment (prompt, searches, their real results, answers: ~400 tokens,
a few percent of them policy tokens, the shape the training steps have). The episodes form groups
of 8, and the members of a group share one question's prompt (~150 tokens) as a GRPO group does:
member j of group g is question 8g's prompt followed by what comes after the prompt in the oracle's
episode of question 8g + j (the oracle plays a question the same way every time, so eight episodes
of one question would be identical). Rewards alternate 0/1 inside groups, so every sequence carries
a gradient. Each path runs in a process of its own:

* ``shared``: ``grpo.shared_prefix: true`` on top of the lean path: micro-batches of one group each,
  whose prompt runs through the model once, not once per sequence;
* ``lean``: ``grpo.lean_update: true`` (the default): the vocabulary projection only where the next
  token is a policy token, micro-batches of similar lengths;
* ``before``: ``grpo.lean_update: false``: the projection at every position after the shortest
  prompt, micro-batches in batch order (the update without the lean path).

All start from the same weights and must compute the same loss (checked). Reported: the median
over ``--repeats`` updates of seconds and trained tokens/s (every token of every sequence, as
``throughput/train_tokens_per_s`` counts them), and peak RSS. Goal: the path training
takes by default (``GRPOConfig``'s ``shared_prefix``) ≥ 2x before.

What bounds it: the transformer body runs forward and backward over every token (policy tokens
attend to the tool output before them), about 4 N FLOPs a token for its N weights (2 N forward,
2 N for the input gradients; LoRA's own gradients and attention add a few percent). Each worker
also times a float32 matmul of the body's own shape on its threads; the body's achieved rate,
4 N x tokens computed / update s, as a share of that matmul rate is how much room is left.
``--profile`` records each worker with py-spy into bench/out/profile-update-{shared,lean,before}.txt
(``python bench/profile_top.py FILE`` sums it by function; its shares are of the whole worker,
start-up included, so read them against ``grpo_update``'s own share).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, command_line, machine, median, peak_rss_mb, run_worker  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch

    from agentenv.trainers.algorithms.grpo import grpo_update
    from agentenv.trainers.algorithms.sft import oracle_episode
    from agentenv.trainers.loop.build import (
        build_optimizer,
        load_policy,
        load_policy_tokenizer,
        make_envs,
    )
    from agentenv.trainers.loop.config import load_config
    from agentenv.trajectory import Episode

    config = load_config("configs/cpu-smollm2.yaml", [
        f"grpo.lean_update={str(args.path != 'before').lower()}", f"grpo.shared_prefix={str(args.path == 'shared').lower()}",
    ])
    torch.manual_seed(0)
    tokenizer = load_policy_tokenizer(config)
    [env] = make_envs(config, tokenizer, 1)
    played = [oracle_episode(env, question) for question in env.questions[: args.episodes]]
    episodes = []
    for i, e in enumerate(played):
        prompt = played[i - i % 8].trajectory  # the group's question
        start = e.trajectory.prompt_length
        episodes.append(Episode.from_tokens(
            prompt.token_ids[: prompt.prompt_length] + e.trajectory.token_ids[start:],
            prompt.policy_mask[: prompt.prompt_length] + e.trajectory.policy_mask[start:],
            reward=float(i % 2), group=i // 8,
        ))
    policy = load_policy(config, tokenizer)
    optimizer = build_optimizer(policy, config, "grpo")
    seconds, losses = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        metrics = grpo_update(policy.model, optimizer, episodes, config.grpo, tokenizer.pad_token_id,
                              max_grad_norm=config.optim.max_grad_norm, temperature=config.engine.temperature)
        seconds.append(time.perf_counter() - started)
        losses.append(metrics["loss"])
    tokens = sum(len(e.token_ids) for e in episodes)
    # The shared path runs each group's prompt once: the tokens the body computes.
    prompts = {e.group: played[8 * e.group].trajectory.prompt_length for e in episodes}
    members = Counter(e.group for e in episodes)
    computed = tokens - sum((members[g] - 1) * prompts[g] for g in members) if args.path == "shared" else tokens
    body = sum(module.weight.numel() for name, module in policy.model.named_modules()
               if isinstance(module, torch.nn.Linear) and "lora_" not in name and "lm_head" not in name)
    body_rate = 4 * body * computed / median(seconds) / 1e9
    matmul = matmul_gflop_per_s(torch, policy.model.config.hidden_size, policy.model.config.intermediate_size)
    result = {
        "path": args.path, "episodes": len(episodes), "tokens": tokens,
        "policy_tokens": sum(sum(e.policy_mask) for e in episodes),
        "update_s": median(seconds), "tokens_per_s": tokens / median(seconds),
        "first_loss": losses[0], "peak_rss_mb": peak_rss_mb(),
        "body_params_m": body / 1e6, "tokens_computed": computed, "body_gflop_per_s": body_rate,
        "matmul_gflop_per_s": matmul, "share_of_matmul": body_rate / matmul,
    }
    Path(args.out).write_text(json.dumps(result))


def matmul_gflop_per_s(torch, hidden: int, intermediate: int, tokens: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of ``[tokens, hidden] @ [hidden, intermediate]`` in float32 on this process's threads
    (an MLP projection over a micro-batch's tokens: the body's commonest matmul), best of ``repeats``."""
    x, w = torch.randn(tokens, hidden), torch.randn(hidden, intermediate)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - started)
    return 2 * tokens * hidden * intermediate / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="record each worker with py-spy")
    parser.add_argument("--worker", choices=("shared", "lean", "before"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.path = args.worker
        worker(args)
        return 0
    rows = []
    for path in ("shared", "lean", "before"):
        row = run_worker(__file__, ["--worker", path, "--episodes", str(args.episodes), "--repeats", str(args.repeats)],
                         profile=f"update-{path}" if args.profile else None)
        print(json.dumps(row), flush=True)
        rows.append(row)
    from agentenv.trainers.algorithms.grpo import GRPOConfig

    shared, lean, before = rows
    # The goal is on the path training takes by default.
    default = shared if GRPOConfig().shared_prefix else lean
    ratio = default["tokens_per_s"] / before["tokens_per_s"]
    lean_ratio = lean["tokens_per_s"] / before["tokens_per_s"]
    shared_ratio = shared["tokens_per_s"] / lean["tokens_per_s"]
    same = all(
        abs(row["first_loss"] - before["first_loss"]) <= 1e-4 * max(1.0, abs(before["first_loss"])) for row in rows
    )
    met = ratio >= 2 and same
    print(json.dumps({"comparison": f"{default['path']} (the default) vs before", "tokens_per_s_ratio": ratio,
                      "same_loss": same, "goal_met": met}))
    print(json.dumps({"comparison": "lean vs before", "tokens_per_s_ratio": lean_ratio}))
    print(json.dumps({"comparison": "shared vs lean", "tokens_per_s_ratio": shared_ratio}))
    append_section(
        "Multi-turn GRPO update: shared prefix, lean path and the path before them", command_line("update.py"),
        [machine(), f"configs/cpu-smollm2.yaml (SmolLM2-135M, LoRA r 16); {args.episodes} oracle episodes of the geo "
         f"search env in groups of 8 that share a prompt; median of {args.repeats} updates each",
         f"{default['path']} (the default path) / before tokens/s: {ratio:.2f}x (goal ≥ 2x: "
         f"{'met' if ratio >= 2 else 'missed'}); lean / before {lean_ratio:.2f}x; shared / lean {shared_ratio:.2f}x; "
         f"the same first loss: {'yes' if same else 'NO'}",
         f"the body (≈ 4 N FLOPs a token, N = {default['body_params_m']:.0f} M) runs at {default['body_gflop_per_s']:.0f} "
         f"GFLOP/s on the {default['path']} path, {default['share_of_matmul']:.0%} of a float32 matmul of its shape "
         f"here ({default['matmul_gflop_per_s']:.0f} GFLOP/s); 2x before's tokens/s would need "
         f"{2 * before['body_gflop_per_s'] / default['matmul_gflop_per_s'] * default['tokens_computed'] / before['tokens_computed']:.0%} of it"],
        [("path", "path"), ("update s", "update_s"), ("tokens/s", "tokens_per_s"), ("tokens", "tokens"),
         ("policy tokens", "policy_tokens"), ("first loss", "first_loss"), ("tokens computed", "tokens_computed"),
         ("body GFLOP/s", "body_gflop_per_s"), ("matmul GFLOP/s", "matmul_gflop_per_s"), ("share of matmul", "share_of_matmul"),
         ("peak RSS MB", "peak_rss_mb")],
        rows,
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
