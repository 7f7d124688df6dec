"""The multi-turn GRPO update's tokens/s: the shared-prefix and lean paths against the path before them, in one run.

    python bench/update.py [--episodes 32] [--repeats 3] [--profile] [--compile]

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
  prompt, micro-batches in batch order (the update without the lean path);
* ``bf16``: the shared path under ``model.autocast: bfloat16`` (matmuls in bfloat16, weights,
  gradients and AdamW in float32);
* ``compiled`` (``--compile``): the shared path with the transformer body compiled by
  ``torch.compile`` (``dynamic=True``: every micro-batch has its own length), timed after one
  untimed update that compiles it, from the same weights (the update's weights are restored after
  it). Measured 2026-12-08: 487 s compiling on 2 cores for 1.11x the shared path's tokens/s, so it
  is neither a default nor an option.

All start from the same weights; the first three must compute the same loss (checked). What
``bf16`` and ``compiled`` change is reported as the difference of the policy tokens' log-probs
before the update from ``shared``'s, mean and largest (a GRPO loss on-policy is −mean(A) whatever
the log-probs, so the loss value cannot show it). Reported: the median
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
import copy
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, command_line, machine, median, peak_rss_mb, run_worker  # noqa: E402

PATHS = ("shared", "lean", "before", "bf16", "compiled")


def worker(args: argparse.Namespace) -> None:
    import torch

    from agentenv.trainers.algorithms.grpo import grpo_update
    from agentenv.trainers.algorithms.logprobs import batch_logprobs, decoder_and_head, pad_episodes
    from agentenv.trainers.algorithms.sft import oracle_episode
    from agentenv.trainers.algorithms.update import forward_precision
    from agentenv.trainers.loop.build import (
        build_optimizer,
        load_policy,
        load_policy_tokenizer,
        make_envs,
    )
    from agentenv.trainers.loop.config import load_config
    from agentenv.trajectory import Episode

    config = load_config("configs/cpu-smollm2.yaml", [
        f"grpo.lean_update={str(args.path != 'before').lower()}",
        f"grpo.shared_prefix={str(args.path not in ('lean', 'before')).lower()}",
        f"model.autocast={'bfloat16' if args.path == 'bf16' else 'none'}",
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

    def update() -> float:
        with forward_precision(policy.model, config.model.autocast):
            return grpo_update(policy.model, optimizer, episodes, config.grpo, tokenizer.pad_token_id,
                               max_grad_norm=config.optim.max_grad_norm, temperature=config.engine.temperature)["loss"]

    compile_s = None
    if args.path == "compiled":
        decoder, _ = decoder_and_head(policy.model)
        decoder.compile(dynamic=True)
        weights = copy.deepcopy(policy.model.state_dict()), copy.deepcopy(optimizer.state_dict())
        started = time.perf_counter()
        update()
        compile_s = time.perf_counter() - started
        policy.model.load_state_dict(weights[0])
        optimizer.load_state_dict(weights[1])
    # What the precision changes: the log-probs of the policy tokens before the first update (a
    # GRPO loss taken on-policy is -mean(A) whatever they are, so its value shows nothing).
    batch = pad_episodes(episodes, tokenizer.pad_token_id)
    with forward_precision(policy.model, config.model.autocast):
        logp = batch_logprobs(policy.model, batch, config.grpo.micro_batch_size, config.engine.temperature)
    policy_logp = logp[batch.policy_mask[:, batch.start :] > 0].tolist()
    seconds, losses = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        losses.append(update())
        seconds.append(time.perf_counter() - started)
    tokens = sum(len(e.token_ids) for e in episodes)
    # The shared path runs each group's prompt once: the tokens the body computes.
    prompts = {e.group: played[8 * e.group].trajectory.prompt_length for e in episodes}
    members = Counter(e.group for e in episodes)
    shares_prompts = args.path not in ("lean", "before")
    computed = tokens - sum((members[g] - 1) * prompts[g] for g in members) if shares_prompts else tokens
    body = sum(module.weight.numel() for name, module in policy.model.named_modules()
               if isinstance(module, torch.nn.Linear) and "lora_" not in name and "lm_head" not in name)
    body_rate = 4 * body * computed / median(seconds) / 1e9
    matmul = matmul_gflop_per_s(torch, policy.model.config.hidden_size, policy.model.config.intermediate_size)
    result = {
        "path": args.path, "episodes": len(episodes), "tokens": tokens,
        "policy_tokens": sum(sum(e.policy_mask) for e in episodes),
        "update_s": median(seconds), "tokens_per_s": tokens / median(seconds),
        "first_loss": losses[0], "peak_rss_mb": peak_rss_mb(), "compile_s": compile_s, "policy_logp": policy_logp,
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
    parser.add_argument("--compile", action="store_true", help="add the compiled path (~8 min compiling on 2 cores)")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.path = args.worker
        worker(args)
        return 0
    rows = []
    paths = [*PATHS[:4], *(["compiled"] if args.compile else [])]
    for path in paths:
        row = run_worker(__file__, ["--worker", path, "--episodes", str(args.episodes), "--repeats", str(args.repeats)],
                         profile=f"update-{path}" if args.profile else None)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> int:
    """The comparisons, printed and appended to bench/RESULTS.md; 0 if the goal is met."""
    from agentenv.trainers.algorithms.grpo import GRPOConfig

    shared, lean, before, bf16, *compiled = rows
    # The goal is on the path training takes by default.
    default = shared if GRPOConfig().shared_prefix else lean
    ratio = default["tokens_per_s"] / before["tokens_per_s"]
    lean_ratio = lean["tokens_per_s"] / before["tokens_per_s"]
    shared_ratio = shared["tokens_per_s"] / lean["tokens_per_s"]
    same = all(
        abs(row["first_loss"] - before["first_loss"]) <= 1e-4 * max(1.0, abs(before["first_loss"]))
        for row in (shared, lean, before)
    )
    reference = shared["policy_logp"]
    for row in rows:
        differences = [abs(a - b) for a, b in zip(row.pop("policy_logp"), reference, strict=True)]
        row["logp_difference_mean"] = sum(differences) / len(differences)
        row["logp_difference_max"] = max(differences)
    for row in (bf16, *compiled):
        print(json.dumps({"comparison": f"{row['path']} vs shared", "tokens_per_s_ratio": row["tokens_per_s"] / shared["tokens_per_s"],
                          "policy_logp_difference_mean": row["logp_difference_mean"],
                          "policy_logp_difference_max": row["logp_difference_max"], "compile_s": row["compile_s"]}))
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
         f"{2 * before['body_gflop_per_s'] / default['matmul_gflop_per_s'] * default['tokens_computed'] / before['tokens_computed']:.0%} of it",
         f"levers on the shared path: bf16 autocast {bf16['tokens_per_s'] / shared['tokens_per_s']:.2f}x, policy-token "
         f"log-probs {bf16['logp_difference_mean']:.1e} from float32's on average ({bf16['logp_difference_max']:.1e} at most)"
         + "".join(f"; torch.compile {row['tokens_per_s'] / shared['tokens_per_s']:.2f}x after {row['compile_s']:.0f} s "
                   f"compiling, log-probs {row['logp_difference_mean']:.1e} ({row['logp_difference_max']:.1e} at most)"
                   for row in compiled)],
        [("path", "path"), ("update s", "update_s"), ("tokens/s", "tokens_per_s"), ("tokens", "tokens"),
         ("policy tokens", "policy_tokens"), ("first loss", "first_loss"), ("tokens computed", "tokens_computed"),
         ("body GFLOP/s", "body_gflop_per_s"), ("matmul GFLOP/s", "matmul_gflop_per_s"), ("share of matmul", "share_of_matmul"),
         ("peak RSS MB", "peak_rss_mb"), ("compile s", "compile_s"), ("mean abs Δ log π vs shared", "logp_difference_mean")],
        rows,
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
