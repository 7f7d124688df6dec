"""A reward model: a scalar head on a causal LM, trained on preference pairs with the Bradley-Terry loss.

    agentenv rm train --config configs/rm-geo.yaml [--set train.steps=200 ...] [--out runs/rm-geo]
    agentenv rm pairs --config configs/rm-geo.yaml --out runs/rm-pairs      # only build the pairs

A sequence is a prompt x followed by a response y (a whole trajectory: prompt, policy turns, tool
output), T tokens in all. h_T is the LM body's last hidden state at the last token, and the score is::

    r(x, y) = w · h_T + b                      a linear head (w, b) on the body; no vocabulary projection

Bradley-Terry (1952): P(y⁺ ≻ y⁻ | x) = σ(r(x, y⁺) − r(x, y⁻)). For pair k, with the margin m_k (the
pair's own ``margin`` field as TRL reads it, else ``loss.margin``; Llama 2, Touvron et al. 2023,
§3.2.2) and λ = ``loss.center_coefficient``::

    Δ_k = r(x_k, y⁺_k) − r(x_k, y⁻_k) − m_k
    ℓ_k = −log σ(Δ_k) + λ (r(x_k, y⁺_k) + r(x_k, y⁻_k))²
    L   = (1/K) Σ_k ℓ_k                        over the K pairs of a step (``train.pairs_per_step``)

    ∂ℓ_k/∂r⁺ = −σ(−Δ_k) + 2λ (r⁺ + r⁻)        ∂ℓ_k/∂r⁻ = σ(−Δ_k) + 2λ (r⁺ + r⁻)

The second term is the small r² regulariser used in practice (Eisenstein et al. 2023; TRL's
``center_rewards_coefficient``): Bradley-Terry sees only differences, so adding a constant to every
score changes no Δ; the term pins the scores near 0, which a later reward term relies on.

Pairs come from one of:

* a JSONL (or Parquet) file in the preference format TRL's reward trainer reads: ``chosen`` and
  ``rejected``, an optional ``prompt`` (explicit prompt; without it the prompt is implicit in both)
  and an optional ``margin``; each either text (the scored sequence is prompt + chosen) or chat
  messages ``[{"role", "content"}, ...]`` (rendered with the tokenizer's chat template);
* rollouts of a policy on an environment (``data.rollouts``): within each question, every two samples
  whose verifiable rewards differ (by more than ``min_reward_gap``) make a pair, the higher one
  chosen. They are written to ``<out>/pairs.jsonl`` in the same format — the decoded prompt, chosen
  and rejected text — plus the question, both rewards and both trajectories' segments (token ids and
  engine logprobs), so a pair read back is scored on the ids the policy sampled (token in, token out).

Held-out pairs are ``data.held_out_fraction`` of the questions (of the prompts, for a file without
them), so no question has pairs on both sides. The run reports their pair accuracy (r⁺ > r⁻, ties
half) and a calibration plot; the model folder (``<out>/model``) holds ``model.safetensors`` (body
and head, LoRA merged in), ``reward_model.json`` (the LM's config and what the head reads) and the
tokenizer. ``load_reward_model(folder).score(trajectories)`` scores finished episodes in batches.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from agentenv.rewards import RewardConfig
from agentenv.trainers.config import (
    ConfigError,
    EnvConfig,
    LoRAConfig,
    OptimConfig,
    _build,
    read_config_data,
    to_dict,
)
from agentenv.trainers.grpo import clip_grad_norm, lr_multiplier, micro_batches, pad_trajectories
from agentenv.trajectory import Segment, Trajectory

FORMAT = "agentenv.reward_model"
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
    env: EnvConfig = field(default_factory=lambda: EnvConfig(id="agentenv/SearchQA-v0"))
    reward: RewardConfig = field(default_factory=RewardConfig)  # the verifier that orders the samples
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
class BradleyTerryConfig:
    margin: float = 0.0  # m: r⁺ must beat r⁻ by this much (a pair's own "margin" field wins)
    center_coefficient: float = 0.01  # λ of the r² regulariser (0.01 in Eisenstein et al. 2023)


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


# --- preference pairs ----------------------------------------------------------------------------

Text = str | list[dict[str, Any]]  # plain text, or chat messages [{"role", "content"}, ...]


@dataclass
class PreferencePair:
    """One preference: ``chosen`` ≻ ``rejected`` after ``prompt`` (None: implicit in both).

    Pairs from rollouts also carry the question, both verifiable rewards and both trajectories;
    their token ids are what the reward model scores.
    """

    chosen: Text
    rejected: Text
    prompt: Text | None = None
    margin: float | None = None
    question: dict[str, Any] | None = None
    chosen_reward: float | None = None
    rejected_reward: float | None = None
    chosen_trajectory: Trajectory | None = None
    rejected_trajectory: Trajectory | None = None

    @property
    def group(self) -> str:
        """What the held-out split keeps together: the question, else the prompt."""
        if self.question is not None:
            return "question:" + str(self.question.get("id") or self.question.get("question"))
        if self.prompt is not None:
            return "prompt:" + json.dumps(self.prompt, sort_keys=True)
        return "pair:" + json.dumps([self.chosen, self.rejected], sort_keys=True)


def pair_to_record(pair: PreferencePair) -> dict[str, Any]:
    """The JSON object of one pair: TRL's columns first, then what rollouts add."""
    record: dict[str, Any] = {}
    if pair.prompt is not None:
        record["prompt"] = pair.prompt
    record["chosen"], record["rejected"] = pair.chosen, pair.rejected
    if pair.margin is not None:
        record["margin"] = pair.margin
    if pair.question is not None:
        record["question"] = pair.question
    if pair.chosen_reward is not None:
        record["chosen_reward"], record["rejected_reward"] = pair.chosen_reward, pair.rejected_reward
    if pair.chosen_trajectory is not None:
        record["chosen_segments"] = [_segment_record(s) for s in pair.chosen_trajectory.segments]
        record["rejected_segments"] = [_segment_record(s) for s in pair.rejected_trajectory.segments]
    return record


