"""SFT warm start: oracle episodes played through the real calculator environment, then NLL."""

import gymnasium as gym
import pytest
import torch

import agentenv  # noqa: F401  (registers the environments)
from agentenv.env import ToolEnv
from agentenv.envs import arithmetic_questions
from agentenv.models import tiny_random_model
from agentenv.tools import tool
from agentenv.trainers.algorithms.sft import oracle_episode, policy_nll, sft_update


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


class _TitledIndex:
    """A retriever that knows one passage's title, as the BM25 index knows every passage's."""

    def search_batch(self, queries, k):
        return [[] for _ in queries]

    def get(self, passage_id):
        return {"city:1": {"title": "Paducah"}}[passage_id]


def test_the_search_oracle_searches_the_titles_of_the_question_entities_else_the_question(tokenizer):
    from agentenv.envs import make_search_qa_env

    env = make_search_qa_env(index=_TitledIndex(), questions=None, tokenizer=tokenizer)
    question = {"question": "What is the population of Paducah?", "answers": ["1"], "entities": ["city:1"]}
    assert env.oracle_actions(question) == ["<search>Paducah</search>", "<answer>1</answer>"]
    unknown = {**question, "entities": ["city:2"], "expression": "2 * 3"}
    assert env.oracle_actions(unknown) == [
        "<search>What is the population of Paducah?</search>", "<calculator>2 * 3</calculator>", "<answer>1</answer>",
    ]


def test_a_users_environment_gets_its_oracle_calls_from_the_questions(tokenizer):
    @tool
    def word_length(word: str) -> str:
        """Count the letters of a word.

        Args:
            word: The word to measure.
        """
        return str(len(word))

    env = ToolEnv(tools=[word_length], tokenizer=tokenizer, parser="json")
    question = {"question": "How long is 'agent'?", "answers": ["5"],
                "oracle_calls": [{"name": "word_length", "arguments": {"word": "agent"}}]}
    episode = oracle_episode(env, question)
    assert episode.reward_components["exact_match"] == 1.0
    assert episode.tool_calls == {"word_length": 1}


def test_oracle_keeps_the_answer_within_max_turns(tokenizer):
    env = gym.make("agentenv/Calculator-v0", tokenizer=tokenizer, max_turns=1).unwrapped
    question = arithmetic_questions(1)[0]
    assert env.oracle_actions(question) == [f"<answer>{question['answers'][0]}</answer>"]


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
        metrics = sft_update(model, optimizer, train, pad, micro_batch_size=4)
    after_train, after_held_out = policy_nll(model, train, pad), policy_nll(model, held_out, pad)
    print(f"NLL per policy token: train {before_train:.2f} → {after_train:.2f}, held out {before_held_out:.2f} → {after_held_out:.2f}")
    assert metrics["update/policy_tokens"] == sum(sum(t.policy_mask) for t in train)
    # A random model starts near log(vocab) ≈ 10.8 nats per token.
    assert before_train > 9.0
    assert after_train < before_train - 2.5  # measured: 10.76 → 6.83
    # The tags and the answer format carry over to questions it did not train on.
    assert after_held_out < before_held_out - 2.0  # measured: 10.76 → 6.87
