"""Property tests: thousands of random strings at the parser, the environment and the calculator.

Nothing a policy writes may crash a rollout: every input either parses or becomes an error
observation, and the calculator either answers or raises its own ToolError. Random episodes of
random and hostile turns, over batches of differently configured environments, keep every token
budget on every step.
"""

import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentenv import ToolEnv, step_batch
from agentenv.env import FINISH_REASONS
from agentenv.parsing import JsonParser, TagParser, _ClosingTags, unwrap_answer
from agentenv.tools import Tool, ToolError, calculator
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


@SETTINGS
@given(text=turn_text)
def test_boxed_is_unwrapped_as_a_greedy_match_would(text):
    boxed = re.search(r"\\boxed\{(.*)\}", text, re.DOTALL)
    assert unwrap_answer(text) == (boxed.group(1) if boxed else text).strip()


@SETTINGS
@given(text=st.lists(st.sampled_from(["<a>", "</a>", "<search>", "</search>", "</", ">", "a", "<b>", "</b>", " "]),
                     max_size=30).map("".join))
def test_the_closing_tag_index_finds_what_a_search_would(text):
    names = r"search|[A-Za-z_][\w.-]*"
    closing = _ClosingTags(text, names)
    for opening in re.finditer(rf"<({names})>", text):
        name = opening.group(1)
        assert closing.first(name, opening.end()) == text.find(f"</{name}>", opening.end())


# --- random episodes: no exception escapes, every budget holds ---------------------------------------


def _search(query: str) -> str:
    """Search.

    Args:
        query: What to look for.
    """
    return " ".join(["Lima is the capital of Peru."] * (len(query) * 7 % 300))


def _failing(query: str) -> str:
    """Fail.

    Args:
        query: Anything.
    """
    raise RuntimeError(query)


class _RaisingBatchTool(Tool):
    """Breaks the run_batch contract: raises instead of answering."""

    def run_batch(self, calls):
        raise MemoryError("out of memory")


TOOLS = [Tool.from_function(_search, name="search"), calculator, Tool.from_function(_failing, name="failing"),
         _RaisingBatchTool("broken", None, None, _failing)]
HOSTILE = [
    "<search>Peru</search>" * 49,
    "<search>" * 300,
    "<calculator>" + "1" * 4301 + "</calculator>",
    '<tool_call>{"name": "calculator", "arguments": {"expression": %s}}</tool_call>' % ("1" * 4301),
    '<tool_call>{"name": "search", "arguments": "%s"}</tool_call>' % ("[" * 1000 + "]" * 1000),
    '<tool_call>{"name": "broken", "arguments": {"query": "x"}}</tool_call>',
    "<broken>x</broken><failing>y</failing>",
    "\\boxed{" * 500,
    "<answer>" + "\\boxed{" * 50 + "</answer>",
    "<calculator>9**9**9</calculator><calculator>(1/3)**10**6</calculator>",
    "word " * 2000,
]


def _random_action(rng: random.Random, env: ToolEnv):
    pieces = [rng.choice(HOSTILE) if rng.random() < 0.4 else rng.choice([*FRAGMENTS, "<search>Peru</search>"])
              for _ in range(rng.randint(0, 4))]
    text = "".join(pieces)
    kind = rng.random()
    if kind < 0.5:
        return text, None
    if kind < 0.75:  # random ids, up to three times what the turn may hold
        length = rng.randint(0, 3 * min(env.max_turn_tokens, 300))
        ids = [rng.randrange(len(env.tokenizer)) for _ in range(length)]
    else:
        ids = env.tokenizer.encode(text, add_special_tokens=False)
    return np.array(ids, dtype=np.int64), [-rng.random() for _ in ids] if rng.random() < 0.5 else None


def _random_env(rng: random.Random, tokenizer) -> ToolEnv:
    # Some turns too short for a call, some long enough for the hostile JSON (a digit is a token).
    max_turn_tokens = rng.choice([rng.randint(1, 200), 6000])
    env = ToolEnv(
        TOOLS, tokenizer=tokenizer, parser=rng.choice(["tags", "search-r1", "json"]),
        max_turns=rng.randint(1, 5), max_turn_tokens=max_turn_tokens,
        max_observation_tokens=rng.randint(1, 400), max_calls_per_turn=rng.randint(1, 3),
        on_no_call=rng.choice(["nudge", "nudge", "end", "answer"]), max_nudges=rng.randint(0, 3),
    )
    obs, _ = env.reset(options={"question": "What is the capital of Peru?", "answers": ["Lima"]})
    # Some contexts fill up, some do not.
    env.max_total_tokens = len(obs) + rng.randint(1, 2 * min(max_turn_tokens, 5000) + 400)
    return env


def _check_budgets(env: ToolEnv, obs, info) -> None:
    assert list(obs) == info["token_ids"] and len(info["policy_mask"]) == len(obs)
    assert len(obs) <= env.max_total_tokens
    for segment in info["trajectory"].segments:
        if segment.source == "policy":
            assert len(segment.token_ids) <= env.max_turn_tokens
        if segment.source == "tool":
            assert len(segment.token_ids) <= env.max_observation_tokens


def _action_length(env: ToolEnv, action) -> int:
    return len(env.tokenizer.encode(action, add_special_tokens=False)) if isinstance(action, str) else len(action)


@settings(SETTINGS, max_examples=100)
@given(rng=st.randoms(use_true_random=False))
def test_random_episodes_keep_every_budget_and_raise_nothing(tokenizer, rng):
    running = [_random_env(rng, tokenizer) for _ in range(6)]
    steps = 0
    while running:
        actions = [_random_action(rng, env) for env in running]
        turn_budgets = [env.max_new_tokens for env in running]
        results = step_batch(running, [a for a, _ in actions], [lp for _, lp in actions])
        steps += 1
        for env, (action, _), budget, (obs, _, terminated, truncated, info) in zip(
            running, actions, turn_budgets, results, strict=True
        ):
            _check_budgets(env, obs, info)
            # A turn longer than its budget is cut to it, and info says by how much.
            assert info["truncated_action_tokens"] == max(0, _action_length(env, action) - budget)
            assert info["num_turns"] == steps <= env.max_turns
            if terminated or truncated:
                assert info["finish_reason"] in FINISH_REASONS and "reward_components" in info
            else:
                assert info["finish_reason"] is None and env.max_new_tokens >= 1
        running = [env for env, result in zip(running, results, strict=True) if not (result[2] or result[3])]
