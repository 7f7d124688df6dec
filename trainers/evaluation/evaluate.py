"""`agentenv eval`: answers on held-out questions, for the agent and for the baselines.

Evaluation is a rollout without updates, through the same environments and rollout driver as
training. Three built-in modes are environment ids:

* ``agent`` — ``agentenv/SearchQA-v0``, the multi-turn search + calculator environment;
* ``rag`` — ``agentenv/RagQA-v0``: the top-k passages for the question, one answer turn, no tools;
* ``closed-book`` — ``agentenv/ClosedBookQA-v0``: one answer turn from the model's own knowledge;

and, with ``--env ID``, any Gymnasium environment of your own (``module:Id`` imports the module
first), as one more mode named after its id.

**Under the run's own environment.** ``--model RUN`` (a training run or one of its checkpoints)
evaluates in the environment the run trained in: its ``env_spec.json`` (id, keywords and reward),
so limits, parser, observation budget and reward are the trained ones; alone it runs that one mode.
A mode in another environment than the run's, or a model that is no run, gets that environment's
keywords with the turn limits below. ``--max-turns``, ``--max-turn-tokens``, ``--max-total-tokens``,
``--max-observation-tokens``, ``--passages``, ``--corpora``/``--index``/``--retriever-url`` and
``--env-kwargs`` override single keys; ``summary.json`` records each mode's spec and the limits it
ran under.

Greedy by default; ``--samples k`` samples k answers per question (temperature 1) and reports
pass@k next to the mean EM. Writes ``summary.json``, one ``transcripts-<mode>.jsonl`` per mode and a
bar chart of the modes; ``--compare A B`` puts two summaries side by side with a paired bootstrap
interval on the EM difference. ``--best-of N --select verifier|majority|reward-model`` samples N
episodes per question and reports the EM of the selected answer for N = 1, 2, 4, … (trainers/evaluation/best_of_n.py).

    agentenv eval --model embedded --questions geo:test --limit 200 --mode closed-book rag agent
    agentenv eval --model runs/cpu-smollm2 --questions geo:test --limit 200 --mode agent --out runs/eval-trained
    agentenv eval --model embedded --questions zipcodes:test --corpora zipcodes --mode rag agent
    agentenv eval --compare runs/eval-base runs/eval-trained
    agentenv eval --model runs/my-run --env mymod:my/WordLength-v0 --questions my_questions.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentenv.corpora import question_class, question_set_paths
from agentenv.search_behaviour import SearchRecord, search_metrics
from agentenv.trainers.evaluation.stats import bootstrap_interval
from agentenv.trainers.loop.metrics import transcript
from agentenv.trainers.rollout.policy import PolicyNotFound

MODES = ("closed-book", "rag", "agent")

class EvalError(Exception):
    """A problem with the user's input (path, format, option); printed without a traceback."""


# --- the environments ---------------------------------------------------------------------------------


# The built-in modes' environments.
MODE_ENVS = {"agent": "agentenv/SearchQA-v0", "rag": "agentenv/RagQA-v0", "closed-book": "agentenv/ClosedBookQA-v0"}
# The limits of a mode that has no run spec to take them from.
DEFAULT_LIMITS = {"max_turns": 4, "max_turn_tokens": 128, "max_total_tokens": 1536}


def is_run_mode(mode: str, run_spec: Any) -> bool:
    """Whether ``mode`` evaluates in the environment the run trained in."""
    from agentenv.envs import resolve_env_id

    return run_spec is not None and resolve_env_id(run_spec.id) == MODE_ENVS.get(mode, mode)


def mode_spec(mode: str, run_spec: Any, args: argparse.Namespace) -> Any:
    """The environment spec ``mode`` runs under: the run's own when the mode is the run's
    environment, else the mode's environment with ``DEFAULT_LIMITS``; then the flags' overrides.
    The questions are ``--questions``, handed to the environments, not the spec's."""
    from agentenv.spec import EnvSpec

    env_id = MODE_ENVS.get(mode, mode)
    spec = run_spec if is_run_mode(mode, run_spec) else EnvSpec(env_id, dict(DEFAULT_LIMITS))
    overrides: dict[str, Any] = {"questions": None}
    for flag, key in (("max_turns", "max_turns"), ("max_turn_tokens", "max_turn_tokens"),
                      ("max_total_tokens", "max_total_tokens"), ("max_observation_tokens", "max_observation_tokens")):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    if env_id in (MODE_ENVS["agent"], MODE_ENVS["rag"]):
        if args.passages is not None:
            overrides["k"] = args.passages
        if args.corpora is not None:
            overrides["corpora"], overrides["index"], overrides["retriever_url"] = args.corpora, None, None
        if args.index is not None:
            overrides["index"], overrides["retriever_url"] = args.index, None
        if args.retriever_url is not None:
            overrides["retriever_url"], overrides["index"] = args.retriever_url, None
    if mode not in MODE_ENVS:
        overrides.update(env_kwargs_of(args))
    return spec.updated(**overrides)


