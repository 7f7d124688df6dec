"""`agentenv train` as a user meets it: the resolved config, a summary at the end, a resume that
continues the run as it was (its own config.yaml; a change that alters the math is refused), and
checkpoints that load by themselves."""

from pathlib import Path

import pytest
import yaml

from agentenv.cli import main
from agentenv.trainers.loop.checkpoint import latest_checkpoint, read_state
from agentenv.trainers.loop.config import load_config, to_dict, training_changes

REPO = Path(__file__).resolve().parent.parent
TINY_TEST = str(REPO / "configs" / "tiny-test.yaml")


def _train(run, *overrides, extra=()):
    argv = ["train", "--config", TINY_TEST, "--out", str(run), *extra]
    for override in overrides:
        argv += ["--set", override]
    return main(argv)


@pytest.fixture
def one_step_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "max_steps=1", "seed=3") == 0
    capsys.readouterr()
    return run


def test_print_config_prints_every_key_with_its_default_and_exits(tmp_path, capsys):
    argv = ["train", "--config", TINY_TEST, "--set", "grpo.group_size=3", "--out", str(tmp_path / "run"), "--print-config"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(load_config(TINY_TEST, ["grpo.group_size=3"]))
    assert printed["grpo"]["group_size"] == 3 and printed["grpo"]["clip_eps_high"] == 0.2  # a default
    assert not (tmp_path / "run").exists()  # nothing ran


def test_training_ends_with_a_summary_naming_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "max_steps=2") == 0
    out = capsys.readouterr().out
    assert "agentenv train: done: step 2 of 2 in " in out
    assert f"run folder: {run}" in out
    assert "reward/mean " in out
    assert f"checkpoint: {latest_checkpoint(run)}" in out
    assert f"agentenv eval --model {run}" in out


def test_a_model_name_that_cannot_be_loaded_is_one_line_naming_it(tmp_path, capsys):
    assert _train(tmp_path / "run", "model.name=no-such-org/no-such-model") == 2
    err = capsys.readouterr().err
    assert err.startswith("agentenv train: error: model.name: cannot load 'no-such-org/no-such-model' (")
    assert "'embedded'" in err and err.count("\n") == 1 and "Traceback" not in err


def test_resume_reads_the_runs_own_config(one_step_run, capsys):
    # No --config: the run's config.yaml (tiny-test with seed 3), not the built-in defaults.
    assert main(["train", "--out", str(one_step_run), "--resume", "--set", "max_steps=2"]) == 0
    saved = yaml.safe_load((one_step_run / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["max_steps"] == 2 and saved["model"]["name"] == "tiny-random"
    assert read_state(latest_checkpoint(one_step_run))["step"] == 2


def test_resume_refuses_changes_that_alter_the_math_and_lists_them(one_step_run, capsys):
    before = (one_step_run / "config.yaml").read_text()
    argv = ["train", "--out", str(one_step_run), "--resume", "--set", "grpo.group_size=8", "--set", "optim.lr=0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "grpo.group_size: 2 -> 8" in err and "optim.lr: 0.001 -> 0.5" in err
    assert "--allow-config-change" in err
    assert (one_step_run / "config.yaml").read_text() == before  # the saved config is not overwritten


def test_allow_config_change_resumes_with_the_new_values(one_step_run, capsys):
    argv = ["train", "--out", str(one_step_run), "--resume", "--allow-config-change", "--set", "optim.lr=0.5", "--set", "max_steps=2"]
    assert main(argv) == 0
    assert "optim.lr: 0.001 -> 0.5" in capsys.readouterr().err  # said, not silent
    assert yaml.safe_load((one_step_run / "config.yaml").read_text())["optim"]["lr"] == 0.5


def test_logging_checkpoint_cadence_and_max_steps_may_change():
    saved = load_config(TINY_TEST)
    new = load_config(TINY_TEST, ["logging.progress=true", "logging.transcripts_per_step=0", "checkpoint.every=7",
                                  "checkpoint.keep_last=4", "max_steps=30"])
    assert training_changes(saved, new) == []
    assert training_changes(saved, load_config(TINY_TEST, ["seed=1", "env.kwargs.max_turns=3"])) == [
        "env.kwargs.max_turns: 2 -> 3", "seed: 0 -> 1"]


def test_the_sections_of_objectives_a_run_does_not_use_may_change():
    sft_run = load_config(TINY_TEST, ["mode=sft"])
    assert training_changes(sft_run, load_config(TINY_TEST, ["mode=sft", "grpo.oversample=2", "dpo.beta=0.5"])) == []
    # SFT trains at sft.lr: the rate of the objectives after it may change under a finished SFT run.
    assert training_changes(sft_run, load_config(TINY_TEST, ["mode=sft", "optim.lr=0.5"])) == []
    grpo_run = load_config(TINY_TEST)
    assert training_changes(grpo_run, load_config(TINY_TEST, ["grpo.oversample=2", "dpo.beta=0.5"])) == [
        "grpo.oversample: 1.0 -> 2.0"]
    assert training_changes(grpo_run, load_config(TINY_TEST, ["sft.lr=0.5"]))[0].startswith("sft.lr:")
    assert training_changes(grpo_run, load_config(TINY_TEST, ["optim.lr=0.5"]))[0].startswith("optim.lr:")


def test_max_steps_shapes_a_cosine_schedule_so_it_may_not_change_there():
    saved = load_config(TINY_TEST, ["optim.schedule=cosine"])
    assert training_changes(saved, load_config(TINY_TEST, ["optim.schedule=cosine", "max_steps=30"])) == [
        "max_steps: 3 -> 30 (the cosine schedule's length)"]


def test_a_checkpoint_of_a_fully_fine_tuned_run_holds_its_tokenizer_and_loads_alone(one_step_run):
    from agentenv.trainers.rollout.policy import load_policy_model, tokenizer_source

    model_dir = latest_checkpoint(one_step_run) / "model"
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "generation_config.json"):
        assert (model_dir / name).is_file(), name
    assert tokenizer_source(str(model_dir)) == str(model_dir)
    model, tokenizer, _ = load_policy_model(str(one_step_run))
    assert len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize(("settings", "suggested"), [
    ([], "YOUR_HELD_OUT_QUESTIONS.jsonl"),  # tiny-test: generated arithmetic, no shipped split
    (["env.id=agentenv/SearchQA-v0", "env.kwargs={}"], "geo:test"),
    (["env.id=agentenv/SearchQA-v0", "env.kwargs={questions: 'geo:train+zipcodes:train'}"], "geo:test+zipcodes:test"),
    (["env.id=agentenv/SearchQA-v0", "env.kwargs={questions: mine.jsonl}"], "YOUR_HELD_OUT_QUESTIONS.jsonl"),
])
def test_the_summary_suggests_the_test_split_of_what_the_run_trained_on(settings, suggested):
    from agentenv.trainers.loop.command import held_out_questions

    assert held_out_questions(load_config(TINY_TEST, settings)) == suggested
