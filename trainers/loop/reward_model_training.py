"""`agentenv rm`: train a reward model (trainers/algorithms/reward_model.py) on preference pairs.

    agentenv rm train --config configs/rm/rm-geo.yaml [--set train.steps=200 ...] [--out runs/rm-geo]
    agentenv rm pairs --config configs/rm/rm-geo.yaml --out runs/rm-pairs      # only build the pairs

The pairs come from a file (TRL's preference format) or from a policy's rollouts in the training
environments, ordered by their verifiable reward; a seeded fraction of the questions is held out
whole. The run reports the held-out pair accuracy and a calibration plot, and writes the model
folder (``<out>/model``) that ``reward.model`` and ``agentenv eval --reward-model`` read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from agentenv.rewards import RewardConfig
from agentenv.spec import EnvSpec
from agentenv.trainers.algorithms.reward_model import (
    BradleyTerryConfig,
    PreferencePair,
    bradley_terry_step,
    build_reward_model,
    evaluate_pairs,
    load_rm_tokenizer,
    pairs_from_episodes,
    read_preference_pairs,
    save_reward_model,
    tokenize_pairs,
    write_preference_pairs,
)
from agentenv.trainers.algorithms.update import lr_multiplier, set_learning_rate
from agentenv.trainers.loop.build import QuestionOrder, env_factory, seed_everything
from agentenv.trainers.loop.config import (
    ConfigError,
    EnvConfig,
    LoRAConfig,
    OptimConfig,
    TrainConfig,
    _build,
    read_config_data,
    to_dict,
)

TINY_RANDOM = "tiny-random"


# --- the config ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RMModelConfig:
    # "embedded" (SmolLM2-135M-Instruct), "tiny-random", a hub id, a model folder, or a training run
    # or checkpoint (its policy, any adapter merged): the body the head sits on.
    name: str = "embedded"
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    gradient_checkpointing: bool = False
    tiny_hidden_size: int = 64  # only for name: tiny-random
    tiny_layers: int = 2
    max_tokens: int = 2048  # a pair with a longer side is left out (and counted)


@dataclass(frozen=True)
class RolloutPairsConfig:
    """Pairs from a policy's own rollouts, ordered by the environment's verifiable reward."""

    policy: str = "embedded"  # what `agentenv eval --model` takes: a run, checkpoint, folder, hub id
    engine: str = "auto"  # auto | vllm | transformers
    # The environment and the verifier that orders the samples. None: the policy run's own
    # (its env_spec.json), or for a policy that is no run, agentenv/SearchQA-v0 and the default reward.
    env: EnvConfig | None = None
    reward: RewardConfig | None = None
    questions: str | None = None  # None: the env's own (env.kwargs.questions, else its default)
    limit: int | None = 64  # the first N questions
    samples_per_question: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32  # episodes generated together
    min_reward_gap: float = 0.0  # a pair needs R(chosen) − R(rejected) > this


@dataclass(frozen=True)
class PairDataConfig:
    pairs: str | None = None  # a JSONL/Parquet file of prompt/chosen/rejected pairs (TRL's format)
    rollouts: RolloutPairsConfig | None = None  # or: build the pairs from rollouts
    held_out_pairs: str | None = None  # a file of held-out pairs; else a fraction of the questions
    held_out_fraction: float = 0.1


@dataclass(frozen=True)
class RMTrainConfig:
    steps: int = 100
    pairs_per_step: int = 16  # K
    micro_batch_pairs: int = 4  # pairs per forward pass (2× sequences); gradients accumulate
    eval_every: int = 0  # steps; 0: the held-out pairs only at the end
    log_every: int = 1
    tensorboard: bool = False


@dataclass(frozen=True)
class RewardModelConfig:
    """``agentenv rm train``'s config: YAML sections as below, ``--set a.b=c`` on top."""

    seed: int = 0
    model: RMModelConfig = field(default_factory=RMModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: PairDataConfig = field(default_factory=PairDataConfig)
    loss: BradleyTerryConfig = field(default_factory=BradleyTerryConfig)
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))


def load_rm_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RewardModelConfig:
    """Read ``path`` (YAML; None: the defaults), apply ``key=value`` overrides, validate."""
    config = _build(RewardModelConfig, read_config_data(path, overrides), prefix="")
    validate_rm_config(config)
    return config


