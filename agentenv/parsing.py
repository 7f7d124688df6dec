"""Tool-call syntaxes, pluggable: how a policy turn's text becomes tool calls and an answer.

Two parsers share one contract (``parse``, ``stop_strings``, ``format_results``, ``instructions``):

* ``TagParser`` — ReSearch / Search-R1 tags. Every tool has a tag named after it
  (``<search>query</search>``, ``<calculator>2+2</calculator>``); tool output comes back inline,
  wrapped in ``<result>`` (ReSearch) or ``<information>`` (Search-R1). A tool with one string
  argument takes the tag's text; one argument of another type, the text converted to it
  (``<km>3.5</km>``); several arguments, a JSON object of them inside the tag
  (``<convert>{"value": 3, "from_unit": "km", "to_unit": "mi"}</convert>``), each value converted
  to its schema type (``tag_form``).
* ``JsonParser`` — chat-template tool calls,
  ``<tool_call>{"name": "search", "arguments": {"query": "..."}}</tool_call>``; tool output comes
  back as a tool turn of the chat template (the environment renders it). A turn is an assistant
  message of the template and ends as one, at the end-of-turn token the policy writes itself
  (``turn_ends_at_eos``; no stop strings): a policy trained here then stops after its calls under
  any chat server or trainer that generates to EOS (vLLM's, TRL's), as Qwen2.5's and Hermes's
  tool-calling models do. The tags end a turn at the closing tag, as ReSearch and Search-R1 do.

Both end an episode with ``<answer>...</answer>`` (a ``\\boxed{...}`` inside is unwrapped, as in
ReSearch). Defined behaviour for malformed turns, identical in both parsers:

* an unclosed call tag → a call with ``error`` set (the policy sees the error; no tool runs);
* a call naming an unknown tool (in the tags syntax: any closed ``<name>…</name>`` that is not a
  tool, the answer, the result tag or a reasoning tag of ``NOT_CALL_TAGS``), arguments that are
  not a JSON object, or a value that does not fit its type → a call with ``error``;
* several calls in one turn → all are returned in order (the environment caps how many run);
* an answer → the turn's answer; calls in the same turn are dropped and flagged, text after
  ``</answer>`` is ignored and flagged. Flags land in ``ParsedTurn.format_errors``;
* an unclosed ``<answer>`` → no answer, a format error.

Whatever the text, ``parse`` returns: JSON that Python refuses to read (nested past the recursion
limit, an integer longer than the int-string limit) is a call with ``error`` like any other bad
JSON. Parsing is linear in the length of the turn, so a policy that samples a megabyte of
unclosed tags costs milliseconds.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentenv.tools.base import Tool

ANSWER_TAG = "answer"
# Tags a policy may write that are not calls: reasoning, as ReSearch and Search-R1 prompt it.
NOT_CALL_TAGS = ("think", "reasoning")
_BOXED = "\\boxed{"
# What ``load_json`` raises on text it cannot read: a JSONDecodeError (a ValueError), a ValueError
# for an integer past Python's int-string limit or nesting past MAX_JSON_DEPTH, and a RecursionError
# should the stack still run out.
_JSON_ERRORS = (ValueError, RecursionError)
# No tool's arguments nest this deep. Bounded here, not by the interpreter's recursion limit, which
# other libraries raise at run time (torch's compiler sets it to 2000), so that the same text is
# refused in every process.
MAX_JSON_DEPTH = 64
_JSON_STRUCTURE = re.compile(r'["\\\[\]{}]')


def load_json(text: str) -> Any:
    """``json.loads(text)``, refusing arrays and objects nested deeper than ``MAX_JSON_DEPTH``."""
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        depth, in_string, escaped_at = 0, False, -1
        for match in _JSON_STRUCTURE.finditer(text):
            char = match.group()
            if in_string:
                if match.start() == escaped_at:  # the character after a backslash
                    continue
                if char == "\\":
                    escaped_at = match.end()
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "[{":
                depth += 1
                if depth > MAX_JSON_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            elif char in "]}":
                depth -= 1
    return json.loads(text)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | None
    # Set when the call cannot run (unclosed tag, unknown tool, bad JSON); the policy reads it.
    error: str | None = None


@dataclass(frozen=True)
class ParsedTurn:
    tool_calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    format_errors: list[str] = field(default_factory=list)

    @property
    def is_well_formed(self) -> bool:
        return not self.format_errors and all(call.error is None for call in self.tool_calls)


class ToolCallParser(Protocol):
    """What an environment needs from a tool-call syntax.

    Optionally ``turn_ends_at_eos`` (False when absent): the policy ends every turn with the
    end-of-turn token, so the oracle's turns end with it too."""

    name: str
    # True when tool output goes back as a chat-template tool turn rather than inline text.
    results_in_tool_turn: bool

    def parse(self, text: str, tools: dict[str, Tool]) -> ParsedTurn: ...

    def stop_strings(self, tools: dict[str, Tool]) -> list[str]: ...

    def format_results(self, outputs: list[str]) -> str: ...

    def instructions(self, tools: dict[str, Tool]) -> str: ...

    def format_call(self, tool: Tool, arguments: dict[str, Any]) -> str:
        """The text of one call in this syntax, which ``parse`` reads back as that call."""
        ...

    def format_answer(self, answer: str) -> str:
        """The text of a final answer in this syntax."""
        ...


