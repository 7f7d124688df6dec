"""`agentenv train`: the training loop, from a YAML config.

    agentenv train --config configs/cpu-smollm2.yaml [--set grpo.group_size=8 ...] [--resume] [--out runs/NAME]
    agentenv train --config configs/cpu-smollm2.yaml --print-config     # every key, resolved, as YAML

One step of ``mode: grpo`` (``rft``, ``dpo`` and ``ppo`` swap the update, ``STEPS``)::

    questions = the next B question ids of a seeded, epoch-wise shuffled order (a cursor into it)
    batch     = rollout(engine, B·G environments, questions, G)       # trainers/rollout.py
                (engine.workers: N → the same on N Ray workers          trainers/workers.py
                 rollout.off_policy_steps: 1 → collected: the workers sampled it during the
                 previous update, which the update's ratio corrects for  trainers/grpo.py)
    metrics   = grpo_update(model, optimizer, ..., batch episodes)     # trainers/grpo.py
                (rft: the verifier's filter, then SFT on what it kept    trainers/rft.py
                 dpo: best/worst pairs per question, the DPO loss       trainers/dpo.py
                 ppo: GAE with a value head, the clipped objective)     trainers/ppo.py
    engine.update_weights(model)                                       # the next rollout sees θ
    log metrics, transcripts; checkpoint every N steps                  # trainers/metrics.py, checkpoint.py

``mode: dpo`` with ``dpo.pairs`` set reads pairs from that file instead of sampling (its own
seeded order, ``pair_cursor`` in the checkpoint). With ``sft.steps > 0`` the first steps are SFT on
oracle episodes (trainers/sft.py), drawn from the same question order; ``mode: sft`` runs only SFT.
``--resume`` continues from the newest complete checkpoint in the run folder with the same data
order, the same next batch and the same RNG states, under the run's own ``config.yaml``:
``--config``/``--set`` on a resume may change how the run is logged and checkpointed and how far
it goes, and anything else only with ``--allow-config-change``. Ctrl-C finishes the step in progress, checkpoints it and prints the command that resumes the run.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agentenv.trainers.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    read_state,
    save_checkpoint,
)
from agentenv.trainers.config import (
    ConfigError,
    TrainConfig,
    load_config,
    to_dict,
    training_changes,
)
from agentenv.trainers.dpo import append_pairs, dpo_update, pairs_from_rollout, read_pairs
from agentenv.trainers.engines import SamplingConfig, choose_engine, make_engine
from agentenv.trainers.grpo import Episode, grpo_update, lr_multiplier
from agentenv.trainers.metrics import MetricsLogger, read_jsonl, restart_jsonl, write_transcripts
from agentenv.trainers.ppo import ValueHead, ppo_update
from agentenv.trainers.rft import acceptance_stats, accepted, rft_update
from agentenv.trainers.rollout import episode_stats, rollout
from agentenv.trainers.sft import oracle_episode, sft_step
from agentenv.trainers.workers import RolloutWorkers, WorkerError

TINY_RANDOM = "tiny-random"
PAIRS_FILE = "pairs.jsonl"  # mode: dpo from rollouts writes its pairs here, for dpo.pairs of another run


# --- the command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set grpo.group_size=8 (repeatable; values are YAML)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue from the newest checkpoint in --out, under the run's own config.yaml",
    )
    parser.add_argument(
        "--allow-config-change", action="store_true",
        help="on --resume, accept --config/--set values that change what training computes",
    )
    parser.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (every key) as YAML and exit",
    )


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.out or Path("runs") / (Path(args.config).stem if args.config else "default"))
    # A resume without --config continues under the run's own config (--set still applies on top).
    saved = run_dir / "config.yaml"
    path = saved if args.resume and args.config is None and saved.is_file() else args.config
    try:
        config = load_config(path, args.overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"agentenv train: error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    started = time.perf_counter()
    try:
        train(config, run_dir, resume=args.resume, allow_config_change=args.allow_config_change)
    except (ConfigError, FileNotFoundError) as error:
        print(f"agentenv train: error: {error}", file=sys.stderr)
        return 2
    except WorkerError as error:
        print(f"agentenv train: error: {error}\nresume from the newest checkpoint with: {resume_command(run_dir)}",
              file=sys.stderr)
        return 1
    except TrainingInterrupted:
        return 130  # the checkpoint and the resume command are printed already
    except KeyboardInterrupt:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            print(f"\nagentenv train: interrupted before the first checkpoint of {run_dir}", file=sys.stderr)
        else:
            print(f"\nagentenv train: interrupted; the newest checkpoint is {checkpoint}\n"
                  f"resume with: {resume_command(run_dir)}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a process that Ctrl-C stopped
    print(training_summary(config, run_dir, time.perf_counter() - started))
    return 0


def resume_command(run_dir: Path) -> str:
    return f"agentenv train --out {shlex.quote(str(run_dir))} --resume"


def training_summary(config: TrainConfig, run_dir: Path, seconds: float) -> str:
    """What a finished ``agentenv train`` prints: the step reached, the last logged metrics, the run
    folder, the checkpoint and how to evaluate it."""
    checkpoint = latest_checkpoint(run_dir)
    step = read_state(checkpoint)["step"] if checkpoint is not None else 0
    total = config.max_steps if config.mode == "sft" else config.sft.steps + config.max_steps
    metrics_file = run_dir / "metrics.jsonl"
    records = {r["step"]: r for r in read_jsonl(metrics_file)} if metrics_file.is_file() else {}
    shown = []
    if records:
        last = records[max(records)]
        shown = [f"{key} {last[key]:.3f}" for key in ("reward/mean", "exact_match", "sft/nll") if key in last]
        dev = [r for _, r in sorted(records.items()) if "dev/exact_match" in r]
        if dev:
            shown.append(f"dev/exact_match {dev[-1]['dev/exact_match']:.3f} (step {dev[-1]['step']})")
    from agentenv.envs import CLOSED_BOOK_QA_ID, RAG_QA_ID, SEARCH_QA_ID

    built_in = {SEARCH_QA_ID: "agent", RAG_QA_ID: "rag", CLOSED_BOOK_QA_ID: "closed-book"}
    evaluate = f"agentenv eval --model {shlex.quote(str(run_dir))}"
    if config.env.id in built_in:
        evaluate += f" --mode {built_in[config.env.id]} --questions geo:test"
    else:
        evaluate += f" --env {shlex.quote(config.env.id)} --questions YOUR_HELD_OUT_QUESTIONS.jsonl"
    lines = [
        f"agentenv train: done: step {step} of {total} in {datetime.timedelta(seconds=round(seconds))}",
        f"  run folder: {run_dir}",
    ]
    if shown:
        lines.append(f"  step {max(records)}: {', '.join(shown)}")
    if checkpoint is not None:
        lines.append(f"  checkpoint: {checkpoint}")
    lines.append(f"  evaluate it, e.g.: {evaluate}")
    return "\n".join(lines)


# --- building the pieces ---------------------------------------------------------------------------


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 on CPU (bf16 matmuls are slower on these CPUs)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class Policy:
    model: torch.nn.Module  # the trained model (a peft model with LoRA)
    tokenizer: Any
    reference_model: torch.nn.Module | None  # a frozen copy of the starting policy (needs_reference_copy)
    model_path: str | None  # where the engine loads the base weights from (None: tiny-random)
    dtype: torch.dtype
    value_head: torch.nn.Module | None = None  # PPO's V(s) on the model's last hidden state
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
    """The model (LoRA-wrapped or not) and, if needed, a frozen reference copy."""
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
    reference = None
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
    if needs_reference_copy(config):
        # The reference is the starting policy: after init_from, the warm start's weights.
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    value_head = ValueHead(model.config.hidden_size).to(dtype) if config.mode == "ppo" else None
    if torch.cuda.is_available():
        model = model.cuda()
        reference = reference.cuda() if reference is not None else None
        value_head = value_head.cuda() if value_head is not None else None
    return Policy(model, tokenizer, reference, model_path, dtype, value_head, load_learned_reward(config, tokenizer))


def load_learned_reward(config: TrainConfig, tokenizer: Any) -> Any:
    """``reward.model``'s reward model, or None; one that does not fit the policy is a ConfigError."""
    if config.reward.model is None:
        return None
    from agentenv.trainers.learned_reward import LearnedReward

    try:
        return LearnedReward(config.reward.model, config.reward.model_weight, config.reward.model_normalize,
                             tokenizer=tokenizer)
    except (OSError, ValueError) as error:
        raise ConfigError(f"reward.model: {error}") from None


