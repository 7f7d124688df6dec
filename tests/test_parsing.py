"""Tool-call parsing: ReSearch/Search-R1 tags and chat-template JSON, including malformed turns."""

import pytest

from agentenv.parsing import JsonParser, TagParser, ToolCall, make_parser, unwrap_answer
from agentenv.tools import Tool, calculator


def _search(query: str) -> str:
    """Search the corpus.

    Args:
        query: What to look for.
    """
    return query


TOOLS = {"search": Tool.from_function(_search, name="search"), "calculator": calculator}


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

    def test_instructions_name_every_tool(self):
        text = self.parser.instructions(TOOLS)
        assert "<search>query</search>" in text and "<calculator>expression</calculator>" in text


class TestJson:
    parser = JsonParser()

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


def test_unknown_parser_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown parser 'xml'"):
        make_parser("xml")
