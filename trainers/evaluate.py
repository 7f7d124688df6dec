"""`agentenv eval`: answers on held-out questions, for the agent and for the baselines.

Three modes, all run through the same ``ToolEnv`` and rollout driver as training (evaluation is a
rollout without updates):

* ``agent`` — the multi-turn search + calculator environment;
* ``rag`` — retrieve the top-k passages with the question, answer in one turn (no tools);
* ``closed-book`` — answer in one turn from the model's own knowledge (no tools);

and, with ``--env ID``, any Gymnasium environment of your own (``module:Id`` imports the module
first), built with the policy's tokenizer, the turn and token limits and ``--env-kwargs``, as one
more mode named after its id.

Greedy by default; ``--samples k`` samples k answers per question (temperature 1) and reports
pass@k next to the mean EM. Writes ``summary.json``, one ``transcripts-<mode>.jsonl`` per mode and a
bar chart of the modes; ``--compare A B`` puts two summaries side by side with a paired bootstrap
interval on the EM difference. ``--best-of N --select verifier|majority|reward-model`` samples N
episodes per question and reports the EM of the selected answer for N = 1, 2, 4, … (trainers/best_of_n.py).

    agentenv eval --model embedded --questions geo:test --limit 200 --mode closed-book rag agent
    agentenv eval --model runs/cpu-smollm2 --questions geo:test --limit 200 --mode agent --out runs/eval-trained
    agentenv eval --compare runs/eval-base runs/eval-trained
    agentenv eval --model runs/my-run --env mymod:my/WordLength-v0 --questions my_questions.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentenv.trainers.metrics import transcript
from agentenv.trainers.policy import PolicyNotFound

MODES = ("closed-book", "rag", "agent")

class EvalError(Exception):
    """A problem with the user's input (path, format, option); printed without a traceback."""


# --- building the environments ----------------------------------------------------------------


def build_envs(mode: str, count: int, tokenizer: Any, search_tool: Any, env_kwargs: dict[str, Any]):
    """``count`` environments for one mode, sharing one tokenizer and one search tool: the agent's
    ``SearchQA``, or the ``RagQA`` / ``ClosedBookQA`` baselines (agentenv/envs.py)."""
    from agentenv import ToolEnv
    from agentenv.envs import make_closed_book_qa_env, make_rag_qa_env
    from agentenv.tools import calculator

    if mode == "agent":
        return [ToolEnv([search_tool, calculator], tokenizer=tokenizer, **env_kwargs) for _ in range(count)]
    if mode == "rag":
        return [make_rag_qa_env(search=search_tool, questions=None, tokenizer=tokenizer, **env_kwargs) for _ in range(count)]
    return [make_closed_book_qa_env(questions=None, tokenizer=tokenizer, **env_kwargs) for _ in range(count)]


def env_mode_envs(
    env_id: str, count: int, tokenizer: Any, env_kwargs: dict[str, Any], user_kwargs: dict[str, Any]
) -> list[Any]:
    """``count`` environments of ``--env`` (any id, ``module:Id`` too) with the policy's tokenizer,
    the turn and token limits (``env_kwargs``) and ``--env-kwargs`` (``user_kwargs``) on top."""
    from agentenv.envs import EnvArgumentError, make_env

    kwargs = {"tokenizer": tokenizer, **env_kwargs, **user_kwargs}
    try:
        return [make_env(env_id, **kwargs) for _ in range(count)]
    except EnvArgumentError as error:
        if error.key in user_kwargs or error.key is None:
            raise EvalError(f"--env-kwargs: {error}") from None
        raise EvalError(
            f"--env: {error} (agentenv eval passes it tokenizer, max_turns, max_turn_tokens and max_total_tokens)"
        ) from None


def transcripts_file(mode: str) -> str:
    """``transcripts-<mode>.jsonl``, with an env id's ``/`` and other odd characters as ``-``."""
    return f"transcripts-{re.sub(r'[^A-Za-z0-9._-]+', '-', mode)}.jsonl"


# --- metrics -------------------------------------------------------------------------------------


