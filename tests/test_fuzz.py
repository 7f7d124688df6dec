"""Property tests: thousands of random strings at the parser, the environment and the calculator.

Nothing a policy writes may crash a rollout: every input either parses or becomes an error
observation, and the calculator either answers or raises its own ToolError.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentenv import ToolEnv
from agentenv.parsing import JsonParser, TagParser
from agentenv.tools import ToolError, calculator
from agentenv.tools.calculator import evaluate

# Fragments that make random text look like tool calls, so the parsers' edge cases get hit.
FRAGMENTS = [
    "<search>", "</search>", "<calculator>", "</calculator>", "<answer>", "</answer>",
    "<tool_call>", "</tool_call>", '{"name": "calculator", "arguments": {"expression": "',
    '"}}', "\\boxed{", "}", "9**9**9", "(", ")", "1/0", "__import__", "<|im_end|>", "\n",
]
turn_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=12).map("".join)
arithmetic_text = st.lists(
    st.one_of(st.sampled_from(list("0123456789+-*/%().^ e")), st.sampled_from(["**", "//", "sqrt(", "log(", "9**9"])),
    max_size=40,
).map("".join)

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(text=turn_text)
def test_parsers_never_raise(text):
    tools = {"calculator": calculator}
    for parser in (TagParser(), JsonParser()):
        turn = parser.parse(text, tools)
        assert turn.answer is None or isinstance(turn.answer, str)


@pytest.fixture(scope="module", params=["tags", "json"])
def env(request, tokenizer):
    return ToolEnv([calculator], tokenizer=tokenizer, parser=request.param, max_turns=2)


@SETTINGS
@given(text=turn_text)
def test_env_step_never_raises(env, text):
    env.reset(options={"question": "What is 6 times 7?", "answers": ["42"]})
    obs, reward, terminated, truncated, info = env.step(text)
    assert len(obs) == len(info["policy_mask"])
    if terminated or truncated:
        assert "reward_components" in info


@SETTINGS
@given(expression=st.one_of(arithmetic_text, st.text(max_size=60)))
def test_calculator_answers_or_refuses(expression):
    try:
        assert isinstance(evaluate(expression), str)
    except ToolError:
        pass
    assert isinstance(calculator.run({"expression": expression}).text, str)
