"""The typed training config: YAML, --set overrides, and errors that name the key."""

from pathlib import Path

import pytest

from agentenv.rewards import RewardConfig
from agentenv.trainers.loop.config import ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_are_a_valid_config():
    config = load_config()
    assert config == TrainConfig()
    assert isinstance(config.reward, RewardConfig)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if path.name.startswith("experiment-"):
        import yaml

        from agentenv.trainers.algorithms.reward_model import reward_model_folder
        from agentenv.trainers.evaluation.experiment import load_experiment

        overrides = [o for run in (yaml.safe_load(path.read_text()).get("runs") or {}).values() for o in run]
        models = [o.partition("=")[2] for o in overrides if o.startswith("reward.model=")]
        if any(reward_model_folder(model) is None for model in models):  # a make target trains it first
            with pytest.raises(ConfigError, match="agentenv rm train"):
                load_experiment(path)
            return
        load_experiment(path)  # loads every run's training config too
    else:
        load_config(path)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("grpo:\n  group_size: 5\n  kl_beta: 0.001\noptim:\n  lr: 1e-6\n")
    config = load_config(path, ["grpo.group_size=8", "max_steps=2", "env.kwargs.max_turns=3"])
    assert config.grpo.group_size == 8  # --set wins over the file
    assert config.grpo.kl_beta == 0.001
    assert config.optim.lr == 1e-6  # PyYAML reads "1e-6" as a string; the float field converts it
    assert config.max_steps == 2
    assert config.env.kwargs == {"max_turns": 3}


def test_set_values_are_yaml_scalars():
    config = load_config(None, ["lora.enabled=false", "grpo.minibatch_size=null", "lora.target_modules=[q_proj, v_proj]"])
    assert config.lora.enabled is False
    assert config.grpo.minibatch_size is None
    assert config.lora.target_modules == ("q_proj", "v_proj")


def test_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError, match=r"unknown key 'grpo\.los_agg'; did you mean 'grpo\.loss_agg'\?"):
        load_config(None, ["grpo.los_agg=token-mean"])


def test_unknown_section_suggests_the_closest_one(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'optimizer'; did you mean 'optim'\?"):
        load_config(path)


def test_bad_choice_names_key_value_and_allowed_values():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["grpo.loss_agg=sum"])
    message = str(error.value)
    assert "grpo.loss_agg" in message and "'sum'" in message
    assert "token-mean" in message and "seq-mean-token-mean" in message and "seq-mean-token-sum-norm" in message


def test_a_choice_yaml_read_as_a_boolean_says_so(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  autocast: off\n")
    with pytest.raises(ConfigError, match=r"model\.autocast: expected one of none, bfloat16, float16, got False "
                                          r"\(YAML reads off, on, no and yes as booleans\)"):
        load_config(path)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"grpo\.group_size: expected an integer, got 'four'"):
        load_config(None, ["grpo.group_size=four"])
    with pytest.raises(ConfigError, match=r"lora\.enabled: expected true or false"):
        load_config(None, ["lora.enabled=3"])


def test_out_of_range_values_name_the_key():
    with pytest.raises(ConfigError, match=r"grpo\.questions_per_step must be at least 1, got 0"):
        load_config(None, ["grpo.questions_per_step=0"])
    with pytest.raises(ConfigError, match=r"checkpoint\.every"):
        load_config(None, ["checkpoint.every=0"])


def test_malformed_set_is_explained():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["grpo.group_size"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["max_steps=3", "max_steps.x=1"])


def test_reward_section_is_the_environment_reward_config():
    config = load_config(None, ["reward.search_free_calls=1", "reward.format_weight=0.5"])
    assert config.reward == RewardConfig(search_free_calls=1, format_weight=0.5)
    with pytest.raises(ConfigError, match=r"reward\.answer"):
        load_config(None, ["reward.answer=bleu"])


