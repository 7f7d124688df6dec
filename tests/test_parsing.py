"""Tool-call parsing: ReSearch/Search-R1 tags and chat-template JSON, including malformed turns."""

import gc
import json
import sys
import time

import pytest

from agentenv.parsing import (
    MAX_JSON_DEPTH,
    JsonParser,
    TagParser,
    ToolCall,
    load_json,
    make_parser,
    unwrap_answer,
)
from agentenv.tools import Tool, calculator, tool

HUGE_INTEGER = "1" * 4301  # past Python's int-string limit: json.loads raises ValueError
NESTED = "[" * 1000 + "]" * 1000  # past MAX_JSON_DEPTH (and the default recursion limit)
MIB = 2**20


def _search(query: str) -> str:
    """Search the corpus.

    Args:
        query: What to look for.
    """
    return query


TOOLS = {"search": Tool.from_function(_search, name="search"), "calculator": calculator}


def assert_linear(parse, turn_of_size):
    """A megabyte takes about four times as long as a quarter of one, where a quadratic parser
    takes sixteen. A ratio and not a time limit, so that a slow machine passes it too. Measured in
    this process's CPU time, the best of five runs, without the garbage collector (whose passes
    depend on all the process holds), so that a busy machine does not disturb the ratio."""

    def seconds(text: str) -> float:
        timings = []
        for _ in range(5):
            gc.disable()
            try:
                start = time.process_time()
                parse(text)
                timings.append(time.process_time() - start)
            finally:
                gc.enable()
        return min(timings)

    ratio = seconds(turn_of_size(MIB)) / seconds(turn_of_size(MIB // 4))
    assert ratio < 8, f"four times the text took {ratio:.1f} times as long"


@tool
def total(values: list) -> str:
    """Add numbers up.

    Args:
        values: The numbers.
    """
    return str(sum(values))


@tool
def scale(value: float, factor: float) -> str:
    """Multiply.

    Args:
        value: The number.
        factor: By how much.
    """
    return str(value * factor)


class TestTags:
    parser = TagParser()

    def test_one_search_call(self):
        turn = self.parser.parse("I should look. <search> capital of Peru </search>", TOOLS)
        assert [(c.name, c.arguments) for c in turn.tool_calls] == [("search", {"query": "capital of Peru"})]
        assert turn.answer is None and turn.is_well_formed

    def test_calculator_call_fills_its_main_argument(self):
        turn = self.parser.parse("<calculator>2+2</calculator>", TOOLS)
        assert turn.tool_calls[0].arguments == {"expression": "2+2"}

    def test_answer_ends_the_turn_and_boxed_is_unwrapped(self):
        turn = self.parser.parse("So: <answer>\\boxed{Lima}</answer>", TOOLS)
        assert turn.answer == "Lima" and turn.tool_calls == [] and turn.is_well_formed

    def test_several_calls_in_one_turn_are_all_returned_in_order(self):
        turn = self.parser.parse("<search>a</search> then <calculator>1+1</calculator><search>b</search>", TOOLS)
        assert [c.name for c in turn.tool_calls] == ["search", "calculator", "search"]

    def test_unclosed_tag_is_a_call_with_an_error(self):
        turn = self.parser.parse("<search>capital of Peru", TOOLS)
        assert turn.tool_calls[0].error == "unclosed <search> tag"
        assert not turn.is_well_formed

    def test_an_unknown_tool_tag_is_a_call_with_an_error(self):
        turn = self.parser.parse("<think>hmm</think> <lookup>x</lookup> <search>Peru</search>", TOOLS)
        assert [call.name for call in turn.tool_calls] == ["lookup", "search"]
        assert turn.tool_calls[0].error == "unknown tool <lookup>; the tools are: <search>, <calculator>"
        assert turn.tool_calls[1].arguments == {"query": "Peru"} and not turn.is_well_formed

    def test_reasoning_result_and_unclosed_tags_are_plain_text(self):
        turn = self.parser.parse("<think>hmm</think><reasoning>a</reasoning><result>x</result> a <b c", TOOLS)
        assert turn.tool_calls == [] and turn.answer is None and turn.is_well_formed

    def test_a_call_body_is_not_searched_for_more_calls(self):
        turn = self.parser.parse("<search>the <i>Lima</i> district</search>", TOOLS)
        assert turn.tool_calls == [ToolCall("search", {"query": "the <i>Lima</i> district"})]

    def test_text_after_the_answer_is_ignored_and_flagged(self):
        turn = self.parser.parse("<answer>Lima</answer> and more", TOOLS)
        assert turn.answer == "Lima"
        assert turn.format_errors == ["text after </answer>"]

    def test_call_in_the_same_turn_as_an_answer_is_dropped_and_flagged(self):
        turn = self.parser.parse("<search>x</search><answer>Lima</answer>", TOOLS)
        assert turn.answer == "Lima" and turn.tool_calls == []
        assert "tool call in the same turn as the answer" in turn.format_errors[0]

    def test_unclosed_answer_is_no_answer(self):
        turn = self.parser.parse("<answer>Lima", TOOLS)
        assert turn.answer is None and turn.format_errors == ["unclosed <answer> tag"]

    def test_stop_strings_close_every_tool_and_the_answer(self):
        assert self.parser.stop_strings(TOOLS) == ["</search>", "</calculator>", "</answer>"]

    def test_results_are_wrapped_in_the_result_tag(self):
        assert self.parser.format_results(["a", "b"]) == "\n<result>\na\n\nb\n</result>\n"
        assert make_parser("search-r1").format_results(["a"]) == "\n<information>\na\n</information>\n"

    @pytest.mark.parametrize(
        "text",
        [
            f'<scale>{{"value": {HUGE_INTEGER}, "factor": 2}}</scale>',
            f'<scale>{{"value": {NESTED}, "factor": 2}}</scale>',
            f"<total>[{HUGE_INTEGER}]</total>",
            f"<total>{NESTED}</total>",
        ],
        ids=["json-huge-integer", "json-nesting", "value-huge-integer", "value-nesting"],
    )
    def test_json_python_cannot_read_is_a_call_with_an_error(self, text):
        [call] = self.parser.parse(text, {"scale": scale, "total": total}).tool_calls
        assert call.arguments is None and call.error.startswith(f"<{call.name}>")

    # Parsing is linear in the turn: a quadratic parser took half a minute on a megabyte of these.

    def test_a_megabyte_of_unclosed_tags_parses_in_linear_time(self):
        turn = self.parser.parse("<search>" * (MIB // 8), TOOLS)
        assert len(turn.tool_calls) == MIB // 8
        assert {call.error for call in turn.tool_calls} == {"unclosed <search> tag"}
        assert_linear(lambda text: self.parser.parse(text, TOOLS), lambda size: "<search>" * (size // 8))

    def test_a_megabyte_of_differently_named_unclosed_tags_parses_in_linear_time(self):
        def turn_of_size(size: int) -> str:
            return "".join(f"<t{i}>" for i in range(size // 8)) + "<search>Peru</search>"

        assert self.parser.parse(turn_of_size(MIB), TOOLS).tool_calls == [ToolCall("search", {"query": "Peru"})]
        assert_linear(lambda text: self.parser.parse(text, TOOLS), turn_of_size)

    def test_a_megabyte_of_closed_unknown_tags_and_one_late_close(self):
        text = "<x></x>" * (MIB // 7) + "<search>" * 1000 + "</search>"
        calls = self.parser.parse(text, TOOLS).tool_calls
        assert len(calls) == MIB // 7 + 1 and calls[-1] == ToolCall("search", {"query": "<search>" * 999})

    def test_a_megabyte_of_unclosed_boxed_answers_parses_in_linear_time(self):
        body = "\\boxed{" * (MIB // 7)
        assert self.parser.parse(f"<answer>{body}</answer>", TOOLS).answer == body
        assert self.parser.parse(f"<answer>{body}42}}</answer>", TOOLS).answer == body[7:] + "42"
        assert_linear(lambda text: self.parser.parse(text, TOOLS),
                      lambda size: "<answer>" + "\\boxed{" * (size // 7) + "</answer>")

    def test_instructions_name_every_tool(self):
        text = self.parser.instructions(TOOLS)
        assert "<search>query</search>" in text and "<calculator>expression</calculator>" in text


class TestJson:
    parser = JsonParser()

    def test_turns_end_at_eos_unless_told_to_stop_at_the_closing_tags(self):
        assert self.parser.stop_strings(TOOLS) == []
        assert JsonParser(turn_ends_at_eos=False).stop_strings(TOOLS) == ["</tool_call>", "</answer>"]

    def test_one_call(self):
        turn = self.parser.parse('<tool_call>{"name": "search", "arguments": {"query": "Peru"}}</tool_call>', TOOLS)
        assert [(c.name, c.arguments, c.error) for c in turn.tool_calls] == [("search", {"query": "Peru"}, None)]

    def test_double_encoded_arguments_are_accepted(self):
        turn = self.parser.parse('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>', TOOLS)
        assert turn.tool_calls[0].arguments == {"query": "x"}

    @pytest.mark.parametrize(
        ("payload", "error"),
        [
            ("{not json}", "invalid JSON in tool call"),
            ('{"arguments": {}}', 'a tool call must be {"name"'),
            ('["search"]', 'a tool call must be {"name"'),
            ('{"name": "browse", "arguments": {}}', "unknown tool 'browse'; available: search, calculator"),
            ('{"name": "search", "arguments": [1]}', "arguments must be a JSON object"),
            ('{"name": "search", "arguments": "{oops"}', "invalid JSON in arguments"),
            (f'{{"name": "search", "arguments": {{"query": {HUGE_INTEGER}}}}}', "invalid JSON in tool call"),
            (f'{{"name": "search", "arguments": {NESTED}}}', "invalid JSON in tool call"),
            (f'{{"name": "search", "arguments": "{NESTED}"}}', "invalid JSON in arguments"),
            (f'{{"name": "search", "arguments": "[{HUGE_INTEGER}]"}}', "invalid JSON in arguments"),
        ],
    )
    def test_malformed_calls_carry_an_error(self, payload, error):
        turn = self.parser.parse(f"<tool_call>{payload}</tool_call>", TOOLS)
        assert turn.tool_calls[0].error.startswith(error)

    def test_unclosed_call(self):
        turn = self.parser.parse('<tool_call>{"name": "search"', TOOLS)
        assert turn.tool_calls[0].error == "unclosed <tool_call> tag"

    def test_several_calls(self):
        call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>'
        assert len(self.parser.parse(call * 3, TOOLS).tool_calls) == 3

    def test_answer(self):
        assert self.parser.parse("<answer>Lima</answer>", TOOLS).answer == "Lima"


def test_unwrap_answer():
    assert unwrap_answer("  \\boxed{42} ") == "42"
    assert unwrap_answer(" 42 ") == "42"
    # From the first \boxed{ to the last } after it, so that nested braces stay in the answer.
    assert unwrap_answer("\\boxed{\\frac{1}{2}} or \\boxed{3}") == "\\frac{1}{2}} or \\boxed{3"
    assert unwrap_answer("} \\boxed{ 7 ") == "} \\boxed{ 7"


def test_unknown_parser_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown parser 'xml'"):
        make_parser("xml")


def test_json_nesting_is_bounded_whatever_the_recursion_limit():
    # torch's compiler raises the interpreter's limit to 2000 once anything compiles: the bound
    # must not move with it.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        with pytest.raises(ValueError, match="nested deeper than"):
            load_json(NESTED)
        turn = JsonParser().parse(f'<tool_call>{{"name": "search", "arguments": {NESTED}}}</tool_call>', TOOLS)
        assert "nested deeper than" in turn.tool_calls[0].error
    finally:
        sys.setrecursionlimit(limit)
    deepest = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert load_json(deepest) == json.loads(deepest)
    # Brackets, quotes and backslashes inside strings are text, not structure.
    text = json.dumps({"q": '"[[[\\' + "[" * 100, "deep": json.loads("[" * 60 + "]" * 60)})
    assert load_json(text) == json.loads(text)

