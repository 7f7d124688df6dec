"""A training run's health: invariants checked on every batch, and alerts on the shapes of known failures.

The failures of search-agent RL that the field reports most are silent: the reward curve looks fine
while the loss trains on tokens the model never sampled, or the policy stops searching. Every
rollout step here checks, before its update::

    mask       every loss token (a 1 in the padded batch's policy mask, the one the update reads)
               is a token of a ``policy`` segment, and every policy token is a loss token
    ids        the ids at the loss positions are the ids the engine returned for the episode's
               turns, in order (``Episode.sampled_turns``), cut only where the environment said it
               cut a turn (``turns[k]["cut"]``)
    answer     an answer read from a turn that the engine stopped at its token budget is marked
               ``answer_cut`` (its reward was computed from what may be half an answer, and says so)

and after it::

    gap        the engine–trainer log-prob gap |e_{i,t} − logπ_old(o_{i,t})| over policy tokens,
               mean ≤ ``logprob_gap_mean_limit`` and max ≤ ``logprob_gap_max_limit``

A violation stops the run (``InvariantViolation``: the episode, the token, what was expected) before
the step is checkpointed, so ``--resume`` restarts from the step before; ``health.strict: false``
logs it as a warning instead. Each step logs ``health/violations`` and the truncations by reason,
as shares of the batch's episodes: ``truncation/turn_budget`` (a turn ran into its token budget),
``truncation/total_tokens`` (the context filled up), ``truncation/observation_cut`` (a tool output
was shortened to fit), ``truncation/turns`` (out of turns), ``truncation/answer_cut``.

``kl/to_start``: KL(π_θ ‖ π_start), the k3 estimate on the batch's policy tokens, where π_start is
the policy the mode started from (after any SFT warm start), whatever the loss (β = 0 included)::

    KL ≈ mean_{i,t} [ exp(logπ_start − logπ_θ) − (logπ_start − logπ_θ) − 1 ]

with logπ_θ the engine's logprobs of the sampled tokens (the batch was sampled from π_θ) and
logπ_start from one forward pass without gradients under the start's weights, swapped in for the
trainable parameters (a LoRA adapter: a few MB) and back. The start's weights are saved once to
``start_policy.safetensors`` in the run folder, so a resumed run measures from the same start.
Every ``kl_every`` steps, on ``kl_episodes`` episodes spread through the batch: the forward pass
is the cost (measured in the README's health section), the estimate needs few tokens.

Alerts (``HealthMonitor``) read each step's metrics: the mean over the last ``window`` steps against
a threshold, or against the first ``window`` steps of the run (a drop). An alert prints one line
when it starts (and again if it stops and comes back), and every step logs ``health/alerts`` (how
many are on) and ``health/alert/<name>`` (0 or 1). The README says what to try for each. A
resumed run's alerts start afresh from the step it resumed at.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentenv.trainers.algorithms.grpo import k3_kl
from agentenv.trainers.algorithms.logprobs import (
    PaddedBatch,
    batch_logprobs,
    pad_episodes,
    policy_columns,
)
from agentenv.trajectory import Episode

START_POLICY_FILE = "start_policy.safetensors"


@dataclass(frozen=True)
class HealthConfig:
    """YAML section ``health``."""

    checks: bool = True  # the invariants, on every rollout batch
    strict: bool = True  # a violation stops the run; false: a warning line and health/violations
    logprob_gap_mean_limit: float = 0.1  # nats; fp32 on both sides measures ~1e-6 here
    logprob_gap_max_limit: float = 5.0  # nats: one token 150x likelier to one side than the other
    # kl/to_start every this many steps (0: never), on at most kl_episodes of the batch spread over
    # its groups: the start policy's forward pass over a whole B 16 x G 4 batch costs about what the
    # update does on 2 cores.
    kl_every: int = 5
    kl_episodes: int = 16
    alerts: bool = True
    window: int = 5  # steps an alert averages over (and the run's start it compares against)
    entropy_drop: float = 0.75  # entropy below (1 - this) x the start's
    format_valid_drop: float = 0.2  # format-valid rate this far below the start's (absolute)
    searches_floor: float = 0.1  # searches per episode below this
    searches_cap_share: float = 0.8  # share of episodes that made as many searches as an episode can
    length_limit_share: float = 0.3  # share of episodes that ran into a token budget
    logprob_gap_growth: float = 3.0  # the gap this many times the start's, and above 1e-3
    equal_groups_share: float = 0.8  # groups whose rewards are all equal (no gradient)


class InvariantViolation(RuntimeError):
    """A batch broke an invariant; the message names the episode and the token."""


@dataclass(frozen=True)
class Violation:
    invariant: str  # mask | ids | answer | gap
    message: str


def describe(episode: Episode, row: int) -> str:
    question = episode.question or {}
    return f"episode {row} (question {question.get('id', '?')!r}, group {episode.group})"


# --- the invariants -----------------------------------------------------------------------------------


def check_mask(episodes: Sequence[Episode], batch: PaddedBatch) -> list[Violation]:
    """Every loss position of the padded batch is a policy-tagged token, and every policy token is one."""
    found = []
    for row, episode in enumerate(episodes):
        sources = episode.trajectory.sources
        mask = batch.policy_mask[row] > 0
        padding = torch.nonzero(mask[len(sources):]).flatten().tolist()
        if padding:
            found.append(Violation("mask", f"{describe(episode, row)}: padding position {len(sources) + padding[0]} "
                                           "is in the loss mask"))
        tagged = torch.tensor([source == "policy" for source in sources], dtype=torch.bool)
        differ = torch.nonzero(mask[: len(sources)] != tagged).flatten().tolist()
        if differ:
            position = differ[0]
            state = "is in the loss mask" if mask[position] else "is left out of the loss mask"
            found.append(Violation("mask", f"{describe(episode, row)}: token {position} (id "
                                           f"{int(batch.input_ids[row, position])}), a {sources[position]} token, {state}"))
    return found


def check_ids(episodes: Sequence[Episode], batch: PaddedBatch) -> list[Violation]:
    """The ids at each episode's loss positions are the engine's ids of its turns, in order, each
    cut only where the environment cut that turn. Episodes without ``sampled_turns`` are skipped."""
    found = []
    for row, episode in enumerate(episodes):
        if episode.sampled_turns is None:
            continue
        trained = batch.input_ids[row][batch.policy_mask[row] > 0].tolist()
        positions = torch.nonzero(batch.policy_mask[row]).flatten().tolist()
        segments = [s for s in episode.trajectory.segments if s.source == "policy"]
        if len(segments) != len(episode.sampled_turns):
            found.append(Violation("ids", f"{describe(episode, row)}: {len(segments)} policy segments for "
                                          f"{len(episode.sampled_turns)} sampled turns"))
            continue
        expected: list[int] = []
        for k, (segment, sampled) in enumerate(zip(segments, episode.sampled_turns, strict=True)):
            kept = len(segment.token_ids)
            cut_here = k < len(episode.turns) and episode.turns[k].get("cut", False)
            if kept > len(sampled.token_ids) or (kept < len(sampled.token_ids) and not cut_here):
                found.append(Violation("ids", f"{describe(episode, row)}: turn {k} holds {kept} policy tokens; the "
                                              f"engine sampled {len(sampled.token_ids)} and the turn was not cut"))
                break
            expected.extend(sampled.token_ids[:kept])
        else:
            for index, (got, want) in enumerate(zip(trained, expected, strict=False)):
                if got != want:
                    found.append(Violation("ids", f"{describe(episode, row)}: token {positions[index]} is id {got} in "
                                                  f"the batch; the engine sampled id {want}"))
                    break
            else:
                if len(trained) != len(expected):
                    found.append(Violation("ids", f"{describe(episode, row)}: {len(trained)} loss tokens for "
                                                  f"{len(expected)} sampled"))
    return found


def check_answers(episodes: Sequence[Episode]) -> list[Violation]:
    """An answer whose turn the engine stopped at its token budget is marked ``answer_cut``."""
    found = []
    for row, episode in enumerate(episodes):
        if not episode.sampled_turns or episode.finish_reason not in ("answer", "untagged_answer"):
            continue
        if episode.sampled_turns[-1].finish_reason == "length" and not episode.answer_cut:
            found.append(Violation("answer", f"{describe(episode, row)}: its answer {episode.answer!r} comes from a turn "
                                             "the engine stopped at its token budget, and the episode does not say "
                                             "the answer was cut (answer_cut)"))
    return found


def check_batch(episodes: Sequence[Episode], batch: PaddedBatch) -> list[Violation]:
    """The invariants that hold before an update: mask, ids, answer."""
    return [*check_mask(episodes, batch), *check_ids(episodes, batch), *check_answers(episodes)]


def check_gap(update: dict[str, Any], config: HealthConfig) -> list[Violation]:
    """The engine–trainer gap the update measured, within its limits."""
    mean = update.get("logprob_gap/engine_vs_trainer")
    largest = update.get("logprob_gap/engine_vs_trainer_max")
    if mean is None:
        return []
    worst = update.get("logprob_gap/engine_vs_trainer_worst") or {}
    where = (f"largest at token {worst.get('position')} (id {worst.get('token_id')}) of question "
             f"{worst.get('id')!r}, group {worst.get('group')}")
    found = []
    if mean > config.logprob_gap_mean_limit:
        found.append(Violation("gap", f"the engine-trainer log-prob gap is {mean:.4g} nats per policy token on average "
                                      f"(limit health.logprob_gap_mean_limit {config.logprob_gap_mean_limit}); {where}: "
                                      f"{largest:.4g}"))
    if largest is not None and largest > config.logprob_gap_max_limit:
        found.append(Violation("gap", f"one token's engine-trainer log-prob gap is {largest:.4g} nats (limit "
                                      f"health.logprob_gap_max_limit {config.logprob_gap_max_limit}): {where}"))
    return found


def enforce(violations: Sequence[Violation], config: HealthConfig, step: int) -> None:
    """Stop the run on a violation (``strict``), or print one warning line per violation."""
    if not violations:
        return
    lines = [f"step {step}: {v.invariant}: {v.message}" for v in violations[:5]]
    more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
    if config.strict:
        raise InvariantViolation(
            "a training batch broke an invariant, so the run stopped before checkpointing this step:\n  "
            + "\n  ".join(lines) + more + "\nset health.strict: false to log these and go on"
        )
    for line in lines:
        print(f"agentenv train: health: {line}", file=sys.stderr, flush=True)


def check_rollout_batch(episodes: Sequence[Episode], pad_id: int, config: HealthConfig, step: int) -> dict[str, float]:
    """The pre-update invariants on a rollout's episodes, enforced; the step's truncation metrics."""
    violations = check_batch(episodes, pad_episodes(episodes, pad_id)) if config.checks else []
    enforce(violations, config, step)
    return {"health/violations": float(len(violations)), **truncation_metrics(episodes)}


def truncation_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """The share of episodes truncated for each reason (the module docstring's names), and
    ``episode/at_length_limit``: those that ran into a turn's or the context's token budget."""
    n = max(len(episodes), 1)

    def share(test: Callable[[Episode], bool]) -> float:
        return sum(bool(test(e)) for e in episodes) / n

    def turn_cut(episode: Episode) -> bool:
        return any(turn.get("cut") for turn in episode.turns)

    return {
        "truncation/turn_budget": share(turn_cut),
        "truncation/total_tokens": share(lambda e: e.finish_reason == "max_tokens"),
        "truncation/observation_cut": share(lambda e: any(turn.get("observation_cut") for turn in e.turns)),
        "truncation/turns": share(lambda e: e.finish_reason == "max_turns"),
        "truncation/answer_cut": share(lambda e: e.answer_cut),
        "episode/at_length_limit": share(lambda e: e.finish_reason == "max_tokens" or turn_cut(e)),
    }


# --- how far the policy moved ------------------------------------------------------------------------


class StartPolicy:
    """The trainable parameters' values when the mode started, to measure KL(π_θ ‖ π_start) against."""

    def __init__(self, model: torch.nn.Module, run_dir: Path):
        self.path = Path(run_dir) / START_POLICY_FILE
        names = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        if self.path.is_file():
            from safetensors.torch import load_file

            saved = load_file(str(self.path))
            if set(saved) != names:
                raise ValueError(f"{self.path} holds other parameters than this model trains; it is not this run's start")
            self.values = saved
        else:
            from safetensors.torch import save_file

            self.values = {name: p.detach().to("cpu", copy=True).contiguous()
                           for name, p in model.named_parameters() if name in names}
            save_file(self.values, str(self.path))

    def logprobs(self, model: torch.nn.Module, batch: PaddedBatch, micro_batch_size: int, temperature: float) -> torch.Tensor:
        """logπ_start ``[N, T − start]`` of the batch, the start's values swapped in and back."""
        parameters = dict(model.named_parameters())
        current = {name: parameters[name].data for name in self.values}
        try:
            for name, value in self.values.items():
                parameters[name].data = value.to(current[name].device, current[name].dtype)
            return batch_logprobs(model, batch, micro_batch_size, temperature)
        finally:
            for name, data in current.items():
                parameters[name].data = data

    def kl(self, model: torch.nn.Module, episodes: Sequence[Episode], pad_id: int, temperature: float,
           micro_batch_size: int = 4, max_episodes: int | None = None) -> float | None:
        """The k3 estimate of KL(π_θ ‖ π_start) over the episodes' policy tokens, with logπ_θ the
        engine's logprobs, on at most ``max_episodes`` of them taken evenly through the batch;
        None when no episode carries them."""
        usable = [e for e in episodes if e.engine_logprobs is not None and any(e.policy_mask)]
        if max_episodes is not None and len(usable) > max_episodes:
            stride = len(usable) / max_episodes
            usable = [usable[int(i * stride)] for i in range(max_episodes)]
        if not usable:
            return None
        batch = pad_episodes(usable, pad_id)
        start = self.logprobs(model, batch, micro_batch_size, temperature)
        total, count = 0.0, 0
        for row, episode in enumerate(usable):
            columns = policy_columns(episode, batch)
            current = torch.tensor(episode.engine_logprobs, dtype=torch.float32)
            total += k3_kl(current, start[row, columns]).sum().item()
            count += len(columns)
        return max(0.0, total / count)  # ≥ 0 but for float round-off


# --- alerts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    name: str
    message: str


class HealthMonitor:
    """Watches each step's metrics for the shapes of known failures (the module docstring)."""

    def __init__(self, config: HealthConfig, search_cap: int | None = None):
        self.config = config
        self.search_cap = search_cap
        self.history: dict[str, list[float]] = {}
        self.recent: dict[str, deque[float]] = {}
        self.active: set[str] = set()

    def _record(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.history.setdefault(key, []).append(float(value))

    def _now(self, key: str) -> float | None:
        """The mean of ``key`` over the last ``window`` steps that logged it, once there are that many."""
        values = self.history.get(key, [])
        return sum(values[-self.config.window:]) / self.config.window if len(values) >= self.config.window else None

    def _start(self, key: str) -> float | None:
        """The mean over the run's first ``window`` steps, once ``window`` more have passed since."""
        values = self.history.get(key, [])
        return sum(values[: self.config.window]) / self.config.window if len(values) >= 2 * self.config.window else None

    def rules(self) -> dict[str, Callable[[], str | None]]:
        c = self.config

        def entropy() -> str | None:
            now, start = self._now("entropy"), self._start("entropy")
            if now is not None and start is not None and now < (1 - c.entropy_drop) * start:
                return f"policy entropy collapsed: {now:.3g} nats a token, from {start:.3g} at the start"
            return None

        def format_valid() -> str | None:
            now, start = self._now("episode/format_valid"), self._start("episode/format_valid")
            if now is not None and start is not None and now < start - c.format_valid_drop:
                return f"the format-valid rate fell to {now:.2f} from {start:.2f} at the start"
            return None

        def searches_zero() -> str | None:
            now = self._now("search/per_episode")
            if now is not None and now < c.searches_floor:
                return f"the agent stopped searching: {now:.2f} searches per episode"
            return None

        def searches_cap() -> str | None:
            now = self._now("search/at_cap")
            if now is not None and now >= c.searches_cap_share:
                return (f"{now:.0%} of episodes search as often as an episode can ({self.search_cap}): "
                        "searching has become the answer")
            return None

        def length_limit() -> str | None:
            now = self._now("episode/at_length_limit")
            if now is not None and now >= c.length_limit_share:
                return f"{now:.0%} of episodes run into a token budget (a turn's or the context's)"
            return None

        def logprob_gap() -> str | None:
            now, start = self._now("logprob_gap/engine_vs_trainer"), self._start("logprob_gap/engine_vs_trainer")
            if now is not None and start is not None and now > 1e-3 and now > c.logprob_gap_growth * start:
                return f"the engine-trainer log-prob gap grew to {now:.3g} from {start:.3g} at the start"
            return None

        def equal_groups() -> str | None:
            now = self._now("groups/equal_reward_fraction")
            if now is not None and now >= c.equal_groups_share:
                return f"{now:.0%} of groups have all-equal rewards and carry no gradient"
            return None

        return {"entropy_collapse": entropy, "format_valid_falling": format_valid, "searches_to_zero": searches_zero,
                "searches_to_cap": searches_cap, "length_at_limit": length_limit, "logprob_gap_growing": logprob_gap,
                "equal_reward_groups": equal_groups}

    def observe(self, step: int, metrics: dict[str, Any]) -> tuple[dict[str, float], list[Alert]]:
        """Take one step's metrics; return the ``health/alert*`` metrics and the alerts that started."""
        self._record(metrics)
        firing = {name: rule() for name, rule in self.rules().items()}
        started = [Alert(name, message) for name, message in firing.items() if message and name not in self.active]
        self.active = {name for name, message in firing.items() if message}
        out = {f"health/alert/{name}": float(bool(message)) for name, message in firing.items()}
        out["health/alerts"] = float(len(self.active))
        return out, started


def episode_limits(episodes: Sequence[Episode], search_cap: int | None) -> dict[str, float]:
    """Given a ``search_cap``, ``search/at_cap``: the share of episodes that made as many searches
    as one can; nothing without one."""
    from agentenv.search_behaviour import episode_search_record

    if not search_cap:
        return {}
    return {"search/at_cap": sum(episode_search_record(e).searches >= search_cap for e in episodes) / max(len(episodes), 1)}


def search_cap(env: Any) -> int:
    """The most searches an episode that still answers can make: every turn but the last, each
    with its most calls."""
    return max(1, (env.max_turns - 1) * env.max_calls_per_turn)


def print_alerts(alerts: Sequence[Alert], step: int) -> None:
    for alert in alerts:
        print(f"agentenv train: health alert at step {step}: {alert.name}: {alert.message} "
              "(README: 'When a health alert fires')", file=sys.stderr, flush=True)