def trained_beside(policy: Policy, phase: str) -> dict[str, torch.nn.Module]:
    """What a checkpoint of ``phase`` holds beside the model: PPO's value head."""
    return {"value_head": policy.value_head} if phase == "ppo" and policy.value_head is not None else {}


def load_pairs(path: str, tokenizer: Any) -> list[Any]:
    """``dpo.pairs``: the pairs of a file; one that does not fit is a ConfigError naming it."""
    try:
        return read_pairs(path, len(tokenizer))
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"dpo.pairs: {error}") from None


def needs_reference_copy(config: TrainConfig) -> bool:
    """Whether the reference policy is a frozen copy of the starting policy: DPO's and PPO's
    ``reference: start``, and GRPO's KL reference under full fine-tuning (with LoRA, GRPO's
    reference is the adapter disabled)."""
    if config.mode == "dpo":
        return config.dpo.reference == "start"
    if config.mode == "ppo":
        return config.ppo.kl_coef > 0 and config.ppo.reference == "start"
    if config.mode == "rft":
        return False
    return not config.lora.enabled and config.grpo.kl_beta > 0


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder's newest checkpoint (``model.init_from``)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise ConfigError(f"model.init_from: {path} is neither a checkpoint nor a run folder with a complete checkpoint")
    return checkpoint


