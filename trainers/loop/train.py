"""The training loop: ``train(config, run_dir)``, which ``agentenv train`` (trainers/loop/command.py) runs.

One step, whatever the ``mode:`` (each objective is a registered ``Algorithm``, trainers/algorithms/)::

    lr        = base rate × schedule(step)                              # set here, once a step
    questions = the next B question ids of a seeded, epoch-wise shuffled order (a cursor into it),
                after any of the questions that went unsolved, queued to be tried again
    episodes  = rollout(engine, B·G environments, questions, G)         # trainers/rollout/
                (SFT: the environment's oracle plays each question once;
                 engine.workers: N → the same on N Ray workers;
                 rollout.off_policy_steps: 1 → prefetched during the previous update)
    check the batch's invariants (token ids, loss mask, cut answers)    # health.py
    metrics   = algorithm.update(episodes)                              # its loss, the shared optimize()
    check the engine-trainer log-prob gap; kl/to_start every N steps    # health.py
    engine.update_weights(model)                                       # the next rollout sees θ
    log metrics, transcripts, health alerts; checkpoint every N steps   # metrics.py, checkpoint.py

With ``sft.steps > 0`` the first steps are SFT, drawn from the same question order, then the mode
starts with a fresh optimizer; ``mode: sft`` runs only SFT. A run started from another's weights
(``model.init_from``) goes on with that run's question order where it stopped, when both draw the
same questions under the same seed. An objective with an offline source
(``dpo.pairs``) trains on it instead of rolling out, in an order of its own (``item_cursor``).
``--resume`` continues from the newest complete checkpoint in the run folder with the same data
order, the same next batch and the same RNG states, under the run's own ``config.yaml``:
``--config``/``--set`` on a resume may change how the run is logged and checkpointed and how far
it goes, and anything else only with ``--allow-config-change``. Ctrl-C finishes the step in
progress, checkpoints it and prints the command that resumes the run.
"""

from __future__ import annotations

import importlib.util
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from agentenv.trainers import algorithms
from agentenv.trainers.algorithms.update import forward_precision, set_learning_rate
from agentenv.trainers.loop.build import (
    QuestionOrder,
    UnsolvedRetries,
    build_engine,
    build_optimizer,
    engine_lower_precision,
    env_factory,
    env_spec,
    load_policy,
    load_policy_tokenizer,
    lr_schedule,
    require_questions,
    section,
    seed_everything,
    warm_start_cursor,
)
from agentenv.trainers.loop.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_reference,
    read_state,
    save_checkpoint,
    save_reference,
)
from agentenv.trainers.loop.config import (
    ConfigError,
    TrainConfig,
    load_config,
    to_dict,
    training_changes,
)
from agentenv.trainers.loop.health import (
    HealthMonitor,
    StartPolicy,
    check_gap,
    check_rollout_batch,
    enforce,
    episode_limits,
    print_alerts,
    search_cap,
)
from agentenv.trainers.loop.held_out import HeldOutCurve
from agentenv.trainers.loop.metrics import EPISODES_FILE, MetricsLogger, restart_jsonl
from agentenv.trainers.loop.sampling import (
    oracle_episodes,
    prefetch_ahead,
    process_credits,
    sample,
    step_metrics,
    timed,
)
from agentenv.trainers.rollout.workers import RolloutWorkers

# --- the loop -----------------------------------------------------------------------------------------


def resume_command(run_dir: Path) -> str:
    return f"agentenv train --out {shlex.quote(str(run_dir))} --resume"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised once the step in progress is finished and checkpointed."""

    def __init__(self, checkpoint: Path):
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


class StopAtStepEnd:
    """Within the ``with`` block, Ctrl-C (SIGINT) sets ``requested`` instead of raising wherever it
    lands (mid-rollout, mid-update, mid-save); the loop stops at the end of the step. A second
    Ctrl-C raises KeyboardInterrupt at once, as usual."""

    def __init__(self):
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopAtStepEnd:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGINT, self._request)
            self._installed = True
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nagentenv train: Ctrl-C: stopping at the end of this step, with a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)


def check_resumed_config(run_dir: Path, config: TrainConfig, allow_config_change: bool) -> None:
    """Refuse to resume under values that change what training computes, unless allowed."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = load_config(saved_path)
    except ConfigError as error:
        raise ConfigError(f"{saved_path}: {error}") from None
    changes = training_changes(saved, config)
    if not changes:
        return
    listed = "; ".join(changes)
    if not allow_config_change:
        raise ConfigError(
            f"--resume: {run_dir} was trained with other values of keys that change what training "
            f"computes: {listed}. Resume without them (the run's config.yaml is read when --config is "
            "not given), or pass --allow-config-change to continue with them"
        )
    print(f"agentenv train: resuming with a changed config (--allow-config-change): {listed}", file=sys.stderr)