def _segment_record(segment: Segment) -> dict[str, Any]:
    logprobs = None if segment.logprobs is None else list(segment.logprobs)
    return {"source": segment.source, "token_ids": list(segment.token_ids), "logprobs": logprobs}


def pair_from_record(record: Any, where: str) -> PreferencePair:
    """A pair from one JSON object (``where``: file and line, for the error message)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'chosen' and 'rejected', got {type(record).__name__}")
    missing = [key for key in ("chosen", "rejected") if key not in record]
    if missing:
        raise ValueError(
            f"{where}: no {' or '.join(map(repr, missing))} (keys: {', '.join(record) or 'none'}); a preference "
            "pair has 'chosen' and 'rejected' (text or chat messages) and an optional 'prompt'"
        )
    kinds = {key: _text_kind(record[key], f"{where}: {key!r}") for key in ("prompt", "chosen", "rejected") if record.get(key) is not None}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{key} is {kind}" for key, kind in kinds.items())
        raise ValueError(f"{where}: mixes text and chat messages ({shown}); use one or the other")
    margin = record.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
        raise ValueError(f"{where}: 'margin' must be a number, got {margin!r}")
    trajectories = []
    for side in ("chosen", "rejected"):
        segments = record.get(f"{side}_segments")
        trajectories.append(None if segments is None else _trajectory_from(segments, f"{where}: '{side}_segments'"))
    if (trajectories[0] is None) != (trajectories[1] is None):
        raise ValueError(f"{where}: 'chosen_segments' and 'rejected_segments' go together")
    return PreferencePair(
        chosen=record["chosen"],
        rejected=record["rejected"],
        prompt=record.get("prompt"),
        margin=None if margin is None else float(margin),
        question=record.get("question"),
        chosen_reward=record.get("chosen_reward"),
        rejected_reward=record.get("rejected_reward"),
        chosen_trajectory=trajectories[0],
        rejected_trajectory=trajectories[1],
    )


def _text_kind(value: Any, where: str) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return "chat messages"
    raise ValueError(f"{where}: expected text or chat messages [{{'role': ..., 'content': ...}}, ...], got {value!r:.80}")


def _trajectory_from(segments: Any, where: str) -> Trajectory:
    trajectory = Trajectory()
    try:
        for segment in segments:
            trajectory.append(segment["source"], segment["token_ids"], segment.get("logprobs"))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: not a list of segments {{source, token_ids, logprobs}}: {error}") from None
    return trajectory


def read_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """The pairs of a JSONL or Parquet file; an error names the file and the line (or row)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        rows = pq.read_table(path).to_pylist()
        return [pair_from_record(row, f"{path}: row {number}") for number, row in enumerate(rows, 1)]
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON: {error}") from None
        pairs.append(pair_from_record(record, f"{path}:{number}"))
    return pairs