def save_reference(run_dir: Path, model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """The KL reference is the policy GRPO starts from (the SFT warm start, as in InstructGPT), not
    the weights before SFT: copy the model into the frozen reference, and keep it in the run folder
    (``reference.safetensors``) so a resumed run has the same one."""
    from safetensors.torch import save_file

    reference.load_state_dict(model.state_dict())
    state = {name: tensor.detach().contiguous() for name, tensor in reference.state_dict().items()}
    staging = run_dir / ".reference.safetensors.tmp"
    save_file(_untied(state), staging)
    staging.rename(run_dir / "reference.safetensors")


def load_reference(run_dir: Path, reference: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    path = run_dir / "reference.safetensors"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: this run's KL reference (the policy after SFT) cannot be restored")
    reference.load_state_dict(load_file(path), strict=False)


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (a tied LM head): keep one of each."""
    seen: set[int] = set()
    kept = {}
    for name, tensor in state.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            kept[name] = tensor
    return kept


def make_envs(config: TrainConfig, tokenizer: Any, count: int, questions: str | None = None) -> list[Any]:
    """``count`` environments from ``env.id``, sharing one tokenizer, question list and search index;
    ``questions`` replaces ``env.kwargs.questions`` (the held-out curve's dev questions)."""
    import agentenv  # noqa: F401  (registers the environments)
    from agentenv.envs import (
        RAG_QA_ID,
        SEARCH_QA_ID,
        UnknownEnvironment,
        geo_index_dir,
        resolve_env_id,
    )

    try:
        env_id = resolve_env_id(config.env.id)  # module:Id imports the module first
    except UnknownEnvironment as error:
        raise ConfigError(f"env.id: {error}") from None
    kwargs: dict[str, Any] = {"tokenizer": tokenizer, "reward": config.reward, **config.env.kwargs}
    if questions is not None:
        kwargs["questions"] = questions
    searches = env_id in (SEARCH_QA_ID, RAG_QA_ID)
    if searches and kwargs.get("retriever_url") is None and not _is_loaded(kwargs.get("index")):
        # One index in memory for all B·G environments, not one each.
        from agentenv.tools.bm25 import BM25Index

        kwargs["index"] = BM25Index.load(kwargs.get("index") or geo_index_dir())
    first = _make_env(config, env_id, kwargs)
    if not first.questions:
        raise ConfigError(f"env {config.env.id} has no training questions (set env.kwargs.questions)")
    # The question list is loaded once and shared too.
    shared = {**kwargs, "questions": first.questions}
    return [first] + [_make_env(config, env_id, shared) for _ in range(count - 1)]


def _make_env(config: TrainConfig, env_id: str, kwargs: dict[str, Any]) -> Any:
    """One environment; a keyword its constructor refuses is a ConfigError naming the key."""
    from agentenv.envs import EnvArgumentError, make_env

    try:
        return make_env(env_id, **kwargs)
    except EnvArgumentError as error:
        if error.key is None:
            raise ConfigError(f"env.kwargs: {error}") from None
        if error.key in config.env.kwargs:
            raise ConfigError(f"env.kwargs.{error.key}: {error}") from None
        raise ConfigError(
            f"env.id: {error} (the trainer passes tokenizer, reward and env.kwargs to every environment)"
        ) from None


def _is_loaded(index: Any) -> bool:
    return index is not None and not isinstance(index, str | Path)


def entity_names(config: TrainConfig) -> dict[str, str] | None:
    """Passage id → title of the shipped geo corpus, for the SFT oracle's searches."""
    from agentenv.envs import SEARCH_QA_ID

    if config.env.id != SEARCH_QA_ID or config.env.kwargs.get("index") or config.env.kwargs.get("retriever_url"):
        return None
    from agentenv.corpora import geo_path, load_corpus

    return {passage["id"]: passage["title"] for passage in load_corpus(geo_path("passages"))}


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


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, phase: str, mode_steps: int, value_head: torch.nn.Module | None = None
):
    """AdamW over the trainable parameters; the mode after SFT (GRPO, RFT, DPO, PPO): optim.lr with
    warm-up then constant/cosine over its ``mode_steps`` (PPO's value head in a group of its own at
    ppo.value_lr); SFT: constant sft.lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    optim = config.optim
    lr = config.sft.lr if phase == "sft" else optim.lr
    if phase == "ppo" and value_head is not None:
        params = [{"params": params}, {"params": list(value_head.parameters()), "lr": config.ppo.value_lr or lr}]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)
    if phase == "sft":
        return optimizer, None
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, optim.warmup_steps, mode_steps, optim.schedule, optim.min_lr_ratio)
    )
    return optimizer, scheduler


def build_engine(config: TrainConfig, policy: Policy, env: Any):
    """The rollout engine: transformers generates with the training model itself; vLLM loads its
    own copy of the base weights and receives ours through ``update_weights``. With
    ``engine.workers: N``, N Ray workers that each build one of these (``RolloutWorkers``)."""
    if config.engine.workers > 0:
        return RolloutWorkers(config)
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
        kind, policy.model_path, dtype=policy.dtype, model=policy.model, tokenizer=policy.tokenizer,
        **kwargs,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- the loop -----------------------------------------------------------------------------------------


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised once the step in progress is finished and checkpointed."""

    def __init__(self, checkpoint: Path):
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


class StopAtStepEnd:
    """Within the ``with`` block, Ctrl-C (SIGINT) sets ``requested`` instead of raising wherever it
    lands (mid-rollout, mid-update, mid-save); the loop stops at the end of the step. A second
    Ctrl-C raises KeyboardInterrupt at once, as usual."""

    def __init__(self):
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopAtStepEnd:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGINT, self._request)
            self._installed = True
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nagentenv train: Ctrl-C: stopping at the end of this step, with a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)


