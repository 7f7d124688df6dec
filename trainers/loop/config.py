"""The training config: frozen dataclasses with working defaults, read from YAML, ``--set`` on top.

    config = load_config("configs/cpu-smollm2.yaml", ["grpo.group_size=8", "optim.lr=1e-6"])

Every YAML section is one dataclass (``grpo`` → ``GRPOConfig``, ``reward`` →
``agentenv.rewards.RewardConfig``, ...). ``--set a.b=c`` values are parsed as YAML scalars
(``true``, ``3``, ``null``, ``[a, b]``). Mistakes fail at load time with the key, the bad value and
what was expected; an unknown key suggests the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentenv import yaml_files
from agentenv.process_rewards import check_weights
from agentenv.rewards import RewardConfig
from agentenv.trainers.algorithms import ALGORITHMS
from agentenv.trainers.algorithms.dpo import DPO_LOSSES, DPOConfig
from agentenv.trainers.algorithms.grpo import LOSS_AGGREGATIONS, TRUNCATED_IS, GRPOConfig
from agentenv.trainers.algorithms.logprobs import REFERENCES
from agentenv.trainers.algorithms.ppo import PPOConfig
from agentenv.trainers.algorithms.rft import KEEP_RULES, RFTConfig
from agentenv.trainers.algorithms.rloo import RLOOConfig
from agentenv.trainers.algorithms.sft import SFTConfig
from agentenv.trainers.loop.errors import MAX_QUOTED_CHARS, ConfigError, brief
from agentenv.trainers.loop.health import HealthConfig
from agentenv.trainers.rollout.engines import ENGINE_KINDS


@dataclass(frozen=True)
class ModelConfig:
    # "embedded" (SmolLM2-135M-Instruct), a hub id or a local folder; "tiny-random" builds a
    # random-initialised model with the embedded tokenizer (tests, smoke runs).
    name: str = "embedded"
    dtype: str = "auto"  # auto: float32 on CPU (bf16 is slower on these CPUs), bfloat16 on GPU
    # The update's forward passes under torch.autocast in this precision (none | bfloat16 | float16;
    # "none", as YAML reads "off" as false): matmuls in the lower precision, weights, gradients and
    # optimizer state in model.dtype (bench/update.py measures its speed and the loss it changes).
    autocast: str = "none"
    gradient_checkpointing: bool = False
    tiny_hidden_size: int = 64  # only for name: tiny-random
    tiny_layers: int = 2
    # A training run (its newest checkpoint) or one checkpoint whose weights (adapter or full model)
    # this run starts from; the optimizer and the step count start fresh. How GRPO starts from an
    # SFT-only run, so both rows of an experiment share one warm start.
    init_from: str | None = None
    # continue: where the warm start trained on the same questions in the same seeded order, this
    # run's questions follow on where it stopped, so RL is not spent on the very questions SFT
    # imitated (an order restarted at 0 hands them back, every one). restart: the order from 0.
    init_from_order: str = "continue"


@dataclass(frozen=True)
class EngineConfig:
    kind: str = "auto"  # auto (vLLM where installed, else transformers) | vllm | transformers
    temperature: float = 1.0
    top_p: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to make_engine
    # What the vLLM engine computes in: "model" (model.dtype, as the trainer) or a lower precision
    # beside float32 training (bfloat16), which turns grpo.truncated_is "auto" on. The transformers
    # engine generates with the trained model itself.
    dtype: str = "model"
    # Rollout workers on Ray (trainers/rollout/workers.py, `pip install 'agentenv[ray]'`): each holds an
    # engine of `kind` and its own environments; 0 rolls out in the training process.
    workers: int = 0
    worker_num_cpus: float = 1.0  # Ray resources of one worker (its placement-group bundle)
    worker_num_gpus: float = 0.0
    worker_placement: str = "PACK"  # placement-group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    worker_restarts: int = 3  # a worker that dies is restarted this many times per call, then the step fails
    # null: a Ray already initialised in this process, else a local one; "auto": the cluster of
    # `ray start`; or ray://host:10001.
    ray_address: str | None = None
    # How weights reach the workers after each update: object-store (ray.put once, every worker
    # reads it) | nccl (a broadcast trainer -> engines; GPU workers only, untested without a GPU).
    weight_sync: str = "object-store"


@dataclass(frozen=True)
class RolloutConfig:
    # 1: the rollout workers sample step t+1's batch while the trainer updates on step t's (the
    # overlap of verl's and AReaL's asynchronous modes), and the update's ratio is taken against the
    # engine's logprobs (trainers/algorithms/grpo.py's docstring). mode: grpo with engine.workers > 0 only.
    # 0: every step samples with the weights it then updates (on-policy).
    off_policy_steps: int = 0
    # > 0: up to this share of each step's rolled-out questions are questions whose last group had
    # no right answer, oldest first, each tried at most retry_unsolved_times times more: further
    # draws where a group of G rarely holds a success (two-hop questions, mostly). The retried
    # questions come first in the step, so dynamic sampling (grpo.oversample) trains on them first
    # when their group turns out informative.
    retry_unsolved_share: float = 0.0
    retry_unsolved_times: int = 1


@dataclass(frozen=True)
class EnvConfig:
    # A registered Gymnasium id: agentenv/SearchQA-v0, agentenv/Calculator-v0, or your own.
    id: str = "agentenv/Calculator-v0"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make


@dataclass(frozen=True)
class LoRAConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.0  # the cosine schedule's floor, as a fraction of lr


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True
    progress: bool = True
    transcripts_per_step: int = 2
    # A line per training episode in episodes.jsonl (reward, class, tool calls, length; no text):
    # what `agentenv diagnose` reads. ~250 bytes an episode.
    episodes: bool = True
    # Weights & Biases beside TensorBoard (`pip install agentenv[wandb]`): the same metric names,
    # the run's config, files under <run>/wandb/; offline when no API key is set.
    wandb: bool = False
    wandb_project: str = "agentenv"


@dataclass(frozen=True)
class EvalConfig:
    """The held-out curve: every ``every`` steps, and at step 0, the current policy answers the
    first ``limit`` questions of ``questions`` greedily with the rollout engine in the training
    environment, and ``dev/*`` metrics (EM, F1, tool calls, EM per kind) are logged with the step."""

    every: int = 0  # steps; 0: no held-out curve
    questions: str = "geo:dev"  # never the test split: tune on dev, report on test
    limit: int | None = 100
    batch_size: int = 32  # episodes generated together


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 50  # steps; the last step is always saved
    keep_last: int = 2


@dataclass(frozen=True)
class TrainConfig:
    # A registered objective (trainers/algorithms/): grpo | rloo | rft | dpo | ppo, each after
    # sft.steps of SFT, if any; or sft alone. Its settings are the section of the same name.
    mode: str = "grpo"
    max_steps: int = 100  # steps of the mode after SFT: GRPO, DPO, PPO steps, RFT rounds (SFT steps with mode: sft)
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


# Keys whose value must be one of a few strings.
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": tuple(ALGORITHMS),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.autocast": ("none", "bfloat16", "float16"),
    "model.init_from_order": ("continue", "restart"),
    "engine.kind": ENGINE_KINDS,
    "engine.dtype": ("model", "float32", "bfloat16", "float16"),
    "grpo.truncated_is": TRUNCATED_IS,
    "engine.worker_placement": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "engine.weight_sync": ("object-store", "nccl"),
    "rollout.off_policy_steps": (0, 1),
    "grpo.loss_agg": LOSS_AGGREGATIONS,
    "rft.keep": KEEP_RULES,
    "dpo.loss": DPO_LOSSES,
    "grpo.reference": REFERENCES,
    "dpo.reference": REFERENCES,
    "ppo.reference": REFERENCES,
    "optim.schedule": ("constant", "cosine"),
    "reward.answer": ("research", "f1", "exact_match"),
    "reward.model_normalize": ("none", "group", "batch"),
}


@dataclass(frozen=True)
class Range:
    """The numbers a key allows; an open end leaves its bound out."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high == math.inf:
            return f"above {low}" if self.low_open else f"at least {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


# The numbers a key allows (a list's range holds for each item; null, where allowed, is not
# checked). Every number of the config, listed or not, must be finite: NaN passes every
# comparison a range makes, and one NaN learning rate or temperature turns the weights to NaN.
RANGES: dict[str, Range] = {
    "max_steps": Range(0),
    "engine.temperature": Range(1e-6),  # logits are divided by it
    "engine.top_p": Range(0, 1, low_open=True),
    "engine.workers": Range(0),
    "engine.worker_num_cpus": Range(0),
    "engine.worker_num_gpus": Range(0),
    "engine.worker_restarts": Range(0),
    "lora.r": Range(1),
    "lora.dropout": Range(0, 1, high_open=True),
    "optim.lr": Range(0),
    "optim.weight_decay": Range(0),
    "optim.betas": Range(0, 1, high_open=True),  # Adam's running averages diverge at 1 and above
    # A negative norm would flip the gradient's sign when clipping; 0 (or null) does not clip.
    "optim.max_grad_norm": Range(0),
    "optim.warmup_steps": Range(0),
    "optim.min_lr_ratio": Range(0, 1),
    "logging.transcripts_per_step": Range(0),
    "eval.every": Range(0),
    "eval.batch_size": Range(1),
    "rollout.retry_unsolved_share": Range(0, 1),
    "rollout.retry_unsolved_times": Range(1),
    "checkpoint.every": Range(1),
    "checkpoint.keep_last": Range(1),
    "grpo.truncated_is_cap": Range(1),
    "health.logprob_gap_mean_limit": Range(0),
    "health.logprob_gap_max_limit": Range(0),
    "health.kl_every": Range(0),
    "health.kl_episodes": Range(1),
    "health.window": Range(1),
    "health.entropy_drop": Range(0, 1),
    "health.format_valid_drop": Range(0, 1),
    "health.searches_floor": Range(0),
    "health.searches_cap_share": Range(0, 1),
    "health.length_limit_share": Range(0, 1),
    "health.logprob_gap_growth": Range(1),
    "health.equal_groups_share": Range(0, 1),
}


# What a resumed run may change (``--resume``): how it is logged, checked and checkpointed, and how
# far it goes. Any other key changes what the next step computes.
MAY_CHANGE_ON_RESUME = ("logging.", "checkpoint.", "health.", "max_steps")


def training_changes(old: TrainConfig, new: TrainConfig) -> list[str]:
    """``"key: old -> new"`` for each key, sorted, whose change alters what training computes: every
    key but ``logging.*``, ``checkpoint.*``, ``max_steps`` (and ``max_steps`` too when a mode
    other than SFT runs a cosine schedule, whose length it is) and the sections of objectives the
    run does not use (an SFT run reads no ``grpo.*``, nor ``optim.lr``: ``sft.lr`` is its rate; every
    mode may warm-start with ``sft.*``)."""
    before, after = _flat(to_dict(old)), _flat(to_dict(new))
    unused = tuple(f"{name}." for name in ALGORITHMS if name not in (old.mode, new.mode, "sft"))
    if old.mode == new.mode == "sft":
        unused += ("optim.lr",)
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key, _UNSET) == after.get(key, _UNSET) or key.startswith(unused):
            continue
        change = f"{key}: {_shown(before.get(key, _UNSET))} -> {_shown(after.get(key, _UNSET))}"
        if key == "max_steps" and new.mode != "sft" and new.optim.schedule == "cosine":
            changes.append(f"{change} (the cosine schedule's length)")
        elif not key.startswith(MAY_CHANGE_ON_RESUME):
            changes.append(change)
    return changes


_UNSET = object()


def _shown(value: Any) -> str:
    return "(unset)" if value is _UNSET else brief(value)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections and kwargs mappings as ``a.b.c`` keys (an empty mapping has none)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read ``path`` (YAML; None: the defaults), apply ``key=value`` overrides, validate."""
    return config_from_dict(read_config_data(path, overrides))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated config from plain data (``to_dict``'s output: how a Ray worker receives it)."""
    config = _build(TrainConfig, data, prefix="")
    validate(config)
    return config


def read_config_data(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML mapping at ``path`` (None: empty) with ``key=value`` overrides applied, unchecked;
    every typed config (training, reward model) builds itself from this."""
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(Path(path).read_text(), str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override)
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b=c`` in the nested dict ``data``; ``c`` is parsed as a YAML scalar."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. grpo.group_size=8), got {brief(override)}")
    value = load_yaml(raw, f"--set {key.strip()[:MAX_QUOTED_CHARS]}") if raw.strip() else None
    parts = key.strip().split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {key}: {where} is a value ({brief(child)}), not a section")
        node = child
    node[parts[-1]] = value


def load_yaml(text: str, source: str) -> Any:
    """``agentenv.yaml_files.load_yaml`` with its refusal as a one-line ConfigError."""
    try:
        return yaml_files.load_yaml(text, source)
    except yaml_files.UnreadableYAML as error:
        raise ConfigError(str(error)) from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(value):
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def validate(config: TrainConfig) -> None:
    """Check choices, numbers and each section's own rules; raise ``ConfigError`` naming the key."""
    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ConfigError(f"{key}: {brief(value)} is not allowed; choose one of {list(allowed)}")
    check_numbers(config, RANGES)
    if config.engine.workers > 0 and importlib.util.find_spec("ray") is None:
        raise ConfigError(
            f"engine.workers: {config.engine.workers} needs Ray, which is not installed: "
            "pip install 'agentenv[ray]' (or set engine.workers: 0 to roll out in the training process)"
        )
    if config.engine.weight_sync == "nccl" and (config.engine.workers == 0 or config.engine.worker_num_gpus == 0):
        raise ConfigError(
            "engine.weight_sync: 'nccl' broadcasts to GPU workers; it needs engine.workers > 0 and "
            "engine.worker_num_gpus > 0 (use 'object-store' otherwise)"
        )
    if config.rollout.off_policy_steps:
        needs = [why for why, missing in (
            (f"mode: grpo (got {config.mode!r})", config.mode != "grpo"),
            ("engine.workers > 0: the workers sample while this process trains", config.engine.workers == 0),
            (f"engine.top_p: 1 (got {config.engine.top_p}): ρ's π_behav must be the untruncated π", config.engine.top_p < 1),
        ) if missing]
        if needs:
            raise ConfigError(f"rollout.off_policy_steps: 1 needs {'; '.join(needs)}")
        if config.rollout.retry_unsolved_share:
            raise ConfigError(
                "rollout.retry_unsolved_share needs rollout.off_policy_steps: 0: a prefetched step's questions are "
                "drawn before the step before it shows which questions went unsolved"
            )
    if config.eval.limit is not None and config.eval.limit < 1:
        raise ConfigError(f"eval.limit: {config.eval.limit!r} is too small; it must be at least 1, or null for all")
    for section in (getattr(config, name) for name in ALGORITHMS):
        try:
            section.validate()
        except ValueError as error:
            raise ConfigError(str(error)) from error
    for mode, section in (("dpo", config.dpo), ("ppo", config.ppo)):
        if config.mode == mode and section.reference == "base" and not config.lora.enabled:
            raise ConfigError(
                f"{mode}.reference: 'base' is the LoRA policy with its adapter disabled, and lora.enabled is "
                "false; use 'start' (a frozen copy of the starting policy)"
            )
    try:
        config.reward.build()
        check_weights(config.reward.process)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if config.reward.model is not None:
        from agentenv.trainers.algorithms.reward_model import (
            reward_model_folder,  # it imports this module
        )

        if reward_model_folder(config.reward.model) is None:
            raise ConfigError(
                f"reward.model: {brief(config.reward.model)} holds no reward_model.json (train one with `agentenv rm train`)"
            )


def check_numbers(config: Any, ranges: dict[str, Range], prefix: str = "") -> None:
    """Every number of the dataclass ``config`` (its sections, lists and number mappings too) is
    finite, and each in ``ranges`` (keys without ``prefix``) within its range; else a ConfigError
    naming the key and the range."""
    hints = typing.get_type_hints(type(config))
    for field_ in dataclasses.fields(config):
        key, value = f"{prefix}{field_.name}", getattr(config, field_.name)
        if dataclasses.is_dataclass(value):
            check_numbers(value, ranges, f"{key}.")
        elif isinstance(value, tuple | list):
            for i, item in enumerate(value):
                _check_number(f"{key}[{i}]", item, ranges.get(key))
        elif isinstance(value, dict):
            # Free-form mappings (env.kwargs) belong to whatever reads them; only typed numbers are ours.
            if typing.get_args(hints[field_.name])[1:] == (float,):
                for name, item in value.items():
                    _check_number(f"{key}.{name}", item, None)
        else:
            _check_number(key, value, ranges.get(key))


def _check_number(key: str, value: Any, bounds: Range | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not math.isfinite(value):
        allowed = f"; it must be {bounds}" if bounds is not None else ""
        raise ConfigError(f"{key}: {value!r} is not a finite number{allowed}")
    if bounds is not None and value not in bounds:
        side = "too large" if value >= bounds.high else "too small"
        raise ConfigError(f"{key}: {value!r} is {side}; it must be {bounds}")


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _build(cls: type, data: Any, prefix: str):
    """A ``cls`` instance from a mapping, checking keys and value types."""
    where = prefix.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {brief(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            suggestion = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{suggestion[0]}'?" if suggestion else ""
            unknown = f"{prefix}{key}"[:MAX_QUOTED_CHARS]
            raise ConfigError(f"unknown key '{unknown}'{hint} (keys of {where}: {', '.join(fields)})")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value if value is not None else {}, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and key in CHOICES:  # YAML 1.1 reads off/on/no/yes as booleans
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, CHOICES[key]))}, got {brief(value)} "
                              "(YAML reads off, on, no and yes as booleans)")
    elif origin is tuple:
        if isinstance(value, list | tuple):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        raise TypeError(f"config field {key} has an unsupported type {annotation!r}")
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {brief(value)}")


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        return "a list"
    if typing.get_origin(annotation) is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, str(annotation)
    )
