"""A reward model: a scalar head on a causal LM, and its Bradley-Terry loss on preference pairs.
``agentenv rm train`` (trainers/loop/reward_model_training.py) trains one.

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

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from agentenv.trainers.algorithms.logprobs import micro_batches, pad_trajectories
from agentenv.trainers.algorithms.update import clip_grad_norm
from agentenv.trajectory import Segment, Trajectory

FORMAT = "agentenv.reward_model"
TINY_RANDOM = "tiny-random"


# --- the loss's settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BradleyTerryConfig:
    margin: float = 0.0  # m: r⁺ must beat r⁻ by this much (a pair's own "margin" field wins)
    center_coefficient: float = 0.01  # λ of the r² regulariser (0.01 in Eisenstein et al. 2023)



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
    ``min_reward_gap``, the higher reward chosen. ``episodes`` are ``rollout``'s (trainers/rollout/rollout.py)."""
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


def build_reward_model(model_config: Any, lora_config: Any, tokenizer: Any, seed: int = 0) -> RewardModel:
    """The body named by ``model.name`` (LoRA-wrapped when ``lora.enabled``) with a fresh head;
    ``model_config``/``lora_config``: the ``model`` and ``lora`` sections of ``agentenv rm``'s config.
    A body or tokenizer that cannot be loaded is a ValueError naming ``model.name``."""
    from agentenv.models import tiny_random_model
    from agentenv.trainers.rollout.engines import default_dtype

    dtype = default_dtype(model_config.dtype)
    if model_config.name == TINY_RANDOM:
        lm = tiny_random_model(tokenizer, model_config.tiny_hidden_size, model_config.tiny_layers, seed=seed).to(dtype)
    else:
        from agentenv.trainers.rollout.policy import PolicyNotFound, load_policy_model

        try:
            lm, _, _ = load_policy_model(model_config.name, model_config.dtype)
        except (PolicyNotFound, OSError, ValueError) as error:
            raise ValueError(f"model.name: cannot load {model_config.name!r}: {error}") from None
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
    from agentenv.trainers.rollout.policy import PolicyNotFound, locate_policy, tokenizer_source

    if name == TINY_RANDOM:
        return load_tokenizer("embedded")
    try:
        return load_tokenizer(tokenizer_source(locate_policy(name)[0]))
    except (PolicyNotFound, OSError, ValueError) as error:
        raise ValueError(f"model.name: cannot load a tokenizer for {name!r}: {error}") from None


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