def check_resumed_config(run_dir: Path, config: TrainConfig, allow_config_change: bool) -> None:
    """Refuse to resume under values that change what training computes, unless allowed."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = load_config(saved_path)
    except ConfigError as error:
        raise ConfigError(f"{saved_path}: {error}") from None
    changes = training_changes(saved, config)
    if not changes:
        return
    listed = "; ".join(changes)
    if not allow_config_change:
        raise ConfigError(
            f"--resume: {run_dir} was trained with other values of keys that change what training "
            f"computes: {listed}. Resume without them (the run's config.yaml is read when --config is "
            "not given), or pass --allow-config-change to continue with them"
        )
    print(f"agentenv train: resuming with a changed config (--allow-config-change): {listed}", file=sys.stderr)


def train(
    config: TrainConfig, run_dir: str | Path, resume: bool = False, allow_config_change: bool = False
) -> dict[str, Any]:
    """Run (or resume) training into ``run_dir``; return the last step's metrics.

    A resume refuses a ``config`` that changes what training computes against the run's own
    ``config.yaml`` (``training_changes``) unless ``allow_config_change``. Ctrl-C stops at the end
    of the step in progress, checkpoints it and raises ``TrainingInterrupted``.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    if config.logging.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logging.wandb: true needs the wandb package, which is not installed: pip install 'agentenv[wandb]'")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        print(f"agentenv train: no checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    if checkpoint is None and (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume, or another --out")
    if checkpoint is not None:
        check_resumed_config(run_dir, config, allow_config_change)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    sft_steps = config.max_steps if config.mode == "sft" else config.sft.steps
    mode_steps = 0 if config.mode == "sft" else config.max_steps  # the steps of the mode after SFT
    total_steps = sft_steps + mode_steps

    def phase_of(step: int) -> str:
        return "sft" if step <= sft_steps else config.mode

    seed_everything(config.seed)
    tokenizer = load_policy_tokenizer(config)
    # The environments (and their question lists) before the model: generating questions runs the
    # calculator, whose wall-clock deadline a garbage collection over a loaded model can overrun.
    # DPO on a file of pairs samples nothing; its pairs are drawn in an order of their own.
    pairs = load_pairs(config.dpo.pairs, tokenizer) if config.mode == "dpo" and config.dpo.pairs else None
    pair_order = QuestionOrder(len(pairs), config.seed) if pairs else None
    samples = bool(mode_steps) and pairs is None  # the mode's steps roll out
    B, G = rollout_shape(config)
    # Rollout workers step environments of their own; the trainer's first one gives the limits.
    envs = make_envs(config, tokenizer, B * G if samples and not config.engine.workers else 1)
    questions = envs[0].questions
    order = QuestionOrder(len(questions), config.seed)
    names = entity_names(config) if sft_steps else None
    policy = load_policy(config, tokenizer)
    model = policy.model

    step = 0
    phase = phase_of(1)
    optimizer, scheduler = build_optimizer(model, config, phase, mode_steps, policy.value_head)
    if checkpoint is not None:
        state = read_state(checkpoint)
        phase = phase_of(state["step"] + 1)
        same_phase = state["phase"] == phase
        optimizer, scheduler = build_optimizer(model, config, phase, mode_steps, policy.value_head)
        load_checkpoint(checkpoint, model, optimizer if same_phase else None, scheduler if same_phase else None,
                        modules=trained_beside(policy, state["phase"]))
        step, order.cursor = state["step"], state["cursor"]
        if pair_order is not None:
            pair_order.cursor = state.get("pair_cursor", 0)
        print(f"agentenv train: resumed from {checkpoint} (step {step})", file=sys.stderr)
        if policy.reference_model is not None and sft_steps and step >= sft_steps:
            load_reference(run_dir, policy.reference_model)

    engine = None
    if (samples or config.eval.every) and step < total_steps:
        engine = build_engine(config, policy, envs[0])
        engine.update_weights(model)
    held_out = HeldOutCurve(config, tokenizer, policy.learned_reward) if config.eval.every and engine is not None else None

    if config.mode == "dpo" and pairs is None:
        restart_jsonl(run_dir / PAIRS_FILE, step if checkpoint else None)
    logger = MetricsLogger(
        run_dir, tensorboard=config.logging.tensorboard, resume_step=step if checkpoint else None,
        wandb_project=config.logging.wandb_project if config.logging.wandb else None, config=to_dict(config),
    )
    progress = tqdm(total=total_steps, initial=step, disable=not config.logging.progress, desc="train", unit="step")
    metrics: dict[str, Any] = {}
    try:
        with StopAtStepEnd() as stop:
            if held_out is not None and checkpoint is None:
                logger.log(0, held_out.evaluate(engine, policy.model))  # where the curve starts
            while step < total_steps:
                step += 1
                if phase_of(step) != phase:  # SFT is over: the mode starts with a fresh optimizer
                    phase = phase_of(step)
                    optimizer, scheduler = build_optimizer(model, config, phase, mode_steps, policy.value_head)
                    if policy.reference_model is not None:
                        save_reference(run_dir, model, policy.reference_model)
                started = time.perf_counter()
                if phase == "sft":
                    indices = order.take(config.sft.questions_per_step)
                    episodes = [oracle_episode(envs[0], questions[i], names) for i in indices]
                    metrics = sft_step(
                        model, optimizer, [e.trajectory for e in episodes], tokenizer.pad_token_id,
                        config.sft.micro_batch_size, config.optim.max_grad_norm,
                    )
                    metrics["sft/oracle_reward"] = sum(e.reward for e in episodes) / len(episodes)
                    metrics["time/train_s"] = time.perf_counter() - started
                    ids = [questions[i].get("id", i) for i in indices]
                elif pairs is not None:
                    step_pairs = [pairs[i] for i in pair_order.take(config.dpo.pairs_per_step)]
                    metrics = dpo_pairs_step(step, config, policy, optimizer, scheduler, step_pairs)
                    ids = [(pair.question or {}).get("id") for pair in step_pairs]
                else:
                    indices = order.take(B)
                    step_questions = [questions[i] for i in indices]
                    if config.rollout.off_policy_steps:
                        upcoming = [questions[i] for i in order.peek(B)] if step < total_steps else None
                        prefetch_ahead(config, engine, envs[0], step, step_questions, upcoming)
                    metrics = STEPS[phase](
                        step, config, policy, optimizer, scheduler, engine, envs, step_questions, run_dir,
                    )
                    ids = [questions[i].get("id", i) for i in indices]
                metrics["phase"] = phase
                metrics["data/question_ids"] = ids
                metrics["data/cursor"] = order.cursor
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                metrics["time/step_s"] = time.perf_counter() - started
                if held_out is not None and (step % config.eval.every == 0 or step == total_steps):
                    # SFT steps and DPO on a file of pairs do not sync the engine; rollout steps do.
                    metrics.update(held_out.evaluate(engine, model, sync=phase == "sft" or pairs is not None))
                logger.log(step, metrics)
                progress.update(1)
                progress.set_postfix({k: f"{metrics[m]:.3f}" for k, m in _POSTFIX.items() if m in metrics})
                if step % config.checkpoint.every == 0 or step == total_steps or stop.requested:
                    saved = save_checkpoint(
                        run_dir, step, model, optimizer, scheduler,
                        {"cursor": order.cursor, "phase": phase,
                         **({"pair_cursor": pair_order.cursor} if pair_order is not None else {})},
                        to_dict(config), config.checkpoint.keep_last,
                        tokenizer=tokenizer, modules=trained_beside(policy, phase),
                    )
                if stop.requested and step < total_steps:
                    print(f"agentenv train: stopped after step {step} of {total_steps}; checkpoint {saved}\n"
                          f"resume with: {resume_command(run_dir)}", file=sys.stderr, flush=True)
                    raise TrainingInterrupted(saved)
    finally:
        progress.close()
        logger.close()
        if isinstance(engine, RolloutWorkers):
            engine.close()
    return metrics


_POSTFIX = {"reward": "reward/mean", "em": "exact_match", "dev_em": "dev/exact_match", "kl": "kl", "nll": "sft/nll"}


class HeldOutCurve:
    """The ``eval`` section at work: the current policy, greedy, on a fixed slice of held-out
    questions in the training environment, through the rollout engine; returns ``dev/*`` metrics."""

    def __init__(self, config: TrainConfig, tokenizer: Any, learned_reward: Any = None):
        from agentenv.envs import load_question_set

        self.questions = load_question_set(config.eval.questions)[: config.eval.limit]
        if not self.questions:
            raise ConfigError(f"eval.questions: {config.eval.questions!r} holds no questions")
        count = min(config.eval.batch_size, len(self.questions))
        self.envs = make_envs(config, tokenizer, count, questions=config.eval.questions)
        self.tokenizer = tokenizer
        self.seed = config.seed
        self.learned_reward = learned_reward  # scores the held-out episodes too: dev/reward_model_score

    def evaluate(self, engine: Any, model: torch.nn.Module, sync: bool = False) -> dict[str, float]:
        """``sync``: push the weights first (SFT steps do not sync the engine; GRPO steps do)."""
        from agentenv.trainers.evaluate import evaluate_envs, summarise

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
        summary = summarise(records)
        metrics = {f"dev/{key}": summary[key] for key in
                   ("exact_match", "f1", "searches", "calculator_calls", "valid_format", "turns", "policy_tokens")}
        for group in ("exact_match_by_kind", "exact_match_by_class"):
            for name, entry in summary[group].items():
                metrics[f"dev/exact_match/{name}"] = entry["exact_match"]
        if score is not None:
            metrics["dev/reward_model_score"] = summary["reward_model_score"]
        metrics["time/dev_eval_s"] = time.perf_counter() - started
        return metrics


def _response_budget(env: Any) -> int:
    """Dr. GRPO's L_max: the most policy tokens one episode can hold."""
    return min(env.max_turns * env.max_turn_tokens, env.max_total_tokens)


def rollout_shape(config: TrainConfig) -> tuple[int, int]:
    """(questions, samples per question) that one step of ``config.mode`` rolls out."""
    if config.mode == "rft":
        return config.rft.questions_per_round, config.rft.samples_per_question
    if config.mode == "dpo":
        return config.dpo.questions_per_step, config.dpo.samples_per_question
    if config.mode == "ppo":
        return config.ppo.questions_per_step, config.ppo.samples_per_question
    return config.grpo.rollout_questions, config.grpo.group_size


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
    config: TrainConfig, engine: RolloutWorkers, env: Any, step: int,
    step_questions: list[dict[str, Any]], upcoming: list[dict[str, Any]] | None,
) -> None:
    """``rollout.off_policy_steps: 1``: this step's rollout unless the step before started it, then
    the next step's (``upcoming``), which the workers sample while this process trains on this
    step's batch; its weight sync queues behind it, so that batch is one update old when it is
    trained on. A run's first step, and the first after a resume, sample on-policy: the checkpoint
    does not hold the batch that was in flight."""
    group_size = rollout_shape(config)[1]
    engine.prefetch(step_questions, group_size, rollout_sampling(config, env, step), behaviour_lag=0)
    if upcoming is not None:
        engine.prefetch(upcoming, group_size, rollout_sampling(config, env, step + 1), behaviour_lag=1)


