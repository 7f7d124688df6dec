"""Building what a run trains from its config: the environments (one ``EnvSpec``), the policy and
what its objective trains beside it, the one optimizer, the rollout engine, the question order."""

from __future__ import annotations

import copy
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentenv.spec import EnvSpec
from agentenv.trainers import algorithms
from agentenv.trainers.loop.checkpoint import latest_checkpoint, load_model_weights, read_state
from agentenv.trainers.loop.config import ConfigError, TrainConfig, load_config
from agentenv.trainers.rollout.engines import choose_engine, make_engine

TINY_RANDOM = "tiny-random"


def section(config: TrainConfig, name: str) -> Any:
    """The YAML section of the objective ``name`` (``config.grpo`` for ``grpo``)."""
    return getattr(config, name)


# --- environments ------------------------------------------------------------------------------------


def env_spec(config: TrainConfig) -> EnvSpec:
    """The run's environment: ``env.id`` with ``env.kwargs`` and the ``reward`` section."""
    return EnvSpec(config.env.id, dict(config.env.kwargs), config.reward)


def make_envs(config: TrainConfig, tokenizer: Any, count: int, questions: str | None = None) -> list[Any]:
    """``count`` environments of the run's spec sharing one tokenizer, question list and set of
    tools; ``questions`` replaces ``env.kwargs.questions`` (the held-out curve's dev questions)."""
    spec = env_spec(config)
    if questions is not None:
        spec = spec.updated(questions=questions)
    envs = env_factory(config, spec, tokenizer).make(count)
    require_questions(config, envs[0])
    return envs


def require_questions(config: TrainConfig, env: Any) -> None:
    """A ConfigError when the environment has no questions to train on."""
    if not env.questions:
        raise ConfigError(f"env {config.env.id} has no training questions (set env.kwargs.questions)")


def env_factory(config: TrainConfig, spec: EnvSpec, tokenizer: Any) -> Any:
    """``spec.factory(tokenizer)``; a keyword the environment refuses is a ConfigError naming the key."""
    from agentenv.envs import EnvArgumentError, UnknownEnvironment

    try:
        return spec.factory(tokenizer)
    except UnknownEnvironment as error:
        raise ConfigError(f"env.id: {error}") from None
    except EnvArgumentError as error:
        if error.key is None:
            raise ConfigError(f"env.kwargs: {error}") from None
        if error.key in config.env.kwargs:
            raise ConfigError(f"env.kwargs.{error.key}: {error}") from None
        raise ConfigError(
            f"env.id: {error} (the trainer passes tokenizer, reward and env.kwargs to every environment)"
        ) from None


# --- the policy --------------------------------------------------------------------------------------


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 on CPU (bf16 matmuls are slower on these CPUs)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class Policy:
    model: torch.nn.Module  # the trained model (a peft model with LoRA)
    tokenizer: Any
    reference_model: torch.nn.Module | None  # a frozen copy of the starting policy, if the objective needs one
    model_path: str | None  # where the engine loads the base weights from (None: tiny-random)
    dtype: torch.dtype
    # What the objective trains beside the model (PPO's value head), with each one's learning rate.
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    module_lrs: dict[str, float | None] = field(default_factory=dict)
    learned_reward: Any = None  # reward.model: a LearnedReward added to every rollout's rewards


def load_policy_tokenizer(config: TrainConfig):
    from agentenv.models import load_tokenizer

    try:
        return load_tokenizer("embedded" if config.model.name == TINY_RANDOM else config.model.name)
    except (OSError, ValueError) as error:
        raise ConfigError(_model_name_problem(config.model.name, error)) from None


def _model_name_problem(name: str, error: Exception) -> str:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"model.name: cannot load {name!r} ({detail}); use 'embedded', 'tiny-random', a model folder, "
        "or a hub id that can be downloaded or is in the Hugging Face cache"
    )


