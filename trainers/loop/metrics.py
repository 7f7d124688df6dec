"""What a training run writes while it runs: metrics, curves, transcripts.

* ``metrics.jsonl`` — one JSON object per step (``{"step": 3, "reward/mean": ..., ...}``);
* TensorBoard event files under ``tensorboard/`` when the ``tensorboard`` package is installed;
* with ``logging.wandb: true``, a Weights & Biases run under ``wandb/`` with the same metric names
  and the run's config; offline (nothing leaves the machine; ``wandb sync`` uploads it later) unless
  an API key is set (``WANDB_API_KEY`` or a ``~/.netrc`` entry) or ``WANDB_MODE`` says otherwise;
* ``transcripts/step_000003.jsonl`` — a few decoded episodes per step, each with its segments
  (prompt / policy / tool) and a ``text`` in which tool output is marked ``[TOOL]…[/TOOL]``;
* ``episodes.jsonl`` — every episode a rollout step trained on, one short line each (no text): its
  group, question id and class, reward and terms, tool calls and failed calls, length, finish
  reason. What the update was fed, to be read back by ``agentenv diagnose`` (the advantages
  follow from the groups' rewards).

After a resume, ``metrics.jsonl`` keeps only the steps up to the checkpoint, so the curves of a
killed and resumed run are those of an uninterrupted one; the steps cut from it move to
``metrics.redone.jsonl`` (computed once, thrown away, computed again: the experiment report counts
their time in the run's wall time). The wandb run continues under the id kept in ``wandb/run_id``.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agentenv.corpora import question_class
from agentenv.search_behaviour import episode_search_record

TOOL_OPEN, TOOL_CLOSE = "[TOOL]", "[/TOOL]"
# The steps a killed run logged past the checkpoint it resumed from, appended at each resume.
REDONE_METRICS = "metrics.redone.jsonl"


class MetricsLogger:
    """Append per-step metrics to ``metrics.jsonl``, TensorBoard and (optionally) wandb.

    ``wandb_project``: log to Weights & Biases in this project too (None: not at all), with
    ``config`` as the run's config.
    """

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        resume_step: int | None = None,
        wandb_project: str | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        restart_jsonl(self.path, resume_step, cut_to=self.run_dir / REDONE_METRICS)
        self._file = self.path.open("a")
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra (`pip install agentenv[plot]`)
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)
        self._wandb = None
        if wandb_project is not None:
            self._wandb = start_wandb_run(self.run_dir, wandb_project, config or {}, resumed=resume_step is not None)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        self._file.flush()
        scalars = {key: value for key, value in metrics.items() if _is_scalar(value)}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()


def _is_scalar(value: Any) -> bool:
    """What the curves show: finite numbers (not the phase name, not the question ids)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file this package wrote; a line cut by a kill is skipped, with a note."""
    import sys

    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"{path}:{number}: skipping a line that is not JSON (a run killed mid-write?)", file=sys.stderr)
    return records


def restart_jsonl(path: Path, resume_step: int | None, cut_to: Path | None = None) -> None:
    """Prepare a per-step JSONL file for appending: emptied for a fresh run (``resume_step`` None),
    cut after ``resume_step`` for a resumed one (the steps a killed run wrote past its checkpoint).
    ``cut_to``: append the whole lines cut to this file instead of dropping them (a fresh run
    empties it too)."""
    if resume_step is not None and path.exists():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if _step_of(line) <= resume_step]
        cut = [line for line in lines if resume_step < _step_of(line) < math.inf]
        path.write_text("".join(line + "\n" for line in kept))
        if cut_to is not None and cut:
            with cut_to.open("a") as file:
                file.write("".join(line + "\n" for line in cut))
    elif resume_step is None:
        path.write_text("")
        if cut_to is not None:
            cut_to.unlink(missing_ok=True)


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a line cut by kill -9: drop it


def _json_default(value: Any):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --- Weights & Biases ------------------------------------------------------------------------------


def wandb_mode() -> str | None:
    """``"offline"`` when no API key is set (no ``WANDB_API_KEY``, no ``~/.netrc`` entry for the
    wandb host) and ``WANDB_MODE`` chooses nothing, so no request ever tries the network; None
    lets wandb decide (online, with the key)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc().authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one wandb could not read either
        pass
    return "offline"