def validate_rm_config(config: RewardModelConfig) -> None:
    """Check choices and minimums; raise ``ConfigError`` naming the key."""
    choices = {
        "model.dtype": (config.model.dtype, ("auto", "float32", "bfloat16", "float16")),
        "optim.schedule": (config.optim.schedule, ("constant", "cosine")),
    }
    rollouts = config.data.rollouts
    if rollouts is not None:
        choices["data.rollouts.engine"] = (rollouts.engine, ("auto", "vllm", "transformers"))
        if rollouts.reward is not None:
            choices["data.rollouts.reward.answer"] = (rollouts.reward.answer, ("research", "f1", "exact_match"))
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(allowed)}")
    minimums = {
        "train.steps": (config.train.steps, 0),
        "train.pairs_per_step": (config.train.pairs_per_step, 1),
        "train.micro_batch_pairs": (config.train.micro_batch_pairs, 1),
        "train.log_every": (config.train.log_every, 1),
        "train.eval_every": (config.train.eval_every, 0),
        "model.max_tokens": (config.model.max_tokens, 2),
        "loss.center_coefficient": (config.loss.center_coefficient, 0),
        "optim.lr": (config.optim.lr, 0),
        "lora.r": (config.lora.r, 1),
    }
    if rollouts is not None:
        minimums["data.rollouts.samples_per_question"] = (rollouts.samples_per_question, 2)
        minimums["data.rollouts.batch_size"] = (rollouts.batch_size, 1)
        minimums["data.rollouts.temperature"] = (rollouts.temperature, 0)
    for key, (value, minimum) in minimums.items():
        if value < minimum:
            raise ConfigError(f"{key}: {value!r} is too small; it must be at least {minimum}")
    if not 0 <= config.data.held_out_fraction < 1:
        raise ConfigError(f"data.held_out_fraction: {config.data.held_out_fraction!r} must be in [0, 1)")
    if (config.data.pairs is None) == (rollouts is None):
        raise ConfigError(
            "data: give data.pairs (a JSONL/Parquet file of prompt/chosen/rejected pairs) or data.rollouts "
            "(pairs from a policy's rollouts, e.g. --set data.rollouts.policy=runs/my-run), exactly one"
        )