def write_preference_pairs(path: str | Path, pairs: Sequence[PreferencePair]) -> Path:
    """One JSON object per line; ``read_preference_pairs`` gives the same pairs back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        for pair in pairs:
            file.write(json.dumps(pair_to_record(pair)) + "\n")
    return path


def pair_token_ids(pair: PreferencePair, tokenizer: Any) -> tuple[list[int], list[int]]:
    """The token ids scored for each side: a trajectory's own ids, else the tokenized text (prompt +
    response as one string, or prompt + response messages through the chat template)."""
    if pair.chosen_trajectory is not None:
        return pair.chosen_trajectory.token_ids, pair.rejected_trajectory.token_ids

    def ids(response: Text) -> list[int]:
        if isinstance(response, list):
            messages = [*(pair.prompt or []), *response]
            return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        return list(tokenizer((pair.prompt or "") + response)["input_ids"])

    return ids(pair.chosen), ids(pair.rejected)


def pairs_from_episodes(episodes: Sequence[Any], tokenizer: Any, min_reward_gap: float = 0.0) -> list[PreferencePair]:
    """Every two episodes of one group (one question) whose rewards differ by more than
    ``min_reward_gap``, the higher reward chosen. ``episodes`` are ``rollout``'s (trainers/rollout.py)."""
    by_group: dict[int, list[Any]] = defaultdict(list)
    for episode in episodes:
        by_group[episode.group].append(episode)
    pairs = []
    for members in by_group.values():
        for a, b in combinations(members, 2):
            chosen, rejected = (a, b) if a.reward >= b.reward else (b, a)
            if chosen.reward - rejected.reward > min_reward_gap:
                pairs.append(rollout_pair(chosen, rejected, tokenizer))
    return pairs


def rollout_pair(chosen: Any, rejected: Any, tokenizer: Any) -> PreferencePair:
    """A pair of two episodes of the same question, the text decoded for reading."""
    start = chosen.trajectory.prompt_length
    prompt_ids = chosen.trajectory.token_ids[:start]
    if rejected.trajectory.token_ids[: rejected.trajectory.prompt_length] != prompt_ids:
        raise ValueError(f"episodes of question {chosen.question.get('id')!r} have different prompts: not a pair")
    return PreferencePair(
        prompt=tokenizer.decode(prompt_ids),
        chosen=tokenizer.decode(chosen.trajectory.token_ids[start:]),
        rejected=tokenizer.decode(rejected.trajectory.token_ids[start:]),
        question=dict(chosen.question),
        chosen_reward=float(chosen.reward),
        rejected_reward=float(rejected.reward),
        chosen_trajectory=chosen.trajectory,
        rejected_trajectory=rejected.trajectory,
    )


