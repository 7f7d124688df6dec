"""One environment spec from training to evaluation: a registered id and its keywords, resolved once.

    spec = EnvSpec("agentenv/SearchQA-v0", {"max_turns": 4, "max_turn_tokens": 64}, reward=RewardConfig())
    factory = spec.factory(tokenizer)
    envs = factory.make(64)              # 64 environments sharing one search tool and one question list

The factory builds every tool once (``agentenv.envs.shared_tools``: an index folder becomes one
loaded index and one search tool, a retriever URL one HTTP client) and hands the same objects to
each environment; an episode's state lives in its environment. So ``step_batch`` over the 64 gives
each tool one batch a turn: one ``search_batch`` with every query, one HTTP request per server.

A training run writes its spec to ``<run>/env_spec.json``; ``agentenv eval --model RUN``, the
held-out curve, best-of-N and the reward model's rollouts build their environments from it, with
any key a flag overrides (``spec.updated(max_turns=8)``), so what is measured is what was trained.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentenv.rewards import RewardConfig

SPEC_FILE = "env_spec.json"

# The keywords that bound an episode, reported with every evaluation (those the environment has).
LIMITS = ("max_turns", "max_turn_tokens", "max_total_tokens", "max_observation_tokens", "max_calls_per_turn",
          "on_no_call", "max_nudges")


@dataclass(frozen=True)
class EnvSpec:
    """A Gymnasium id (``module:Id`` imports the module first), the keywords its constructor gets
    besides the tokenizer, and the reward (None: the environment's default)."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    reward: RewardConfig | None = None

    def updated(self, **overrides: Any) -> EnvSpec:
        """This spec with ``overrides`` replacing (or adding) keywords."""
        return dataclasses.replace(self, kwargs={**self.kwargs, **overrides})

    def to_record(self) -> dict[str, Any]:
        """JSON-safe: a keyword whose value JSON cannot hold (an index object, a tool) is its repr."""
        return {
            "id": self.id,
            "kwargs": {key: _json_safe(value) for key, value in self.kwargs.items()},
            "reward": dataclasses.asdict(self.reward) if self.reward is not None else None,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EnvSpec:
        reward = record.get("reward")
        return cls(record["id"], dict(record.get("kwargs") or {}), RewardConfig(**reward) if reward else None)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SPEC_FILE
        path.write_text(json.dumps(self.to_record(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> EnvSpec | None:
        """The spec saved in a run folder (or beside a checkpoint of it), or None if there is none."""
        folder = Path(folder)
        for candidate in (folder, folder.parent, folder.parent.parent):
            path = candidate / SPEC_FILE
            if path.is_file():
                try:
                    return cls.from_record(json.loads(path.read_text()))
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}: not an environment spec ({error})") from None
        return None

    @classmethod
    def of_run(cls, path: str | Path) -> EnvSpec | None:
        """The spec a training run (or one of its checkpoints) trained in: its ``env_spec.json``,
        or, for a run from before that file, the ``env`` and ``reward`` of its ``config.yaml``;
        None for a path that is no run (a model folder, a hub id)."""
        from agentenv.yaml_files import load_yaml

        folder = Path(path).expanduser()
        if not folder.is_dir():
            return None
        spec = cls.load(folder)
        if spec is not None:
            return spec
        for candidate in (folder, folder.parent, folder.parent.parent):
            config_file = candidate / "config.yaml"
            if config_file.is_file() and (candidate / "checkpoints").is_dir():
                data = load_yaml(config_file.read_text(), str(config_file)) or {}
                if not isinstance(data, dict):
                    raise ValueError(f"{config_file}: expected a mapping of config sections, got {type(data).__name__}")
                env = data.get("env") or {}
                if "id" in env:
                    reward = data.get("reward")
                    try:
                        return cls(env["id"], dict(env.get("kwargs") or {}), RewardConfig(**reward) if reward else None)
                    except TypeError as error:
                        raise ValueError(f"{config_file}: its reward section does not fit ({error})") from None
        return None

    def factory(self, tokenizer: Any) -> EnvFactory:
        return EnvFactory(self, tokenizer)


class EnvFactory:
    """An ``EnvSpec`` resolved once: its id, its tools built, its questions loaded; ``make(n)``
    gives n environments that share them. Keyword errors are ``agentenv.envs.EnvArgumentError``s
    naming the key, raised here, before anything runs."""

    def __init__(self, spec: EnvSpec, tokenizer: Any):
        from agentenv.envs import accepted_keywords, make_env, resolve_env_id, shared_tools

        if isinstance(tokenizer, str):
            from agentenv.models import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        self.spec = spec
        self.env_id = resolve_env_id(spec.id)
        kwargs = {"tokenizer": tokenizer, **spec.kwargs}
        if spec.reward is not None:
            kwargs["reward"] = spec.reward
        self.kwargs = shared_tools(self.env_id, kwargs)
        self.first = make_env(self.env_id, **self.kwargs)
        if getattr(self.first, "questions", None) is not None and "questions" in accepted_keywords(self.env_id):
            self.kwargs["questions"] = self.first.questions  # loaded (or generated) once, for all
        self._handed_out_first = False

    @property
    def questions(self) -> list[dict[str, Any]] | None:
        return getattr(self.first, "questions", None)

    def make(self, count: int, questions: Sequence[dict[str, Any]] | None = None) -> list[Any]:
        """``count`` environments; ``questions`` replaces the spec's (a held-out split)."""
        from agentenv.envs import make_env

        kwargs = self.kwargs if questions is None else {**self.kwargs, "questions": list(questions)}
        envs = []
        if questions is None and not self._handed_out_first and count:
            envs.append(self.first)
            self._handed_out_first = True
        envs += [make_env(self.env_id, **kwargs) for _ in range(count - len(envs))]
        return envs

    def limits(self) -> dict[str, Any]:
        """The limits the environments run under, read from a built one."""
        return {name: getattr(self.first, name) for name in LIMITS if hasattr(self.first, name)}


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