def train(
    config: TrainConfig, run_dir: str | Path, resume: bool = False, allow_config_change: bool = False
) -> dict[str, Any]:
    """Run (or resume) training into ``run_dir``; return the last step's metrics.

    A resume refuses a ``config`` that changes what training computes against the run's own
    ``config.yaml`` (``training_changes``) unless ``allow_config_change``. Ctrl-C stops at the end
    of the step in progress, checkpoints it and raises ``TrainingInterrupted``.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    if config.logging.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logging.wandb: true needs the wandb package, which is not installed: pip install 'agentenv[wandb]'")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        print(f"agentenv train: no checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    if checkpoint is None and (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume, or another --out")
    if checkpoint is not None:
        check_resumed_config(run_dir, config, allow_config_change)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    sft_steps = config.max_steps if config.mode == "sft" else config.sft.steps
    mode_steps = 0 if config.mode == "sft" else config.max_steps  # the steps of the mode after SFT
    total_steps = sft_steps + mode_steps

    def phase_of(step: int) -> str:
        return "sft" if step <= sft_steps else config.mode

    def step_in_phase(step: int) -> int:
        return step - 1 if step <= sft_steps else step - sft_steps - 1

    seed_everything(config.seed)
    tokenizer = load_policy_tokenizer(config)
    mode = algorithms.get(config.mode)
    try:
        items = mode.offline_items(section(config, config.mode), tokenizer) if mode_steps else None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    item_order = QuestionOrder(len(items), config.seed) if items else None
    rolls_out = bool(mode_steps) and items is None and not mode.plays_oracle
    B, G = mode.rollout_shape(section(config, config.mode))
    # The environments (and their question lists) before the model: generating questions runs the
    # calculator, whose wall-clock deadline a garbage collection over a loaded model can overrun.
    # Rollout workers step environments of their own; the trainer's first one gives the limits.
    spec = env_spec(config)
    factory = env_factory(config, spec, tokenizer)
    envs = factory.make(B * G if rolls_out and not config.engine.workers else 1)
    require_questions(config, envs[0])
    questions = envs[0].questions
    spec.save(run_dir)
    order = QuestionOrder(len(questions), config.seed)
    warm_start = warm_start_cursor(config) if checkpoint is None else None
    if warm_start is not None:
        order.cursor = warm_start[0]
        print(f"agentenv train: questions go on from {warm_start[1]}'s order at {order.cursor} "
              "(model.init_from_order=restart draws the warm start's questions again)", file=sys.stderr)
    retries = UnsolvedRetries(config.rollout.retry_unsolved_share, config.rollout.retry_unsolved_times)
    policy = load_policy(config, tokenizer)
    model = policy.model

    step = 0
    phase = phase_of(1)
    optimizer = build_optimizer(policy, config, phase)
    if checkpoint is not None:
        state = read_state(checkpoint)
        phase = phase_of(state["step"] + 1)
        same_phase = state["phase"] == phase
        optimizer = build_optimizer(policy, config, phase)
        base_rates = [group["base_lr"] for group in optimizer.param_groups]
        load_checkpoint(checkpoint, model, optimizer if same_phase else None,
                        modules=policy.modules if state["phase"] == config.mode else None)
        # The base rates are the config's: a checkpoint from before they were kept holds none.
        for group, rate in zip(optimizer.param_groups, base_rates, strict=True):
            group["base_lr"] = rate
        step, order.cursor = state["step"], state["cursor"]
        retries.queue = [list(entry) for entry in state.get("retry_queue", [])]
        if item_order is not None:
            item_order.cursor = state.get("item_cursor", state.get("pair_cursor", 0))
        print(f"agentenv train: resumed from {checkpoint} (step {step})", file=sys.stderr)
        if policy.reference_model is not None and sft_steps and step >= sft_steps:
            load_reference(run_dir, policy.reference_model)

    engine = None
    if (rolls_out or config.eval.every) and step < total_steps:
        engine = RolloutWorkers(config) if config.engine.workers > 0 else build_engine(config, policy, envs[0])
        engine.update_weights(model)
    held_out = None
    if config.eval.every and engine is not None:
        held_out = HeldOutCurve(config, factory, tokenizer, policy.learned_reward)

    if rolls_out:
        for name in (*mode.step_files, EPISODES_FILE):
            restart_jsonl(run_dir / name, step if checkpoint else None)
    logger = MetricsLogger(
        run_dir, tensorboard=config.logging.tensorboard, resume_step=step if checkpoint else None,
        wandb_project=config.logging.wandb_project if config.logging.wandb else None, config=to_dict(config),
    )
    progress = tqdm(total=total_steps, initial=step, disable=not config.logging.progress, desc="train", unit="step")
    monitor = HealthMonitor(config.health, search_cap(envs[0])) if config.health.alerts else None
    start_policy = None
    metrics: dict[str, Any] = {}
    try:
        with StopAtStepEnd() as stop:
            if held_out is not None and checkpoint is None:
                logger.log(0, held_out.evaluate(engine, policy.model))  # where the curve starts
            while step < total_steps:
                step += 1
                if phase_of(step) != phase:  # SFT is over: the mode starts with a fresh optimizer
                    phase = phase_of(step)
                    optimizer = build_optimizer(policy, config, phase)
                    if policy.reference_model is not None:
                        save_reference(run_dir, model, policy.reference_model)
                    if rolls_out:
                        # SFT steps do not sync the engine: without this the mode's first rollout
                        # would sample the policy from before the warm start.
                        engine.update_weights(model)
                phase_steps = sft_steps if phase == "sft" else mode_steps
                lr = set_learning_rate(optimizer, lr_schedule(config, phase, step_in_phase(step), phase_steps))
                if rolls_out and phase == config.mode and config.health.kl_every and start_policy is None:
                    start_policy = StartPolicy(model, run_dir)  # the mode's first step, or the saved one
                started = time.perf_counter()
                metrics, ids = train_step(step, phase, config, policy, optimizer, engine, envs, questions, order,
                                          items, item_order, total_steps, run_dir, start_policy, retries)
                metrics["phase"] = phase
                metrics["data/question_ids"] = ids
                metrics["data/cursor"] = order.cursor
                metrics["lr"] = lr
                metrics["time/step_s"] = time.perf_counter() - started
                if held_out is not None and (step % config.eval.every == 0 or step == total_steps):
                    # Steps that do not roll out do not sync the engine; rollout steps do.
                    synced = phase != "sft" and items is None
                    metrics.update(held_out.evaluate(engine, model, sync=not synced))
                if monitor is not None:
                    alert_metrics, started_alerts = monitor.observe(step, metrics)
                    metrics.update(alert_metrics)
                    print_alerts(started_alerts, step)
                logger.log(step, metrics)
                progress.update(1)
                progress.set_postfix({k: f"{metrics[m]:.3f}" for k, m in _POSTFIX.items() if m in metrics})
                if step % config.checkpoint.every == 0 or step == total_steps or stop.requested:
                    state = {"cursor": order.cursor, "phase": phase, "retry_queue": retries.queue}
                    if item_order is not None:
                        state["item_cursor"] = item_order.cursor
                    saved = save_checkpoint(
                        run_dir, step, model, optimizer, state, to_dict(config), config.checkpoint.keep_last,
                        tokenizer=tokenizer, modules=policy.modules if phase == config.mode else None,
                    )
                if stop.requested and step < total_steps:
                    print(f"agentenv train: stopped after step {step} of {total_steps}; checkpoint {saved}\n"
                          f"resume with: {resume_command(run_dir)}", file=sys.stderr, flush=True)
                    raise TrainingInterrupted(saved)
    finally:
        progress.close()
        logger.close()
        if isinstance(engine, RolloutWorkers):
            engine.close()
    return metrics


_POSTFIX = {"reward": "reward/mean", "em": "exact_match", "dev_em": "dev/exact_match", "kl": "kl", "nll": "sft/nll"}


def train_step(
    step: int, phase: str, config: TrainConfig, policy: Any, optimizer: torch.optim.Optimizer, engine: Any,
    envs: list[Any], questions: list[dict[str, Any]], order: QuestionOrder, items: list[Any] | None,
    item_order: QuestionOrder | None, total_steps: int, run_dir: Path, start_policy: StartPolicy | None = None,
    retries: UnsolvedRetries | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """One step of ``phase``'s objective: its episodes (rolled out, the oracle's, or offline items),
    checked (health.py), its update, the weight sync; returns the step's metrics and the ids of what
    it trained on."""
    algorithm = algorithms.get(phase)
    config_section = section(config, phase)
    batch, step_items, times, credits, retry_metrics = None, None, {}, None, {}
    if phase != "sft" and items is not None:
        step_items = [items[i] for i in item_order.take(algorithm.offline_items_per_step(config_section))]
        episodes, ids = [], [(getattr(item, "question", None) or {}).get("id") for item in step_items]
    else:
        B, G = algorithm.rollout_shape(config_section)
        retried = retries.take(B) if retries is not None and not algorithm.plays_oracle else []
        indices = retried + order.take(B - len(retried))
        step_questions = [questions[i] for i in indices]
        ids = [questions[i].get("id", i) for i in indices]
        if algorithm.plays_oracle:
            episodes = oracle_episodes(envs[0], step_questions)
        else:
            if config.rollout.off_policy_steps:
                upcoming = [questions[i] for i in order.peek(B)] if step < total_steps else None
                prefetch_ahead(config, engine, envs[0], step, G, step_questions, upcoming)
            batch, times["rollout"] = timed(sample, step, config, policy, engine, envs, step_questions, G)
            episodes = batch.episodes
            if retries is not None and retries.share:
                retries.record(indices, episodes)
                retry_metrics = {"rollout/retried_questions": float(len(retried)), "rollout/unsolved_queue": float(len(retries.queue))}
            credits = process_credits(episodes, config.reward.process)
            health, times["health"] = timed(check_rollout_batch, episodes, policy.tokenizer.pad_token_id, config.health, step)
            health.update(episode_limits(episodes, search_cap(envs[0]) if batch.passage_tools else None))
    inputs = algorithms.UpdateInputs(
        model=policy.model, optimizer=optimizer, episodes=episodes, pad_id=policy.tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(config.seed * 7919 + step),
        reference_model=policy.reference_model, modules=policy.modules, max_grad_norm=config.optim.max_grad_norm,
        temperature=config.engine.temperature, behaviour_lag=batch.behaviour_lag if batch is not None else 0,
        token_credits=credits[0] if credits else None, max_response_tokens=response_budget(envs[0]),
        items=step_items, tokenizer=policy.tokenizer, run_dir=run_dir, step=step,
        engine_lower_precision=engine_lower_precision(config, policy),
    )
    with forward_precision(policy.model, config.model.autocast):
        update, times["train"] = timed(algorithm.update, inputs, config_section)
    if credits:
        update.update(credits[1])
    if batch is not None:
        if config.health.checks:
            enforce(check_gap(update, config.health), config.health, step)
        if start_policy is not None and step % config.health.kl_every == 0:
            kl, times["kl"] = timed(start_policy.kl, policy.model, episodes, policy.tokenizer.pad_token_id,
                                    config.engine.temperature, max_episodes=config.health.kl_episodes)
            if kl is not None:
                update["kl/to_start"] = kl
        update.update(health)
        update.update(retry_metrics)
        _, times["sync"] = timed(engine.update_weights, policy.model)
    return step_metrics(step, config, policy, engine, run_dir, batch, update, times), ids


def response_budget(env: Any) -> int:
    """Dr. GRPO's L_max: the most policy tokens one episode can hold."""
    return min(env.max_turns * env.max_turn_tokens, env.max_total_tokens)