def mode_factory(mode: str, spec: Any, tokenizer: Any, user_keys: set[str]) -> Any:
    """``spec.factory(tokenizer)``; a keyword the environment refuses is an EvalError naming it."""
    from agentenv.envs import EnvArgumentError, UnknownEnvironment

    try:
        return spec.factory(tokenizer)
    except UnknownEnvironment as error:
        raise EvalError(f"--env: {error}") from None
    except EnvArgumentError as error:
        if error.key in user_keys or error.key is None:
            raise EvalError(f"--env-kwargs: {error}") from None
        raise EvalError(
            f"{mode}: {error} (agentenv eval passes it tokenizer, max_turns, max_turn_tokens and max_total_tokens)"
        ) from None


def transcripts_file(mode: str) -> str:
    """``transcripts-<mode>.jsonl``, with an env id's ``/`` and other odd characters as ``-``."""
    return f"transcripts-{re.sub(r'[^A-Za-z0-9._-]+', '-', mode)}.jsonl"


# --- metrics -------------------------------------------------------------------------------------


def summarise(records: list[dict[str, Any]], tools: Sequence[str] = ()) -> dict[str, Any]:
    """Per-question means over samples, then means over questions; EM with a 95 % interval.
    ``tools``: the environment's tools, counted (0) even where no episode called them."""
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
        "turns": _mean(question_mean("turns")),
        "valid_format": _mean(question_mean("format_valid")),
        "policy_tokens": _mean(question_mean("policy_tokens")),
    }
    # Calls per question of every tool of the env or any episode called, by name (0 where an episode did not).
    called = sorted({*tools, *(name for r in records for name in r.get("tool_calls") or {})})
    summary["tool_calls"] = {
        name: _mean([sum(r.get("tool_calls", {}).get(name, 0) for r in rs) / len(rs) for rs in by_question.values()])
        for name in called
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
    searched = [SearchRecord(**r["search"]) for r in records if "search" in r]
    if searched:
        # Over episodes (every sample), as a training step logs them.
        summary["search"] = search_metrics(searched, prefix="")
    return summary


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# --- running one mode ---------------------------------------------------------------------------


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

    from agentenv.trainers.rollout.rollout import rollout

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


def episode_record(mode: str, episode: Any, sample: int, tokenizer: Any) -> dict[str, Any]:
    """The training transcript's layout (``metrics.transcript``) with the mode, class and sample."""
    return {
        "mode": mode,
        "class": question_class(episode.question),  # the corpus's own classes (agentenv.corpora)
        "sample": sample,
        **transcript(episode, tokenizer),
    }


# --- tables and plots ---------------------------------------------------------------------------


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Modes as rows; EM with its interval, F1, pass@k, calls per question of each tool, turns,
    format, tokens; then, for modes with a search tool, what their searches did (searches per
    episode, answer recall of retrieval, reading accuracy, the verdicts' shares, duplicate and
    question-copy query rates); then EM by kind."""
    width = max(14, *(len(mode) + 2 for mode in summaries))
    tools = sorted({name for s in summaries.values() for name in s.get("tool_calls", {})})
    tool_width = {name: max(6, len(name)) for name in tools}
    header = (f"{'mode':<{width}}{'n':>5}  {'EM':>6} {'95% CI':>15}  {'F1':>6}  {'pass@k':>6}  "
              + "".join(f"{name:>{tool_width[name]}}  " for name in tools)
              + f"{'turns':>5}  {'format':>6}  {'tokens':>6}")
    lines = [header, "-" * len(header)]
    for mode, s in summaries.items():
        low, high = s["exact_match_ci95"]
        calls = s.get("tool_calls", {})
        lines.append(
            f"{mode:<{width}}{s['questions']:>5}  {s['exact_match']:>6.3f} {f'[{low:.3f}, {high:.3f}]':>15}  "
            f"{s['f1']:>6.3f}  {s['pass_at_k']:>6.3f}  "
            + "".join(f"{calls.get(name, 0.0):>{tool_width[name]}.2f}  " for name in tools)
            + f"{s['turns']:>5.2f}  {s['valid_format']:>6.3f}  {s['policy_tokens']:>6.1f}"
        )
    searching = {mode: s["search"] for mode, s in summaries.items() if s.get("search")}
    if searching:
        # Where a wrong answer came from: never searching, searching without finding, or misreading.
        lines += ["", f"{'searches':<{width}}{'per ep':>7}  {'recall':>6}  {'reading':>7}  {'none':>5}  "
                      f"{'not found':>9}  {'misread':>7}  {'dup':>5}  {'copy q':>6}"]
        for mode, s in searching.items():
            lines.append(
                f"{mode:<{width}}{s['per_episode']:>7.2f}  {s['answer_recall']:>6.3f}  {s['reading_accuracy']:>7.3f}  "
                f"{s['verdict/no_search']:>5.3f}  {s['verdict/not_found']:>9.3f}  {s['verdict/found_misread']:>7.3f}  "
                f"{s['duplicate_rate']:>5.3f}  {s['question_copy_rate']:>6.3f}"
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


def draw_modes(summaries: dict[str, dict[str, Any]], title: str = "") -> Any:
    """A matplotlib Figure: a bar of EM (with its interval), then one of F1, per mode."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state to close

    modes = list(summaries)
    em = [summaries[m]["exact_match"] for m in modes]
    f1 = [summaries[m]["f1"] for m in modes]
    errors = [
        [e - summaries[m]["exact_match_ci95"][0] for m, e in zip(modes, em, strict=True)],
        [summaries[m]["exact_match_ci95"][1] - e for m, e in zip(modes, em, strict=True)],
    ]
    fig = Figure(figsize=(1.8 + 1.6 * len(modes), 3.6))
    ax = fig.subplots()
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
    return fig


def plot_modes(summaries: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """:func:`draw_modes` saved as a PNG at ``path``; None without matplotlib."""
    try:
        fig = draw_modes(summaries, title)
    except ImportError:
        return None
    fig.savefig(path, dpi=120)
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


def _metric(summary: dict[str, Any] | None, metric: str) -> float:
    """A summary's value of ``metric``; ``tools/<name>_calls`` reads its ``tool_calls``."""
    if summary is None:
        return float("nan")
    if metric.startswith("tools/"):
        return summary.get("tool_calls", {}).get(metric.removeprefix("tools/").removesuffix("_calls"), 0.0)
    return summary[metric]


def format_comparison(name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any]) -> str:
    lines = [f"{'':<16}{'metric':<18}{name_a[-22:]:>24}{name_b[-22:]:>24}{'Δ':>10}"]
    others = sorted((set(a["modes"]) | set(b["modes"])) - set(MODES))
    for mode in [m for m in [*MODES, *others] if m in a["modes"] or m in b["modes"]]:
        sa, sb = a["modes"].get(mode), b["modes"].get(mode)
        tools = sorted({*(sa or {}).get("tool_calls", {}), *(sb or {}).get("tool_calls", {})})
        for metric in ("exact_match", "f1", *(f"tools/{name}_calls" for name in tools), "valid_format"):
            va, vb = _metric(sa, metric), _metric(sb, metric)
            lines.append(f"{mode:<16}{metric:<18}{va:>24.3f}{vb:>24.3f}{vb - va:>+10.3f}")
        if sa and sb:
            diff, low, high, n = paired_difference(sa, sb)
            lines.append(f"{mode:<16}{'EM diff (paired)':<18}{f'{diff:+.3f} [{low:+.3f}, {high:+.3f}] over {n} questions':>58}")
    return "\n".join(lines)


# --- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="hub id, local folder, training run or checkpoint, LoRA adapter folder, or 'embedded'")
    parser.add_argument("--questions", default="geo:test",
                        help="a shipped split (geo:test, zipcodes:test, airports:test, ...), several joined by + "
                             "(geo:test+zipcodes:test), or a JSONL/Parquet file any loader reads")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N questions (a fixed slice)")
    parser.add_argument("--corpora", default=None,
                        help="shipped corpora the agent and rag modes search, joined by + (geo+zipcodes; "
                             "default: the run's, else geo)")
    parser.add_argument("--index", default=None, help="BM25 index folder (default: the shipped corpora's index)")
    parser.add_argument("--retriever-url", default=None, help="a Search-R1-protocol retrieval server instead of --index")
    parser.add_argument("--mode", nargs="+", default=None, choices=MODES,
                        help="modes to run (default: a run's own environment; for a model that is no run, all "
                             "three; with --env, only the env unless given)")
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
    limits = "(default: the run's own environment, or {} for a model that is no run)"
    parser.add_argument("--max-turns", type=int, default=None, help="policy turns per episode " + limits.format(4))
    parser.add_argument("--max-turn-tokens", type=int, default=None, help="tokens per turn " + limits.format(128))
    parser.add_argument("--max-total-tokens", type=int, default=None, help="context length " + limits.format(1536))
    parser.add_argument("--max-observation-tokens", type=int, default=None,
                        help="tool output per turn " + limits.format("the environment's default"))
    parser.add_argument("--passages", type=int, default=None,
                        help="passages per search and for rag (default: the run's, else 3)")
    parser.add_argument("--search-budgets", type=int, nargs="+", default=None, metavar="K",
                        help="also evaluate each mode that searches with at most K searches an episode (a search "
                             "past it reads that the budget is spent), as modes named MODE@K: EM against searches")
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


def run_spec_of(model: str) -> Any:
    """The environment spec of the training run ``model`` names (``EnvSpec.of_run``), or None."""
    from agentenv.spec import EnvSpec

    try:
        return EnvSpec.of_run(model)
    except ValueError as error:
        raise EvalError(str(error)) from None


def mode_of_spec(spec: Any) -> str:
    """The mode that evaluates in ``spec``'s environment: a built-in mode's name, else the id."""
    from agentenv.envs import resolve_env_id

    env_id = resolve_env_id(spec.id)
    return next((mode for mode, mode_id in MODE_ENVS.items() if mode_id == env_id), env_id)


def modes_of(args: argparse.Namespace, run_spec: Any = None) -> list[str]:
    """The modes to run, in order: the built-in ones asked for, then ``--env``'s, named after its
    registered id. Asked for none: the run's own environment's mode, or all three built-in ones
    for a model that is no run (none with ``--env``)."""
    from agentenv.envs import UnknownEnvironment, resolve_env_id

    if args.mode is None and not args.env and run_spec is not None:
        try:
            return [mode_of_spec(run_spec)]
        except UnknownEnvironment as error:
            raise EvalError(f"{args.model}: the run's environment: {error}") from None
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
    """``--env-kwargs`` as a dict (a YAML/JSON mapping on the command line, a dict from Python),
    read as ``--set`` values are: YAML whose aliases expand past the limit is refused."""
    from agentenv.trainers.loop.config import ConfigError, brief, load_yaml

    value = args.env_kwargs
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = load_yaml(value, "--env-kwargs")
        except ConfigError as error:
            raise EvalError(str(error)) from None
    if not isinstance(value, dict):
        raise EvalError(f"--env-kwargs: expected a mapping such as '{{max_turns: 2}}', got {brief(value)}")
    if not args.env:
        raise EvalError("--env-kwargs goes with --env")
    return value


def check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, before any model loads, on paths and options that cannot work."""
    env_kwargs_of(args)
    if args.samples < 1:
        raise EvalError(f"--samples must be at least 1, got {args.samples}")
    if any(budget < 0 for budget in args.search_budgets or ()):
        raise EvalError(f"--search-budgets are searches per episode, at least 0; got {args.search_budgets}")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    from agentenv.envs import corpus_names

    try:
        question_set_paths(args.questions)
    except FileNotFoundError as error:
        raise EvalError(f"--questions {error}") from None
    if args.corpora is not None:
        try:
            corpus_names(args.corpora)
        except ValueError as error:
            raise EvalError(f"--{error}") from None
    if args.index is not None and not (Path(args.index) / "index.json").is_file():
        raise EvalError(f"--index {args.index}: not a BM25 index folder (build one with `agentenv index build`)")
    if sum(bool(value) for value in (args.corpora, args.index, args.retriever_url)) > 1:
        raise EvalError("give one of --corpora, --index and --retriever-url")
    if args.best_of is not None:
        if args.best_of < 1:
            raise EvalError(f"--best-of must be at least 1, got {args.best_of}")
        if args.samples not in (1, args.best_of):
            raise EvalError(f"--best-of {args.best_of} samples {args.best_of} episodes per question; drop --samples {args.samples}")
        from agentenv.trainers.evaluation.best_of_n import SELECTORS

        if isinstance(args.select, str) or not set(args.select) <= set(SELECTORS):
            raise EvalError(f"--select takes a list of {', '.join(SELECTORS)}; got {args.select!r}")
        if "reward-model" in args.select and args.reward_model is None:
            raise EvalError("--select reward-model needs --reward-model PATH (a folder from `agentenv rm train`)")
    if args.reward_model is not None:
        from agentenv.trainers.algorithms.reward_model import reward_model_folder

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
    run_spec = run_spec_of(args.model)
    modes = modes_of(args, run_spec)  # an --env that names nothing fails here, before the model loads
    check_inputs(args)
    questions = load_questions_for_eval(args.questions, args.limit)

    from agentenv.trainers.rollout.engines import SamplingConfig
    from agentenv.trainers.rollout.policy import load_policy_engine

    engine, tokenizer, model_description = load_policy_engine(args.model, args.engine)
    samples = args.best_of or args.samples  # --best-of N samples N episodes per question
    temperature = args.temperature if args.temperature is not None else (0.0 if samples == 1 and not args.best_of else 1.0)
    score_trajectories = None
    if args.reward_model is not None:
        score_trajectories = load_scorer(args.reward_model, tokenizer, args.batch_size)
    count = max(1, args.batch_size // samples) * samples
    # Every mode's environments are built before any runs, so a keyword one does not take fails at once.
    user_keys = set(env_kwargs_of(args))
    factories = {}
    for mode in modes:
        spec = mode_spec(mode, run_spec, args)
        factories[mode] = mode_factory(mode, spec, tokenizer, user_keys)
        if args.search_budgets and factories[mode].make(1)[0].passage_tools:
            for budget in args.search_budgets:
                factories[f"{mode}@{budget}"] = mode_factory(mode, spec.updated(max_searches=budget), tokenizer, user_keys)

    out = Path(args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    for mode, factory in factories.items():
        started = time.perf_counter()
        envs = factory.make(count, questions=questions)
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=envs[0].max_turn_tokens, seed=args.seed)
        records = evaluate_envs(mode, engine, envs, questions, samples, sampling, tokenizer,
                                score_trajectories=score_trajectories)
        with (out / transcripts_file(mode)).open("w") as file:
            for record in records:
                file.write(json.dumps(record) + "\n")
        summary = summarise(records, tools=list(envs[0].tools))
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if "@" in mode:
            summary["search_budget"] = int(mode.rsplit("@", 1)[1])
        summary["env"] = {"spec": factory.spec.to_record(), "limits": factory.limits(),
                          "from": "the run's spec" if is_run_mode(mode, run_spec) else "defaults"}
        if args.best_of:
            from agentenv.trainers.evaluation.best_of_n import best_of_n

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
        from agentenv.trainers.evaluation.best_of_n import plot_best_of_n

        summary["best_of_n_chart"] = plot_best_of_n({m: s["best_of_n"] for m, s in summaries.items()}, out / "best-of-n.png")
    return summary


def load_scorer(path: str, tokenizer: Any, batch_size: int):
    """``trajectories -> scores`` of the reward model at ``path``, which must share the policy's
    tokenizer (it scores the sampled token ids as they are)."""
    from agentenv.trainers.algorithms.learned_reward import LearnedReward

    try:
        return LearnedReward(path, batch_size=batch_size, tokenizer=tokenizer).score
    except (OSError, ValueError) as error:
        raise EvalError(f"--reward-model {path}: {error}") from None


def _evaluate(args: argparse.Namespace) -> int:
    summary = evaluate_run(args)
    print(f"model: {summary['model']}   questions: {summary['questions']} ({summary['num_questions']})")
    print(format_table(summary["modes"]))
    if "best_of_n" in summary:
        from agentenv.trainers.evaluation.best_of_n import format_best_of_n

        for mode, mode_summary in summary["modes"].items():
            print("\n" + format_best_of_n(mode, mode_summary["best_of_n"]))
        if summary.get("best_of_n_chart"):
            print(f"best-of-N plot: {summary['best_of_n_chart']}")
    chart = summary["chart"]
    print(f"\nwrote {summary['out']}/summary.json, transcripts-<mode>.jsonl" + (f", {chart}" if chart else ""))
    return 0
