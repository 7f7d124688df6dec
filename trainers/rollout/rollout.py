"""The batched multi-turn rollout driver: B questions x G samples, one engine call per turn.

::

    envs = [make_calculator_env(tokenizer=tokenizer) for _ in range(B * G)]
    batch = rollout(engine, envs, questions, group_size=G, sampling=SamplingConfig(temperature=1.0))
    batch.episodes[i].trajectory        # segments: prompt (no loss), policy (loss), tool (no loss)
    episode_stats(batch)                # means to log: reward and its terms, EM, tool calls, ...

Every turn gathers the context of every environment still running, samples one continuation for
each with a single ``engine.generate`` call (each with its environment's stop strings and remaining
token budget), and steps all of them with ``step_batch``, which sends every call to one tool in one
batch. Token in, token out: the engine's ids and logprobs go into the trajectory unchanged.

With a seed, every episode samples from a random stream of its own, ``episode_seed(seed, episode,
turn)``: the same episode gets the same samples whichever other episodes share its engine calls,
so a batch split into shards (``episode_offset``, one per Ray worker) equals the batch rolled out
in one piece.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agentenv.env import FINISH_REASONS, ToolEnv, step_batch
from agentenv.search_behaviour import episode_search_record, search_metrics
from agentenv.trainers.rollout.engines import RolloutEngine, SamplingConfig
from agentenv.trajectory import Episode, SampledTurn


@dataclass
class RolloutBatch:
    """The episodes of one rollout, and where its time went.

    ``generation_seconds`` is time inside ``engine.generate``; ``env_seconds`` is resets, parsing,
    tool calls and tokenizing tool output. ``generated_tokens`` counts every token the engine
    returned (all policy segments).
    """

    episodes: list[Episode]
    group_size: int
    tool_names: tuple[str, ...]
    passage_tools: bool = False  # a tool of the environments returns passages (search metrics apply)
    generation_seconds: float = 0.0
    env_seconds: float = 0.0
    generated_tokens: int = 0
    engine_calls: int = 0
    turn_finish_reasons: dict[str, int] = field(default_factory=dict)  # engine "stop"/"length" per turn
    # Updates between the weights that sampled the batch and the trainer's when it trains on it:
    # 1 for a batch prefetched one step ahead (rollout.off_policy_steps), else 0.
    behaviour_lag: int = 0

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0

    @property
    def env_time_share(self) -> float:
        """The share of rollout time spent outside generation (tools, parsing, tokenizing)."""
        total = self.generation_seconds + self.env_seconds
        return self.env_seconds / total if total > 0 else 0.0


def rollout(
    engine: RolloutEngine,
    envs: Sequence[ToolEnv],
    questions: Sequence[dict[str, Any]],
    group_size: int,
    sampling: SamplingConfig,
    progress: bool = False,
    episode_offset: int = 0,
) -> RolloutBatch:
    """Run ``len(questions)`` x ``group_size`` episodes to the end, all turns batched.

    Args:
        engine: a ``RolloutEngine`` (vLLM or transformers).
        envs: ``len(questions) * group_size`` environments, reused: environment ``i`` is reset on
            question ``i // group_size``.
        questions: records ``{"question", "answers", ...}`` passed to ``reset(options=...)``.
        group_size: samples per question (G of GRPO).
        sampling: temperature, top-p, the per-turn token cap and a seed. Each environment adds its
            own stop strings and caps a turn at its remaining budget (``env.max_new_tokens``). With
            a seed, turn ``t`` of episode ``i`` samples with ``episode_seed(seed, episode_offset + i,
            t)``, so no two episodes or turns share a random stream.
        progress: show a progress bar of finished episodes.
        episode_offset: the index of this call's first episode in the whole batch, when the batch
            is split into shards (trainers/rollout/workers.py); 0 for a batch in one piece.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    if len(envs) != len(questions) * group_size:
        raise ValueError(
            f"rollout needs len(questions) * group_size = {len(questions)} * {group_size} = "
            f"{len(questions) * group_size} environments, got {len(envs)}"
        )
    envs = [env.unwrapped for env in envs]
    tool_names = tuple(sorted({name for env in envs for name in env.tools}))
    passage_tools = any(getattr(tool, "returns_passages", False) for env in envs for tool in env.tools.values())
    batch = RolloutBatch(episodes=[], group_size=group_size, tool_names=tool_names, passage_tools=passage_tools)
    turn_finish_reasons: dict[str, int] = defaultdict(int)

    started = time.perf_counter()
    contexts = [env.reset(options=dict(questions[i // group_size]))[0].tolist() for i, env in enumerate(envs)]
    batch.env_seconds += time.perf_counter() - started

    finals: list[dict[str, Any] | None] = [None] * len(envs)
    sampled: list[list[SampledTurn]] = [[] for _ in envs]  # the engine's ids, before any env sees them
    rewards = [0.0] * len(envs)
    active = list(range(len(envs)))
    bar = _progress_bar(len(envs), progress)
    turn = 0
    while active:
        # One generate call per distinct stop set: a single call when all environments share tools.
        by_stop: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i in active:
            by_stop[tuple(dict.fromkeys((*sampling.stop, *envs[i].stop_strings)))].append(i)
        actions: dict[int, Any] = {}
        started = time.perf_counter()
        for stop, indices in by_stop.items():
            seeds = None
            if sampling.seed is not None:
                seeds = tuple(episode_seed(sampling.seed, episode_offset + i, turn) for i in indices)
            turn_sampling = replace(sampling, stop=stop, seeds=seeds)
            completions = engine.generate(
                [contexts[i] for i in indices], turn_sampling, [envs[i].max_new_tokens for i in indices]
            )
            batch.engine_calls += 1
            for i, completion in zip(indices, completions, strict=True):
                actions[i] = completion
                sampled[i].append(SampledTurn(tuple(int(t) for t in completion.token_ids), completion.finish_reason))
                batch.generated_tokens += len(completion.token_ids)
                turn_finish_reasons[completion.finish_reason] += 1
        batch.generation_seconds += time.perf_counter() - started

        started = time.perf_counter()
        results = step_batch(
            [envs[i] for i in active],
            [actions[i].token_ids for i in active],
            [actions[i].logprobs for i in active],
        )
        still_active = []
        for i, (observation, reward, terminated, truncated, info) in zip(active, results, strict=True):
            if terminated or truncated:
                finals[i], rewards[i] = info, reward
                bar.update(1)
            else:
                contexts[i] = observation.tolist()
                still_active.append(i)
        active = still_active
        batch.env_seconds += time.perf_counter() - started
        turn += 1
    bar.close()

    for i, info in enumerate(finals):
        episode = Episode.from_info(info, rewards[i], group=i // group_size)
        episode.sampled_turns = sampled[i]
        batch.episodes.append(episode)
    batch.turn_finish_reasons = dict(turn_finish_reasons)
    return batch


def episode_seed(seed: int, episode: int, turn: int) -> int:
    """The seed of one episode's one turn: a function of (step seed, episode, turn) alone, mixed by
    numpy's SeedSequence so that nearby triples get unrelated streams."""
    return int(np.random.SeedSequence([seed % 2**64, episode, turn]).generate_state(1)[0])


def episode_stats(batch: RolloutBatch) -> dict[str, float]:
    """Means over the batch's episodes, ready to log (the names ``agentenv plot`` draws).

    ``reward/mean``, ``reward/std``, ``reward/<term>`` for every reward component, ``exact_match``,
    ``episode/<tool>_calls`` for every tool of the environments, ``episode/turns``,
    ``episode/response_tokens`` (policy tokens), ``episode/tool_tokens``, ``episode/total_tokens``,
    ``finish/<reason>`` (fraction of episodes), ``episode/format_valid``, the search-behaviour
    metrics ``search/...`` where a tool returns passages (agentenv/search_behaviour.py), and the rollout's
    ``rollout/generated_tokens_per_s`` and ``rollout/env_time_share``.
    """
    episodes = batch.episodes
    if not episodes:
        raise ValueError("episode_stats needs at least one episode")

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    rewards = [e.reward for e in episodes]
    stats = {"reward/mean": mean(rewards), "reward/std": statistics.stdev(rewards) if len(rewards) > 1 else 0.0}
    for name in sorted({name for e in episodes for name in e.reward_components}):
        stats[f"reward/{name}"] = mean(e.reward_components.get(name, 0.0) for e in episodes)
    stats["exact_match"] = mean(e.exact_match for e in episodes)
    for tool in batch.tool_names:
        stats[f"episode/{tool}_calls"] = mean(e.tool_calls.get(tool, 0) for e in episodes)
    stats["episode/turns"] = mean(e.num_turns for e in episodes)
    stats["episode/response_tokens"] = mean(e.trajectory.count("policy") for e in episodes)
    stats["episode/tool_tokens"] = mean(e.trajectory.count("tool") for e in episodes)
    stats["episode/total_tokens"] = mean(len(e.trajectory) for e in episodes)
    for reason in FINISH_REASONS:
        stats[f"finish/{reason}"] = mean(e.finish_reason == reason for e in episodes)
    stats["episode/format_valid"] = mean(e.format_valid for e in episodes)
    if batch.passage_tools:
        stats.update(search_metrics([episode_search_record(e) for e in episodes]))
    stats["rollout/generated_tokens_per_s"] = batch.generated_tokens_per_s
    stats["rollout/env_time_share"] = batch.env_time_share
    return stats


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc="rollout", unit="episode")