def start_wandb_run(run_dir: Path, project: str, config: Mapping[str, Any], resumed: bool):
    """A wandb run writing under ``run_dir/wandb/``; a resumed training run continues the wandb
    run whose id ``run_dir/wandb/run_id`` keeps (wandb drops steps it already has)."""
    import wandb  # optional extra: train() checked it is installed before loading the model

    id_file = run_dir / "wandb" / "run_id"
    if resumed and id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:8]  # wandb ids: lowercase letters and digits
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    return wandb.init(
        project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
        config=dict(config), mode=wandb_mode(),
    )


# --- transcripts ------------------------------------------------------------------------------------


def decode_segments(trajectory: Any, tokenizer: Any) -> list[dict[str, str]]:
    """A trajectory's segments decoded one by one, ``[{"source": "prompt", "text": ...}, ...]``:
    the layout of training transcripts and evaluation records alike (``agentenv view`` colours it)."""
    return [
        {"source": segment.source, "text": tokenizer.decode(list(segment.token_ids), skip_special_tokens=False)}
        for segment in trajectory.segments
    ]


def transcript(episode: Any, tokenizer: Any) -> dict[str, Any]:
    """One episode as training transcripts and evaluation records both write it (one layout; the
    trainer adds ``step`` and ``group``, ``agentenv eval`` adds ``mode``, ``class`` and ``sample``):
    the question, the outcome and its reward terms, tool use, the decoded ``segments`` and one
    ``text`` of them with tool output marked."""
    segments = decode_segments(episode.trajectory, tokenizer)
    text = "".join(
        f"{TOOL_OPEN}{s['text']}{TOOL_CLOSE}" if s["source"] == "tool" else s["text"] for s in segments
    )
    question, components = episode.question, episode.reward_components
    return {
        "id": question.get("id"),
        "kind": question.get("kind"),
        "question": question.get("question"),
        "answers": question.get("answers"),
        "answer": episode.answer,
        "exact_match": components.get("exact_match", 0.0),
        "f1": components.get("f1", 0.0),
        "reward": episode.reward,
        "reward_components": components,
        "format_valid": bool(episode.format_valid),
        "finish_reason": episode.finish_reason,
        "turns": episode.num_turns,
        "tool_calls": dict(episode.tool_calls),
        "policy_tokens": episode.trajectory.count("policy"),
        **search_fields(episode),
        "text": text,
        "segments": segments,
    }


def search_fields(episode: Any) -> dict[str, Any]:
    """``{"search": ...}``: what the episode's searches did (agentenv/search_behaviour.py), where its
    environment has a tool that returns passages; else nothing."""
    if not getattr(episode, "passage_tools", ()):
        return {}
    return {"search": asdict(episode_search_record(episode))}


EPISODES_FILE = "episodes.jsonl"


def episode_record(step: int, episode: Any) -> dict[str, Any]:
    """One line of ``episodes.jsonl``."""
    question = episode.question
    failed = sum(not call.get("ok", True) for turn in episode.turns for call in turn.get("calls", ()))
    return {
        "step": step,
        "group": episode.group,
        "id": question.get("id"),
        "class": question_class(question),
        "reward": episode.reward,
        "reward_components": dict(episode.reward_components),
        "format_valid": bool(episode.format_valid),
        "finish_reason": episode.finish_reason,
        "turns": episode.num_turns,
        "tool_calls": dict(episode.tool_calls),
        "failed_calls": failed,
        "policy_tokens": episode.trajectory.count("policy"),
        "total_tokens": len(episode.trajectory),
        "answer": episode.answer,
        "answer_cut": bool(getattr(episode, "answer_cut", False)),
        **search_fields(episode),
    }


def write_episodes(run_dir: str | Path, step: int, episodes: Sequence[Any]) -> Path:
    """Append a line per episode of step ``step`` to ``episodes.jsonl``."""
    path = Path(run_dir) / EPISODES_FILE
    with path.open("a") as file:
        for episode in episodes:
            file.write(json.dumps(episode_record(step, episode), default=_json_default) + "\n")
    return path


def write_transcripts(run_dir: str | Path, step: int, episodes: Sequence[Any], tokenizer: Any, count: int) -> Path | None:
    """Write the first episode of the first ``count`` groups to ``transcripts/step_NNNNNN.jsonl``."""
    if count <= 0 or not episodes:
        return None
    chosen, seen = [], set()
    for episode in episodes:
        if episode.group not in seen:
            seen.add(episode.group)
            chosen.append(episode)
        if len(chosen) == count:
            break
    folder = Path(run_dir) / "transcripts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.jsonl"
    with path.open("w") as file:
        for episode in chosen:
            record = {"step": step, "group": episode.group, **transcript(episode, tokenizer)}
            file.write(json.dumps(record, default=_json_default) + "\n")
    return path
