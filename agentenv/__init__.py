"""agentenv: Gymnasium environments, tools and a GRPO trainer for LLM agents that reason with search.

``import agentenv`` registers the environments, so ``gymnasium.make("agentenv/SearchQA-v0")`` works.
"""

from agentenv.env import ToolEnv, step_batch
from agentenv.envs import register_envs
from agentenv.parsing import JsonParser, TagParser
from agentenv.rewards import EpisodeOutcome, Reward, RewardConfig
from agentenv.spec import EnvSpec
from agentenv.trajectory import Episode, Segment, Trajectory

register_envs()


def train(config=None, overrides=(), out=None, resume=False, allow_config_change=False):
    """Train as ``agentenv train`` does and return the last step's metrics.

    ``config`` is a YAML path, a ``TrainConfig`` (``agentenv.trainers.loop.config.load_config``) or None
    for the defaults; ``overrides`` are ``--set`` strings (``["grpo.group_size=8"]``); ``out`` is the
    run folder (default ``runs/<config name>``); ``resume`` continues from its newest checkpoint,
    with ``config=None`` under the run's own ``config.yaml`` (a change that alters what training
    computes needs ``allow_config_change``)::

        import agentenv
        agentenv.train("configs/cpu-smollm2.yaml", ["max_steps=2"], out="runs/notebook")
        agentenv.train(out="runs/notebook", resume=True)      # after Ctrl-C, as it was
    """
    from pathlib import Path

    from agentenv.trainers.loop.config import TrainConfig, load_config
    from agentenv.trainers.loop.train import train as train_run

    if isinstance(config, TrainConfig):
        if overrides:
            raise TypeError("overrides go with a YAML path or None, not with a TrainConfig: build it with load_config")
        name = "default"
    else:
        name = Path(config).stem if config else "default"
        saved = Path(out or Path("runs") / name) / "config.yaml"
        config = load_config(saved if resume and config is None and saved.is_file() else config, overrides)
    return train_run(config, Path(out or Path("runs") / name), resume=resume, allow_config_change=allow_config_change)


def evaluate(model="embedded", questions="geo:test", modes=None, out=None, **options):
    """Evaluate as ``agentenv eval`` does and return its summary (``summary["modes"][mode]["exact_match"]``).

    ``modes``: as ``--mode`` (None: a training run's own environment; for a model that is no run,
    all three, or with ``env=`` only the env's). Every other
    ``agentenv eval`` option is a keyword, with ``_`` for ``-`` (``limit=100``, ``engine="vllm"``,
    ``max_turn_tokens=64``, ``index="runs/my-index"``, ``env="mymod:my/Env-v0"``,
    ``env_kwargs={"max_turns": 2}``)::

        summary = agentenv.evaluate("runs/notebook", "geo:dev", modes=["agent"], limit=50)
    """
    from agentenv.trainers.evaluation.evaluate import evaluate_run, parse_args

    argv = ["--model", str(model), "--questions", str(questions)]
    if out is not None:
        argv += ["--out", str(out)]
    args = parse_args(argv)
    args.mode = list(modes) if modes is not None else None
    for key, value in options.items():
        if not hasattr(args, key) or key in ("compare", "mode", "model", "questions", "out"):
            raise TypeError(f"evaluate() got an unknown option {key!r}")
        setattr(args, key, value)
    return evaluate_run(args)


__all__ = [
    "EnvSpec",
    "Episode",
    "EpisodeOutcome",
    "JsonParser",
    "Reward",
    "RewardConfig",
    "Segment",
    "TagParser",
    "ToolEnv",
    "Trajectory",
    "evaluate",
    "register_envs",
    "step_batch",
    "train",
]
