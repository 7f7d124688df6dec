"""Objectives register themselves by their ``mode:`` name with what the training loop needs of them.

A new objective is one file that ends with ``register(Algorithm(...))`` and one line in this
package's ``__init__`` that imports it; its YAML section (named after it) is a field of
``TrainConfig``. The loop asks the registry, never the mode's name::

    algorithm = get("rloo")
    B, G = algorithm.rollout_shape(config.rloo)                 # what a step samples
    metrics = algorithm.update(inputs, config.rloo)             # one update on those episodes

as verl registers its advantage estimators and policy losses by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentenv.trajectory import Episode


@dataclass
class UpdateInputs:
    """Everything one update may read: the policy and its optimizer, the step's episodes (or the
    items of an offline source), and the run's settings."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    episodes: list[Episode]
    pad_id: int
    generator: torch.Generator
    reference_model: torch.nn.Module | None = None  # a frozen copy of the starting policy, if the objective asked for one
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # trained beside the policy (PPO's value head)
    max_grad_norm: float | None = 1.0
    temperature: float = 1.0  # the rollout's sampling temperature: log-probs are of that distribution
    behaviour_lag: int = 0  # updates between the weights that sampled the episodes and these
    token_credits: list[list[float]] | None = None  # per episode, a process credit per token (reward.process)
    max_response_tokens: int | None = None  # the most policy tokens one episode can hold in the environment
    items: list[Any] | None = None  # an offline source's items for this step (DPO's pairs from a file)
    tokenizer: Any = None
    run_dir: Path | None = None
    step: int = 0
    engine_lower_precision: bool = False  # the rollout engine computes in a lower precision than the trainer


def _never(section: Any, lora_enabled: bool) -> bool:
    return False


def _no_modules(section: Any, hidden_size: int) -> dict[str, tuple[torch.nn.Module, float | None]]:
    return {}


@dataclass(frozen=True)
class Algorithm:
    """What the loop needs to know of one objective.

    Attributes:
        name: the ``mode:`` value, and the name of the YAML section that holds ``config_class``.
        config_class: the section's frozen dataclass (with a ``validate()`` that raises ValueError).
        update: ``(inputs, section) -> metrics``: one update on the step's episodes.
        rollout_shape: ``section -> (questions, samples per question)`` that a step takes.
        plays_oracle: the step's episodes are the environment's oracle playing each question once
            (SFT), not samples of the rollout engine.
        reference_copy: ``(section, lora enabled) -> bool``: whether it needs a frozen copy of the
            policy it starts from (with LoRA, a reference is usually the adapter disabled instead).
        trained_modules: ``(section, hidden size) -> {name: (module, learning rate or None)}``:
            modules trained and checkpointed beside the policy (None: the optimizer's rate).
        constant_lr: ``section -> rate``: a rate of its own without the ``optim`` schedule (SFT's
            ``sft.lr``), or None for ``optim.lr`` under ``optim.schedule``.
        offline_items: ``(section, tokenizer) -> items or None``: a source it trains on instead of
            rollouts (DPO's ``dpo.pairs``), drawn ``offline_items_per_step(section)`` at a time;
            raises ValueError naming the key when the source cannot be used.
        step_files: files in the run folder it appends a record to every step (DPO's pairs), which
            a resumed run cuts back to the checkpoint's step.
    """

    name: str
    config_class: type
    update: Callable[[UpdateInputs, Any], dict[str, float]]
    rollout_shape: Callable[[Any], tuple[int, int]]
    plays_oracle: bool = False
    reference_copy: Callable[[Any, bool], bool] = _never
    trained_modules: Callable[[Any, int], dict[str, tuple[torch.nn.Module, float | None]]] = _no_modules
    constant_lr: Callable[[Any], float | None] = lambda section: None
    offline_items: Callable[[Any, Any], list[Any] | None] = lambda section, tokenizer: None
    offline_items_per_step: Callable[[Any], int] = lambda section: 0
    step_files: tuple[str, ...] = ()


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    if algorithm.name in ALGORITHMS and ALGORITHMS[algorithm.name] is not algorithm:
        raise ValueError(f"an algorithm named {algorithm.name!r} is registered already")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def get(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise KeyError(f"no algorithm named {name!r}; registered: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
