"""A trajectory is a list of token segments, each tagged with who produced it; an episode is a
finished trajectory with its reward.

The loss mask is built from the tags, never from decoded text: ``policy`` tokens get loss,
``prompt`` and ``tool`` tokens do not. The ids stored for a policy segment are exactly the ids the
policy emitted, so the trainer scores what the engine sampled (token in, token out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agentenv.rewards import exact_match

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


@dataclass(frozen=True)
class SampledTurn:
    """What the rollout engine returned for one turn, kept apart from the trajectory so that the
    trainer can check that the ids it trains on are the ids the engine sampled."""

    token_ids: tuple[int, ...]
    finish_reason: str  # the engine's: "stop" (a stop string or EOS) or "length" (the turn's budget)


@dataclass
class Episode:
    """One finished episode, as every loss and every metric reads it: its trajectory (token ids,
    tags, engine logprobs), the reward and its terms, and what the environment reported.

    ``group`` numbers the question: the samples of one question share it (a GRPO/RLOO group).
    ``Episode.from_info`` builds one from a finished environment's ``info``.
    """

    trajectory: Trajectory
    reward: float
    group: int = 0
    question: dict[str, Any] = field(default_factory=dict)
    reward_components: dict[str, float] = field(default_factory=dict)
    finish_reason: str | None = None
    num_turns: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict)
    answer: str | None = None
    format_valid: bool = False
    turns: list[dict[str, Any]] = field(default_factory=list)  # per turn, its calls (ToolEnv's info["turns"])
    answer_cut: bool = False  # the answer was read from a turn that ran into its token budget
    passage_tools: tuple[str, ...] = ()  # the environment's tools that return passages (searches)
    sampled_turns: list[SampledTurn] | None = None  # the engine's output per turn, when a rollout recorded it

    @classmethod
    def from_info(cls, info: dict[str, Any], reward: float, group: int = 0) -> Episode:
        return cls(
            trajectory=info["trajectory"],
            reward=float(reward),
            group=group,
            question=info.get("question") or {},
            reward_components=dict(info.get("reward_components", {})),
            finish_reason=info.get("finish_reason"),
            num_turns=info.get("num_turns", 0),
            tool_calls=dict(info.get("tool_calls", {})),
            answer=info.get("answer"),
            format_valid=bool(info.get("format_valid", False)),
            turns=list(info.get("turns", [])),
            answer_cut=bool(info.get("answer_cut", False)),
            passage_tools=tuple(info.get("passage_tools", ())),
        )

    @classmethod
    def from_tokens(
        cls, token_ids: list[int], policy_mask: list[int], reward: float, group: int = 0,
        policy_logprobs: list[float] | None = None,
    ) -> Episode:
        """An episode from flat token ids and a 0/1 policy mask: each run of 1s is a ``policy``
        segment (with its share of ``policy_logprobs``), the 0s before the first one the
        ``prompt``, every later run of 0s ``tool`` output."""
        if len(token_ids) != len(policy_mask):
            raise ValueError(f"{len(policy_mask)} mask entries for {len(token_ids)} tokens")
        trajectory = Trajectory()
        start, used = 0, 0
        for end in range(1, len(token_ids) + 1):
            if end == len(token_ids) or policy_mask[end] != policy_mask[start]:
                if policy_mask[start]:
                    logprobs = None
                    if policy_logprobs is not None:
                        logprobs, used = policy_logprobs[used : used + end - start], used + end - start
                    trajectory.append("policy", token_ids[start:end], logprobs)
                else:
                    trajectory.append("tool" if trajectory.segments else "prompt", token_ids[start:end])
                start = end
        return cls(trajectory, float(reward), group)

    @property
    def token_ids(self) -> list[int]:
        return self.trajectory.token_ids

    @property
    def policy_mask(self) -> list[int]:
        return self.trajectory.policy_mask

    @property
    def engine_logprobs(self) -> list[float] | None:
        """The engine's logprob of every policy token, in order (None if it reported none)."""
        return self.trajectory.policy_logprobs

    @engine_logprobs.setter
    def engine_logprobs(self, logprobs: list[float]) -> None:
        """Replace the policy segments' logprobs, one per policy token in order."""
        if len(logprobs) != self.trajectory.count("policy"):
            raise ValueError(f"{len(logprobs)} logprobs for {self.trajectory.count('policy')} policy tokens")
        segments, used = [], 0
        for segment in self.trajectory.segments:
            if segment.source == "policy":
                n = len(segment.token_ids)
                segment = Segment("policy", segment.token_ids, tuple(float(x) for x in logprobs[used : used + n]))
                used += n
            segments.append(segment)
        self.trajectory.segments = segments

    @property
    def exact_match(self) -> float:
        return exact_match(self.answer, self.question.get("answers", []))
