"""`agentenv eval` on a tiny random model: all three modes, compare, and clear errors."""

import json

import pytest

from agentenv.cli import main
from agentenv.trainers.evaluation.evaluate import bootstrap_interval, draw_modes, summarise
from agentenv.trainers.rollout.policy import PolicyNotFound, load_policy_model, locate_policy


def run_eval(tiny_model_dir, out, *extra):
    args = ["eval", "--model", str(tiny_model_dir), "--questions", "geo:test", "--limit", "3",
            "--max-turn-tokens", "8", "--max-turns", "2", "--engine", "transformers", "--out", str(out), *extra]
    return main(args)


def test_eval_runs_all_three_modes_and_writes_its_outputs(tiny_model_dir, tmp_path, capsys):
    assert run_eval(tiny_model_dir, tmp_path / "base") == 0
    printed = capsys.readouterr().out
    for mode in ("closed-book", "rag", "agent"):
        assert mode in printed
        records = [json.loads(line) for line in (tmp_path / "base" / f"transcripts-{mode}.jsonl").read_text().splitlines()]
        assert len(records) == 3 and {r["mode"] for r in records} == {mode}
    summary = json.loads((tmp_path / "base" / "summary.json").read_text())
    assert set(summary["modes"]) == {"closed-book", "rag", "agent"}
    assert summary["modes"]["agent"]["questions"] == 3
    assert (tmp_path / "base" / "modes.png").read_bytes()[:4] == b"\x89PNG"
    # The chart's content, drawn from the summaries the command plotted: an EM bar per mode, then an F1 bar.
    modes = summary["modes"]
    (ax,) = draw_modes(modes).axes
    assert ax.get_title() == "held-out questions (n = 3)"
    assert [label.get_text() for label in ax.get_xticklabels()] == list(modes)
    assert ax.get_legend_handles_labels()[1] == ["exact match (95% CI)", "token F1"]
    expected = [m["exact_match"] for m in modes.values()] + [m["f1"] for m in modes.values()]
    assert [bar.get_height() for bar in ax.patches] == pytest.approx(expected)


def test_rag_puts_the_retrieved_passages_in_front_of_the_question(tokenizer):
    import gymnasium as gym

    import agentenv  # noqa: F401

    env = gym.make("agentenv/RagQA-v0", tokenizer=tokenizer, k=2, max_turns=4).unwrapped
    question = {"id": "q", "question": "Which country is Le Petit-Quevilly in?", "answers": ["France"]}
    env.reset(options=question)
    prompt = tokenizer.decode(env.trajectory.token_ids)
    assert "Passages:\nDoc 1 (Title: Le Petit-Quevilly)" in prompt and "Doc 3" not in prompt
    assert "Question: Which country is Le Petit-Quevilly in?" in prompt
    assert env.tools == {} and env.max_turns == 1  # one answer turn, whatever the agent's budget
    _, reward, terminated, _, info = env.step("<answer>France</answer>")
    assert terminated and reward == 1.0 and info["question"]["question"] == question["question"]


def test_samples_give_pass_at_k(tiny_model_dir, tmp_path):
    assert run_eval(tiny_model_dir, tmp_path / "k", "--mode", "closed-book", "--samples", "2") == 0
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())["modes"]["closed-book"]
    assert summary["samples_per_question"] == 2
    assert summary["pass_at_k"] >= summary["exact_match"]


def test_compare_puts_two_runs_side_by_side(tiny_model_dir, tmp_path, capsys):
    for name in ("a", "b"):
        assert run_eval(tiny_model_dir, tmp_path / name, "--mode", "closed-book") == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "EM diff (paired)" in printed and "over 3 questions" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--questions", "nope.jsonl"], "nope.jsonl: no such file"),
        (["--questions", "geo:validation"], "geo:validation: no shipped question set (the shipped sets: geo:train"),
        (["--questions", "geo:test+zipcodes:nope"], "zipcodes:nope: no shipped question set"),
        (["--corpora", "geo+mars"], "the shipped ones: geo, airports, zipcodes"),
        (["--corpora", "zipcodes", "--retriever-url", "http://localhost:1"], "give one of --corpora, --index and --retriever-url"),
        (["--model", "./no-such-model"], "./no-such-model: no such folder"),
        (["--index", "."], "not a BM25 index folder"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--compare", "x", "y"], "x: no summary.json"),
    ],
)
def test_bad_inputs_give_clear_errors(args, message, capsys):
    assert main(["eval", *args]) == 2
    assert message in capsys.readouterr().err


def test_questions_in_an_unknown_format_are_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "target": "y"}\n')
    assert main(["eval", "--questions", str(bad)]) == 2
    assert "unrecognised record format" in capsys.readouterr().err


def test_a_lora_adapter_is_found_and_merged(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "run" / "checkpoints" / "step_000003" / "model")
    (tmp_path / "run" / "checkpoints" / "step_000003" / "state.json").write_text("{}")
    base, adapter = locate_policy(str(tmp_path / "run"))
    assert base == str(tiny_model_dir) and adapter.endswith("step_000003/model")
    merged, _, description = load_policy_model(str(tmp_path / "run"))
    assert "adapter" in description and not hasattr(merged, "peft_config")


def test_a_folder_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(PolicyNotFound, match="not a model folder"):
        locate_policy(str(tmp_path))


def test_summary_and_bootstrap():
    records = [
        {"id": "q1", "exact_match": 1.0, "f1": 1.0, "tool_calls": {"search": 1}, "turns": 2,
         "format_valid": True, "policy_tokens": 10, "kind": "a"},
        {"id": "q2", "exact_match": 0.0, "f1": 0.5, "tool_calls": {"search": 3, "lookup": 1}, "turns": 4,
         "format_valid": False, "policy_tokens": 30, "kind": "b"},
    ]
    summary = summarise(records)
    assert summary["exact_match"] == 0.5 and summary["valid_format"] == 0.5
    assert summary["tool_calls"] == {"lookup": 0.5, "search": 2.0}  # every tool by name, 0 where not called
    assert summary["exact_match_by_kind"] == {"a": {"n": 1, "exact_match": 1.0}, "b": {"n": 1, "exact_match": 0.0}}
    low, high = bootstrap_interval([0.0, 1.0] * 50)
    assert 0.35 < low < 0.5 < high < 0.65