def sample(
    step: int, config: TrainConfig, policy: Policy, engine: Any, envs: list[Any],
    step_questions: list[dict[str, Any]], samples_per_question: int,
) -> tuple[Any, float]:
    """The step's rollout: every question ``samples_per_question`` times at ``engine.temperature``
    (collected, when ``prefetch_ahead`` started it); returns the batch and its seconds."""
    sampling = rollout_sampling(config, envs[0], step)
    policy.model.eval()
    started = time.perf_counter()
    if isinstance(engine, RolloutWorkers):
        batch = engine.rollout(step_questions, samples_per_question, sampling)
    else:
        count = len(step_questions) * samples_per_question
        batch = rollout(engine, envs[:count], step_questions, samples_per_question, sampling)
    if policy.learned_reward is not None:
        policy.learned_reward.apply(batch.episodes)
    return batch, time.perf_counter() - started


def finish_step(
    step: int, config: TrainConfig, policy: Policy, engine: Any, run_dir: Path, batch: Any, rollout_s: float,
    update: dict[str, Any], train_s: float, trained_tokens: int,
) -> dict[str, Any]:
    """Sync the engine to the updated weights; the step's metrics with the time split; transcripts."""
    started = time.perf_counter()
    engine.update_weights(policy.model)
    sync_s = time.perf_counter() - started

    metrics = {**episode_stats(batch), **update}
    if isinstance(engine, RolloutWorkers):
        metrics["workers/restarts"] = float(engine.restarts)  # since the run (or its resume) started
        metrics["rollout/behaviour_lag"] = float(batch.behaviour_lag)
    metrics.update(
        {
            "time/rollout_s": rollout_s,
            "time/generation_s": batch.generation_seconds,
            "time/env_s": batch.env_seconds,
            "time/train_s": train_s,
            "time/sync_s": sync_s,
            "throughput/generated_tokens_per_s": batch.generated_tokens_per_s,
            "throughput/train_tokens_per_s": trained_tokens / max(train_s, 1e-9),
        }
    )
    write_transcripts(run_dir, step, batch.episodes, policy.tokenizer, config.logging.transcripts_per_step)
    return metrics