def bootstrap_interval(values: Sequence[float], samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return means[int(0.025 * samples)], means[int(0.975 * samples) - 1]


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-question means over samples, then means over questions; EM with a 95 % interval."""
    by_question: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_question[record["id"]].append(record)

    def question_mean(key: str) -> list[float]:
        return [sum(float(r[key]) for r in rs) / len(rs) for rs in by_question.values()]

    em = question_mean("exact_match")
    low, high = bootstrap_interval(em)
    summary = {
        "questions": len(by_question),
        "per_question_exact_match": dict(zip(by_question, em, strict=True)),
        "samples_per_question": max((len(rs) for rs in by_question.values()), default=0),
        "exact_match": _mean(em),
        "exact_match_ci95": [low, high],
        "pass_at_k": _mean([float(any(r["exact_match"] for r in rs)) for rs in by_question.values()]),
        "f1": _mean(question_mean("f1")),
        "searches": _mean(question_mean("searches")),
        "calculator_calls": _mean(question_mean("calculator_calls")),
        "turns": _mean(question_mean("turns")),
        "valid_format": _mean(question_mean("format_valid")),
        "policy_tokens": _mean(question_mean("policy_tokens")),
    }
    if records and all("reward_model_score" in r for r in records):
        summary["reward_model_score"] = _mean(question_mean("reward_model_score"))
    kinds: dict[str, list[float]] = defaultdict(list)
    for rs in by_question.values():
        kinds[rs[0].get("kind") or "unknown"].append(sum(r["exact_match"] for r in rs) / len(rs))
    summary["exact_match_by_kind"] = {kind: {"n": len(v), "exact_match": _mean(v)} for kind, v in sorted(kinds.items())}
    summary["question_classes"] = {q: rs[0]["class"] for q, rs in by_question.items() if rs[0].get("class")}
    classes: dict[str, list[float]] = defaultdict(list)
    for rs in by_question.values():
        if rs[0].get("class"):
            classes[rs[0]["class"]].append(sum(r["exact_match"] for r in rs) / len(rs))
    summary["exact_match_by_class"] = {name: {"n": len(v), "exact_match": _mean(v)} for name, v in sorted(classes.items())}
    return summary


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# --- running one mode ---------------------------------------------------------------------------


def evaluate_mode(
    mode: str,
    engine: Any,
    tokenizer: Any,
    questions: list[dict[str, Any]],
    search_tool: Any,
    samples: int,
    sampling: Any,
    env_kwargs: dict[str, Any],
    batch_size: int = 32,
    score_trajectories: Any = None,
) -> list[dict[str, Any]]:
    """Run every question ``samples`` times in ``mode``; one record per episode."""
    envs = build_envs(mode, max(1, batch_size // samples) * samples, tokenizer, search_tool, env_kwargs)
    return evaluate_envs(mode, engine, envs, questions, samples, sampling, tokenizer, score_trajectories=score_trajectories)


def evaluate_envs(
    mode: str,
    engine: Any,
    envs: Sequence[Any],
    questions: list[dict[str, Any]],
    samples: int,
    sampling: Any,
    tokenizer: Any,
    progress: bool = True,
    score_trajectories: Any = None,
) -> list[dict[str, Any]]:
    """Run every question ``samples`` times through ``envs`` (any environment: the trainer's
    held-out curve passes its own), ``len(envs) // samples`` questions at a time.
    ``score_trajectories`` (trajectories → scores, e.g. a reward model's ``score``) adds a
    ``reward_model_score`` to every record."""
    from tqdm import tqdm

    from agentenv.trainers.rollout import rollout

    questions_per_batch = max(1, len(envs) // samples)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(questions), desc=f"eval {mode}", unit="q", file=sys.stderr, disable=not progress)
    for start in range(0, len(questions), questions_per_batch):
        chunk = questions[start : start + questions_per_batch]
        # Episodes of later chunks continue the numbering: no two episodes share a random stream.
        batch = rollout(engine, envs[: len(chunk) * samples], chunk, samples, sampling, episode_offset=start * samples)
        scores = score_trajectories([e.trajectory for e in batch.episodes]) if score_trajectories else None
        for index, episode in enumerate(batch.episodes):
            records.append(episode_record(mode, episode, index % samples, tokenizer))
            if scores is not None:
                records[-1]["reward_model_score"] = float(scores[index])
        bar.update(len(chunk))
    bar.close()
    return records


def question_class(question: dict[str, Any]) -> str | None:
    """``calculator``, ``two-hop`` or ``single-hop`` from a question's ``needs_calculator`` and
    ``hops`` (the geo and airports sets carry both); None when it says neither."""
    if question.get("needs_calculator"):
        return "calculator"
    hops = question.get("hops")
    if hops is None:
        return None
    return "two-hop" if int(hops) >= 2 else "single-hop"


def episode_record(mode: str, episode: Any, sample: int, tokenizer: Any) -> dict[str, Any]:
    """The training transcript's layout (``metrics.transcript``) with the mode, class and sample."""
    return {
        "mode": mode,
        "class": question_class(episode.question),
        "sample": sample,
        **transcript(episode, tokenizer),
    }


# --- tables and plots ---------------------------------------------------------------------------


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Modes as rows; EM with its interval, F1, pass@k, tool use, format, tokens."""
    width = max(14, *(len(mode) + 2 for mode in summaries))
    header = f"{'mode':<{width}}{'n':>5}  {'EM':>6} {'95% CI':>15}  {'F1':>6}  {'pass@k':>6}  {'search':>6}  {'calc':>5}  {'turns':>5}  {'format':>6}  {'tokens':>6}"
    lines = [header, "-" * len(header)]
    for mode, s in summaries.items():
        low, high = s["exact_match_ci95"]
        lines.append(
            f"{mode:<{width}}{s['questions']:>5}  {s['exact_match']:>6.3f} {f'[{low:.3f}, {high:.3f}]':>15}  "
            f"{s['f1']:>6.3f}  {s['pass_at_k']:>6.3f}  {s['searches']:>6.2f}  {s['calculator_calls']:>5.2f}  "
            f"{s['turns']:>5.2f}  {s['valid_format']:>6.3f}  {s['policy_tokens']:>6.1f}"
        )
    kinds = sorted({kind for s in summaries.values() for kind in s["exact_match_by_kind"]})
    if kinds:
        column = max(13, *(len(mode) + 2 for mode in summaries))
        lines += ["", f"{'EM by kind':<28}" + "".join(f"{mode:>{column}}" for mode in summaries)]
        for kind in kinds:
            cells = []
            for s in summaries.values():
                entry = s["exact_match_by_kind"].get(kind)
                cell = f"{entry['exact_match']:.3f} ({entry['n']:>3})" if entry else "-"
                cells.append(f"{cell:>{column}}")
            lines.append(f"{kind:<28}" + "".join(cells))
    return "\n".join(lines)


def plot_modes(summaries: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """A bar chart of EM (with its interval) and F1 per mode; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    modes = list(summaries)
    em = [summaries[m]["exact_match"] for m in modes]
    f1 = [summaries[m]["f1"] for m in modes]
    errors = [
        [e - summaries[m]["exact_match_ci95"][0] for m, e in zip(modes, em, strict=True)],
        [summaries[m]["exact_match_ci95"][1] - e for m, e in zip(modes, em, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(modes), 3.6))
    xs = range(len(modes))
    ax.bar([x - 0.2 for x in xs], em, width=0.4, yerr=errors, capsize=4, label="exact match (95% CI)", color="#3b75af")
    ax.bar([x + 0.2 for x in xs], f1, width=0.4, label="token F1", color="#ef8636")
    for x, mode, value in zip(xs, modes, em, strict=True):
        top = summaries[mode]["exact_match_ci95"][1]  # above the error bar, not on it
        ax.annotate(f"{value:.2f}", (x - 0.2, top), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(list(xs), modes)
    ax.set_ylim(0, max(1e-3, *em, *f1) * 1.3)
    ax.set_ylabel("score")
    n = next(iter(summaries.values()))["questions"]
    ax.set_title(title or f"held-out questions (n = {n})")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_summary(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise EvalError(f"{path}: no summary.json (run `agentenv eval ... --out {path}` first)")
    return json.loads(file.read_text())


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, float, int]:
    """Mean EM(b) − EM(a) over the questions both runs answered, with a paired 95 % interval."""
    em_a, em_b = a["per_question_exact_match"], b["per_question_exact_match"]
    shared = sorted(set(em_a) & set(em_b))
    differences = [em_b[q] - em_a[q] for q in shared]
    low, high = bootstrap_interval(differences)
    return _mean(differences), low, high, len(shared)


def format_comparison(name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any]) -> str:
    lines = [f"{'':<16}{'metric':<18}{name_a[-22:]:>24}{name_b[-22:]:>24}{'Δ':>10}"]
    others = sorted((set(a["modes"]) | set(b["modes"])) - set(MODES))
    for mode in [m for m in [*MODES, *others] if m in a["modes"] or m in b["modes"]]:
        sa, sb = a["modes"].get(mode), b["modes"].get(mode)
        for metric in ("exact_match", "f1", "searches", "calculator_calls", "valid_format"):
            va = sa[metric] if sa else float("nan")
            vb = sb[metric] if sb else float("nan")
            lines.append(f"{mode:<16}{metric:<18}{va:>24.3f}{vb:>24.3f}{vb - va:>+10.3f}")
        if sa and sb:
            diff, low, high, n = paired_difference(sa, sb)
            lines.append(f"{mode:<16}{'EM diff (paired)':<18}{f'{diff:+.3f} [{low:+.3f}, {high:+.3f}] over {n} questions':>58}")
    return "\n".join(lines)


# --- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="hub id, local folder, training run or checkpoint, LoRA adapter folder, or 'embedded'")
    parser.add_argument("--questions", default="geo:test", help="geo:test / geo:dev / geo:train, or a JSONL/Parquet file any loader reads")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N questions (a fixed slice)")
    parser.add_argument("--index", default=None, help="BM25 index folder (default: the shipped geo index)")
    parser.add_argument("--retriever-url", default=None, help="a Search-R1-protocol retrieval server instead of --index")
    parser.add_argument("--mode", nargs="+", default=None, choices=MODES,
                        help="modes to run (default: all three; with --env, only the env unless given)")
    parser.add_argument("--env", default=None, metavar="ID",
                        help="also evaluate in this Gymnasium environment (module:Id imports the module first), as a mode named after it")
    parser.add_argument("--env-kwargs", default=None, metavar="MAPPING",
                        help="keywords for --env's constructor, as a YAML/JSON mapping, e.g. '{max_turns: 2}'")
    parser.add_argument("--engine", default="auto", choices=("auto", "vllm", "transformers"),
                        help="auto (default): vLLM where it is installed, else the transformers engine")
    parser.add_argument("--samples", type=int, default=1, help="samples per question (k of pass@k); >1 samples at temperature 1")
    parser.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for one sample, 1 for several or with --best-of")
    parser.add_argument("--best-of", type=int, default=None, metavar="N",
                        help="sample N episodes per question and answer with the selected one (EM per N, best-of-n.png)")
    parser.add_argument("--select", nargs="+", default=["majority"], choices=("verifier", "majority", "reward-model"),
                        help="how --best-of selects: verifier (the env's reward: an oracle upper bound), majority "
                             "(the most frequent normalised answer), reward-model (the highest learned score)")
    parser.add_argument("--reward-model", default=None, metavar="PATH",
                        help="a reward model from `agentenv rm train` (its run or model folder): scores every episode "
                             "(reward_model_score in the records and the summary), and --select reward-model picks by it")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-turn-tokens", type=int, default=128)
    parser.add_argument("--max-total-tokens", type=int, default=1536)
    parser.add_argument("--passages", type=int, default=3, help="passages per search (and for rag)")
    parser.add_argument("--batch-size", type=int, default=32, help="episodes generated together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default runs/eval-<time>)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print two eval outputs side by side and exit")


def run(args: argparse.Namespace) -> int:
    try:
        if args.compare:
            a, b = (load_summary(path) for path in args.compare)
            print(format_comparison(args.compare[0], a, args.compare[1], b))
            return 0
        return _evaluate(args)
    except (EvalError, PolicyNotFound) as error:
        print(f"agentenv eval: error: {error}", file=sys.stderr)
        return 2


def modes_of(args: argparse.Namespace) -> list[str]:
    """The modes to run, in order: the built-in ones asked for (all three by default, none by
    default with ``--env``), then ``--env``'s, named after its registered id."""
    from agentenv.envs import UnknownEnvironment, resolve_env_id

    built_in = args.mode if args.mode is not None else ([] if args.env else list(MODES))
    unknown = [m for m in built_in if m not in MODES]
    if unknown:
        raise EvalError(f"unknown mode(s) {', '.join(map(repr, unknown))}; choose from {', '.join(MODES)}")
    modes = [m for m in MODES if m in built_in]
    if args.env:
        try:
            modes.append(resolve_env_id(args.env))
        except UnknownEnvironment as error:
            raise EvalError(f"--env: {error}") from None
    if not modes:
        raise EvalError("nothing to evaluate: give --mode, --env or both")
    return modes


def env_kwargs_of(args: argparse.Namespace) -> dict[str, Any]:
    """``--env-kwargs`` as a dict (a YAML/JSON mapping on the command line, a dict from Python)."""
    import yaml

    value = args.env_kwargs
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise EvalError(f"--env-kwargs: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(value, dict):
        raise EvalError(f"--env-kwargs: expected a mapping such as '{{max_turns: 2}}', got {value!r}")
    if not args.env:
        raise EvalError("--env-kwargs goes with --env")
    return value


def check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, before any model loads, on paths and options that cannot work."""
    env_kwargs_of(args)
    if args.samples < 1:
        raise EvalError(f"--samples must be at least 1, got {args.samples}")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    if not args.questions.startswith("geo:") and not Path(args.questions).is_file():
        raise EvalError(f"--questions {args.questions}: no such file (or use geo:test, geo:dev, geo:train)")
    if args.index is not None and not (Path(args.index) / "index.json").is_file():
        raise EvalError(f"--index {args.index}: not a BM25 index folder (build one with `agentenv index build`)")
    if args.index and args.retriever_url:
        raise EvalError("give --index or --retriever-url, not both")
    if args.best_of is not None:
        if args.best_of < 1:
            raise EvalError(f"--best-of must be at least 1, got {args.best_of}")
        if args.samples not in (1, args.best_of):
            raise EvalError(f"--best-of {args.best_of} samples {args.best_of} episodes per question; drop --samples {args.samples}")
        from agentenv.trainers.best_of_n import SELECTORS

        if isinstance(args.select, str) or not set(args.select) <= set(SELECTORS):
            raise EvalError(f"--select takes a list of {', '.join(SELECTORS)}; got {args.select!r}")
        if "reward-model" in args.select and args.reward_model is None:
            raise EvalError("--select reward-model needs --reward-model PATH (a folder from `agentenv rm train`)")
    if args.reward_model is not None:
        from agentenv.trainers.reward_model import reward_model_folder

        if reward_model_folder(args.reward_model) is None:
            raise EvalError(f"--reward-model {args.reward_model}: no reward_model.json (train one with `agentenv rm train`)")


def load_questions_for_eval(spec: str, limit: int | None) -> list[dict[str, Any]]:
    from agentenv.corpora import DataFormatError
    from agentenv.envs import load_question_set

    try:
        questions = load_question_set(spec)
    except (DataFormatError, FileNotFoundError, ValueError) as error:
        raise EvalError(str(error)) from None
    if not questions:
        raise EvalError(f"--questions {spec}: no questions")
    return questions[:limit] if limit else questions


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The namespace ``agentenv eval ARGV`` would get; for callers such as the demo."""
    parser = argparse.ArgumentParser(prog="agentenv eval")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def evaluate_run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as ``args`` say; write transcripts, ``summary.json`` and the chart; return the summary."""
    modes = modes_of(args)  # an --env that names nothing fails here, before the model loads
    check_inputs(args)
    questions = load_questions_for_eval(args.questions, args.limit)

    from agentenv.envs import make_search_tool
    from agentenv.trainers.engines import SamplingConfig
    from agentenv.trainers.policy import load_policy_engine

    engine, tokenizer, model_description = load_policy_engine(args.model, args.engine)
    search = None
    if {"agent", "rag"} & set(modes):
        search = make_search_tool(args.index, args.retriever_url, k=args.passages, tokenizer=tokenizer)
    samples = args.best_of or args.samples  # --best-of N samples N episodes per question
    temperature = args.temperature if args.temperature is not None else (0.0 if samples == 1 and not args.best_of else 1.0)
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=args.max_turn_tokens, seed=args.seed)
    env_kwargs = {"max_turns": args.max_turns, "max_turn_tokens": args.max_turn_tokens, "max_total_tokens": args.max_total_tokens}

    score_trajectories = None
    if args.reward_model is not None:
        score_trajectories = load_scorer(args.reward_model, tokenizer, args.batch_size)
    count = max(1, args.batch_size // samples) * samples
    # Built before any mode runs, so a keyword --env does not take fails at once.
    custom_envs = env_mode_envs(args.env, count, tokenizer, env_kwargs, env_kwargs_of(args)) if args.env else None

    out = Path(args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    for mode in modes:
        started = time.perf_counter()
        if mode in MODES:
            records = evaluate_mode(mode, engine, tokenizer, questions, search, samples, sampling, env_kwargs,
                                    args.batch_size, score_trajectories)
        else:
            records = evaluate_envs(mode, engine, custom_envs, questions, samples, sampling, tokenizer,
                                    score_trajectories=score_trajectories)
        with (out / transcripts_file(mode)).open("w") as file:
            for record in records:
                file.write(json.dumps(record) + "\n")
        summary = summarise(records)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if args.best_of:
            from agentenv.trainers.best_of_n import best_of_n

            summary["best_of_n"] = best_of_n(records, args.select, args.best_of)
        summaries[mode] = summary

    summary = {
        "model": model_description,
        "questions": args.questions,
        "num_questions": len(questions),
        "limit": args.limit,
        "engine": type(engine).__name__,
        "samples": samples,
        "temperature": temperature,
        "modes": summaries,
        "out": str(out),
    }
    if args.best_of:
        summary["best_of_n"] = {"n": args.best_of, "select": list(args.select), "reward_model": args.reward_model,
                                "note": "verifier selects by the env's reward, which reads the gold answers: an oracle upper bound"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["chart"] = plot_modes(summaries, out / "modes.png")
    if args.best_of:
        from agentenv.trainers.best_of_n import plot_best_of_n

        summary["best_of_n_chart"] = plot_best_of_n({m: s["best_of_n"] for m, s in summaries.items()}, out / "best-of-n.png")
    return summary


def load_scorer(path: str, tokenizer: Any, batch_size: int):
    """``trajectories -> scores`` of the reward model at ``path``, which must share the policy's
    tokenizer (it scores the sampled token ids as they are)."""
    from agentenv.trainers.learned_reward import LearnedReward

    try:
        return LearnedReward(path, batch_size=batch_size, tokenizer=tokenizer).score
    except (OSError, ValueError) as error:
        raise EvalError(f"--reward-model {path}: {error}") from None


def _evaluate(args: argparse.Namespace) -> int:
    summary = evaluate_run(args)
    print(f"model: {summary['model']}   questions: {summary['questions']} ({summary['num_questions']})")
    print(format_table(summary["modes"]))
    if "best_of_n" in summary:
        from agentenv.trainers.best_of_n import format_best_of_n

        for mode, mode_summary in summary["modes"].items():
            print("\n" + format_best_of_n(mode, mode_summary["best_of_n"]))
        if summary.get("best_of_n_chart"):
            print(f"best-of-N plot: {summary['best_of_n_chart']}")
    chart = summary["chart"]
    print(f"\nwrote {summary['out']}/summary.json, transcripts-<mode>.jsonl" + (f", {chart}" if chart else ""))
    return 0