def collect_rollout_pairs(config: RolloutPairsConfig, seed: int = 0, engine: Any = None, tokenizer: Any = None):
    """Roll the policy out ``samples_per_question`` times on each question and pair the samples.

    Returns ``(pairs, stats)``. ``engine`` and ``tokenizer`` replace the policy ``config.policy``
    names (tests pass a scripted engine). A bar of finished questions goes to stderr.
    """
    from tqdm import tqdm

    from agentenv.trainers.config import TrainConfig
    from agentenv.trainers.engines import SamplingConfig
    from agentenv.trainers.rollout import rollout
    from agentenv.trainers.train import make_envs

    if engine is None:
        from agentenv.trainers.policy import load_policy_engine

        engine, tokenizer, _ = load_policy_engine(config.policy, config.engine)
    G = config.samples_per_question
    count = max(1, config.batch_size // G) * G
    try:  # the trainer's own environments: one shared index and question list, the reward config
        envs = make_envs(TrainConfig(env=config.env, reward=config.reward), tokenizer, count, config.questions)
    except ConfigError as error:
        raise ConfigError(f"data.rollouts.{error}") from None
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


def split_held_out(
    pairs: Sequence[PreferencePair], fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, held_out)``: a seeded ``fraction`` of the groups (questions) is held out whole."""
    groups = list(dict.fromkeys(p.group for p in pairs))
    count = max(1, round(fraction * len(groups))) if fraction > 0 and len(groups) > 1 else 0
    random.Random(seed).shuffle(groups)
    held = set(groups[:count])
    return [p for p in pairs if p.group not in held], [p for p in pairs if p.group in held]


# --- the model -----------------------------------------------------------------------------------


class RewardModel(torch.nn.Module):
    """``r(x, y) = w · h_T + b``: a linear head on a causal LM's last hidden state at the last token.

    ``lm`` may be a peft LoRA model; its adapter runs inside the body. ``forward`` takes right-padded
    ids; ``score`` takes trajectories or token id lists and batches them itself::

        reward_model = load_reward_model("runs/rm-geo/model")
        scores = reward_model.score([episode.trajectory for episode in batch.episodes])
    """

    def __init__(self, lm: torch.nn.Module, tokenizer: Any = None, max_tokens: int = 2048):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        hidden_size = self._base().config.hidden_size
        # float32 whatever the body's dtype; small weights, so the body gets gradient from step one
        self.head = torch.nn.Linear(hidden_size, 1, dtype=torch.float32)
        torch.nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden_size + 1))
        torch.nn.init.zeros_(self.head.bias)

    def _base(self) -> torch.nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores ``[n]`` of right-padded sequences ``[n, T]``."""
        body = self._base().get_decoder()
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token
        return self.head(hidden[torch.arange(len(last), device=last.device), last].float()).squeeze(-1)

    @torch.no_grad()
    def score(self, sequences: Sequence[Trajectory | Sequence[int]], batch_size: int = 8) -> list[float]:
        """One score per trajectory (or list of token ids), ``batch_size`` sequences per forward pass
        of similar lengths. The ids are scored as they are: the policy must share this model's tokenizer."""
        ids = [list(s.token_ids) if isinstance(s, Trajectory) else list(s) for s in sequences]
        if not ids:
            return []
        was_training = self.training
        self.eval()
        scores = torch.zeros(len(ids))
        batch = pad_trajectories(ids, [[1] * len(s) for s in ids], self.pad_id)
        for rows in micro_batches(torch.arange(len(ids)), batch.lengths, batch_size):
            scores[rows] = self._forward_rows(batch, rows).cpu()
        self.train(was_training)
        return scores.tolist()

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def _forward_rows(self, batch: Any, rows: torch.Tensor) -> torch.Tensor:
        width = int(batch.lengths[rows].max())
        device = self.head.weight.device
        return self(batch.input_ids[rows, :width].to(device), batch.attention_mask[rows, :width].to(device))


def build_reward_model(model_config: RMModelConfig, lora_config: LoRAConfig, tokenizer: Any, seed: int = 0) -> RewardModel:
    """The body named by ``model.name`` (LoRA-wrapped when ``lora.enabled``) with a fresh head."""
    from agentenv.models import tiny_random_model
    from agentenv.trainers.engines import default_dtype

    dtype = default_dtype(model_config.dtype)
    if model_config.name == TINY_RANDOM:
        lm = tiny_random_model(tokenizer, model_config.tiny_hidden_size, model_config.tiny_layers, seed=seed).to(dtype)
    else:
        from agentenv.trainers.policy import PolicyNotFound, load_policy_model

        try:
            lm, _, _ = load_policy_model(model_config.name, model_config.dtype)
        except (PolicyNotFound, OSError, ValueError) as error:
            raise ConfigError(f"model.name: cannot load {model_config.name!r}: {error}") from None
    if model_config.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_config.enabled:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(
            r=lora_config.r, lora_alpha=lora_config.alpha, lora_dropout=lora_config.dropout,
            target_modules=list(lora_config.target_modules),
        ))
    torch.manual_seed(seed)
    model = RewardModel(lm, tokenizer, model_config.max_tokens)
    return model.cuda() if torch.cuda.is_available() else model


