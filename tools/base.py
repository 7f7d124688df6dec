"""The Tool protocol: a name, a description, a JSON schema for the arguments, a string observation.

A typed, docstring'd function becomes a Tool in one line::

    @tool
    def lookup(word: str) -> str:
        '''Look a word up in the dictionary.

        Args:
            word: The word to look up.
        '''
        return DICTIONARY.get(word, "not found")

The schema comes from ``transformers.utils.get_json_schema``, the same one chat templates receive
through ``tools=``. Whatever happens inside a tool, ``Tool.run_batch`` returns one observation per
call: a tool's own ``ToolError`` becomes its message, any other exception an error line that names
the tool. A rollout never crashes on a tool.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Python type -> JSON-schema type names that `get_json_schema` produces.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
}


def _has_json_type(value: Any, types: tuple[type, ...]) -> bool:
    # bool is a subclass of int in Python but not an integer in JSON schema.
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


class ToolError(Exception):
    """Raised by a tool for an expected failure; its message is what the policy reads."""


class ToolUnavailable(ToolError):
    """Raised when the tool itself is down (a retrieval server that does not answer): the policy
    reads the message, but the failure is not held against its format (``ToolEnv``)."""


@dataclass(frozen=True)
class Retrieved:
    """What a tool that returns passages may return instead of a string: the observation the policy
    reads, and the ids of the passages in it, which the policy never sees but process rewards and
    search metrics read (did the search return the passage the question needs?)."""

    text: str
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolOutput:
    """One observation. ``ok`` is False when the call failed, so rewards can count bad calls;
    ``unavailable`` when it failed because the tool was down, not because of the call;
    ``passage_ids`` the passages the observation holds (a ``Retrieved`` result's ids)."""

    text: str
    ok: bool = True
    unavailable: bool = False
    passage_ids: tuple[str, ...] = ()

    @classmethod
    def of(cls, result: str | Retrieved) -> ToolOutput:
        """A tool function's successful result as an observation."""
        if isinstance(result, Retrieved):
            return cls(result.text, passage_ids=tuple(str(i) for i in result.ids))
        return cls(str(result))


@dataclass
class Tool:
    """A callable the policy can use.

    ``function(**arguments) -> str`` does one call. ``batch_function(list_of_arguments)`` is
    optional: tools that amortise work across calls (one BM25 query matrix, one HTTP request)
    provide it, and the rollout driver sends every call of a turn through it at once. It returns
    one item per call, a string or a ``ToolError`` for a call that failed alone; raising
    ``ToolError`` fails the whole batch (every call gets the message). A tool that returns
    passages may return ``Retrieved(text, ids)`` where it would return a string.

    Left as None, ``description`` and ``parameters`` are read from the function's type hints and
    docstring the first time they are asked for, so that defining a tool (the calculator, at
    import) does not import transformers; the search server and clients never ask.
    """

    name: str
    description: str | None = field(repr=False)
    parameters: dict[str, Any] | None = field(repr=False)
    function: Callable[..., str]
    batch_function: Callable[[list[dict[str, Any]]], list[str | ToolError]] | None = None
    # Error strings are clipped so a failing tool cannot flood the context.
    max_error_chars: int = field(default=300, repr=False)
    # True for a tool whose output is retrieved passages (``search``): the search-behaviour
    # metrics (agentenv/search_behaviour.py) read its calls as queries and its outputs as what
    # the agent retrieved.
    returns_passages: bool = False

    @classmethod
    def from_function(
        cls,
        function: Callable[..., str],
        name: str | None = None,
        batch_function: Callable[[list[dict[str, Any]]], list[str]] | None = None,
        returns_passages: bool = False,
    ) -> Tool:
        """Wrap a typed function whose docstring has a Google-style ``Args:`` section. What the
        schema needs is checked now (a docstring, a type hint on every argument); the schema
        itself is read when first asked for."""
        name = name or function.__name__
        if not inspect.getdoc(function):
            raise ValueError(f"tool {name!r}: the function needs a docstring (what it does, and an Args: section)")
        untyped = [n for n, p in inspect.signature(function).parameters.items() if p.annotation is inspect.Parameter.empty]
        if untyped:
            raise ValueError(f"tool {name!r}: argument(s) {', '.join(untyped)} need a type hint (the JSON schema reads them)")
        return cls(name, None, None, function, batch_function, returns_passages=returns_passages)

    def _read_schema(self) -> None:
        from transformers.utils import get_json_schema

        schema = get_json_schema(self.function)["function"]
        if self._description is None:
            self._description = schema["description"]
        if self._parameters is None:
            self._parameters = schema.get("parameters", {"type": "object", "properties": {}})

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema that chat templates take through ``tools=``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    @property
    def main_argument(self) -> str | None:
        """The argument that a tag call ``<name>text</name>`` fills: the first required one."""
        required = self.parameters.get("required") or list(self.parameters.get("properties", {}))
        return required[0] if required else None

    def __call__(self, **arguments: Any) -> str:
        result = self.function(**arguments)
        return result.text if isinstance(result, Retrieved) else result

    def validate(self, arguments: Any) -> str | None:
        """Return an error message for arguments that do not fit the schema, or None."""
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object, got {type(arguments).__name__}"
        properties = self.parameters.get("properties", {})
        missing = [key for key in self.parameters.get("required", []) if key not in arguments]
        if missing:
            return f"missing argument(s) {', '.join(missing)}"
        unknown = [key for key in arguments if key not in properties]
        if unknown:
            return f"unknown argument(s) {', '.join(map(str, unknown))}; expected {', '.join(properties)}"
        for key, value in arguments.items():
            expected = properties[key].get("type")
            types = _JSON_TYPES.get(expected) if isinstance(expected, str) else None
            if types and not _has_json_type(value, types):
                return f"argument {key!r} must be of type {expected}, got {type(value).__name__}"
        return None

    def run_batch(self, calls: Sequence[dict[str, Any]]) -> list[ToolOutput]:
        """Run several calls; never raises. Invalid arguments fail alone, the rest still run."""
        outputs: list[ToolOutput | None] = [None] * len(calls)
        valid: list[int] = []
        for i, arguments in enumerate(calls):
            problem = self.validate(arguments)
            if problem:
                outputs[i] = self._error(problem)
            else:
                valid.append(i)
        if valid and self.batch_function is not None:
            try:
                results = self.batch_function([dict(calls[i]) for i in valid])
                if len(results) != len(valid):
                    raise RuntimeError(f"batch returned {len(results)} results for {len(valid)} calls")
            except ToolError as error:
                # A failure of the whole batch (a dead server): every call gets it, no retries.
                results = [error] * len(valid)
            except Exception:  # noqa: BLE001 - a bug: run the calls one by one to isolate it
                results = None
            if results is not None:
                for i, result in zip(valid, results, strict=True):
                    outputs[i] = self._error(result) if isinstance(result, ToolError) else ToolOutput.of(result)
                valid = []
        for i in valid:
            outputs[i] = self._run_one(calls[i])
        return [output for output in outputs if output is not None]

    def run(self, arguments: dict[str, Any]) -> ToolOutput:
        return self.run_batch([arguments])[0]

    def _run_one(self, arguments: dict[str, Any]) -> ToolOutput:
        try:
            return ToolOutput.of(self.function(**arguments))
        except ToolError as error:
            return self._error(error)
        except Exception as error:  # noqa: BLE001 - a tool bug must not crash the rollout
            return self._error(f"{type(error).__name__}: {error}")

    def _error(self, error: str | ToolError) -> ToolOutput:
        message = str(error)
        message = message if len(message) <= self.max_error_chars else message[: self.max_error_chars] + "…"
        return ToolOutput(f"Error ({self.name}): {message}", ok=False, unavailable=isinstance(error, ToolUnavailable))


def _read_when_first_asked(name: str) -> property:
    """A property over ``_<name>`` that reads the function's schema while it is None."""
    private = f"_{name}"

    def get(self: Tool) -> Any:
        if getattr(self, private, None) is None:
            self._read_schema()
        return getattr(self, private)

    def set(self: Tool, value: Any) -> None:
        setattr(self, private, value)

    return property(get, set)


# Set after @dataclass has written __init__ (which assigns through them), so the fields stay.
Tool.description = _read_when_first_asked("description")
Tool.parameters = _read_when_first_asked("parameters")


def tool(function: Callable[..., str] | None = None, *, name: str | None = None, returns_passages: bool = False):
    """Decorator form of ``Tool.from_function``; works bare (``@tool``) or with arguments
    (``@tool(returns_passages=True)`` for a retriever of one's own)."""
    if function is None:
        return lambda f: tool(f, name=name, returns_passages=returns_passages)
    if not inspect.isfunction(function) and not inspect.ismethod(function):
        raise TypeError(f"@tool expects a function, got {type(function).__name__}")
    return Tool.from_function(function, name=name, returns_passages=returns_passages)
