"""SFT warm start: cross-entropy on oracle trajectories built by stepping the real environment.

A small model rarely emits a well-formed tool call by chance, so GRPO starts from a policy that has
seen a few correct episodes (the "cold start" of DeepSeek-R1, §2.3.1). An oracle episode is played
through the environment itself with text actions, so prompt, tool output and masks are the
environment's own and the loss sees exactly what GRPO will see::

    search question:      <search>ENTITY</search>       → the real search result   (one per entity)
    arithmetic question:  <calculator>EXPR</calculator> → the real calculator result
    then:                 <answer>GOLD</answer>

The search queries are the names of the question's ``entities`` (passage ids, looked up in
``entity_names``) or, without them, the question text. The loss is the mean negative log-likelihood
of the policy tokens; prompt and tool tokens carry none, as in GRPO.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agentenv.env import ToolEnv
from agentenv.parsing import JsonParser, TagParser
from agentenv.trainers.grpo import clip_grad_norm, micro_batches, pad_trajectories, token_logprobs
from agentenv.trajectory import Trajectory


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


def call_text(env: ToolEnv, tool_name: str, argument: str) -> str:
    """The text of one call to ``tool_name`` in the environment's tool-call syntax."""
    tool = env.tools[tool_name]
    if isinstance(env.parser, TagParser):
        return f"<{tool_name}>{argument}</{tool_name}>"
    if isinstance(env.parser, JsonParser):
        arguments = {tool.main_argument: argument} if tool.main_argument else {}
        payload = json.dumps({"name": tool_name, "arguments": arguments})
        return f"<{env.parser.call_tag}>{payload}</{env.parser.call_tag}>"
    raise TypeError(f"no oracle call syntax for parser {type(env.parser).__name__}; expected TagParser or JsonParser")


def search_queries(question: Mapping[str, Any], entity_names: Mapping[str, str] | None = None) -> list[str]:
    """One query per entity of the question whose name is known, else the question text."""
    names = [entity_names[e] for e in question.get("entities", []) if entity_names and e in entity_names]
    return names or [question["question"]]


def oracle_actions(
    env: ToolEnv, question: Mapping[str, Any], entity_names: Mapping[str, str] | None = None
) -> list[str]:
    """The turns an oracle plays: searches for the entities, a calculator call, then the gold answer."""
    actions = []
    if "search" in env.tools:
        actions += [call_text(env, "search", query) for query in search_queries(question, entity_names)]
    if "calculator" in env.tools and question.get("expression"):
        actions.append(call_text(env, "calculator", question["expression"]))
    answer = question.get("answers", question.get("golden_answers"))
    answer = answer if isinstance(answer, str) else answer[0]
    # The answer must fit in max_turns: keep only the last max_turns − 1 tool turns.
    tool_turns = actions[-(env.max_turns - 1) :] if env.max_turns > 1 else []
    return [*tool_turns, f"<answer>{answer}</answer>"]


@dataclass
class OracleEpisode:
    trajectory: Trajectory
    reward: float
    finish_reason: str | None
    reward_components: dict[str, float]


def oracle_episode(
    env: ToolEnv, question: Mapping[str, Any], entity_names: Mapping[str, str] | None = None
) -> OracleEpisode:
    """Play the oracle's turns through ``env`` (reset on ``question``) and return the episode."""
    env.reset(options=dict(question))
    info: dict[str, Any] = {}
    reward = 0.0
    for action in oracle_actions(env, question, entity_names):
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    return OracleEpisode(
        trajectory=info["trajectory"],
        reward=float(reward),
        finish_reason=info.get("finish_reason"),
        reward_components=info.get("reward_components", {}),
    )


# --- the loss ------------------------------------------------------------------------------------


def _nll_terms(model, trajectories: Sequence[Trajectory], pad_id: int, micro_batch_size: int, grad: bool):
    """Yield (summed NLL of a micro-batch's policy tokens, its token count, total tokens)."""
    batch = pad_trajectories([t.token_ids for t in trajectories], [t.policy_mask for t in trajectories], pad_id)
    total_tokens = batch.policy_mask.sum().item()
    for rows in micro_batches(torch.arange(len(batch)), batch.lengths, micro_batch_size):
        width = int(batch.lengths[rows].max())
        with torch.set_grad_enabled(grad):
            mask = batch.targets_mask(rows, width)
            logp, _ = token_logprobs(
                model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.start,
                target_mask=mask,
            )
            yield -(logp * mask).sum(), mask.sum().item(), total_tokens


def policy_nll(
    model: torch.nn.Module, trajectories: Sequence[Trajectory], pad_id: int, micro_batch_size: int = 4
) -> float:
    """Mean negative log-likelihood per policy token (no gradient)."""
    was_training = model.training
    model.eval()
    summed = tokens = 0.0
    for nll, count, _ in _nll_terms(model, trajectories, pad_id, micro_batch_size, grad=False):
        summed += nll.item()
        tokens += count
    model.train(was_training)
    return summed / max(tokens, 1.0)


def sft_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trajectories: Sequence[Trajectory],
    pad_id: int,
    micro_batch_size: int = 4,
    max_grad_norm: float | None = 1.0,
) -> dict[str, float]:
    """One optimizer step on the mean NLL of the policy tokens of ``trajectories``."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    summed = tokens = 0.0
    for nll, _, total_tokens in _nll_terms(model, trajectories, pad_id, micro_batch_size, grad=True):
        # Divide by the batch's token count so the micro-batch gradients sum to the batch mean's.
        (nll / max(total_tokens, 1.0)).backward()
        summed += nll.item()
        tokens = total_tokens
    grad_norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"sft/nll": summed / max(tokens, 1.0), "grad_norm": grad_norm, "sft/policy_tokens": tokens}
