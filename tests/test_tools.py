"""The Tool protocol: typed functions become tools; no exception escapes a tool call."""

from agentenv.tools import Tool, ToolError, tool


def lookup(word: str, limit: int = 3) -> str:
    """Look a word up in a tiny dictionary.

    Args:
        word: The word to look up.
        limit: How many senses to return.
    """
    senses = {"bank": ["river side", "money house", "tilt"]}
    if word not in senses:
        raise ToolError(f"{word!r} is not in the dictionary")
    return "; ".join(senses[word][:limit])


def test_typed_function_becomes_a_tool_with_its_json_schema():
    wrapped = Tool.from_function(lookup)
    assert wrapped.name == "lookup"
    assert wrapped.description == "Look a word up in a tiny dictionary."
    assert wrapped.parameters["required"] == ["word"]
    assert wrapped.parameters["properties"]["limit"]["type"] == "integer"
    assert wrapped.schema["function"]["name"] == "lookup"
    assert wrapped.main_argument == "word"


def test_decorator_with_a_name():
    @tool(name="define")
    def define(word: str) -> str:
        """Define a word.

        Args:
            word: The word.
        """
        return word.upper()

    assert define.name == "define"
    assert define(word="x") == "X"


def test_tool_error_becomes_an_error_observation():
    output = Tool.from_function(lookup).run({"word": "zebra"})
    assert not output.ok
    assert output.text == "Error (lookup): 'zebra' is not in the dictionary"


def test_unexpected_exception_becomes_an_error_observation():
    def broken(x: str) -> str:
        """Always fails.

        Args:
            x: Anything.
        """
        return str(1 / 0)

    output = Tool.from_function(broken).run({"x": "a"})
    assert not output.ok and "ZeroDivisionError" in output.text


def test_bad_arguments_are_reported_not_run():
    wrapped = Tool.from_function(lookup)
    assert "missing argument(s) word" in wrapped.run({}).text
    assert "unknown argument(s) colour" in wrapped.run({"word": "bank", "colour": 1}).text
    assert "must be of type integer" in wrapped.run({"word": "bank", "limit": "2"}).text
    assert "must be of type integer" in wrapped.run({"word": "bank", "limit": True}).text
    assert "must be a JSON object" in wrapped.run(["bank"]).text


def test_batch_function_serves_all_calls_at_once():
    batches = []

    def upper_batch(calls):
        batches.append(len(calls))
        return [call["word"].upper() for call in calls]

    wrapped = Tool.from_function(lookup, batch_function=upper_batch)
    outputs = wrapped.run_batch([{"word": "a"}, {}, {"word": "b"}])
    assert [o.text for o in outputs][::2] == ["A", "B"]
    assert not outputs[1].ok
    assert batches == [2]


def test_failing_batch_falls_back_to_single_calls():
    def bad_batch(calls):
        raise RuntimeError("backend down")

    wrapped = Tool.from_function(lookup, batch_function=bad_batch)
    outputs = wrapped.run_batch([{"word": "bank", "limit": 1}, {"word": "nope"}])
    assert outputs[0].text == "river side"
    assert not outputs[1].ok


def test_batch_may_fail_single_calls_without_failing_the_rest():
    def batch(calls):
        return [ToolError("bad word") if call["word"] == "x" else call["word"] for call in calls]

    outputs = Tool.from_function(lookup, batch_function=batch).run_batch([{"word": "a"}, {"word": "x"}])
    assert [(o.text, o.ok) for o in outputs] == [("a", True), ("Error (lookup): bad word", False)]


def test_batch_wide_tool_error_reaches_every_call_without_retrying_them_one_by_one():
    single_calls = []

    def single(word: str) -> str:
        """Records single calls.

        Args:
            word: Anything.
        """
        single_calls.append(word)
        return word

    def dead_backend(calls):
        raise ToolError("search failed: server unreachable")

    outputs = Tool.from_function(single, batch_function=dead_backend).run_batch([{"word": "a"}, {"word": "b"}])
    assert [o.text for o in outputs] == ["Error (single): search failed: server unreachable"] * 2
    assert single_calls == []
