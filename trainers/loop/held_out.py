"""The held-out curve: the ``eval`` section at work during training."""

from __future__ import annotations

import time
from typing import Any

import torch

from agentenv.trainers.loop.config import ConfigError, TrainConfig
from agentenv.trainers.rollout.engines import SamplingConfig


class HeldOutCurve:
    """The ``eval`` section at work: the current policy, greedy, on a fixed slice of held-out
    questions in the training environment, through the rollout engine; returns ``dev/*`` metrics."""

    def __init__(self, config: TrainConfig, factory: Any, tokenizer: Any, learned_reward: Any = None):
        """``factory``: the run's ``EnvFactory``, whose tools the held-out environments share."""
        from agentenv.envs import load_question_set

        self.questions = load_question_set(config.eval.questions)[: config.eval.limit]
        if not self.questions:
            raise ConfigError(f"eval.questions: {config.eval.questions!r} holds no questions")
        count = min(config.eval.batch_size, len(self.questions))
        self.envs = factory.make(count, questions=self.questions)
        self.tokenizer = tokenizer
        self.seed = config.seed
        self.learned_reward = learned_reward  # scores the held-out episodes too: dev/reward_model_score

    def evaluate(self, engine: Any, model: torch.nn.Module, sync: bool = False) -> dict[str, float]:
        """``sync``: push the weights first (SFT steps do not sync the engine; GRPO steps do)."""
        from agentenv.trainers.evaluation.evaluate import evaluate_envs, summarise

        started = time.perf_counter()
        if sync:
            engine.update_weights(model)
        was_training = model.training
        model.eval()
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=self.envs[0].max_turn_tokens, seed=self.seed)
        score = self.learned_reward.score if self.learned_reward is not None else None
        records = evaluate_envs("dev", engine, self.envs, self.questions, 1, sampling, self.tokenizer, progress=False,
                                score_trajectories=score)
        model.train(was_training)
        summary = summarise(records, tools=list(self.envs[0].tools))
        metrics = {f"dev/{key}": summary[key] for key in
                   ("exact_match", "f1", "valid_format", "turns", "policy_tokens")}
        metrics.update({f"dev/tools/{name}_calls": calls for name, calls in summary["tool_calls"].items()})
        for group in ("exact_match_by_kind", "exact_match_by_class"):
            for name, entry in summary[group].items():
                metrics[f"dev/exact_match/{name}"] = entry["exact_match"]
        if score is not None:
            metrics["dev/reward_model_score"] = summary["reward_model_score"]
        metrics["time/dev_eval_s"] = time.perf_counter() - started
        return metrics