def collect_rollout_pairs(config: RolloutPairsConfig, seed: int = 0, engine: Any = None, tokenizer: Any = None):
    """Roll the policy out ``samples_per_question`` times on each question and pair the samples.

    Returns ``(pairs, stats)``. ``engine`` and ``tokenizer`` replace the policy ``config.policy``
    names (tests pass a scripted engine). A bar of finished questions goes to stderr.
    """
    from tqdm import tqdm

    from agentenv.trainers.rollout.engines import SamplingConfig
    from agentenv.trainers.rollout.rollout import rollout

    if engine is None:
        from agentenv.trainers.rollout.policy import load_policy_engine

        engine, tokenizer, _ = load_policy_engine(config.policy, config.engine)
    G = config.samples_per_question
    count = max(1, config.batch_size // G) * G
    spec = rollout_env_spec(config)
    if config.questions is not None:
        spec = spec.updated(questions=config.questions)
    try:  # the trainer's own environments: one shared index, tool set and question list
        envs = env_factory(TrainConfig(env=EnvConfig(spec.id, spec.kwargs)), spec, tokenizer).make(count)
    except ConfigError as error:
        raise ConfigError(f"data.rollouts.{error}") from None
    if not envs[0].questions:
        raise ConfigError(f"data.rollouts: the environment {spec.id} has no questions (set data.rollouts.questions)")
    questions = envs[0].questions[: config.limit]
    sampling = SamplingConfig(
        temperature=config.temperature, top_p=config.top_p, max_new_tokens=envs[0].max_turn_tokens, seed=seed
    )
    pairs: list[PreferencePair] = []
    rewards: list[float] = []
    bar = tqdm(total=len(questions), desc="rm pairs: rollouts", unit="q", file=sys.stderr)
    for start in range(0, len(questions), count // G):
        chunk = questions[start : start + count // G]
        batch = rollout(engine, envs[: len(chunk) * G], chunk, G, sampling, episode_offset=start * G)
        rewards += [e.reward for e in batch.episodes]
        pairs += pairs_from_episodes(batch.episodes, tokenizer, config.min_reward_gap)
        bar.update(len(chunk))
        bar.set_postfix(pairs=len(pairs))
    bar.close()
    stats = {
        "questions": len(questions),
        "episodes": len(rewards),
        "mean_reward": sum(rewards) / max(len(rewards), 1),
        "pairs": len(pairs),
        "questions_with_pairs": len({p.group for p in pairs}),
    }
    return pairs, stats


def rollout_env_spec(config: RolloutPairsConfig) -> EnvSpec:
    """The environment the policy's pairs are sampled in: ``env``/``reward`` where set, the rest
    from the policy run's own spec, else SearchQA with the default reward."""
    run_spec = EnvSpec.of_run(config.policy) or EnvSpec("agentenv/SearchQA-v0", {})
    env = config.env or EnvConfig(run_spec.id, dict(run_spec.kwargs))
    reward = config.reward or run_spec.reward or RewardConfig()
    return EnvSpec(env.id, dict(env.kwargs), reward)


def split_held_out(
    pairs: Sequence[PreferencePair], fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, held_out)``: a seeded ``fraction`` of the groups (questions) is held out whole."""
    groups = list(dict.fromkeys(p.group for p in pairs))
    count = max(1, round(fraction * len(groups))) if fraction > 0 and len(groups) > 1 else 0
    random.Random(seed).shuffle(groups)
    held = set(groups[:count])
    return [p for p in pairs if p.group not in held], [p for p in pairs if p.group in held]


def draw_calibration(held_out: dict[str, Any]) -> Any:
    """A matplotlib Figure: the reliability diagram of the held-out pairs (observed frequency
    against predicted probability per bin, beside the diagonal of a calibrated model)."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state to close

    bins = held_out["calibration"]
    fig = Figure(figsize=(4.4, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="calibrated")
    predicted, observed = [b["predicted"] for b in bins], [b["observed"] for b in bins]
    ax.plot(predicted, observed, color="#3b75af", marker="o", label="reward model")
    for b in bins:
        ax.annotate(str(b["count"]), (b["predicted"], b["observed"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(first ≻ second) = σ(r₁ − r₂)")
    ax.set_ylabel("observed frequency")
    ax.set_title(
        f"held-out pairs (n = {held_out['pairs']}): accuracy {held_out['pair_accuracy']:.2f}, "
        f"ECE {held_out['expected_calibration_error']:.2f}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_calibration(held_out: dict[str, Any], path: Path) -> Path | None:
    """:func:`draw_calibration` saved as a PNG at ``path``; None without matplotlib."""
    try:
        fig = draw_calibration(held_out)
    except ImportError:
        return None
    fig.savefig(path, dpi=120)
    return path


# --- the run ---------------------------------------------------------------------------------------


def build_pairs(config: RewardModelConfig, tokenizer: Any, out: Path) -> tuple[list[PreferencePair], list[PreferencePair], dict[str, Any]]:
    """``(train pairs, held-out pairs, notes)`` from ``data``; rollout pairs go to ``<out>/pairs.jsonl``."""
    data, notes = config.data, {}
    if data.rollouts is not None:
        pairs, notes["rollouts"] = collect_rollout_pairs(data.rollouts, config.seed)
        notes["pairs_file"] = str(write_preference_pairs(out / "pairs.jsonl", pairs))
        if not pairs:
            raise ConfigError(
                f"data.rollouts: {notes['rollouts']['episodes']} episodes gave no pairs: every question's samples "
                f"got rewards within data.rollouts.min_reward_gap ({data.rollouts.min_reward_gap}) of each other "
                "(raise temperature or samples_per_question, or roll out a policy that sometimes succeeds)"
            )
    else:
        try:
            pairs = read_preference_pairs(data.pairs)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"data.pairs: {error}") from None
    if data.held_out_pairs is not None:
        try:
            return pairs, read_preference_pairs(data.held_out_pairs), notes
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"data.held_out_pairs: {error}") from None
    train_pairs, held_out = split_held_out(pairs, data.held_out_fraction, config.seed)
    return train_pairs, held_out, notes


TRAIN_ACCURACY_PAIRS = 256  # training pairs the summary's train accuracy is measured on


def train_reward_model(config: RewardModelConfig, out: str | Path) -> dict[str, Any]:
    """Train as ``agentenv rm train`` does into ``out``; return the summary (also ``summary.json``)."""
    from tqdm import tqdm

    from agentenv.trainers.loop.metrics import MetricsLogger

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    started = time.perf_counter()
    seed_everything(config.seed)
    try:
        tokenizer = load_rm_tokenizer(config.model.name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    train_pairs, held_out_pairs, notes = build_pairs(config, tokenizer, out)
    train_ids, too_long = tokenize_pairs(train_pairs, tokenizer, config.loss.margin, config.model.max_tokens)
    held_ids, held_too_long = tokenize_pairs(held_out_pairs, tokenizer, config.loss.margin, config.model.max_tokens)
    if too_long or held_too_long:
        print(f"agentenv rm: left out {too_long + held_too_long} pairs longer than model.max_tokens "
              f"({config.model.max_tokens})", file=sys.stderr)
    if not train_ids:
        raise ConfigError(f"data: no training pairs ({len(train_pairs)} read, {too_long} too long)")

    try:
        model = build_reward_model(config.model, config.lora, tokenizer, config.seed)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    steps = config.train.steps
    logger = MetricsLogger(out, tensorboard=config.train.tensorboard)
    order = QuestionOrder(len(train_ids), config.seed)  # a seeded order, reshuffled every epoch
    bar = tqdm(total=steps, desc="rm train", unit="step", file=sys.stderr)
    try:
        for step in range(1, steps + 1):
            lr = set_learning_rate(
                optimizer, lr_multiplier(step - 1, optim.warmup_steps, steps, optim.schedule, optim.min_lr_ratio)
            )
            batch = [train_ids[i] for i in order.take(config.train.pairs_per_step)]
            metrics = bradley_terry_step(
                model, optimizer, batch, config.loss, config.train.micro_batch_pairs, optim.max_grad_norm
            )
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['rm/loss']:.3f}", acc=f"{metrics['rm/accuracy']:.2f}")
            metrics["lr"] = lr
            if config.train.eval_every and step % config.train.eval_every == 0 and held_ids and step < steps:
                held = evaluate_pairs(model, held_ids, config.loss, config.train.micro_batch_pairs)
                metrics.update({f"held_out/{k}": held[k] for k in ("pair_accuracy", "loss", "expected_calibration_error")})
            if step % config.train.log_every == 0 or step == steps:
                logger.log(step, metrics)
    finally:
        bar.close()
        logger.close()

    summary: dict[str, Any] = {"train_pairs": len(train_ids), "held_out_pairs": len(held_ids), "steps": steps, **notes}
    if held_ids:
        held = evaluate_pairs(model, held_ids, config.loss, config.train.micro_batch_pairs)
        summary["held_out"] = {k: v for k, v in held.items() if k != "probabilities"}
        chart = plot_calibration(held, out / "calibration.png")
        summary["calibration_plot"] = str(chart) if chart else None
    # A seeded sample of the training pairs shows over-fitting beside the held-out accuracy; all of
    # them would cost minutes more of forward passes on a real model for the same answer.
    sample = random.Random(config.seed).sample(train_ids, min(len(train_ids), TRAIN_ACCURACY_PAIRS))
    summary["train"] = {k: v for k, v in evaluate_pairs(model, sample, config.loss, config.train.micro_batch_pairs).items()
                        if k in ("pair_accuracy", "loss")} | {"pairs": len(sample)}
    info = {"trained_from": config.model.name, "held_out": summary.get("held_out", {}).get("pair_accuracy")}
    summary["model"] = str(save_reward_model(model, out / "model", info))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- the command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (("train", "train a reward model on preference pairs (Bradley-Terry)"),
                            ("pairs", "only build the preference pairs of data.rollouts into OUT/pairs.jsonl")):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set train.steps=200 (repeatable; values are YAML)")
        sub.add_argument("--out", default=None, help="output folder (default: runs/<config name>)")
        sub.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("runs") / (Path(args.config).stem if args.config else "reward-model"))
    try:
        config = load_rm_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        if args.action == "pairs":
            if config.data.rollouts is None:
                raise ConfigError("data.rollouts: `agentenv rm pairs` builds pairs from rollouts; set data.rollouts")
            pairs, stats = collect_rollout_pairs(config.data.rollouts, config.seed)
            path = write_preference_pairs(out / "pairs.jsonl", pairs)
            print(f"agentenv rm pairs: {stats['pairs']} pairs from {stats['episodes']} episodes of "
                  f"{stats['questions']} questions ({stats['questions_with_pairs']} with pairs): {path}")
            return 0
        summary = train_reward_model(config, out)
    except (ConfigError, FileNotFoundError) as error:
        print(f"agentenv rm: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary, out))
    return 0


def format_summary(summary: dict[str, Any], out: Path) -> str:
    lines = [f"agentenv rm train: done: {summary['steps']} steps on {summary['train_pairs']} pairs in {summary['seconds']} s"]
    held = summary.get("held_out")
    if held:
        lines.append(f"  held-out pairs: {held['pairs']}, pair accuracy {held['pair_accuracy']:.3f}, "
                     f"loss {held['loss']:.3f}, ECE {held['expected_calibration_error']:.3f}")
    else:
        lines.append("  no held-out pairs (data.held_out_fraction 0, or one question only)")
    lines.append(f"  train pair accuracy {summary['train']['pair_accuracy']:.3f} (a sample of {summary['train']['pairs']})")
    if summary.get("pairs_file"):
        lines.append(f"  pairs: {summary['pairs_file']}")
    if summary.get("calibration_plot"):
        lines.append(f"  calibration plot: {summary['calibration_plot']}")
    lines.append(f"  model: {summary['model']}  (agentenv.trainers.algorithms.reward_model.load_reward_model)")
    lines.append(f"  best-of-N with it: agentenv eval --best-of 8 --select reward-model --reward-model {summary['model']}")
    return "\n".join(lines)