def load_policy(config: TrainConfig, tokenizer: Any) -> Policy:
    """The model (LoRA-wrapped or not), a frozen reference copy if the objective needs one, and
    the modules it trains beside the model."""
    from agentenv.models import resolve_model, tiny_random_model

    dtype = resolve_dtype(config.model.dtype)
    if config.model.name == TINY_RANDOM:
        model = tiny_random_model(
            tokenizer, hidden_size=config.model.tiny_hidden_size, layers=config.model.tiny_layers, seed=config.seed
        ).to(dtype)
        model_path = None
    else:
        from transformers import AutoModelForCausalLM

        model_path = resolve_model(config.model.name)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        except (OSError, ValueError) as error:
            raise ConfigError(_model_name_problem(config.model.name, error)) from None
    if config.model.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works under LoRA.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=list(config.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if config.model.init_from:
        model_checkpoint = resolve_checkpoint(config.model.init_from)
        load_model_weights(model_checkpoint, model)
        print(f"agentenv train: weights from {model_checkpoint}", file=sys.stderr)
    algorithm = algorithms.get(config.mode)
    reference = None
    if algorithm.reference_copy(section(config, config.mode), config.lora.enabled):
        # The reference is the starting policy: after init_from, the warm start's weights.
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    trained = algorithm.trained_modules(section(config, config.mode), model.config.hidden_size)
    modules = {name: module.to(dtype) for name, (module, _) in trained.items()}
    if torch.cuda.is_available():
        model = model.cuda()
        reference = reference.cuda() if reference is not None else None
        modules = {name: module.cuda() for name, module in modules.items()}
    return Policy(model, tokenizer, reference, model_path, dtype, modules, {name: lr for name, (_, lr) in trained.items()},
                  load_learned_reward(config, tokenizer))


def load_learned_reward(config: TrainConfig, tokenizer: Any) -> Any:
    """``reward.model``'s reward model, or None; one that does not fit the policy is a ConfigError."""
    if config.reward.model is None:
        return None
    from agentenv.trainers.algorithms.learned_reward import LearnedReward

    try:
        return LearnedReward(config.reward.model, config.reward.model_weight, config.reward.model_normalize,
                             tokenizer=tokenizer)
    except (OSError, ValueError) as error:
        raise ConfigError(f"reward.model: {error}") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder's newest checkpoint (``model.init_from``)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise ConfigError(f"model.init_from: {path} is neither a checkpoint nor a run folder with a complete checkpoint")
    return checkpoint


# --- the optimizer, the engine, the data order ------------------------------------------------------------


def build_optimizer(policy: Policy, config: TrainConfig, phase: str) -> torch.optim.Optimizer:
    """AdamW over the policy's trainable parameters at the phase's base rate (``optim.lr``, or the
    objective's own constant rate: ``sft.lr``), and over the modules the objective trains beside
    it, each at its own rate when it has one (PPO's ``ppo.value_lr``). The loop scales every
    group's base rate by the schedule (``update.set_learning_rate``)."""
    optim = config.optim
    lr = algorithms.get(phase).constant_lr(section(config, phase)) or optim.lr
    groups = [{"params": [p for p in policy.model.parameters() if p.requires_grad], "base_lr": lr}]
    if phase == config.mode:
        for name, module in policy.modules.items():
            rate = policy.module_lrs.get(name) or lr
            groups.append({"params": list(module.parameters()), "lr": rate, "base_lr": rate})
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)


def lr_schedule(config: TrainConfig, phase: str, step_in_phase: int, phase_steps: int) -> float:
    """The multiplier on the base rates at the phase's step ``step_in_phase`` (0 first): 1 for an
    objective with a constant rate of its own, else ``optim``'s warm-up and schedule."""
    from agentenv.trainers.algorithms.update import lr_multiplier

    if algorithms.get(phase).constant_lr(section(config, phase)) is not None:
        return 1.0
    optim = config.optim
    return lr_multiplier(step_in_phase, optim.warmup_steps, phase_steps, optim.schedule, optim.min_lr_ratio)


def build_engine(config: TrainConfig, policy: Policy, env: Any):
    """The in-process rollout engine: transformers generates with the training model itself;
    vLLM loads its own copy of the base weights and receives ours through ``update_weights``."""
    kind, why = choose_engine(config.engine.kind, policy.model_path)
    print(f"agentenv train: rollout engine {kind} ({why})", file=sys.stderr)
    kwargs = dict(config.engine.kwargs) if kind == "vllm" else {}
    if kind == "vllm":
        if policy.model_path is None:
            raise ConfigError("engine.kind: 'vllm' needs a model on disk; model.name 'tiny-random' has none")
        kwargs.setdefault("seed", config.seed)
        kwargs.setdefault("max_model_len", env.max_total_tokens)
        if config.lora.enabled and torch.cuda.is_available():
            # On a GPU vLLM serves the adapter itself; on CPU its LoRA kernels are slow, and the
            # engine receives the merged weights instead (VLLMEngine.update_weights).
            kwargs.setdefault("lora_rank", config.lora.r)
    return make_engine(
        kind, policy.model_path, dtype=engine_dtype(config, policy) if kind == "vllm" else policy.dtype,
        model=policy.model, tokenizer=policy.tokenizer, **kwargs,
    )


