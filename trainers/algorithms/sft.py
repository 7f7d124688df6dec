"""SFT: cross-entropy on oracle episodes played through the real environment (the warm start).

A small model rarely emits a well-formed tool call by chance, so RL starts from a policy that has
seen a few correct episodes (the "cold start" of DeepSeek-R1, §2.3.1). An oracle episode is played
through the environment itself with text actions, so prompt, tool output and masks are the
environment's own and the loss sees exactly what RL will see. The environment says what the oracle
does (``ToolEnv.oracle_actions``: its ``oracle_calls`` in the environment's call syntax, then the
gold answer); the search environment, for instance, searches for the titles of the passages the
question was written from, calculates its expression, and answers.

With m_{s,t} = 1 on the tokens the policy generated and 0 on prompt, tool output and padding
(``Trajectory.policy_mask``), for a batch M of trajectories::

    L(θ) = − Σ_{s∈M} Σ_t m_{s,t} log π_θ(o_{s,t} | o_{s,<t}) / Σ_{s∈M} Σ_t m_{s,t}

the mean negative log-likelihood per policy token, at temperature 1 (the model's own distribution).
RFT (trainers/algorithms/rft.py) trains with the same loss on the episodes its verifier accepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agentenv.env import ToolEnv
from agentenv.trainers.algorithms.logprobs import micro_batches, pad_trajectories, token_logprobs
from agentenv.trainers.algorithms.registry import Algorithm, UpdateInputs, register
from agentenv.trainers.algorithms.update import optimize, trainable_parameters, trained_stats
from agentenv.trajectory import Episode, Trajectory


@dataclass(frozen=True)
class SFTConfig:
    """YAML section ``sft``: ``steps`` SFT updates before GRPO (or all of them with ``mode: sft``)."""

    steps: int = 0
    questions_per_step: int = 8
    lr: float = 1e-4
    micro_batch_size: int = 4

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"sft.steps must be ≥ 0, got {self.steps!r}")
        for name in ("questions_per_step", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"sft.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"sft.lr must be positive, got {self.lr!r}")


# --- oracle episodes -------------------------------------------------------------------------------


def oracle_episode(env: ToolEnv, question: Mapping[str, Any]) -> Episode:
    """Play the environment's oracle turns (``env.oracle_actions``) on ``question``."""
    env.reset(options=dict(question))
    info: dict[str, Any] = {}
    reward = 0.0
    for action in env.oracle_actions(question):
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    return Episode.from_info(info, reward)


# --- the loss and the update -------------------------------------------------------------------------


def sft_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trajectories: Sequence[Trajectory],
    pad_id: int,
    micro_batch_size: int = 4,
    max_grad_norm: float | None = 1.0,
    epochs: int = 1,
    minibatch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``epochs`` passes of L(θ) over ``trajectories`` in minibatches of ``minibatch_size`` (all of
    them by default), one optimizer step each; shuffled by ``generator`` when one is given, else in
    order. ``sft/nll`` is the mean minibatch loss."""
    batch = pad_trajectories([t.token_ids for t in trajectories], [t.policy_mask for t in trajectories], pad_id)
    model.train()
    tokens = {"first_epoch": 0.0}

    def micro_loss(epoch: int, minibatch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # Divide by the minibatch's token count so the micro-batch gradients sum to its mean's.
        minibatch_tokens = batch.targets_mask(minibatch, int(batch.lengths[minibatch].max())).sum().item()
        width = int(batch.lengths[rows].max())
        mask = batch.targets_mask(rows, width)
        logp, _ = token_logprobs(
            model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start, target_mask=mask,
        )
        if epoch == 0:
            tokens["first_epoch"] += mask.sum().item()
        return -(logp * mask).sum() / max(minibatch_tokens, 1.0)

    update = optimize(
        optimizer, trainable_parameters(model), len(batch),
        lambda minibatch: micro_batches(minibatch, batch.lengths, micro_batch_size), micro_loss,
        epochs=epochs, minibatch_size=minibatch_size, max_grad_norm=max_grad_norm, generator=generator,
        shuffle=generator is not None,
    )
    return {
        "sft/nll": update["loss"],
        "grad_norm": update["grad_norm"],
        "update/optimizer_steps": update["update/optimizer_steps"],
        **trained_stats(tokens["first_epoch"], len(batch), sum(len(t) for t in trajectories)),
    }


def policy_nll(
    model: torch.nn.Module, trajectories: Sequence[Trajectory], pad_id: int, micro_batch_size: int = 4
) -> float:
    """Mean negative log-likelihood per policy token (no gradient)."""
    batch = pad_trajectories([t.token_ids for t in trajectories], [t.policy_mask for t in trajectories], pad_id)
    was_training = model.training
    model.eval()
    summed = tokens = 0.0
    with torch.no_grad():
        for rows in micro_batches(torch.arange(len(batch)), batch.lengths, micro_batch_size):
            width = int(batch.lengths[rows].max())
            mask = batch.targets_mask(rows, width)
            logp, _ = token_logprobs(
                model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start, target_mask=mask,
            )
            summed -= (logp * mask).sum().item()
            tokens += mask.sum().item()
    model.train(was_training)
    return summed / max(tokens, 1.0)


def _update(inputs: UpdateInputs, config: SFTConfig) -> dict[str, float]:
    metrics = sft_update(inputs.model, inputs.optimizer, [e.trajectory for e in inputs.episodes], inputs.pad_id,
                         config.micro_batch_size, inputs.max_grad_norm)
    metrics["sft/oracle_reward"] = sum(e.reward for e in inputs.episodes) / len(inputs.episodes)
    return metrics


register(Algorithm(
    name="sft",
    config_class=SFTConfig,
    update=_update,
    rollout_shape=lambda config: (config.questions_per_step, 1),
    plays_oracle=True,
    constant_lr=lambda config: config.lr,
))