def load_rm_tokenizer(name: str) -> Any:
    from agentenv.models import load_tokenizer
    from agentenv.trainers.policy import PolicyNotFound, locate_policy, tokenizer_source

    if name == TINY_RANDOM:
        return load_tokenizer("embedded")
    try:
        return load_tokenizer(tokenizer_source(locate_policy(name)[0]))
    except (PolicyNotFound, OSError, ValueError) as error:
        raise ConfigError(f"model.name: cannot load a tokenizer for {name!r}: {error}") from None


def save_reward_model(model: RewardModel, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
    """``model.safetensors`` (body and head; a LoRA adapter is merged in first), ``reward_model.json``
    and the tokenizer, in ``folder``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model.lm, "merge_and_unload"):
        model.lm = model.lm.merge_and_unload()
    save_model(model, str(folder / "model.safetensors"))  # drops the tied LM head's duplicate
    meta = {
        "format": FORMAT,
        "version": 1,
        "score": "head(w, b) on the body's last hidden state at the last token",
        "max_tokens": model.max_tokens,
        "dtype": str(next(model.lm.parameters()).dtype).removeprefix("torch."),
        "lm_config": model.lm.config.to_dict(),
        **(info or {}),
    }
    (folder / "reward_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder)
    return folder


def reward_model_folder(path: str | Path) -> Path | None:
    """The folder holding ``reward_model.json`` for ``path`` (a run folder or its ``model``
    folder), or None when neither holds one."""
    folder = Path(path)
    for candidate in (folder / "model", folder):
        if (candidate / "reward_model.json").is_file():
            return candidate
    return None


def load_reward_model(path: str | Path, device: str | torch.device | None = None) -> RewardModel:
    """A reward model saved by ``agentenv rm train`` (its run folder or its ``model`` folder), in
    eval mode, on ``device`` (default: the GPU if there is one)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = reward_model_folder(path)
    if folder is None:
        raise FileNotFoundError(f"{path}: no reward_model.json (train one with `agentenv rm train`)")
    meta_file = folder / "reward_model.json"
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: not an agentenv reward model (format {meta.get('format')!r})")
    lm_config = dict(meta["lm_config"])
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**lm_config)).to(getattr(torch, meta["dtype"]))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = RewardModel(lm, tokenizer, meta["max_tokens"])
    load_model(model, str(folder / "model.safetensors"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


# --- the loss and one step -------------------------------------------------------------------------


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0, center_coefficient: float = 0.0
) -> torch.Tensor:
    """ℓ_k = −log σ(r⁺_k − r⁻_k − m_k) + λ (r⁺_k + r⁻_k)², per pair (shape ``[K]``)."""
    delta = chosen - rejected - margin
    return -F.logsigmoid(delta) + center_coefficient * (chosen + rejected) ** 2


@dataclass(frozen=True)
class TokenPair:
    chosen: list[int]
    rejected: list[int]
    margin: float


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer: Any, default_margin: float, max_tokens: int):
    """``(token pairs, how many were left out for being longer than max_tokens)``."""
    kept, too_long = [], 0
    for pair in pairs:
        chosen, rejected = pair_token_ids(pair, tokenizer)
        if max(len(chosen), len(rejected)) > max_tokens:
            too_long += 1
            continue
        kept.append(TokenPair(chosen, rejected, default_margin if pair.margin is None else pair.margin))
    return kept, too_long


