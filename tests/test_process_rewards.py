"""Process rewards: the terms on scripted episodes, their place on the tokens, and a GRPO run with them."""

import json
from pathlib import Path

import pytest
import torch

from agentenv import ToolEnv
from agentenv.cli import main
from agentenv.models import tiny_random_model
from agentenv.process_rewards import Gold, token_credits, turn_credits, turn_terms
from agentenv.tools import Tool, calculator
from agentenv.trainers.algorithms.grpo import GRPOConfig, grpo_update
from agentenv.trajectory import Episode

TINY_TEST = str(Path(__file__).parent.parent / "configs" / "tiny-test.yaml")
QUESTION = {"question": "What is the capital of Peru?", "answers": ["Lima"]}
GOLD = Gold.of(QUESTION)
WEIGHTS = {"search_found_answer": 0.2, "repeated_query": -0.1, "failed_call": -0.3}


def capitals(query: str) -> str:
    """Look a country up.

    Args:
        query: A country name.
    """
    return "Lima is the capital of Peru." if "peru" in query.lower() else "Santiago is the capital of Chile."


@pytest.fixture
def scripted(tokenizer):
    """A finished episode: a search that finds the answer, the same query again beside 1/0, an answer."""
    env = ToolEnv([Tool.from_function(capitals, name="search", returns_passages=True), calculator], tokenizer=tokenizer)
    env.reset(options=QUESTION)
    env.step("<search>capital of Peru</search>")
    env.step("<search>Capital of Peru!</search><calculator>1/0</calculator>")
    *_, info = env.step("<answer>Lima</answer>")
    return info


def test_each_term_judges_its_own_turn(scripted):
    assert [[call["tool"] for call in turn["calls"]] for turn in scripted["turns"]] == [["search"], ["search", "calculator"], []]
    assert turn_terms(scripted["turns"], GOLD, list(WEIGHTS)) == [
        {"search_found_answer": 1.0, "repeated_query": 0.0, "failed_call": 0.0},
        {"search_found_answer": 1.0, "repeated_query": 1.0, "failed_call": 1.0},  # normalised: the same query
        {"search_found_answer": 0.0, "repeated_query": 0.0, "failed_call": 0.0},
    ]
    assert turn_credits(scripted["turns"], GOLD, WEIGHTS) == pytest.approx([0.2, -0.2, 0.0])


def test_a_search_that_misses_the_answer_earns_nothing(tokenizer):
    env = ToolEnv([Tool.from_function(capitals, name="search")], tokenizer=tokenizer)
    env.reset(options=QUESTION)
    *_, info = env.step("<search>Chile</search>")
    assert turn_terms(info["turns"], GOLD, ["search_found_answer"]) == [{"search_found_answer": 0.0}]


def test_a_gold_passage_earns_credit_the_first_time_a_search_returns_it(tokenizer):
    """A two-hop question over a real BM25 index and the shipped search tool: the city's passage,
    then the country's beside the city's again, then both again."""
    from agentenv.tools import BM25Index, search_tool

    index = BM25Index.build([
        {"id": "city:1", "title": "Coral Springs", "text": "Coral Springs is a city in Florida, United States."},
        {"id": "country:US", "title": "United States", "text": "The capital of the United States is Washington."},
        {"id": "country:PE", "title": "Peru", "text": "The capital of Peru is Lima."},
    ], show_progress=False)
    question = {"question": "Coral Springs is in a country; what is that country's capital?", "answers": ["Washington"],
                "entities": ["city:1", "country:US"]}
    env = ToolEnv([search_tool(index, k=1, max_tokens=64)], tokenizer=tokenizer)
    env.reset(options=question)
    env.step("<search>Coral Springs city</search>")
    env.step("<search>capital United States</search><search>Coral Springs</search>")
    env.step("<search>Coral Springs</search><search>Peru capital</search>")
    *_, info = env.step("<answer>Washington</answer>")
    assert [[c["passage_ids"] for c in turn["calls"]] for turn in info["turns"]] == [
        [["city:1"]], [["country:US"], ["city:1"]], [["city:1"], ["country:PE"]], []]
    assert turn_terms(info["turns"], Gold.of(question), ["search_found_passage"]) == [
        {"search_found_passage": 1.0}, {"search_found_passage": 1.0}, {"search_found_passage": 0.0},
        {"search_found_passage": 0.0}]
    # A question that names no passages, or a search tool that returns bare strings, earns nothing.
    assert turn_terms(info["turns"], Gold.of(QUESTION), ["search_found_passage"])[0] == {"search_found_passage": 0.0}


def test_a_call_to_a_tool_that_was_down_is_not_a_failed_call(tokenizer):
    from agentenv.tools import RetrieverClient, search_tool

    dead = RetrieverClient("http://127.0.0.1:9", timeout_s=1.0, max_retries=0)  # nobody listens there
    env = ToolEnv([search_tool(dead), calculator], tokenizer=tokenizer)
    env.reset(options=QUESTION)
    *_, info = env.step("<search>Peru</search><calculator>1/0</calculator>")
    assert [call["ok"] for call in info["turns"][0]["calls"]] == [False, False]
    assert turn_terms(info["turns"], GOLD, ["failed_call"]) == [{"failed_call": 1.0}]  # 1/0 only


def test_credits_land_on_the_tokens_of_the_turn_that_earned_them(scripted):
    trajectory = scripted["trajectory"]
    credits = token_credits(trajectory, [0.2, -0.2, 0.0])
    assert len(credits) == len(trajectory)
    position, turn = 0, 0
    for segment in trajectory.segments:
        values = credits[position : position + len(segment.token_ids)]
        expected = [0.2, -0.2, 0.0][turn] if segment.source == "policy" else 0.0
        assert values == [expected] * len(segment.token_ids), segment.source
        turn += segment.source == "policy"
        position += len(segment.token_ids)


def test_zero_process_advantages_change_nothing_and_others_change_the_update(tokenizer, scripted):
    trajectory = scripted["trajectory"]
    rewards = [1.0, 0.0]

    def updated(process):
        model = tiny_random_model(tokenizer)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        episodes = [Episode(trajectory, r, group=0) for r in rewards]
        credits = None if process is None else [process] * len(episodes)
        metrics = grpo_update(model, optimizer, episodes, GRPOConfig(), tokenizer.pad_token_id, max_grad_norm=None,
                              token_credits=credits)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), metrics

    plain, _ = updated(None)
    zeros, metrics = updated([0.0] * len(trajectory))
    torch.testing.assert_close(plain, zeros)
    assert metrics["advantage/process_mean"] == 0.0
    credited, metrics = updated(token_credits(trajectory, [0.2, -0.2, 0.0]))
    assert not torch.allclose(plain, credited)
    assert metrics["advantage/process_mean"] != 0.0


def test_grpo_logs_the_per_turn_terms(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", TINY_TEST, "--out", str(run), "--set", "max_steps=1",
                 "--set", "reward.process={failed_call: -0.5, repeated_query: -0.1, search_found_passage: 0.2}"]) == 0
    [metrics] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= metrics["process/failed_call"] and 0.0 <= metrics["process/repeated_query"]
    assert 0.0 <= metrics["process/search_found_passage"]
    assert "advantage/process_mean" in metrics


def test_an_unknown_process_term_is_a_one_line_config_error(tmp_path, capsys):
    assert main(["train", "--config", TINY_TEST, "--out", str(tmp_path / "run"), "--set", "reward.process={found: 1}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentenv train: error: reward.process: unknown term 'found'") and err.count("\n") == 1