def grpo_step(
    step: int,
    config: TrainConfig,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    engine: Any,
    envs: list[Any],
    step_questions: list[dict[str, Any]],
    run_dir: Path,
) -> dict[str, Any]:
    """Rollout, GRPO update, weight sync; returns the step's metrics with the time split."""
    batch, rollout_s = sample(step, config, policy, engine, envs, step_questions, config.grpo.group_size)
    process = process_credits(batch.episodes, config.reward.process)
    episodes = [
        Episode(
            token_ids=e.trajectory.token_ids,
            policy_mask=e.trajectory.policy_mask,
            reward=e.reward,
            group=e.group,
            engine_logprobs=e.trajectory.policy_logprobs,
            process_advantages=None if process is None else process[0][k],
        )
        for k, e in enumerate(batch.episodes)
    ]
    max_response_tokens = config.grpo.max_response_tokens or _response_budget(envs[0])
    started = time.perf_counter()
    update = grpo_update(
        policy.model, optimizer, scheduler, episodes, replace(config.grpo, max_response_tokens=max_response_tokens),
        policy.tokenizer.pad_token_id,
        reference_model=policy.reference_model,
        max_grad_norm=config.optim.max_grad_norm,
        temperature=config.engine.temperature,
        generator=torch.Generator().manual_seed(config.seed * 7919 + step),
        behaviour_logprobs=batch.behaviour_lag > 0,
    )
    train_s = time.perf_counter() - started
    if process is not None:
        update.update(process[1])
    trained_tokens = sum(len(e.trajectory) for e in batch.episodes)
    return finish_step(step, config, policy, engine, run_dir, batch, rollout_s, update, train_s, trained_tokens)