def _pair_scores(model: RewardModel, pairs: Sequence[TokenPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(r⁺, r⁻) of the pairs, in one forward pass over their 2K right-padded sequences."""
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = pad_trajectories(sequences, [[1] * len(s) for s in sequences], pad_id)
    scores = model._forward_rows(batch, torch.arange(len(sequences)))
    return scores[: len(pairs)], scores[len(pairs) :]


def _pair_micro_batches(pairs: Sequence[TokenPair], size: int) -> list[list[TokenPair]]:
    """Micro-batches of ``size`` pairs of similar lengths (each padded only to its own longest)."""
    lengths = torch.tensor([max(len(p.chosen), len(p.rejected)) for p in pairs])
    return [[pairs[i] for i in rows.tolist()] for rows in micro_batches(torch.arange(len(pairs)), lengths, size)]


def bradley_terry_step(
    model: RewardModel,
    optimizer: torch.optim.Optimizer,
    pairs: Sequence[TokenPair],
    config: BradleyTerryConfig,
    micro_batch_pairs: int = 4,
    max_grad_norm: float | None = 1.0,
) -> dict[str, float]:
    """One optimizer step on L = (1/K) Σ_k ℓ_k; micro-batch gradients sum to exactly L's."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums = {"loss": 0.0, "accuracy": 0.0, "reward_gap": 0.0, "reward_mean": 0.0}
    device = model.head.weight.device
    for chunk in _pair_micro_batches(pairs, micro_batch_pairs):
        chosen, rejected = _pair_scores(model, chunk, model.pad_id)
        margin = torch.tensor([p.margin for p in chunk], device=device)
        loss = bradley_terry_loss(chosen, rejected, margin, config.center_coefficient).sum() / len(pairs)
        loss.backward()
        sums["loss"] += loss.item()
        sums["accuracy"] += _wins(chosen.detach(), rejected.detach()).sum().item() / len(pairs)
        sums["reward_gap"] += (chosen - rejected).detach().sum().item() / len(pairs)
        sums["reward_mean"] += (chosen + rejected).detach().sum().item() / (2 * len(pairs))
    grad_norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {f"rm/{key}": value for key, value in sums.items()} | {"grad_norm": grad_norm}


def _wins(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """1 where r⁺ > r⁻, ½ on a tie, 0 otherwise."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


@torch.no_grad()
def evaluate_pairs(
    model: RewardModel, pairs: Sequence[TokenPair], config: BradleyTerryConfig, micro_batch_pairs: int = 4
) -> dict[str, Any]:
    """Pair accuracy, mean loss and P(chosen ≻ rejected) = σ(r⁺ − r⁻) of each pair, without gradients."""
    was_training = model.training
    model.eval()
    chosen_all, rejected_all, losses = [], [], []
    for chunk in _pair_micro_batches(pairs, micro_batch_pairs):
        chosen, rejected = _pair_scores(model, chunk, model.pad_id)
        margin = torch.tensor([p.margin for p in chunk], device=chosen.device)
        losses.append(bradley_terry_loss(chosen, rejected, margin, config.center_coefficient).cpu())
        chosen_all.append(chosen.cpu())
        rejected_all.append(rejected.cpu())
    model.train(was_training)
    chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)
    probabilities = torch.sigmoid(chosen - rejected).tolist()
    bins, ece = calibration_bins(probabilities)
    return {
        "pairs": len(pairs),
        "pair_accuracy": _wins(chosen, rejected).mean().item(),
        "loss": torch.cat(losses).mean().item(),
        "reward_gap": (chosen - rejected).mean().item(),
        "expected_calibration_error": ece,
        "calibration": bins,
        "probabilities": probabilities,
    }


def calibration_bins(probabilities: Sequence[float], bins: int = 10) -> tuple[list[dict[str, float]], float]:
    """Reliability of p = P(chosen ≻ rejected) = σ(r⁺ − r⁻): ``(bins, expected calibration error)``.

    Every labelled pair has chosen ≻ rejected, so each enters in both orientations — (p, ≻ observed)
    and (1 − p, not observed) — and a bin's observed frequency is how often "first ≻ second" held
    among the predictions that fell in it. A calibrated model lies on the diagonal; the curve is
    symmetric about (½, ½) by construction.
    """
    points = [(p, 1.0) for p in probabilities] + [(1 - p, 0.0) for p in probabilities]
    cells: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for p, observed in points:
        cells[min(int(p * bins), bins - 1)].append((p, observed))
    table, ece = [], 0.0
    for index, cell in enumerate(cells):
        if not cell:
            continue
        predicted = sum(p for p, _ in cell) / len(cell)
        observed = sum(o for _, o in cell) / len(cell)
        ece += len(cell) / len(points) * abs(predicted - observed)
        table.append({"low": index / bins, "high": (index + 1) / bins, "count": len(cell),
                      "predicted": predicted, "observed": observed})
    return table, ece


def plot_calibration(held_out: dict[str, Any], path: Path) -> Path | None:
    """The reliability diagram of the held-out pairs as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bins = held_out["calibration"]
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
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

    from agentenv.trainers.metrics import MetricsLogger
    from agentenv.trainers.train import QuestionOrder, seed_everything

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    started = time.perf_counter()
    seed_everything(config.seed)
    tokenizer = load_rm_tokenizer(config.model.name)
    train_pairs, held_out_pairs, notes = build_pairs(config, tokenizer, out)
    train_ids, too_long = tokenize_pairs(train_pairs, tokenizer, config.loss.margin, config.model.max_tokens)
    held_ids, held_too_long = tokenize_pairs(held_out_pairs, tokenizer, config.loss.margin, config.model.max_tokens)
    if too_long or held_too_long:
        print(f"agentenv rm: left out {too_long + held_too_long} pairs longer than model.max_tokens "
              f"({config.model.max_tokens})", file=sys.stderr)
    if not train_ids:
        raise ConfigError(f"data: no training pairs ({len(train_pairs)} read, {too_long} too long)")

    model = build_reward_model(config.model, config.lora, tokenizer, config.seed)
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    steps = config.train.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, optim.warmup_steps, steps, optim.schedule, optim.min_lr_ratio)
    )
    logger = MetricsLogger(out, tensorboard=config.train.tensorboard)
    order = QuestionOrder(len(train_ids), config.seed)  # a seeded order, reshuffled every epoch
    bar = tqdm(total=steps, desc="rm train", unit="step", file=sys.stderr)
    try:
        for step in range(1, steps + 1):
            batch = [train_ids[i] for i in order.take(config.train.pairs_per_step)]
            metrics = bradley_terry_step(
                model, optimizer, batch, config.loss, config.train.micro_batch_pairs, optim.max_grad_norm
            )
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['rm/loss']:.3f}", acc=f"{metrics['rm/accuracy']:.2f}")
            metrics["lr"] = scheduler.get_last_lr()[0]
            scheduler.step()
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
    lines.append(f"  model: {summary['model']}  (agentenv.trainers.reward_model.load_reward_model)")
    lines.append(f"  best-of-N with it: agentenv eval --best-of 8 --select reward-model --reward-model {summary['model']}")
    return "\n".join(lines)