def engine_dtype(config: TrainConfig, policy: Policy) -> torch.dtype:
    """What the vLLM engine computes in: ``engine.dtype``, or the trainer's own (``model``)."""
    return policy.dtype if config.engine.dtype == "model" else resolve_dtype(config.engine.dtype)


def engine_lower_precision(config: TrainConfig, policy: Policy) -> bool:
    """The engine samples in fewer mantissa bits than the trainer computes in (bf16 beside fp32):
    where ``grpo.truncated_is: auto`` reweights the loss."""
    return torch.finfo(engine_dtype(config, policy)).eps > torch.finfo(policy.dtype).eps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class QuestionOrder:
    """Question indices in a seeded order, reshuffled every epoch; ``cursor`` is all its state.

    The order of epoch e is ``permutation(n)`` under the seed (seed, e), so any cursor maps to the
    same questions in every run: a resumed run gets the batch an uninterrupted one would have.
    """

    def __init__(self, num_questions: int, seed: int, cursor: int = 0):
        self.num_questions, self.seed, self.cursor = num_questions, seed, cursor

    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_questions)

    def take(self, count: int) -> list[int]:
        indices = self.peek(count)
        self.cursor += count
        return indices

    def peek(self, count: int) -> list[int]:
        """The next ``count`` indices, leaving the cursor where it is."""
        indices = []
        for position in range(self.cursor, self.cursor + count):
            epoch, offset = divmod(position, self.num_questions)
            indices.append(int(self._epoch(epoch)[offset]))
        return indices


def warm_start_cursor(config: TrainConfig) -> tuple[int, Path] | None:
    """Where ``model.init_from``'s question order stopped, if this run should go on from there:
    ``init_from_order: continue``, and the warm start's run drew from the same question set under
    the same seed (its ``config.yaml`` says so). Returns (cursor, checkpoint), else None."""
    if not config.model.init_from or config.model.init_from_order != "continue":
        return None
    checkpoint = resolve_checkpoint(config.model.init_from)
    run_config = checkpoint.parent.parent / "config.yaml"
    if not run_config.is_file():
        return None  # a checkpoint copied out of its run: nothing says what it trained on
    warm = load_config(run_config)
    if warm.seed != config.seed or warm.env.kwargs.get("questions") != config.env.kwargs.get("questions"):
        return None
    return int(read_state(checkpoint)["cursor"]), checkpoint


class UnsolvedRetries:
    """Questions whose last group had no right answer, queued to be rolled out again
    (``rollout.retry_unsolved_share``, ``retry_unsolved_times``); ``queue`` is all its state.

    A step takes up to ``share`` of its questions from the front of the queue (the oldest first) and
    the rest from the question order; after the rollout, each question of the step whose group held
    no exact match goes to the back of the queue, unless it has been retried ``times`` times.
    """

    def __init__(self, share: float, times: int, queue: list[list[int]] | None = None):
        self.share, self.times = share, times
        self.queue: list[list[int]] = [list(entry) for entry in queue or []]  # [question index, retries so far]
        self._taken: dict[int, int] = {}

    def take(self, count: int) -> list[int]:
        """Up to ``share`` × ``count`` queued question indices for this step (none while off)."""
        room = math.floor(self.share * count + 1e-9)
        taken, self.queue = self.queue[:room], self.queue[room:]
        self._taken = {index: retries for index, retries in taken}
        return [index for index, _ in taken]

    def record(self, indices: list[int], episodes: list[Any]) -> None:
        """Queue the step's questions (``indices``, in group order) that no episode answered right."""
        if not self.share:
            return
        solved = [False] * len(indices)
        for episode in episodes:
            solved[episode.group] = solved[episode.group] or episode.reward_components.get("exact_match", 0.0) >= 1.0
        for index, right in zip(indices, solved, strict=True):
            retried = self._taken.get(index)  # retries before this step's try; None: a fresh question
            done = 0 if retried is None else retried + 1
            if not right and done < self.times:
                self.queue.append([index, done])