def format_answer(answer: str) -> str:
    return f"<{ANSWER_TAG}>{answer}</{ANSWER_TAG}>"


def unwrap_answer(text: str) -> str:
    """Strip whitespace and a ReSearch-style ``\\boxed{...}`` around the final answer: from the
    first ``\\boxed{`` to the last ``}`` after it. Two scans, where a backtracking regex would
    take quadratic time on a turn of unclosed ``\\boxed{``."""
    start = text.find(_BOXED)
    end = text.rfind("}", start + len(_BOXED)) if start >= 0 else -1
    return (text[start + len(_BOXED) : end] if end >= 0 else text).strip()


def _split_answer(text: str) -> tuple[str, str | None, list[str]]:
    """Cut the turn at ``<answer>``: (text before, answer or None, format errors)."""
    start = text.find(f"<{ANSWER_TAG}>")
    if start < 0:
        return text, None, []
    body_start = start + len(ANSWER_TAG) + 2
    end = text.find(f"</{ANSWER_TAG}>", body_start)
    if end < 0:
        return text[:start], None, ["unclosed <answer> tag"]
    errors = []
    if text[end + len(ANSWER_TAG) + 3 :].strip():
        errors.append("text after </answer>")
    return text[:start], unwrap_answer(text[body_start:end]), errors


def _answer_turn(answer: str | None, errors: list[str], calls: list[ToolCall]):
    if answer is not None and calls:
        errors = [*errors, "tool call in the same turn as the answer (not run)"]
        calls = []
    return ParsedTurn(tool_calls=calls, answer=answer, format_errors=errors)


def tag_form(tool: Tool) -> str:
    """How a tag call ``<name>…</name>`` carries ``tool``'s arguments, from its typed signature:

    * ``"text"`` — one string (or untyped) argument: the tag's text is its value, as ReSearch writes
      ``<search>query</search>`` and ``<calculator>2+2</calculator>``;
    * ``"value"`` — one argument of another type: the text converted to it (``<km>3.5</km>``);
    * ``"json"`` — several arguments: a JSON object of them, each value converted to its schema
      type (``<convert>{"value": 3, "from_unit": "km", "to_unit": "mi"}</convert>``);
    * ``"none"`` — no arguments: the text is ignored.
    """
    properties = tool.parameters.get("properties", {})
    if not properties:
        return "none"
    if len(properties) > 1:
        return "json"
    [schema] = properties.values()
    types = _schema_types(schema)
    return "text" if not types or "string" in types else "value"


_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "array": "a JSON array",
    "object": "a JSON object",
    "null": "null",
}
_NO_FIT = object()


def to_schema_type(value: Any, schema: dict[str, Any], name: str) -> Any:
    """``value`` (the text of a tag, or a value from its JSON) as the type its JSON schema names:
    ``"3.5"`` → 3.5 for a number, ``"3"`` → 3 for an integer, ``"true"`` → True, ``7`` → ``"7"`` for
    a string; ValueError naming the argument when it does not fit."""
    types = _schema_types(schema)
    if not types:
        return value
    for kind in types:
        converted = _converted(value, kind)
        if converted is not _NO_FIT:
            return converted
    expected = " or ".join(_TYPE_NAMES.get(kind, kind) for kind in types)
    raise ValueError(f"argument {name!r} must be {expected}, got {value!r}")


def _schema_types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    return [k for option in schema.get("anyOf", []) for k in _schema_types(option)]


def _converted(value: Any, kind: str) -> Any:
    """``value`` as JSON-schema type ``kind``, or ``_NO_FIT``."""
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, bool):  # a bool is an int in Python, never a number in JSON
        return value if kind == "boolean" else _NO_FIT
    if kind == "string":
        return value if text is not None else str(value) if isinstance(value, int | float) else _NO_FIT
    if kind == "number":
        number = value if text is None else _number(text)
        return float(number) if isinstance(number, int | float) and math.isfinite(number) else _NO_FIT
    if kind == "integer":
        number = value if text is None else _number(text)
        if isinstance(number, float) and number.is_integer():
            return int(number)
        return number if isinstance(number, int) else _NO_FIT
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), _NO_FIT) if text is not None else _NO_FIT
    if kind in ("array", "object"):
        if text is not None:
            try:
                value = load_json(text)
            except _JSON_ERRORS:
                return _NO_FIT
        return value if isinstance(value, list if kind == "array" else dict) else _NO_FIT
    if kind == "null":
        return None if value is None or text == "null" else _NO_FIT
    return value


