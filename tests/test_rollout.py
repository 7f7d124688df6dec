"""The batched rollout driver: token in, token out; every episode finishes; tools see one batch per turn.

Two real engines drive it: the transformers engine on a tiny random model (free-running, random
text), and ``ScriptedEngine``, a ``RolloutEngine`` whose policy is a fixed script per question,
tokenized by the real tokenizer, so an episode's course is known in advance.
"""

import dataclasses

import pytest

from agentenv.env import FINISH_REASONS
from agentenv.envs import arithmetic_questions, make_calculator_env
from agentenv.models import tiny_random_model
from agentenv.tools.calculator import calculator
from agentenv.trainers.rollout.engines import (
    Completion,
    SamplingConfig,
    TransformersEngine,
    per_prompt_limits,
)
from agentenv.trainers.rollout.rollout import episode_stats, rollout


class RecordingEngine:
    """A transformers engine that keeps every (prompt, completion) it served."""

    def __init__(self, engine):
        self.engine = engine
        self.served: list[tuple[tuple[int, ...], Completion]] = []
        self.limits: list[list[int]] = []

    def generate(self, prompts, sampling, max_new_tokens=None):
        completions = self.engine.generate(prompts, sampling, max_new_tokens)
        self.served += [(tuple(prompt), completion) for prompt, completion in zip(prompts, completions, strict=True)]
        self.limits.append(list(max_new_tokens))
        return completions

    def update_weights(self, model):
        self.engine.update_weights(model)


class ScriptedEngine:
    """A deterministic policy: for each question, the text of each turn, tokenized when it is sent.

    The turn is the number of tool results after the question; the question is found in the
    decoded prompt. Scripted tokens have probability 1, so their logprobs are 0.
    """

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.scripts = scripts

    def generate(self, prompts, sampling, max_new_tokens=None):
        completions = []
        for prompt, limit in zip(prompts, per_prompt_limits(prompts, sampling, max_new_tokens), strict=True):
            text = self.tokenizer.decode(prompt)
            question = next(q for q in self.scripts if q in text)
            turn = text.split(question, 1)[1].count("</result>")  # results after the question
            ids = self.tokenizer.encode(self.scripts[question][turn], add_special_tokens=False)
            finish = "length" if len(ids) > limit else "stop"
            completions.append(Completion(ids[:limit], [0.0] * min(len(ids), limit), finish))
        return completions

    def update_weights(self, model):
        """A script has no weights."""


@pytest.fixture(scope="module")
def questions():
    return arithmetic_questions(2, seed=3)


@pytest.fixture(scope="module")
def free_running_batch(tokenizer, questions):
    """B=2 questions x G=2 samples from a tiny random model; ``nudge`` keeps episodes going."""
    engine = RecordingEngine(TransformersEngine(tiny_random_model(tokenizer), tokenizer))
    envs = [
        make_calculator_env(tokenizer=tokenizer, max_turns=3, max_turn_tokens=12, on_no_call="nudge")
        for _ in range(4)
    ]
    batch = rollout(engine, envs, questions, group_size=2, sampling=SamplingConfig(temperature=1.0, seed=0))
    return engine, envs, batch


def test_policy_segments_hold_exactly_the_engine_tokens_and_logprobs(free_running_batch):
    engine, _, batch = free_running_batch
    served = {(prompt, tuple(c.token_ids), tuple(c.logprobs)) for prompt, c in engine.served}
    segments = 0
    for episode in batch.episodes:
        position = 0
        for segment in episode.trajectory.segments:
            if segment.source == "policy":
                context = tuple(episode.trajectory.token_ids[:position])
                assert (context, segment.token_ids, segment.logprobs) in served
                segments += 1
            position += len(segment.token_ids)
    assert segments == len(engine.served)


def test_each_context_sent_to_the_engine_is_a_prefix_of_the_final_trajectory(free_running_batch):
    engine, _, batch = free_running_batch
    finals = [tuple(episode.trajectory.token_ids) for episode in batch.episodes]
    for prompt, completion in engine.served:
        assert any(final[: len(prompt) + len(completion.token_ids)] == prompt + tuple(completion.token_ids)
                   for final in finals)