def test_rollout_worker_keys_are_checked_and_name_the_key():
    assert load_config(None, ["engine.workers=2"]).engine.workers == 2
    with pytest.raises(ConfigError, match=r"engine\.workers: -1 is too small; it must be at least 0"):
        load_config(None, ["engine.workers=-1"])
    with pytest.raises(ConfigError, match=r"engine\.worker_placement: 'pack' is not allowed; choose one of \['PACK'"):
        load_config(None, ["engine.workers=2", "engine.worker_placement=pack"])
    with pytest.raises(ConfigError, match=r"engine\.weight_sync: 'nccl' broadcasts to GPU workers; it needs .*worker_num_gpus > 0"):
        load_config(None, ["engine.workers=2", "engine.weight_sync=nccl"])


def test_off_policy_rollouts_need_grpo_workers_and_the_whole_distribution():
    assert load_config(None, ["engine.workers=1", "rollout.off_policy_steps=1"]).rollout.off_policy_steps == 1
    with pytest.raises(ConfigError, match=r"rollout\.off_policy_steps: 2 is not allowed; choose one of \[0, 1\]"):
        load_config(None, ["engine.workers=1", "rollout.off_policy_steps=2"])
    with pytest.raises(ConfigError, match=r"rollout\.off_policy_steps: 1 needs engine\.workers > 0"):
        load_config(None, ["rollout.off_policy_steps=1"])
    with pytest.raises(ConfigError, match=r"needs mode: grpo \(got 'ppo'\); engine\.top_p: 1 \(got 0\.9\)"):
        load_config(None, ["engine.workers=1", "rollout.off_policy_steps=1", "mode=ppo", "engine.top_p=0.9"])


def test_the_goodhart_experiment_loads_once_its_reward_model_exists(tmp_path, tokenizer):
    from agentenv.trainers.algorithms.reward_model import (
        build_reward_model,
        save_reward_model,
    )
    from agentenv.trainers.evaluation.experiment import load_experiment, run_config
    from agentenv.trainers.loop.reward_model_training import (
        load_rm_config,
    )

    rm_config = load_rm_config(None, ["model.name=tiny-random", "lora.enabled=false", "data.pairs=x.jsonl"])
    save_reward_model(build_reward_model(rm_config.model, rm_config.lora, tokenizer, seed=0), tmp_path / "rm" / "model")
    text = (CONFIGS / "experiment-goodhart.yaml").read_text()
    text = text.replace("reward.model=runs/rm-geo-sft", f"reward.model={tmp_path / 'rm'}")
    text = text.replace("base: configs/", f"base: {CONFIGS}/")
    (tmp_path / "goodhart.yaml").write_text(text)
    experiment = load_experiment(tmp_path / "goodhart.yaml")
    verifier, learned = run_config(experiment, "grpo-verifier"), run_config(experiment, "grpo-learned-reward")
    assert (verifier.reward.model_weight, verifier.reward.answer_weight) == (0.0, 1.0)  # watched, not optimised
    assert (learned.reward.model_weight, learned.reward.answer_weight) == (1.0, 0.0)  # the learned score alone
    assert learned.reward.search_cost_per_extra_call == 0.0


# (--set, the whole error it gets): each of these trained before, NaN passing every comparison.
OUT_OF_RANGE = [
    ("optim.lr=.nan", r"optim\.lr: nan is not a finite number; it must be at least 0"),
    ("optim.lr=nan", r"optim\.lr: nan is not a finite number; it must be at least 0"),
    ("engine.temperature=.nan", r"engine\.temperature: nan is not a finite number; it must be at least 1e-06"),
    ("engine.temperature=.inf", r"engine\.temperature: inf is not a finite number; it must be at least 1e-06"),
    ("engine.top_p=.inf", r"engine\.top_p: inf is not a finite number; it must be in \(0, 1\]"),
    ("engine.top_p=5", r"engine\.top_p: 5\.0 is too large; it must be in \(0, 1\]"),
    ("optim.max_grad_norm=-1", r"optim\.max_grad_norm: -1\.0 is too small; it must be at least 0"),
    ("optim.max_grad_norm=.nan", r"optim\.max_grad_norm: nan is not a finite number; it must be at least 0"),
    ("optim.weight_decay=-5", r"optim\.weight_decay: -5\.0 is too small; it must be at least 0"),
    ("optim.betas=[2, -1]", r"optim\.betas\[0\]: 2\.0 is too large; it must be in \[0, 1\)"),
    ("lora.dropout=1.5", r"lora\.dropout: 1\.5 is too large; it must be in \[0, 1\)"),
    ("optim.min_lr_ratio=-3", r"optim\.min_lr_ratio: -3\.0 is too small; it must be in \[0, 1\]"),
]


