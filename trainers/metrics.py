"""What a training run writes while it runs: metrics, curves, transcripts.

* ``metrics.jsonl`` — one JSON object per step (``{"step": 3, "reward/mean": ..., ...}``);
* TensorBoard event files under ``tensorboard/`` when the ``tensorboard`` package is installed;
* ``transcripts/step_000003.jsonl`` — a few decoded episodes per step, each with its segments
  (prompt / policy / tool) and a ``text`` in which tool output is marked ``[TOOL]…[/TOOL]``.

After a resume, ``metrics.jsonl`` keeps only the steps up to the checkpoint, so the curves of a
killed and resumed run are those of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TOOL_OPEN, TOOL_CLOSE = "[TOOL]", "[/TOOL]"


class MetricsLogger:
    """Append per-step metrics to ``metrics.jsonl`` and TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        self._file = self.path.open("a")
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra (`pip install agentenv[plot]`)
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a line cut by kill -9: drop it


def _json_default(value: Any):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def transcript(episode: Any, tokenizer: Any) -> dict[str, Any]:
    """One episode, decoded: its segments, and a single text with tool output marked."""
    segments = [
        {"source": segment.source, "text": tokenizer.decode(list(segment.token_ids), skip_special_tokens=False)}
        for segment in episode.trajectory.segments
    ]
    text = "".join(
        f"{TOOL_OPEN}{s['text']}{TOOL_CLOSE}" if s["source"] == "tool" else s["text"] for s in segments
    )
    question = episode.question
    return {
        "id": question.get("id"),
        "question": question.get("question"),
        "answers": question.get("answers"),
        "group": episode.group,
        "reward": episode.reward,
        "reward_components": episode.reward_components,
        "finish_reason": episode.finish_reason,
        "num_turns": episode.num_turns,
        "tool_calls": episode.tool_calls,
        "text": text,
        "segments": segments,
    }


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
            file.write(json.dumps({"step": step, **transcript(episode, tokenizer)}, default=_json_default) + "\n")
    return path
