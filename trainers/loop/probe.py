"""`agentenv probe`: will GRPO get a gradient from this policy? Measure before choosing G and T.

    agentenv probe --config configs/cpu-smollm2.yaml --model runs/experiment-geo/sft-agent \\
        --questions 32 --group-sizes 2 4 8 --temperatures 0.7 1.0

A group whose G rewards are all equal has advantage 0 for every member and adds nothing to the
GRPO update (DAPO's dynamic sampling drops it). This samples ``--questions`` training questions
``max(--group-sizes)`` times each at every temperature, in the config's environment with its reward,
and prints one JSON line per (temperature, G): the share of all-equal groups (from the first G
samples of each question), the mean reward, its mean within-group std, and pass@G.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any


def group_statistics(rewards: list[list[float]], correct: list[list[bool]], group_size: int) -> dict[str, float]:
    """Statistics of groups made of the first ``group_size`` samples of each question."""
    groups = [r[:group_size] for r in rewards]
    equal = [max(g) == min(g) for g in groups]
    return {
        "group_size": group_size,
        "equal_reward_groups": sum(equal) / len(groups),
        "reward_mean": statistics.fmean(x for g in groups for x in g),
        "within_group_std": statistics.fmean(statistics.pstdev(g) for g in groups),
        "pass_at_g": statistics.fmean(any(c[:group_size]) for c in correct),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the training config (its env and reward are probed)")
    parser.add_argument("--model", required=True, help="the policy: a training run, checkpoint or model folder")
    parser.add_argument("--questions", type=int, default=32, help="training questions to sample (default 32)")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--engine", default="auto", choices=("auto", "vllm", "transformers"))
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from agentenv.trainers.loop.build import QuestionOrder, make_envs
    from agentenv.trainers.loop.config import ConfigError, load_config
    from agentenv.trainers.rollout.engines import SamplingConfig
    from agentenv.trainers.rollout.policy import PolicyNotFound, load_policy_engine
    from agentenv.trainers.rollout.rollout import rollout

    try:
        config = load_config(args.config)
        if min(args.group_sizes) < 2 or args.questions < 1:
            raise ConfigError("--group-sizes must be at least 2 and --questions at least 1")
        engine, tokenizer, description = load_policy_engine(args.model, args.engine)
    except (ConfigError, PolicyNotFound, FileNotFoundError) as error:
        print(f"agentenv probe: error: {error}", file=sys.stderr)
        return 2
    largest = max(args.group_sizes)
    envs = make_envs(config, tokenizer, args.questions * largest)
    questions = envs[0].questions
    # The questions the trainer would draw first with this seed (its epoch-0 order).
    picked = [questions[i] for i in QuestionOrder(len(questions), args.seed).take(args.questions)]
    for temperature in args.temperatures:
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=envs[0].max_turn_tokens, seed=args.seed)
        batch = rollout(engine, envs, picked, largest, sampling, progress=True)
        rewards: list[list[float]] = [[] for _ in picked]
        correct: list[list[bool]] = [[] for _ in picked]
        for episode in batch.episodes:
            rewards[episode.group].append(episode.reward)
            correct[episode.group].append(bool(episode.exact_match))
        for group_size in sorted(args.group_sizes):
            line: dict[str, Any] = {"model": description, "temperature": temperature, "questions": len(picked),
                                    **group_statistics(rewards, correct, group_size)}
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}), flush=True)
    return 0