@pytest.mark.parametrize(("override", "message"), OUT_OF_RANGE, ids=[override for override, _ in OUT_OF_RANGE])
def test_numbers_outside_their_range_name_the_key_and_the_range(tmp_path, override, message):
    key, _, value = override.partition("=")
    section, name = key.split(".")
    path = tmp_path / "run.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    for source, overrides in ((path, []), (None, [override])):
        with pytest.raises(ConfigError, match=f"^{message}$"):
            load_config(source, overrides)


def alias_bomb(levels: int, width: int = 10) -> str:
    """A config whose env.kwargs holds ``width ** levels`` values in a few hundred bytes: each
    level is a list of ``width`` aliases of the level before."""
    lines = ["env:", "  kwargs:", f"    l0: &l0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"    l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_a_config_whose_aliases_expand_past_the_limit_is_refused_before_it_is_built(tmp_path, capsys):
    from agentenv.cli import main

    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels=7))  # ten million values in a few hundred bytes
    assert len(path.read_bytes()) < 500
    with pytest.raises(ConfigError, match=r"its aliases \(\*name\) expand it to more than 10,000 values"):
        load_config(path)
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"agentenv train: error: {path}: its aliases") and err.count("\n") == 1, err


def test_an_experiment_config_whose_aliases_expand_past_the_limit_is_refused(tmp_path):
    from agentenv.trainers.evaluation.experiment import load_experiment

    path = tmp_path / "bomb.yaml"
    path.write_text("base: configs/cpu-smollm2.yaml\nruns:\n" + alias_bomb(levels=7).replace("env:\n", "  bomb:\n", 1))
    with pytest.raises(ConfigError, match=r"its aliases \(\*name\) expand it to more than 10,000 values"):
        load_experiment(path)


def test_a_run_folder_from_someone_else_is_read_with_the_same_bound(tmp_path, capsys):
    """``agentenv eval --model RUN`` reads the run's config.yaml for its environment (a run from before
    env_spec.json) and its model: a bomb there is refused in one line, not expanded."""
    from agentenv.cli import main
    from agentenv.spec import EnvSpec
    from agentenv.yaml_files import UnreadableYAML

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(alias_bomb(levels=7).replace("env:\n", "env:\n  id: agentenv/SearchQA-v0\n", 1))
    with pytest.raises(UnreadableYAML, match=r"config.yaml: its aliases \(\*name\) expand it to more than 10,000 values"):
        EnvSpec.of_run(run)
    assert main(["eval", "--model", str(run), "--questions", "geo:dev", "--limit", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "expand it to more than 10,000 values" in err[-1], err


def test_aliases_within_the_limit_still_resolve(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {lr: &rate 0.5, min_lr_ratio: 0.1}\nengine: {top_p: *rate}\n" + alias_bomb(levels=3))
    config = load_config(path)
    assert config.engine.top_p == config.optim.lr == 0.5
    assert len(config.env.kwargs["l2"]) == 10 and config.env.kwargs["l2"][9][9] == ["x"] * 10


@pytest.mark.parametrize(
    "text",
    [
        "optim:\n  lr: [" + ", ".join(["1.0"] * 9000) + "]\n",  # a long list where a number belongs
        "env:\n  kwargs:\n    l: &l [" + ", ".join(["x"] * 90) + "]\noptim:\n  betas: [" + ", ".join(["*l"] * 90) + "]\n",
        "mode: '" + "grpo" * 100_000 + "'\n",  # a long string where a choice belongs
        "optim:\n  ? " + "lr" * 100_000 + "\n  : 1\n",  # a long unknown key
    ],
    ids=["list", "aliased-list", "string", "key"],
)
def test_an_error_quotes_a_large_value_briefly(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert len(str(error.value)) < 1000 and "\n" not in str(error.value), str(error.value)[:2000]