def _number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def _tag_example(tool: Tool) -> str:
    """A call as the system prompt shows it: ``<search>query</search>``, ``<km>km (a number)</km>``,
    ``<convert>{"value": <number>, "from_unit": <string>, "to_unit": <string>}</convert>``."""
    form = tag_form(tool)
    properties = tool.parameters.get("properties", {})
    if form == "json":
        required = set(tool.parameters.get("required", []))

        def placeholder(name: str, schema: dict[str, Any]) -> str:
            kinds = " or ".join(_schema_types(schema)) or "value"
            return f"<{kinds}>" if name in required else f"<{kinds}, optional>"

        body = "{" + ", ".join(f"{json.dumps(name)}: {placeholder(name, schema)}" for name, schema in properties.items()) + "}"
    elif form == "value":
        [(name, schema)] = properties.items()
        body = f"{name} ({' or '.join(_TYPE_NAMES.get(k, k) for k in _schema_types(schema))})"
    else:
        body = tool.main_argument or "input"
    return f"<{tool.name}>{body}</{tool.name}>"


class _ClosingTags:
    """Where each ``</name>`` of a text is, found in one pass: the first one after a position, for
    openings visited left to right. Searching the text again for every opening tag would be
    quadratic on a turn of unclosed (or differently named) tags."""

    def __init__(self, text: str, names: str):
        self._positions: dict[str, list[int]] = {}
        self._next: dict[str, int] = {}
        for closing in re.finditer(rf"</({names})>", text):
            self._positions.setdefault(closing.group(1), []).append(closing.start())

    def first(self, name: str, position: int) -> int:
        """The start of the first ``</name>`` at or after ``position`` (which never decreases
        between calls for one name), or -1."""
        positions = self._positions.get(name, [])
        index = self._next.get(name, 0)
        while index < len(positions) and positions[index] < position:
            index += 1
        self._next[name] = index
        return positions[index] if index < len(positions) else -1


@dataclass
class TagParser:
    """ReSearch / Search-R1 tags; ``result_tag="information"`` gives Search-R1's wrapping."""

    result_tag: str = "result"
    name: str = "tags"
    results_in_tool_turn: bool = False

    def parse(self, text: str, tools: dict[str, Tool]) -> ParsedTurn:
        before, answer, errors = _split_answer(text)
        calls: list[ToolCall] = []
        # A known tool's name first at each position (names may hold any character), else any tag.
        names = "".join(re.escape(name) + "|" for name in sorted(tools, key=len, reverse=True))
        names += r"[A-Za-z_][\w.-]*"
        opening_tag = re.compile(rf"<({names})>")
        closing_tag = _ClosingTags(before, names)
        position = 0
        while (opening := opening_tag.search(before, position)) is not None:
            name = opening.group(1)
            close = closing_tag.first(name, opening.end())
            position = opening.end()
            if name in tools:
                if close < 0:
                    calls.append(ToolCall(name, None, f"unclosed <{name}> tag"))
                    continue
                calls.append(self._call(tools[name], before[opening.end() : close].strip()))
            elif close >= 0 and name not in (*NOT_CALL_TAGS, self.result_tag):
                available = ", ".join(f"<{tool}>" for tool in tools) or "none"
                calls.append(ToolCall(name, None, f"unknown tool <{name}>; the tools are: {available}"))
            else:
                continue
            position = close + len(name) + 3  # a call's body is not searched for more calls
        return _answer_turn(answer, errors, calls)

    @staticmethod
    def _call(tool: Tool, content: str) -> ToolCall:
        form = tag_form(tool)
        if form == "none":
            return ToolCall(tool.name, {})
        properties = tool.parameters.get("properties", {})
        if form == "text":
            return ToolCall(tool.name, {tool.main_argument: content})
        if form == "value":
            [(argument, schema)] = properties.items()
            try:
                return ToolCall(tool.name, {argument: to_schema_type(content, schema, argument)})
            except ValueError as error:
                return ToolCall(tool.name, None, f"<{tool.name}>: {error}")
        try:
            arguments = load_json(content)
        except _JSON_ERRORS:
            arguments = None
        if not isinstance(arguments, dict):
            return ToolCall(tool.name, None, f"<{tool.name}> takes a JSON object of its arguments, e.g. {_tag_example(tool)}")
        try:
            converted = {
                key: to_schema_type(value, properties[key], key) if key in properties else value
                for key, value in arguments.items()
            }
        except ValueError as error:
            return ToolCall(tool.name, None, f"<{tool.name}>: {error}")
        return ToolCall(tool.name, converted)

    def stop_strings(self, tools: dict[str, Tool]) -> list[str]:
        return [f"</{name}>" for name in tools] + [f"</{ANSWER_TAG}>"]

    def format_call(self, tool: Tool, arguments: dict[str, Any]) -> str:
        form = tag_form(tool)
        if form == "none":
            body = ""
        elif form == "text":
            body = str(arguments[tool.main_argument])
        elif form == "value":
            [value] = arguments.values()
            body = str(value)
        else:
            body = json.dumps(arguments)
        return f"<{tool.name}>{body}</{tool.name}>"

    def format_answer(self, answer: str) -> str:
        return format_answer(answer)

    def format_results(self, outputs: list[str]) -> str:
        body = "\n\n".join(outputs)
        return f"\n<{self.result_tag}>\n{body}\n</{self.result_tag}>\n"

    def instructions(self, tools: dict[str, Tool]) -> str:
        lines = [
            "Answer the question. Think step by step. You may call tools; each call's output "
            f"comes back between <{self.result_tag}> and </{self.result_tag}>.",
        ]
        for tool in tools.values():
            lines.append(f"- {_tag_example(tool)}: {tool.description}")
        lines.append(
            "Call one tool at a time and wait for its result. When you know the answer, "
            "write it as <answer>your answer</answer>."
        )
        return "\n".join(lines)


