"""SFT warm start: oracle episodes played through the real calculator environment, then NLL."""

import gymnasium as gym
import pytest
import torch

import agentenv  # noqa: F401  (registers the environments)
from agentenv.envs import arithmetic_questions
from agentenv.models import tiny_random_model
from agentenv.trainers.sft import (
    oracle_actions,
    oracle_episode,
    policy_nll,
    search_queries,
    sft_step,
)


@pytest.fixture(scope="module")
def calculator_env(tokenizer):
    return gym.make("agentenv/Calculator-v0", tokenizer=tokenizer).unwrapped


def test_oracle_calls_the_calculator_then_answers(calculator_env):
    question = arithmetic_questions(1, seed=3)[0]
    episode = oracle_episode(calculator_env, question)
    assert episode.finish_reason == "answer"
    assert episode.reward_components["exact_match"] == 1.0
    assert [s.source for s in episode.trajectory.segments] == ["prompt", "policy", "tool", "policy"]
    tool_text = calculator_env.tokenizer.decode(list(episode.trajectory.segments[2].token_ids))
    assert question["answers"][0] in tool_text  # the real calculator computed it


def test_oracle_speaks_the_json_tool_call_syntax(tokenizer):
    env = gym.make("agentenv/Calculator-v0", tokenizer=tokenizer, parser="json").unwrapped
    question = arithmetic_questions(1, seed=4)[0]
    episode = oracle_episode(env, question)
    assert episode.finish_reason == "answer"
    assert episode.reward_components["exact_match"] == 1.0
    assert episode.trajectory.count("tool") > 0


def test_oracle_masks_are_the_environments_own(calculator_env):
    episode = oracle_episode(calculator_env, arithmetic_questions(1, seed=5)[0])
    mask = episode.trajectory.policy_mask
    sources = episode.trajectory.sources
    assert mask == [int(source == "policy") for source in sources]
    assert 0 < sum(mask) < len(mask)


def test_search_queries_use_entity_names_else_the_question():
    question = {"question": "What is the population of Paducah?", "answers": ["1"], "entities": ["city:1"]}
    assert search_queries(question, {"city:1": "Paducah"}) == ["Paducah"]
    assert search_queries(question, None) == ["What is the population of Paducah?"]


def test_oracle_keeps_the_answer_within_max_turns(tokenizer):
    env = gym.make("agentenv/Calculator-v0", tokenizer=tokenizer, max_turns=1).unwrapped
    question = arithmetic_questions(1)[0]
    assert oracle_actions(env, question) == [f"<answer>{question['answers'][0]}</answer>"]


def test_sft_lowers_the_nll_of_oracle_episodes(calculator_env, tokenizer):
    torch.manual_seed(0)
    model = tiny_random_model(tokenizer)
    questions = arithmetic_questions(12, seed=7)
    train = [oracle_episode(calculator_env, q).trajectory for q in questions[:8]]
    held_out = [oracle_episode(calculator_env, q).trajectory for q in questions[8:]]
    pad = tokenizer.pad_token_id
    before_train, before_held_out = policy_nll(model, train, pad), policy_nll(model, held_out, pad)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(8):
        metrics = sft_step(model, optimizer, train, pad, micro_batch_size=4)
    after_train, after_held_out = policy_nll(model, train, pad), policy_nll(model, held_out, pad)
    print(f"NLL per policy token: train {before_train:.2f} → {after_train:.2f}, held out {before_held_out:.2f} → {after_held_out:.2f}")
    assert metrics["sft/policy_tokens"] == sum(sum(t.policy_mask) for t in train)
    # A random model starts near log(vocab) ≈ 10.8 nats per token.
    assert before_train > 9.0
    assert after_train < before_train - 2.5  # measured: 10.76 → 6.83
    # The tags and the answer format carry over to questions it did not train on.
    assert after_held_out < before_held_out - 2.0  # measured: 10.76 → 6.87
