"""Rewards: SQuAD normalisation, EM, F1, the ReSearch reward and the search-budget penalty."""

import pytest

from agentenv.rewards import (
    RESEARCH_FORMAT_ONLY_REWARD,
    EpisodeOutcome,
    RewardConfig,
    exact_match,
    normalize_answer,
    research_answer_reward,
    search_budget_penalty,
    token_f1,
)


def outcome(answer="Lima", gold=("Lima",), searches=0, format_valid=True, **kwargs):
    return EpisodeOutcome(answer, tuple(gold), {"search": searches}, format_valid=format_valid, **kwargs)


def test_normalisation_follows_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("114,394") == "114394"


def test_exact_match_against_any_gold():
    assert exact_match("the lima", ["Paris", "Lima"]) == 1.0
    assert exact_match("Lima Peru", ["Lima"]) == 0.0
    assert exact_match(None, ["Lima"]) == 0.0


def test_token_f1():
    assert token_f1("Lima Peru", ["Lima"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("Cusco", ["Lima"]) == 0.0
    assert token_f1("", [""]) == 1.0


def test_research_reward_follows_the_paper():
    assert research_answer_reward(outcome(format_valid=False)) == 0.0
    assert research_answer_reward(outcome()) == 1.0
    assert research_answer_reward(outcome(answer="Cusco")) == RESEARCH_FORMAT_ONLY_REWARD == 0.1
    assert research_answer_reward(outcome(answer="Lima Peru")) == pytest.approx(2 / 3)


def test_search_budget_penalty():
    assert search_budget_penalty(outcome(searches=2), free_calls=2, cost_per_extra_call=0.1) == 0.0
    assert search_budget_penalty(outcome(searches=5), free_calls=2, cost_per_extra_call=0.1) == pytest.approx(-0.3)
    assert search_budget_penalty(outcome(searches=3), free_calls=1, cost_per_extra_call=0.1, cost_per_call=0.05) == pytest.approx(-0.35)


def test_composed_reward_logs_every_component():
    reward = RewardConfig(search_free_calls=1, search_cost_per_extra_call=0.2, format_weight=0.5).build()
    total, components = reward(outcome(searches=3))
    assert components == {
        "research_answer": 1.0,
        "format": 1.0,
        "search_budget_penalty": pytest.approx(-0.4),
        "exact_match": 1.0,
        "f1": 1.0,
    }
    assert total == pytest.approx(1.0 + 0.5 - 0.4)


def test_bad_reward_config_is_a_clear_error():
    with pytest.raises(ValueError, match="reward.answer must be one of"):
        RewardConfig(answer="bleu").build()
