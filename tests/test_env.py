"""ToolEnv: episodes, masks by construction, token in / token out, truncation, batching, Gymnasium."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import agentenv
from agentenv import ToolEnv, step_batch
from agentenv.envs import arithmetic_questions
from agentenv.tools import Tool, ToolError, calculator

CAPITALS = {"peru": "Lima is the capital of Peru.", "chile": "Santiago is the capital of Chile."}
QUESTION = {"question": "What is the capital of Peru?", "answers": ["Lima"]}


def make_search(batches=None):
    def search(query: str) -> str:
        """Look a country up.

        Args:
            query: A country name.
        """
        for country, passage in CAPITALS.items():
            if country in query.lower():
                return passage
        raise ToolError(f"no passage matches {query!r}")

    def search_batch(calls):
        if batches is not None:
            batches.append(len(calls))
        return [search(**call) for call in calls]

    return Tool.from_function(search, batch_function=search_batch)


@pytest.fixture
def env(tokenizer):
    return ToolEnv([make_search(), calculator], tokenizer=tokenizer, max_turns=3)


def non_canonical_ids(tokenizer, text):
    """Token ids for `text`, one character at a time: decoding them gives `text` back, but
    encoding `text` gives different (merged) ids. Storing these proves nothing re-encodes."""
    ids = [tid for ch in text for tid in tokenizer.encode(ch, add_special_tokens=False)]
    assert tokenizer.decode(ids) == text
    assert ids != tokenizer.encode(text, add_special_tokens=False)
    return ids


def test_full_episode_with_scripted_token_ids(env, tokenizer):
    obs, info = env.reset(options=QUESTION)
    prompt = list(obs)
    assert info["policy_mask"] == [0] * len(prompt)
    assert "What is the capital of Peru?" in tokenizer.decode(prompt)

    turn_1 = non_canonical_ids(tokenizer, "I will search. <search>Peru</search>")
    obs, reward, terminated, truncated, info = env.step(np.array(turn_1))
    assert (reward, terminated, truncated) == (0.0, False, False)
    tool_1 = list(obs[len(prompt) + len(turn_1) :])
    assert tokenizer.decode(tool_1) == "\n<result>\nLima is the capital of Peru.\n</result>\n"

    turn_2 = tokenizer.encode("<answer>Lima</answer>", add_special_tokens=False)
    obs, reward, terminated, truncated, info = env.step(turn_2)
    assert terminated and not truncated
    assert reward == 1.0
    assert info["finish_reason"] == "answer" and info["answer"] == "Lima" and info["format_valid"]
    assert info["tool_calls"] == {"search": 1}
    assert info["reward_components"]["research_answer"] == 1.0

    # Token by token: prompt 0, policy 1, tool 0, policy 1; ids exactly as emitted.
    expected_ids = prompt + turn_1 + tool_1 + turn_2
    expected_mask = [0] * len(prompt) + [1] * len(turn_1) + [0] * len(tool_1) + [1] * len(turn_2)
    assert list(obs) == info["token_ids"] == expected_ids
    assert info["policy_mask"] == expected_mask
    segments = info["trajectory"].segments
    assert [s.source for s in segments] == ["prompt", "policy", "tool", "policy"]
    assert list(segments[1].token_ids) == turn_1


def test_trajectory_rebuilds_from_its_segments(env, tokenizer):
    env.reset(options=QUESTION)
    env.step("<search>Chile</search>")
    *_, info = env.step("<answer>Santiago</answer>")
    trajectory = info["trajectory"]
    rebuilt = [t for segment in trajectory.segments for t in segment.token_ids]
    assert rebuilt == trajectory.token_ids
    assert sum(trajectory.policy_mask) == trajectory.count("policy")
    assert trajectory.prompt_length == trajectory.segments[0].token_ids.__len__()


def test_engine_logprobs_are_kept_with_policy_tokens(env, tokenizer):
    env.reset(options=QUESTION)
    ids = tokenizer.encode("<answer>Lima</answer>", add_special_tokens=False)
    logprobs = [-0.5] * len(ids)
    agentenv.step_batch([env], [ids], [logprobs])
    assert env.trajectory.policy_logprobs == logprobs


def test_tool_errors_become_observations_and_the_episode_goes_on(env, tokenizer):
    env.reset(options=QUESTION)
    obs, reward, terminated, truncated, info = env.step("<search>Atlantis</search>")
    assert not terminated and not truncated
    assert "Error (search): no passage matches 'Atlantis'" in tokenizer.decode(obs)
    assert info["failed_tool_calls"] == 1
    obs, *_ = env.step("<calculator>1/0</calculator>")
    assert "Error (calculator): division by zero" in tokenizer.decode(obs)


def test_malformed_call_is_an_error_observation_and_invalidates_the_format(env, tokenizer):
    env.reset(options=QUESTION)
    obs, *_ , info = env.step("<search>Peru")
    assert "Error: unclosed <search> tag" in tokenizer.decode(obs)
    *_, reward, terminated, truncated, info = env.step("<answer>Lima</answer>")
    assert terminated and not info["format_valid"]
    assert info["reward_components"]["research_answer"] == 0.0


def test_turn_without_call_or_answer_is_nudged_once_then_ends(env, tokenizer):
    env.reset(options=QUESTION)
    obs, reward, terminated, truncated, info = env.step("I am not sure.")
    assert not (terminated or truncated) and "No tool call or answer found" in tokenizer.decode(obs)
    *_, reward, terminated, truncated, info = env.step("Still not sure.")
    assert truncated and not terminated
    assert info["finish_reason"] == "no_tool_call" and reward == 0.0 and info["num_turns"] == 2


def test_a_turn_without_a_call_on_the_last_turn_ends_without_a_reminder(tokenizer):
    env = ToolEnv([calculator], tokenizer=tokenizer, max_turns=1)
    env.reset(options=QUESTION)
    *_, truncated, info = env.step("I am not sure.")
    assert truncated and info["finish_reason"] == "no_tool_call"
    assert info["trajectory"].sources[-1] == "policy"  # no reminder appended after the last turn


def test_a_nudged_turn_is_not_a_format_error(env):
    env.reset(options=QUESTION)
    env.step("Let me think about Peru first.")
    *_, reward, terminated, _, info = env.step("<answer>Lima</answer>")
    assert terminated and info["format_valid"] and reward == 1.0


def test_turn_without_call_can_end_the_episode_instead(tokenizer):
    env = ToolEnv([calculator], tokenizer=tokenizer, on_no_call="end")
    env.reset(options=QUESTION)
    *_, terminated, truncated, info = env.step("I am not sure.")
    assert truncated and not terminated and info["finish_reason"] == "no_tool_call"


def test_an_unknown_tool_tag_is_an_error_observation_against_the_format(env, tokenizer):
    env.reset(options=QUESTION)
    obs, _, terminated, truncated, info = env.step("<nosuchtool>Peru</nosuchtool>")
    assert not (terminated or truncated) and info["failed_tool_calls"] == 1
    assert "Error: unknown tool <nosuchtool>; the tools are: <search>, <calculator>" in tokenizer.decode(obs)
    *_, reward, terminated, _, info = env.step("<answer>Lima</answer>")
    assert terminated and not info["format_valid"] and reward == 0.0


def test_a_failing_call_counts_against_the_format(env, tokenizer):
    env.reset(options=QUESTION)
    obs, *_, info = env.step("<calculator>1/0</calculator>")
    assert "Error (calculator)" in tokenizer.decode(obs) and info["failed_tool_calls"] == 1
    *_, reward, terminated, _, info = env.step("<answer>Lima</answer>")
    assert terminated and not info["format_valid"]
    assert info["reward_components"]["exact_match"] == 1.0 and reward == 0.0


def test_a_tool_that_is_down_does_not_count_against_the_format(tokenizer):
    from agentenv.tools import RetrieverClient, search_tool

    # A real client to a port nobody listens on: the search fails as ToolUnavailable.
    dead = RetrieverClient("http://127.0.0.1:9", timeout_s=1.0, max_retries=0)
    env = ToolEnv([search_tool(dead)], tokenizer=tokenizer)
    env.reset(options=QUESTION)
    obs, *_, info = env.step("<search>Peru</search>")
    assert "search failed" in tokenizer.decode(obs) and info["failed_tool_calls"] == 1
    *_, reward, terminated, _, info = env.step("<answer>Lima</answer>")
    assert terminated and info["format_valid"] and reward == 1.0


def test_turn_without_tags_can_be_taken_as_the_answer(tokenizer):
    env = ToolEnv([], tokenizer=tokenizer, on_no_call="answer", max_turns=1)
    env.reset(options=QUESTION)
    ids = tokenizer.encode(" Lima<|im_end|>", add_special_tokens=False)
    *_, reward, terminated, truncated, info = env.step(ids)
    assert terminated and info["finish_reason"] == "untagged_answer" and info["answer"] == "Lima"
    assert not info["format_valid"] and info["reward_components"]["exact_match"] == 1.0
    assert reward == 0.0  # ReSearch gives nothing for an invalid format


def test_max_turns_truncates(env):
    env.reset(options=QUESTION)
    for _ in range(2):
        assert env.step("<search>Peru</search>")[3] is False
    *_, truncated, info = env.step("<search>Peru</search>")
    assert truncated and info["finish_reason"] == "max_turns" and info["num_turns"] == 3


def test_max_total_tokens_truncates(tokenizer):
    env = ToolEnv([make_search()], tokenizer=tokenizer, max_total_tokens=200, max_turns=50)
    obs, _ = env.reset(options=QUESTION)
    assert env.max_new_tokens == min(env.max_turn_tokens, 200 - len(obs))
    for _ in range(20):
        *_, truncated, info = env.step("<search>Peru</search>")
        if truncated:
            break
    assert info["finish_reason"] == "max_tokens"
    assert env.max_new_tokens == 0


def test_calls_beyond_the_per_turn_cap_are_not_run(tokenizer):
    env = ToolEnv([calculator], tokenizer=tokenizer, max_calls_per_turn=2)
    env.reset(options=QUESTION)
    obs, *_, info = env.step("<calculator>1+1</calculator><calculator>2+2</calculator><calculator>3+3</calculator>")
    text = tokenizer.decode(obs)
    assert "\n2\n\n4\n\nError: at most 2 tool calls per turn" in text
    assert info["tool_calls"] == {"calculator": 2} and info["failed_tool_calls"] == 1


def test_step_batch_sends_each_tools_calls_in_one_batch(tokenizer):
    batches = []
    search = make_search(batches)
    envs = [ToolEnv([search, calculator], tokenizer=tokenizer) for _ in range(3)]
    for env in envs:
        env.reset(options=QUESTION)
    results = step_batch(envs, ["<search>Peru</search>", "<search>Chile</search>", "<calculator>2*3</calculator>"])
    assert batches == [2]
    assert [r[4]["tool_calls"] for r in results] == [{"search": 1}, {"search": 1}, {"calculator": 1}]


def test_json_tool_calls_come_back_as_a_chat_template_tool_turn(tokenizer):
    env = ToolEnv([calculator], tokenizer=tokenizer, parser="json")
    obs, _ = env.reset(options=QUESTION)
    # SmolLM2's template ignores tools=, so the schemas are rendered into the system prompt.
    assert '"name": "calculator"' in tokenizer.decode(obs)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    obs, *_ = env.step(call + "<|im_end|>")
    assert tokenizer.decode(obs).endswith(call + "<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n")


def test_a_json_episode_is_what_the_chat_template_renders_and_the_policy_closes_its_own_turns(tokenizer):
    env = ToolEnv([calculator], tokenizer=tokenizer, parser="json")
    assert env.stop_strings == []  # every engine stops at the end-of-turn token
    obs, _ = env.reset(options=QUESTION)
    prompt = tokenizer.decode(obs)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    env.step(call + "<|im_end|>")
    _, reward, terminated, _, info = env.step("<answer>Lima</answer><|im_end|>")
    assert terminated and reward == 1.0 and info["format_valid"]
    rendered = prompt + tokenizer.apply_chat_template(
        [{"role": "system", "content": "s"}, {"role": "assistant", "content": call},
         {"role": "tool", "content": "42"}, {"role": "assistant", "content": "<answer>Lima</answer>"}],
        tokenize=False,
    ).split("<|im_start|>assistant\n", 1)[1]
    assert tokenizer.decode(info["token_ids"]) == rendered.rstrip("\n")
    # The loss trains on the policy's two turns, each with the end-of-turn token it wrote.
    trained = [tokenizer.decode(s.token_ids) for s in info["trajectory"].segments if s.source == "policy"]
    assert trained == [call + "<|im_end|>", "<answer>Lima</answer><|im_end|>"]


def test_a_json_turn_cut_by_its_budget_is_closed_by_the_tool_turn(tokenizer):
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    budget = len(tokenizer.encode(call, add_special_tokens=False)) + 3
    env = ToolEnv([calculator], tokenizer=tokenizer, parser="json", max_turn_tokens=budget)
    env.reset(options=QUESTION)
    obs, *_ = env.step(call + " and then some more words that run past the budget of this turn")
    tail = "</tool_call> and then some<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(obs).endswith(tail)


def test_reset_samples_from_questions_deterministically(tokenizer):
    env = ToolEnv([calculator], tokenizer=tokenizer, questions=arithmetic_questions(50))
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    assert np.array_equal(first, again)
    _, info = env.reset(options={"index": 7})
    assert info["question"]["id"] == "arith-0-7"


@pytest.mark.parametrize(
    ("options", "message"),
    [({}, "reset\\(\\) needs options"), ({"question": "Q?"}, "non-empty 'answers'")],
)
def test_reset_without_a_question_is_a_clear_error(tokenizer, options, message):
    with pytest.raises(ValueError, match=message):
        ToolEnv([calculator], tokenizer=tokenizer).reset(options=options)


def test_step_after_the_end_is_a_clear_error(env):
    env.reset(options=QUESTION)
    env.step("<answer>Lima</answer>")
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("<answer>Lima</answer>")


def test_out_of_vocabulary_ids_are_rejected(env, tokenizer):
    env.reset(options=QUESTION)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step([len(tokenizer) + 5])


@pytest.mark.parametrize("env_id", sorted(i for i in gym.registry if i.startswith("agentenv/")))
def test_gymnasium_env_checker_passes_on_every_registered_id_with_its_defaults(env_id, tokenizer):
    # check_env steps with random token ids and insists the episode survive one step: the
    # default nudge (not ending the episode on a turn without a call) is what lets it.
    env = gym.make(env_id, tokenizer=tokenizer).unwrapped
    check_env(env, skip_render_check=True)


def test_registered_calculator_env(tokenizer):
    env = gym.make(agentenv.envs.CALCULATOR_ID, tokenizer=tokenizer, num_questions=10)
    obs, info = env.reset(seed=0)
    answer = info["question"]["answers"][0]
    env.step("<calculator>1+1</calculator>")
    obs, reward, terminated, truncated, info = env.step(f"<answer>{answer}</answer>")
    assert terminated and reward == 1.0
    assert env.observation_space.contains(obs)


# --- nothing a policy writes or a tool does breaks a batch ---------------------------------------

HUGE_INTEGER = "1" * 4301  # past Python's int-string limit: json.loads raises ValueError
NESTED = "[" * 1000 + "]" * 1000  # past the parser's MAX_JSON_DEPTH (and the default recursion limit)


def json_call(arguments: str) -> str:
    return f'<tool_call>{{"name": "calculator", "arguments": {arguments}}}</tool_call>'


@pytest.mark.parametrize(
    "action",
    [
        json_call(f'{{"expression": {HUGE_INTEGER}}}'),
        json_call(f'"{NESTED}"'),  # double-encoded arguments
        json_call(NESTED),
    ],
    ids=["huge-integer", "double-encoded-nesting", "nesting"],
)
def test_json_python_cannot_read_is_that_calls_error_and_the_batch_goes_on(tokenizer, action):
    # Room for the whole action: a digit is a token.
    envs = [ToolEnv([calculator], tokenizer=tokenizer, parser="json", max_turn_tokens=6000, max_total_tokens=8192)
            for _ in range(3)]
    for env in envs:
        env.reset(options=QUESTION)
    ok_call = json_call('{"expression": "6*7"}')
    results = step_batch(envs, [ok_call, action, ok_call])
    assert [r[4]["failed_tool_calls"] for r in results] == [0, 1, 0]
    assert results[1][4]["turns"][-1]["calls"][0]["output"].startswith("Error: invalid JSON")
    # Every environment finished its step: the next one works for all of them.
    results = step_batch(envs, ["<answer>42</answer>"] * 3)
    assert all(terminated for _, _, terminated, _, _ in results)


def test_json_python_cannot_read_in_a_tag_call_is_that_calls_error(tokenizer):
    def scale(value: float, factor: float) -> str:
        """Multiply.

        Args:
            value: The number.
            factor: By how much.
        """
        return str(value * factor)

    envs = [ToolEnv([Tool.from_function(scale)], tokenizer=tokenizer, max_turn_tokens=6000, max_total_tokens=8192)
            for _ in range(3)]
    for env in envs:
        env.reset(options=QUESTION)
    actions = [f'<scale>{{"value": {HUGE_INTEGER}, "factor": 2}}</scale>',
               f'<scale>{{"value": {NESTED}, "factor": 2}}</scale>',
               '<scale>{"value": 21, "factor": 2}</scale>']
    results = step_batch(envs, actions)
    assert [r[4]["failed_tool_calls"] for r in results] == [1, 1, 0]
    assert results[0][4]["turns"][-1]["calls"][0]["output"].startswith("Error: <scale> takes a JSON object")
    results = step_batch(envs, ["<answer>42</answer>"] * 3)
    assert all(terminated for _, _, terminated, _, _ in results)


class _BrokenTool(Tool):
    """A tool of one's own whose run_batch breaks the contract: it raises, is interrupted, or
    miscounts."""

    def __init__(self, name, mode):
        def broken(query: str) -> str:
            """Broken.

            Args:
                query: Anything.
            """
            return query

        super().__init__(name, None, None, broken)
        self.mode = mode

    def run_batch(self, calls):
        if self.mode == "raise":
            raise KeyError("boom")
        if self.mode == "interrupt":
            raise KeyboardInterrupt
        return []  # one output too few


@pytest.mark.parametrize("mode", ["raise", "miscount"])
def test_a_tool_that_breaks_fails_its_own_calls_and_every_env_finishes(tokenizer, mode):
    broken = _BrokenTool("broken", mode)
    envs = [ToolEnv([make_search(), broken], tokenizer=tokenizer) for _ in range(3)]
    for env in envs:
        env.reset(options=QUESTION)
    results = step_batch(envs, ["<broken>x</broken>", "<search>Peru</search>", "<broken>y</broken>"])
    assert [r[4]["failed_tool_calls"] for r in results] == [1, 0, 1]
    assert "Error (broken): " in tokenizer.decode(results[0][0])
    results = step_batch(envs, ["<answer>Lima</answer>"] * 3)
    assert [r[4]["finish_reason"] for r in results] == ["answer"] * 3


def test_an_interrupt_inside_a_tool_leaves_every_environment_as_it_was(tokenizer):
    envs = [ToolEnv([make_search(), _BrokenTool("broken", "interrupt")], tokenizer=tokenizer) for _ in range(2)]
    for env in envs:
        env.reset(options=QUESTION)
    before = [env.trajectory.token_ids for env in envs]
    with pytest.raises(KeyboardInterrupt):
        step_batch(envs, ["<search>Peru</search>", "<broken>x</broken>"])
    assert [env.trajectory.token_ids for env in envs] == before
    results = step_batch(envs, ["<answer>Lima</answer>"] * 2)
    assert [r[4]["finish_reason"] for r in results] == ["answer"] * 2


def test_a_parser_that_raises_makes_the_turn_a_failed_call(tokenizer):
    class Exploding(type(agentenv.parsing.make_parser("tags"))):
        def parse(self, text, tools):
            if "boom" in text:
                raise RecursionError("too deep")
            return super().parse(text, tools)

    env = ToolEnv([calculator], tokenizer=tokenizer, parser=Exploding())
    env.reset(options=QUESTION)
    obs, _, terminated, truncated, info = env.step("boom")
    assert not (terminated or truncated) and info["failed_tool_calls"] == 1
    assert "Error: the turn could not be parsed: RecursionError: too deep" in tokenizer.decode(obs)


def test_a_bad_action_raises_before_any_environment_of_the_batch_changes(tokenizer):
    envs = [ToolEnv([calculator], tokenizer=tokenizer) for _ in range(2)]
    for env in envs:
        env.reset(options=QUESTION)
    before = [list(env.trajectory.token_ids) for env in envs]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        step_batch(envs, ["<calculator>1+1</calculator>", [len(tokenizer) + 5]])
    assert [env.trajectory.token_ids for env in envs] == before
    with pytest.raises(ValueError, match="appears twice"):
        step_batch([envs[0], envs[0]], ["<answer>2</answer>"] * 2)
    results = step_batch(envs, ["<calculator>1+1</calculator>", "<answer>2</answer>"])
    assert results[0][4]["tool_calls"] == {"calculator": 1} and results[1][2]


def test_every_env_finishes_its_step_when_one_reward_function_raises(tokenizer):
    def failing_reward(outcome):
        raise ZeroDivisionError("a bug in the reward")

    good = ToolEnv([calculator], tokenizer=tokenizer)
    bad = ToolEnv([calculator], tokenizer=tokenizer, reward=failing_reward)
    for env in (bad, good):
        env.reset(options=QUESTION)
    with pytest.raises(ZeroDivisionError):
        step_batch([bad, good], ["<answer>Lima</answer>", "<calculator>1+1</calculator>"])
    # The good environment's step finished: it takes its next one.
    *_, terminated, _, info = good.step("<answer>Lima</answer>")
    assert terminated and info["tool_calls"] == {"calculator": 1}


# --- the token budgets hold whatever the turn ------------------------------------------------------


def long_search(words: int = 400):
    def search(query: str) -> str:
        """Search.

        Args:
            query: What to look for.
        """
        return f"{query}: " + " ".join(["Lima is the capital of Peru."] * (words // 6))

    return Tool.from_function(search)


def test_a_turn_of_many_calls_stays_within_the_observation_budget(tokenizer):
    env = ToolEnv([long_search(), calculator], tokenizer=tokenizer, max_observation_tokens=500, max_turn_tokens=2048)
    env.reset(options=QUESTION)
    *_, info = env.step("<search>Peru</search>" * 49)
    assert info["failed_tool_calls"] == 47
    assert len(info["trajectory"].segments[-1].token_ids) <= 500


def test_a_short_output_is_kept_whole_beside_a_long_one(tokenizer):
    env = ToolEnv([long_search(2000), calculator], tokenizer=tokenizer, max_observation_tokens=300)
    env.reset(options=QUESTION)
    obs, *_, info = env.step("<search>Peru</search><calculator>6*7</calculator>")
    tool_turn = tokenizer.decode(info["trajectory"].segments[-1].token_ids)
    assert " …\n\n42\n</result>" in tool_turn
    assert len(info["trajectory"].segments[-1].token_ids) <= 300


def test_the_context_never_passes_max_total_tokens(tokenizer):
    env = ToolEnv([long_search(2000)], tokenizer=tokenizer, max_total_tokens=1024, max_turns=10,
                  max_observation_tokens=600)
    obs, _ = env.reset(options=QUESTION)
    lengths = []
    for _ in range(10):
        obs, _, terminated, truncated, info = env.step("<search>Peru</search>")
        lengths.append(len(obs))
        if terminated or truncated:
            break
    assert info["finish_reason"] == "max_tokens"
    assert max(lengths) <= 1024 and lengths[-1] == 1024


def test_an_action_longer_than_the_turn_budget_is_cut_and_info_says_so(tokenizer):
    env = ToolEnv([calculator], tokenizer=tokenizer, max_turn_tokens=256)
    env.reset(options=QUESTION)
    action = tokenizer.encode(" word" * 3001, add_special_tokens=False)[:3001] + tokenizer.encode(
        "<answer>Lima</answer>", add_special_tokens=False
    )
    logprobs = [-1.0] * len(action)
    [(obs, _, terminated, _, info)] = step_batch([env], [action], [logprobs])
    policy = info["trajectory"].segments[1]
    assert list(policy.token_ids) == action[:256] and len(policy.logprobs) == 256
    assert info["truncated_action_tokens"] == len(action) - 256
    assert not terminated  # the answer came after the cut: the policy never wrote it
    *_, info = env.step("<answer>Lima</answer>")
    assert info["truncated_action_tokens"] == 0
