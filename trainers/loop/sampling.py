"""What one training step trains on: the rollout of its questions (in this process or on the Ray
workers, on time or prefetched one step ahead), the oracle's episodes for SFT, the learned and the
process rewards beside them, and the step's metrics with its time split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agentenv.trainers.loop.config import TrainConfig
from agentenv.trainers.loop.metrics import write_episodes, write_transcripts
from agentenv.trainers.rollout.engines import SamplingConfig
from agentenv.trainers.rollout.rollout import RolloutBatch, episode_stats, rollout
from agentenv.trainers.rollout.workers import RolloutWorkers


def rollout_sampling(config: TrainConfig, env: Any, step: int) -> SamplingConfig:
    """How step ``step`` samples: ``engine.temperature``/``top_p``, the env's turn budget, and one
    seed per step, so that a resumed run samples what an uninterrupted one would."""
    return SamplingConfig(
        temperature=config.engine.temperature,
        top_p=config.engine.top_p,
        max_new_tokens=env.max_turn_tokens,
        seed=config.seed * 1_000_003 + step,
    )


def prefetch_ahead(
    config: TrainConfig, engine: RolloutWorkers, env: Any, step: int, group_size: int,
    step_questions: list[dict[str, Any]], upcoming: list[dict[str, Any]] | None,
) -> None:
    """``rollout.off_policy_steps: 1``: this step's rollout unless the step before started it, then
    the next step's (``upcoming``), which the workers sample while this process trains on this
    step's batch; its weight sync queues behind it, so that batch is one update old when it is
    trained on. A run's first step, and the first after a resume, sample on-policy: the checkpoint
    does not hold the batch that was in flight."""
    engine.prefetch(step_questions, group_size, rollout_sampling(config, env, step), behaviour_lag=0)
    if upcoming is not None:
        engine.prefetch(upcoming, group_size, rollout_sampling(config, env, step + 1), behaviour_lag=1)


def sample(
    step: int, config: TrainConfig, policy: Any, engine: Any, envs: list[Any],
    step_questions: list[dict[str, Any]], samples_per_question: int,
) -> RolloutBatch:
    """The step's rollout: every question ``samples_per_question`` times at ``engine.temperature``
    (collected, when ``prefetch_ahead`` started it), with the learned reward added."""
    sampling = rollout_sampling(config, envs[0], step)
    policy.model.eval()
    if isinstance(engine, RolloutWorkers):
        batch = engine.rollout(step_questions, samples_per_question, sampling)
    else:
        count = len(step_questions) * samples_per_question
        batch = rollout(engine, envs[:count], step_questions, samples_per_question, sampling)
    if policy.learned_reward is not None:
        policy.learned_reward.apply(batch.episodes)
    return batch


def oracle_episodes(env: Any, step_questions: list[dict[str, Any]]) -> list[Any]:
    """The environment's oracle playing each question once (the SFT warm start's episodes)."""
    from agentenv.trainers.algorithms.sft import oracle_episode

    return [oracle_episode(env, question) for question in step_questions]


def process_credits(episodes: list[Any], weights: dict[str, float]) -> tuple[list[list[float]], dict[str, float]] | None:
    """``reward.process`` at work: each episode's per-token credit (its turn's c_{i,k}), and the
    per-turn mean of every term (``process/<term>``); None without process terms."""
    if not weights:
        return None
    from agentenv.process_rewards import Gold, token_credits, turn_terms, weighted_credits

    per_token, per_turn = [], []
    for episode in episodes:
        terms = turn_terms(episode.turns, Gold.of(episode.question), list(weights))
        per_token.append(token_credits(episode.trajectory, weighted_credits(terms, weights)))
        per_turn.extend(terms)
    means = {f"process/{name}": sum(t[name] for t in per_turn) / max(len(per_turn), 1) for name in weights}
    return per_token, means


def step_metrics(
    step: int, config: TrainConfig, policy: Any, engine: Any, run_dir: Path, batch: RolloutBatch | None,
    update: dict[str, Any], times: dict[str, float],
) -> dict[str, Any]:
    """The step's metrics: the batch's episode statistics (none for an offline step), the update's,
    the time split and throughputs; and its transcripts and episode lines written."""
    metrics = dict(update)
    if batch is not None:
        metrics = {**episode_stats(batch), **metrics}
        metrics["time/generation_s"] = batch.generation_seconds
        metrics["time/env_s"] = batch.env_seconds
        metrics["throughput/generated_tokens_per_s"] = batch.generated_tokens_per_s
        write_transcripts(run_dir, step, batch.episodes, policy.tokenizer, config.logging.transcripts_per_step)
        if config.logging.episodes:
            write_episodes(run_dir, step, batch.episodes)
    if isinstance(engine, RolloutWorkers):
        metrics["workers/restarts"] = float(engine.restarts)  # since the run (or its resume) started
        metrics["rollout/behaviour_lag"] = float(batch.behaviour_lag) if batch is not None else 0.0
    metrics.update({f"time/{name}_s": seconds for name, seconds in times.items()})
    trained = update.get("update/trained_tokens", 0.0)
    metrics["throughput/train_tokens_per_s"] = trained / max(times.get("train", 0.0), 1e-9)
    return metrics


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started
