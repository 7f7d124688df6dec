"""Best-of-N at evaluation: each selector on scripted episodes, the EM-against-N curve from the same
samples, and `agentenv eval --best-of` on a tiny random model with a reward model."""

import json

import pytest

from agentenv.cli import main
from agentenv.envs import arithmetic_questions, make_calculator_env
from agentenv.trainers.evaluation.best_of_n import (
    best_of_n,
    draw_best_of_n,
    select_majority,
    select_reward_model,
    select_verifier,
    sizes_up_to,
)
from agentenv.trainers.evaluation.evaluate import evaluate_envs
from agentenv.trainers.rollout.engines import Completion, SamplingConfig, per_prompt_limits


def record(sample, answer, reward, em, score=None, question="q"):
    r = {"id": question, "sample": sample, "answer": answer, "reward": reward, "exact_match": em}
    return r if score is None else {**r, "reward_model_score": score}


def test_verifier_selects_the_highest_environment_reward_earliest_on_a_tie():
    samples = [record(0, "a", 0.1, 0), record(1, "b", 1.0, 1), record(2, "c", 1.0, 1)]
    assert select_verifier(samples) == 1


def test_majority_selects_the_most_frequent_normalised_answer_and_ignores_episodes_without_one():
    samples = [record(0, None, 0, 0), record(1, "Paris", 1, 1), record(2, "Lyon", 0, 0),
               record(3, "the paris.", 1, 1), record(4, None, 0, 0), record(5, None, 0, 0)]
    assert select_majority(samples) == 1  # "Paris" and "the paris." are one answer; three Nones do not vote
    assert select_majority([record(0, "Lyon", 0, 0), record(1, "Paris", 1, 1)]) == 0  # a tie: the earliest
    assert select_majority([record(0, None, 0, 0), record(1, None, 0, 0)]) == 0


def test_reward_model_selects_the_highest_learned_score_and_needs_one_on_every_sample():
    assert select_reward_model([record(0, "a", 1, 1, score=-2.0), record(1, "b", 0, 0, score=0.5)]) == 1
    with pytest.raises(ValueError, match="reward_model_score"):
        select_reward_model([record(0, "a", 1, 1)])


def test_sizes_double_up_to_n():
    assert sizes_up_to(1) == [1]
    assert sizes_up_to(8) == [1, 2, 4, 8]
    assert sizes_up_to(6) == [1, 2, 4, 6]


class ScriptedAnswers:
    """Sample k of each question answers ``answers[question][k]`` (``GOLD``: its gold answer)."""

    def __init__(self, tokenizer, questions, answers):
        self.tokenizer, self.questions, self.answers, self.seen = tokenizer, questions, answers, {}

    def generate(self, prompts, sampling, max_new_tokens=None):
        completions = []
        for prompt, limit in zip(prompts, per_prompt_limits(prompts, sampling, max_new_tokens), strict=True):
            text = self.tokenizer.decode(prompt)
            question = next(q for q in self.questions if q["question"] in text)
            k = self.seen[question["id"]] = self.seen.get(question["id"], -1) + 1
            answer = self.answers[question["id"]][k].replace("GOLD", question["answers"][0])
            ids = self.tokenizer.encode(f"<answer>{answer}</answer>", add_special_tokens=False)[:limit]
            completions.append(Completion(ids, [0.0] * len(ids), "stop"))
        return completions

    def update_weights(self, model):
        """A script has no weights."""