def process_credits(episodes: list[Any], weights: dict[str, float]) -> tuple[list[list[float]], dict[str, float]] | None:
    """``reward.process`` at work: each episode's per-token credit (its turn's c_{i,k}), and the
    per-turn mean of every term (``process/<term>``); None without process terms."""
    if not weights:
        return None
    from agentenv.process_rewards import token_credits, turn_terms, weighted_credits

    per_token, per_turn = [], []
    for episode in episodes:
        terms = turn_terms(episode.turns, episode.question["answers"], list(weights))
        per_token.append(token_credits(episode.trajectory, weighted_credits(terms, weights)))
        per_turn.extend(terms)
    means = {f"process/{name}": sum(t[name] for t in per_turn) / max(len(per_turn), 1) for name in weights}
    return per_token, means


def rft_step(
    step: int,
    config: TrainConfig,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    engine: Any,
    envs: list[Any],
    step_questions: list[dict[str, Any]],
    run_dir: Path,
) -> dict[str, Any]:
    """One RFT round: rollout, the verifier's filter, SFT on what it kept, weight sync."""
    batch, rollout_s = sample(step, config, policy, engine, envs, step_questions, config.rft.samples_per_question)
    episodes = batch.episodes
    groups = [e.group for e in episodes]
    keep = accepted([e.reward for e in episodes], groups, [e.trajectory.token_ids for e in episodes], config.rft)
    kept = [e.trajectory for e, k in zip(episodes, keep, strict=True) if k]
    started = time.perf_counter()
    update = rft_update(
        policy.model, optimizer, scheduler, kept, config.rft, policy.tokenizer.pad_token_id,
        max_grad_norm=config.optim.max_grad_norm,
        generator=torch.Generator().manual_seed(config.seed * 7919 + step),
    )
    train_s = time.perf_counter() - started
    update.update(acceptance_stats([e.question.get("kind") or "unknown" for e in episodes], groups, keep))
    trained_tokens = sum(len(t) for t in kept)
    return finish_step(step, config, policy, engine, run_dir, batch, rollout_s, update, train_s, trained_tokens)


