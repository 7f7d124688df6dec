"""A user's own environment from the command line: the README's example, saved as a module, is
trained with `agentenv train --set env.id=module:Id` and evaluated with `agentenv eval --env
module:Id`, as Gymnasium's own `module:Id` form imports the module first."""

import json
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from test_readme import readme_block

from agentenv.cli import main
from agentenv.envs import UnknownEnvironment, resolve_env_id
from agentenv.trainers.loop.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parent.parent
TINY_TEST = str(REPO / "configs" / "tiny-test.yaml")
ENV = "mymod:my/WordLength-v0"
# The README's own question shape: no ids (they are derived from the file and the record).
QUESTIONS = [
    {"question": "How long is 'agent'?", "answers": ["5"]},
    {"question": "How long is 'tool'?", "answers": ["4"]},
]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The README's new-environment example as the module ``mymod`` on the import path."""
    gym.registry.pop("my/WordLength-v0", None)  # test_readme runs the same example in this process
    (tmp_path / "mymod.py").write_text(readme_block("new-tool-env"))
    monkeypatch.syspath_prepend(str(tmp_path))
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    yield questions
    sys.modules.pop("mymod", None)
    gym.registry.pop("my/WordLength-v0", None)


def test_module_colon_id_imports_the_module_then_finds_the_id(user_module):
    assert "mymod" not in sys.modules
    assert resolve_env_id(ENV) == "my/WordLength-v0"
    assert "mymod" in sys.modules


def test_a_missing_module_is_one_line_naming_it():
    with pytest.raises(UnknownEnvironment, match=r"no module named 'no_such_module_xyz' to import") as error:
        resolve_env_id("no_such_module_xyz:my/Thing-v0")
    assert "\n" not in str(error.value)


def test_an_id_the_module_did_not_register_suggests_the_one_it_did(user_module):
    with pytest.raises(UnknownEnvironment, match=r"mymod was imported but registered no 'my/WordLength-v9'; did you mean 'my/WordLength-v0'\?"):
        resolve_env_id("mymod:my/WordLength-v9")


def test_an_unregistered_id_suggests_the_closest_registered_one():
    with pytest.raises(UnknownEnvironment, match=r"'agentenv/SearchQA-v9' is not a registered environment; did you mean 'agentenv/SearchQA-v0'\?"):
        resolve_env_id("agentenv/SearchQA-v9")


def test_train_and_eval_refuse_an_unknown_module_in_one_line(tmp_path, capsys):
    assert main(["train", "--config", TINY_TEST, "--out", str(tmp_path / "run"), "--set", "env.id=nomod_xyz:x/Y-v0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentenv train: error: env.id: ") and "nomod_xyz" in err and err.count("\n") == 1
    assert main(["eval", "--env", "nomod_xyz:x/Y-v0", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentenv eval: error: --env: ") and "nomod_xyz" in err and err.count("\n") == 1


def test_a_typo_inside_env_kwargs_names_the_key_and_the_closest_one(tmp_path, capsys):
    assert main(["train", "--config", TINY_TEST, "--out", str(tmp_path / "run"), "--set", "env.kwargs.max_turn=3"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "agentenv train: error: env.kwargs.max_turn: agentenv/Calculator-v0 does not take 'max_turn'; "
        "did you mean 'max_turns'?\n"
    )  # one line: not Gymnasium's message, which holds the tokenizer's whole repr


def test_the_readme_env_trains_and_evaluates_from_the_cli(user_module, tmp_path, capsys):
    run = tmp_path / "run"
    kwargs = f"env.kwargs={{questions: {user_module}, max_turns: 2, max_turn_tokens: 12, max_total_tokens: 256}}"
    assert main(["train", "--config", TINY_TEST, "--out", str(run), "--set", f"env.id={ENV}",
                 "--set", kwargs, "--set", "max_steps=2"]) == 0
    assert str(run) in capsys.readouterr().out  # the summary names the run folder
    transcript = json.loads((run / "transcripts" / "step_000001.jsonl").read_text().splitlines()[0])
    assert "<word_length>word</word_length>" in json.dumps(transcript)
    # A fully fine-tuned run (tiny-test: no LoRA) carries its tokenizer, so it loads by itself.
    assert (latest_checkpoint(run) / "model" / "tokenizer_config.json").is_file()

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(run), "--questions", str(user_module), "--engine", "transformers",
                 "--out", str(out)]) == 0
    assert "my/WordLength-v0" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["modes"]) == ["my/WordLength-v0"]  # the run's own environment, alone
    # Evaluated under the limits it trained with: the run's spec and the eval's record agree.
    trained = json.loads((run / "env_spec.json").read_text())
    evaluated = summary["modes"]["my/WordLength-v0"]["env"]
    assert trained["id"] == evaluated["spec"]["id"] == ENV
    for key, value in {"max_turns": 2, "max_turn_tokens": 12, "max_total_tokens": 256}.items():
        assert trained["kwargs"][key] == evaluated["limits"][key] == value, key
    assert evaluated["spec"]["reward"] == trained["reward"]
    records = [json.loads(line) for line in (out / "transcripts-my-WordLength-v0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["questions-0", "questions-1"]
    assert {r["mode"] for r in records} == {"my/WordLength-v0"}
    # One transcript layout: an eval record is a training transcript with its own three keys.
    assert set(records[0]) - set(transcript) == {"mode", "class", "sample"}
    assert set(transcript) - set(records[0]) == {"step", "group"}


def test_eval_env_kwargs_reach_the_environment_and_a_typo_is_named(user_module, tmp_path, tiny_model_dir, capsys):
    common = ["eval", "--model", str(tiny_model_dir), "--env", ENV, "--questions", str(user_module),
              "--engine", "transformers", "--max-turn-tokens", "4", "--limit", "1"]
    assert main([*common, "--env-kwargs", "{max_turns: 1, on_no_call: answer}", "--out", str(tmp_path / "a")]) == 0
    [record] = [json.loads(line) for line in (tmp_path / "a" / "transcripts-my-WordLength-v0.jsonl").read_text().splitlines()]
    assert record["turns"] == 1 and record["finish_reason"] == "untagged_answer"
    capsys.readouterr()
    assert main([*common, "--env-kwargs", "{max_turnz: 1}", "--out", str(tmp_path / "b")]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the model's loading messages
    assert last_line == "agentenv eval: error: --env-kwargs: my/WordLength-v0 does not take 'max_turnz'; did you mean 'max_turns'?"




def test_eval_env_kwargs_are_read_as_set_values_are():
    import argparse

    from agentenv.trainers.evaluation.evaluate import EvalError, env_kwargs_of

    levels = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 7)]
    bomb = "{" + ", ".join(levels) + "}"  # ten million values in a few hundred characters
    with pytest.raises(EvalError, match=r"^--env-kwargs: its aliases \(\*name\) expand it to more than 10,000 values"):
        env_kwargs_of(argparse.Namespace(env_kwargs=bomb, env="my/WordLength-v0"))
    with pytest.raises(EvalError, match=r"^--env-kwargs, line 1, column \d+: not valid YAML"):
        env_kwargs_of(argparse.Namespace(env_kwargs="{max_turns: [}", env="my/WordLength-v0"))
    assert env_kwargs_of(argparse.Namespace(env_kwargs="{max_turns: 2}", env="my/WordLength-v0")) == {"max_turns": 2}