def test_each_selector_on_scripted_episodes_and_the_curve_from_the_same_samples(tokenizer):
    questions = arithmetic_questions(2, seed=5)
    a, b = (q["id"] for q in questions)
    engine = ScriptedAnswers(tokenizer, questions, {a: ["7", "7", "GOLD", "9"], b: ["GOLD", "9", "GOLD", "7"]})
    envs = [make_calculator_env(questions=questions, tokenizer=tokenizer, max_turns=2) for _ in range(8)]

    def scorer(trajectories):  # a "reward model" that likes the answer 9
        return [float("<answer>9</answer>" in tokenizer.decode(t.token_ids)) for t in trajectories]

    records = evaluate_envs("calc", engine, envs, questions, 4, SamplingConfig(temperature=1.0), tokenizer,
                            progress=False, score_trajectories=scorer)
    assert [r["reward_model_score"] for r in records] == [0, 0, 0, 1, 0, 1, 0, 0]
    result = best_of_n(records, ["verifier", "majority", "reward-model"], 4)
    selectors = result["selectors"]
    assert selectors["verifier"]["selected_sample"] == {a: 2, b: 0}  # the gold answer: the env's reward knows it
    assert selectors["majority"]["selected_sample"] == {a: 0, b: 0}  # "7" twice; the gold twice, first at 0
    assert selectors["reward-model"]["selected_sample"] == {a: 3, b: 1}  # the answer 9
    assert result["sizes"] == [1, 2, 4]
    # n = 1: sample 0 of each (a wrong, b right); n = 2: a has 7, 7; n = 4: all four samples
    assert selectors["verifier"]["exact_match_by_n"] == {"1": 0.5, "2": 0.5, "4": 1.0}
    assert selectors["majority"]["exact_match_by_n"] == {"1": 0.5, "2": 0.5, "4": 0.5}
    assert selectors["reward-model"]["exact_match_by_n"] == {"1": 0.5, "2": 0.0, "4": 0.0}
    assert result["pass_at_n"] == {"1": 0.5, "2": 0.5, "4": 1.0}
    # What choosing among 4 adds over the first sample, question by question: a +1 0, b 0 0 / 0 -1
    gains = {name: entry["gain_over_first"]["mean"] for name, entry in selectors.items()}
    assert gains == {"verifier": 0.5, "majority": 0.0, "reward-model": -0.5}
    assert selectors["verifier"]["gain_over_first"]["interval"] == [0.0, 1.0]  # resampling two questions
    assert selectors["majority"]["exact_match_interval_by_n"] == {"1": [0.0, 1.0], "2": [0.0, 1.0], "4": [0.0, 1.0]}
    assert selectors["verifier"]["oracle"] and not selectors["majority"]["oracle"]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    from agentenv.trainers.algorithms.reward_model import (
        build_reward_model,
        save_reward_model,
    )
    from agentenv.trainers.loop.reward_model_training import (
        load_rm_config,
    )

    config = load_rm_config(None, ["model.name=tiny-random", "lora.enabled=false", "data.pairs=x.jsonl"])
    folder = tmp_path_factory.mktemp("rm")
    save_reward_model(build_reward_model(config.model, config.lora, tokenizer), folder)
    return folder


def test_eval_best_of_n_reports_em_per_n_and_writes_the_plot(tiny_model_dir, reward_model_dir, tmp_path, capsys):
    out = tmp_path / "bon"
    argv = ["eval", "--model", str(tiny_model_dir), "--questions", "geo:test", "--limit", "2", "--mode", "closed-book",
            "--max-turn-tokens", "6", "--engine", "transformers", "--out", str(out), "--best-of", "2",
            "--select", "verifier", "majority", "reward-model", "--reward-model", str(reward_model_dir)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best-of-N closed-book" in printed and "verifier (oracle)" in printed and "pass@n (ceiling)" in printed
    assert "reward-model: N=2 − N=1" in printed and "(paired)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 2 and summary["temperature"] == 1.0
    assert summary["best_of_n"]["select"] == ["verifier", "majority", "reward-model"]
    result = summary["modes"]["closed-book"]["best_of_n"]
    assert result["sizes"] == [1, 2] and set(result["selectors"]) == {"verifier", "majority", "reward-model"}
    for entry in result["selectors"].values():
        assert set(entry["exact_match_by_n"]) == {"1", "2"} and len(entry["selected_sample"]) == 2
    records = [json.loads(line) for line in (out / "transcripts-closed-book.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all("reward_model_score" in r for r in records)
    assert (out / "best-of-n.png").read_bytes()[:4] == b"\x89PNG"
    # The chart's content, drawn from the result the command plotted: a line per selector, then pass@N.
    (ax,) = draw_best_of_n({"closed-book": result}).axes
    selectors, ceiling = ax.get_lines()[:-1], ax.get_lines()[-1]
    assert [line.get_label() for line in selectors] == [
        f"closed-book: {name}" + (" (oracle)" if entry["oracle"] else "") for name, entry in result["selectors"].items()]
    for line, entry in zip(selectors, result["selectors"].values(), strict=True):
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == [entry["exact_match_by_n"][n] for n in ("1", "2")]
    assert ceiling.get_label() == "closed-book: pass@N (ceiling)"
    assert list(ceiling.get_ydata()) == [result["pass_at_n"][n] for n in ("1", "2")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--best-of", "2", "--select", "reward-model"], "--select reward-model needs --reward-model PATH"),
        (["--best-of", "2", "--samples", "3"], "drop --samples 3"),
        (["--best-of", "0"], "--best-of must be at least 1"),
        (["--best-of", "2", "--select", "reward-model", "--reward-model", "."], "no reward_model.json"),
    ],
)
def test_bad_best_of_n_options_give_clear_errors(args, message, capsys):
    assert main(["eval", *args]) == 2
    assert message in capsys.readouterr().err