def dpo_step(
    step: int,
    config: TrainConfig,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    engine: Any,
    envs: list[Any],
    step_questions: list[dict[str, Any]],
    run_dir: Path,
) -> dict[str, Any]:
    """Rollout, pairs by reward (appended to ``<run>/pairs.jsonl``), DPO update, weight sync."""
    batch, rollout_s = sample(step, config, policy, engine, envs, step_questions, config.dpo.samples_per_question)
    pairs = pairs_from_rollout(batch.episodes, policy.tokenizer, config.dpo.min_reward_gap)
    append_pairs(run_dir / PAIRS_FILE, step, pairs)
    started = time.perf_counter()
    update = _dpo_update(step, config, policy, optimizer, scheduler, pairs)
    train_s = time.perf_counter() - started
    trained_tokens = sum(len(p.chosen_trajectory) + len(p.rejected_trajectory) for p in pairs)
    return finish_step(step, config, policy, engine, run_dir, batch, rollout_s, update, train_s, trained_tokens)


def dpo_pairs_step(
    step: int, config: TrainConfig, policy: Policy, optimizer: torch.optim.Optimizer, scheduler: Any, pairs: list[Any]
) -> dict[str, Any]:
    """A DPO update on pairs read from ``dpo.pairs``: nothing is sampled, nothing synced."""
    started = time.perf_counter()
    update = _dpo_update(step, config, policy, optimizer, scheduler, pairs)
    train_s = time.perf_counter() - started
    trained_tokens = sum(len(p.chosen_trajectory) + len(p.rejected_trajectory) for p in pairs)
    return {**update, "time/train_s": train_s, "throughput/train_tokens_per_s": trained_tokens / max(train_s, 1e-9)}


def _dpo_update(step: int, config: TrainConfig, policy: Policy, optimizer: Any, scheduler: Any, pairs: list[Any]):
    return dpo_update(
        policy.model, optimizer, scheduler, pairs, config.dpo, policy.tokenizer.pad_token_id,
        reference_model=policy.reference_model,
        max_grad_norm=config.optim.max_grad_norm,
        generator=torch.Generator().manual_seed(config.seed * 7919 + step),
    )


def ppo_step(
    step: int,
    config: TrainConfig,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    engine: Any,
    envs: list[Any],
    step_questions: list[dict[str, Any]],
    run_dir: Path,
) -> dict[str, Any]:
    """Rollout, PPO update of the policy and its value head, weight sync."""
    batch, rollout_s = sample(step, config, policy, engine, envs, step_questions, config.ppo.samples_per_question)
    episodes = [Episode(e.trajectory.token_ids, e.trajectory.policy_mask, e.reward, e.group) for e in batch.episodes]
    started = time.perf_counter()
    update = ppo_update(
        policy.model, policy.value_head, optimizer, scheduler, episodes, config.ppo, policy.tokenizer.pad_token_id,
        reference_model=policy.reference_model,
        max_grad_norm=config.optim.max_grad_norm,
        temperature=config.engine.temperature,
        generator=torch.Generator().manual_seed(config.seed * 7919 + step),
    )
    train_s = time.perf_counter() - started
    trained_tokens = sum(len(e.trajectory) for e in batch.episodes)
    return finish_step(step, config, policy, engine, run_dir, batch, rollout_s, update, train_s, trained_tokens)


# What one step of each mode after the SFT warm start runs.
STEPS = {"grpo": grpo_step, "rft": rft_step, "dpo": dpo_step, "ppo": ppo_step}
