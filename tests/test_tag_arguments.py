"""Tools of any typed signature under the tags syntax: one string argument is the tag's text (as
ReSearch writes search and calculator calls), one argument of another type is the text converted to
it, several arguments are a JSON object inside the tag, converted to the schema's types; the system
prompt shows the model each form."""

import pytest

from agentenv import ToolEnv
from agentenv.parsing import TagParser
from agentenv.tools import Tool, calculator, tool

FACTORS = {("km", "mi"): 0.621371, ("mi", "km"): 1.609344}


@tool
def convert(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a distance between units.

    Args:
        value: The distance to convert.
        from_unit: The unit it is in, km or mi.
        to_unit: The unit to convert to, km or mi.
    """
    return f"{value * FACTORS[from_unit, to_unit]:.3f} {to_unit}"


@tool
def km_to_miles(km: float) -> str:
    """Convert kilometres to miles.

    Args:
        km: The distance in kilometres.
    """
    return f"{km * 0.621371:.3f}"


@tool
def repeat(word: str, times: int = 2, shout: bool = False) -> str:
    """Repeat a word.

    Args:
        word: The word.
        times: How often.
        shout: Upper case.
    """
    text = " ".join([word] * times)
    return text.upper() if shout else text


def _search(query: str) -> str:
    """Search the corpus.

    Args:
        query: What to look for.
    """
    return query


SEARCH = Tool.from_function(_search, name="search")
TOOLS = {tool.name: tool for tool in (SEARCH, calculator, convert, km_to_miles, repeat)}
parser = TagParser()


def call(text):
    [parsed] = parser.parse(text, TOOLS).tool_calls
    return parsed


def test_several_arguments_are_a_json_object_inside_the_tag():
    parsed = call('<convert>{"value": 3, "from_unit": "km", "to_unit": "mi"}</convert>')
    assert parsed.error is None
    assert parsed.arguments == {"value": 3.0, "from_unit": "km", "to_unit": "mi"}
    assert isinstance(parsed.arguments["value"], float)  # the schema says number: a float, as typed
    assert convert.run(parsed.arguments).text == "1.864 mi"


def test_json_values_are_converted_to_the_schemas_types():
    parsed = call('<repeat>{"word": "go", "times": "3", "shout": "true"}</repeat>')
    assert parsed.arguments == {"word": "go", "times": 3, "shout": True}
    assert call('<repeat>{"word": 7, "times": 2.0}</repeat>').arguments == {"word": "7", "times": 2}


def test_a_value_that_does_not_fit_its_type_is_a_call_error_naming_it():
    parsed = call('<convert>{"value": "three", "from_unit": "km", "to_unit": "mi"}</convert>')
    assert parsed.arguments is None
    assert parsed.error == "<convert>: argument 'value' must be a number, got 'three'"
    assert "must be an integer, got 2.5" in call('<repeat>{"word": "go", "times": 2.5}</repeat>').error


def test_text_that_is_not_a_json_object_shows_the_form_to_use():
    parsed = call("<convert>3 km to mi</convert>")
    assert parsed.arguments is None
    assert parsed.error.startswith("<convert> takes a JSON object of its arguments, e.g. <convert>{\"value\": ")


def test_missing_and_unknown_keys_are_left_to_the_tools_own_check():
    parsed = call('<convert>{"value": 3, "from_unit": "km"}</convert>')
    assert parsed.error is None
    assert convert.run(parsed.arguments).text == "Error (convert): missing argument(s) to_unit"


def test_one_number_argument_is_the_tags_text_as_a_float():
    parsed = call("<km_to_miles> 3.5 </km_to_miles>")
    assert parsed.arguments == {"km": 3.5} and isinstance(parsed.arguments["km"], float)
    assert call("<km_to_miles>10</km_to_miles>").arguments == {"km": 10.0}
    assert call("<km_to_miles>far</km_to_miles>").error == "<km_to_miles>: argument 'km' must be a number, got 'far'"


def test_one_string_argument_keeps_the_plain_text_even_when_it_looks_like_json():
    assert call('<search>{"query": "x"}</search>').arguments == {"query": '{"query": "x"}'}
    assert call("<calculator> 3.5 </calculator>").arguments == {"expression": "3.5"}


def test_the_prompt_shows_each_tool_in_its_form():
    instructions = parser.instructions(TOOLS)
    assert "- <search>query</search>: Search the corpus." in instructions
    assert "- <calculator>expression</calculator>: " in instructions
    assert '- <convert>{"value": <number>, "from_unit": <string>, "to_unit": <string>}</convert>: Convert a distance' in instructions
    assert '- <repeat>{"word": <string>, "times": <integer, optional>, "shout": <boolean, optional>}</repeat>' in instructions
    assert "- <km_to_miles>km (a number)</km_to_miles>: Convert kilometres to miles." in instructions


def test_search_and_calculator_prompt_is_unchanged():
    assert parser.instructions({"search": SEARCH, "calculator": calculator}) == (
        "Answer the question. Think step by step. You may call tools; each call's output comes back "
        "between <result> and </result>.\n"
        "- <search>query</search>: Search the corpus.\n"
        f"- <calculator>expression</calculator>: {calculator.description}\n"
        "Call one tool at a time and wait for its result. When you know the answer, write it as "
        "<answer>your answer</answer>."
    )


@pytest.mark.parametrize("parser_name", ["tags", "search-r1"])
def test_an_episode_calls_a_multi_argument_tool_under_the_tag_syntaxes(tokenizer, parser_name):
    env = ToolEnv([convert], tokenizer=tokenizer, parser=parser_name)
    env.reset(options={"question": "How many miles is 3 km?", "answers": ["1.864 mi"]})
    assert '<convert>{"value": <number>' in tokenizer.decode(env.trajectory.token_ids)
    obs, *_ = env.step('<convert>{"value": 3, "from_unit": "km", "to_unit": "mi"}</convert>')
    assert "1.864 mi" in tokenizer.decode(obs[-20:])
    obs, reward, terminated, truncated, info = env.step("<answer>1.864 mi</answer>")
    assert terminated and info["format_valid"] and info["failed_tool_calls"] == 0 and reward == 1.0