def test_every_episode_finishes_in_its_group(free_running_batch, questions):
    _, envs, batch = free_running_batch
    assert [e.group for e in batch.episodes] == [0, 0, 1, 1]
    for episode in batch.episodes:
        assert episode.question["question"] == questions[episode.group]["question"]
        assert episode.finish_reason in FINISH_REASONS
        assert 1 <= episode.num_turns <= 3
        assert set(episode.reward_components) >= {"exact_match", "f1"}
    assert all(env._done for env in envs)
    assert max(e.num_turns for e in batch.episodes) > 1  # nudges keep random-text episodes going


def test_each_turn_is_capped_at_the_environment_budget(free_running_batch):
    engine, envs, batch = free_running_batch
    assert all(1 <= limit <= envs[0].max_turn_tokens for call in engine.limits for limit in call)
    for episode in batch.episodes:
        assert all(len(s.token_ids) <= 12 for s in episode.trajectory.segments if s.source == "policy")


def test_stats_and_timing_are_consistent(free_running_batch):
    engine, _, batch = free_running_batch
    stats = episode_stats(batch)
    assert batch.generated_tokens == sum(e.trajectory.count("policy") for e in batch.episodes)
    assert stats["episode/response_tokens"] == batch.generated_tokens / 4
    assert sum(stats[f"finish/{reason}"] for reason in FINISH_REASONS) == pytest.approx(1.0)
    assert stats["episode/turns"] == sum(e.num_turns for e in batch.episodes) / 4
    assert 0.0 <= stats["exact_match"] <= 1.0
    assert "episode/calculator_calls" in stats and "reward/f1" in stats
    assert batch.engine_calls == len(engine.limits)  # one generate call per turn
    assert 0.0 < stats["rollout/env_time_share"] < 1.0


def test_scripted_episodes_batch_every_tool_call_of_a_turn(tokenizer, questions):
    first, second = questions
    scripts = {
        # Question 0: compute, then answer. Question 1: answer at once, wrongly.
        first["question"]: [f"<calculator>{first['answers'][0]} * 1</calculator>", f"<answer>{first['answers'][0]}</answer>"],
        second["question"]: ["<answer>-1</answer>"],
    }
    batch_sizes = []

    def calculate_batch(calls):
        batch_sizes.append(len(calls))
        return [calculator.function(**call) for call in calls]

    counting_calculator = dataclasses.replace(calculator, batch_function=calculate_batch)
    envs = [
        make_calculator_env(tokenizer=tokenizer, questions=questions).unwrapped for _ in range(6)
    ]
    for env in envs:
        env.tools = {"calculator": counting_calculator}

    batch = rollout(ScriptedEngine(tokenizer, scripts), envs, questions, group_size=3, sampling=SamplingConfig())

    assert batch_sizes == [3]  # turn 0: the three samples of question 0, in one call
    assert [e.num_turns for e in batch.episodes] == [2, 2, 2, 1, 1, 1]
    assert [e.exact_match for e in batch.episodes] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert [e.tool_calls for e in batch.episodes] == [{"calculator": 1}] * 3 + [{}] * 3
    for episode, script in zip(batch.episodes, [scripts[first["question"]]] * 3 + [scripts[second["question"]]] * 3, strict=True):
        policy_text = [tokenizer.decode(s.token_ids) for s in episode.trajectory.segments if s.source == "policy"]
        assert policy_text == script
    stats = episode_stats(batch)
    assert stats["exact_match"] == 0.5
    assert stats["episode/calculator_calls"] == 0.5
    assert stats["finish/answer"] == 1.0
    assert stats["episode/turns"] == 1.5
    assert batch.engine_calls == 2


def test_rollout_needs_one_environment_per_sample(tokenizer, questions):
    envs = [make_calculator_env(tokenizer=tokenizer) for _ in range(3)]
    with pytest.raises(ValueError, match="2 \\* 2 = 4 environments, got 3"):
        rollout(ScriptedEngine(tokenizer, {}), envs, questions, group_size=2, sampling=SamplingConfig())
