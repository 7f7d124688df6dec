"""A trajectory is a list of token segments, each tagged with who produced it.

The loss mask is built from the tags, never from decoded text: ``policy`` tokens get loss,
``prompt`` and ``tool`` tokens do not. The ids stored for a policy segment are exactly the ids the
policy emitted, so the trainer scores what the engine sampled (token in, token out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Source = Literal["prompt", "policy", "tool"]
SOURCES: tuple[Source, ...] = ("prompt", "policy", "tool")


@dataclass(frozen=True)
class Segment:
    source: Source
    token_ids: tuple[int, ...]
    # Log-probabilities the rollout engine reported for these tokens (policy segments only).
    logprobs: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"segment source must be one of {SOURCES}, got {self.source!r}")
        if self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(
                f"{len(self.logprobs)} logprobs for {len(self.token_ids)} tokens in a {self.source} segment"
            )


@dataclass
class Trajectory:
    segments: list[Segment] = field(default_factory=list)

    def append(self, source: Source, token_ids, logprobs=None) -> Segment:
        segment = Segment(
            source,
            tuple(int(t) for t in token_ids),
            None if logprobs is None else tuple(float(x) for x in logprobs),
        )
        self.segments.append(segment)
        return segment

    @property
    def token_ids(self) -> list[int]:
        return [t for segment in self.segments for t in segment.token_ids]

    @property
    def policy_mask(self) -> list[int]:
        """1 for every token the policy generated, 0 for prompt and tool tokens."""
        return [int(s.source == "policy") for s in self.segments for _ in s.token_ids]

    @property
    def sources(self) -> list[Source]:
        return [s.source for s in self.segments for _ in s.token_ids]

    @property
    def prompt_length(self) -> int:
        """Tokens before the first policy segment: the part every sample of a group shares."""
        length = 0
        for segment in self.segments:
            if segment.source == "policy":
                break
            length += len(segment.token_ids)
        return length

    @property
    def policy_logprobs(self) -> list[float] | None:
        """Engine logprobs of the policy tokens in order, or None if any segment lacks them."""
        out: list[float] = []
        for segment in self.segments:
            if segment.source == "policy":
                if segment.logprobs is None:
                    return None
                out.extend(segment.logprobs)
        return out

    def count(self, source: Source) -> int:
        return sum(len(s.token_ids) for s in self.segments if s.source == source)

    def __len__(self) -> int:
        return sum(len(s.token_ids) for s in self.segments)