@dataclass
class JsonParser:
    """Chat-template JSON calls inside ``<tool_call>`` tags, as Qwen2.5 and ReCall use them."""

    name: str = "json"
    results_in_tool_turn: bool = True
    turn_ends_at_eos: bool = True
    call_tag: str = "tool_call"

    def parse(self, text: str, tools: dict[str, Tool]) -> ParsedTurn:
        before, answer, errors = _split_answer(text)
        calls: list[ToolCall] = []
        opening = f"<{self.call_tag}>"
        closing = f"</{self.call_tag}>"
        position = before.find(opening)
        while position >= 0:
            end = before.find(closing, position)
            if end < 0:
                calls.append(ToolCall("?", None, f"unclosed <{self.call_tag}> tag"))
                break
            calls.append(self._call(before[position + len(opening) : end], tools))
            position = before.find(opening, end)
        return _answer_turn(answer, errors, calls)

    @staticmethod
    def _call(payload: str, tools: dict[str, Tool]) -> ToolCall:
        try:
            call = load_json(payload)
        except _JSON_ERRORS as error:
            return ToolCall("?", None, f"invalid JSON in tool call: {error}")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return ToolCall("?", None, 'a tool call must be {"name": ..., "arguments": {...}}')
        name = call["name"]
        if name not in tools:
            return ToolCall(name, None, f"unknown tool {name!r}; available: {', '.join(tools)}")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models double-encode the arguments
            try:
                arguments = load_json(arguments)
            except _JSON_ERRORS as error:
                return ToolCall(name, None, f"invalid JSON in arguments: {error}")
        if not isinstance(arguments, dict):
            return ToolCall(name, None, "arguments must be a JSON object")
        return ToolCall(name, arguments)

    def stop_strings(self, tools: dict[str, Tool]) -> list[str]:
        if self.turn_ends_at_eos:
            return []  # the end-of-turn token ends the turn, and every engine stops at it
        return [f"</{self.call_tag}>", f"</{ANSWER_TAG}>"]

    def format_call(self, tool: Tool, arguments: dict[str, Any]) -> str:
        payload = json.dumps({"name": tool.name, "arguments": arguments})
        return f"<{self.call_tag}>{payload}</{self.call_tag}>"

    def format_answer(self, answer: str) -> str:
        return format_answer(answer)

    def format_results(self, outputs: list[str]) -> str:
        return "\n\n".join(outputs)

    def instructions(self, tools: dict[str, Tool]) -> str:
        return (
            "Answer the question. Think step by step. To call a tool, write "
            f'<{self.call_tag}>{{"name": <tool name>, "arguments": {{...}}}}</{self.call_tag}> '
            "and wait for its result. When you know the answer, write it as "
            "<answer>your answer</answer>."
        )


PARSERS = {"tags": TagParser, "research": TagParser, "json": JsonParser}


def make_parser(spec: str | ToolCallParser) -> ToolCallParser:
    """``"tags"``/``"research"`` (ReSearch), ``"search-r1"``, ``"json"``, or a parser object."""
    if not isinstance(spec, str):
        return spec
    if spec == "search-r1":
        return TagParser(result_tag="information")
    if spec not in PARSERS:
        raise ValueError(f"unknown parser {spec!r}; choose one of {[*PARSERS, 'search-r1']}")
    return PARSERS[spec]()
