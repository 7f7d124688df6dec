"""How rollout cost grows: against group size G and against corpus size, a PNG per curve.

    .venv/bin/python bench/scaling.py                               # both curves (~40 min on 2 cores)
    .venv/bin/python bench/scaling.py --curves group-size --engines vllm

* ``group-size``: the multi-turn rollout of bench/rollout.py (B = 4 geo:dev questions, the limits of
  configs/cpu-smollm2.yaml) at G = 2, 4, 8, 16, on each engine, one engine load per engine.
* ``corpus-size``: the same rollout at G = 4 on the vLLM engine with the search index grown from
  10 k to 1 M passages. The shipped geo corpus has 34 258 passages: 10 k is its first 10 k, larger
  sizes add variants of its passages (another place name, other numbers), so the agent's queries hit
  posting lists that grow the way a bigger encyclopedia's would. Indexes are built once into
  bench/out/indexes (1 M: ~1 min, ~0.5 GB).

Each point is the median of ``--repeats`` rollouts after one warm-up. Prints a JSON line per point,
appends the tables to bench/RESULTS.md and writes bench/rollout-vs-group-size.png and
bench/rollout-vs-corpus-size.png. It checks what a curve must show to be trusted (every point made
tool calls and generated tokens) and exits with status 1 if not.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
from pathlib import Path

from common import BENCH, OUT, append_section, command_line, machine, peak_rss_mb, run_worker
from rollout import (
    DEFAULT_POLICY,
    ENGINES,
    ensure_default_policy,
    load_engine,
    make_environments,
    measure_workload,
)

GROUP_SIZES = (2, 4, 8, 16)
CORPUS_SIZES = (10_000, 100_000, 1_000_000)
GEO_PASSAGES = 34_258


def corpus_passages(size: int, seed: int = 0):
    """``size`` passages: the geo corpus (cut, or grown with renamed, renumbered variants of it)."""
    from agentenv.corpora import geo_path, load_corpus

    geo = list(load_corpus(geo_path("passages")))
    yield from geo[:size]
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ra", "ten", "vo", "zu", "bel", "dor", "an", "is", "qu", "gra", "sel"]
    for serial in range(max(0, size - len(geo))):
        source = geo[serial % len(geo)]
        name = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))).capitalize()
        text = source["text"].replace(source["title"], name)
        text = re.sub(r"\d[\d,]*", lambda match: f"{int(match.group().replace(',', '')) * rng.uniform(0.5, 2):,.0f}", text)
        yield {"id": f"variant:{serial}", "title": name, "text": text}


def ensure_index(size: int) -> str:
    from agentenv.tools import BM25Index

    directory = OUT / "indexes" / f"geo-{size}"
    if not directory.is_dir():
        print(f"building a {size:,}-passage index in {directory} ...", file=sys.stderr)
        partial = directory.with_name(directory.name + ".partial")  # an interrupted build is never used
        shutil.rmtree(partial, ignore_errors=True)
        BM25Index.build(corpus_passages(size), out_dir=partial, show_progress=True)
        partial.rename(directory)
    return str(directory)


# --- workers: one engine load each ---------------------------------------------------------------------


def measure_group_sizes(kind: str, policy: str, group_sizes: list[int], repeats: int) -> dict:
    from agentenv.envs import load_question_set

    engine, tokenizer, description, startup_s = load_engine(kind, policy)
    questions = load_question_set("geo:dev")
    points = []
    for G in group_sizes:
        envs = make_environments("multi-turn", 4 * G, tokenizer)
        points.append({"engine": kind, "group_size": G, **measure_workload(engine, envs, questions, G, repeats)})
    return {"policy": description, "points": points, "peak_rss_mb": peak_rss_mb()}


def measure_corpus_sizes(kind: str, policy: str, indexes: dict[str, str], repeats: int) -> dict:
    from agentenv.envs import load_question_set
    from agentenv.tools import BM25Index

    engine, tokenizer, description, _ = load_engine(kind, policy)
    questions = load_question_set("geo:dev")
    points = []
    for size, directory in indexes.items():
        index = BM25Index.load(directory)
        envs = make_environments("multi-turn", 16, tokenizer, search_index=index)
        points.append({"engine": kind, "passages": int(size), **measure_workload(engine, envs, questions, 4, repeats)})
    return {"policy": description, "points": points, "peak_rss_mb": peak_rss_mb()}


# --- plots -----------------------------------------------------------------------------------------------


def plot(points: list[dict], x: str, xlabel: str, path: Path, title: str, log_x: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for engine in sorted({p["engine"] for p in points}):
        mine = sorted((p for p in points if p["engine"] == engine), key=lambda p: p[x])
        xs = [p[x] for p in mine]
        axes.plot(xs, [p["rollout_s"] for p in mine], marker="o", label=f"{engine}: rollout")
        axes.plot(xs, [p["env_s"] for p in mine], marker="s", linestyle="--", label=f"{engine}: env (tools, parsing)")
        axes.plot(xs, [p["reprefill_s"] for p in mine], marker="^", linestyle=":", label=f"{engine}: re-prefill")
    if log_x:
        axes.set_xscale("log")
    axes.set_xticks(sorted({p[x] for p in points}))
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axes.set_xlabel(xlabel)
    axes.set_ylabel("seconds per rollout (median)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


COLUMNS = [
    ("engine", "engine"), ("episodes", "episodes"), ("rollout s", "rollout_s"), ("generation s", "generation_s"),
    ("env s", "env_s"), ("re-prefill s", "reprefill_s"), ("generated tokens", "generated_tokens"),
    ("tokens/s", "tokens_per_s"), ("overhead share", "overhead_share"), ("tool calls/episode", "tool_calls"),
]


def remember(points: list[dict], x: str) -> list[dict]:
    """Merge ``points`` into bench/out/scaling-<x>.json (newest per engine and x) and return them all."""
    path = OUT / f"scaling-{x}.json"
    known = {(p["engine"], p[x]): p for p in (json.loads(path.read_text()) if path.exists() else [])}
    known.update({(p["engine"], p[x]): p for p in points})
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(known.values()), indent=1))
    return list(known.values())


def check(points: list[dict]) -> list[str]:
    return [f"{p}: no tool calls or no tokens" for p in points if p["tool_calls"] == 0 or p["generated_tokens"] == 0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", nargs="+", choices=("group-size", "corpus-size"), default=["group-size", "corpus-size"])
    parser.add_argument("--policy", help=f"any `agentenv eval --model` value (default: {DEFAULT_POLICY})")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="for the group-size curve")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=list(GROUP_SIZES))
    parser.add_argument("--corpus-sizes", type=int, nargs="+", default=list(CORPUS_SIZES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=("group-size", "corpus-size"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--indexes", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "group-size":
        result = measure_group_sizes(args.engine, args.policy, args.group_sizes, args.repeats)
    elif args.worker == "corpus-size":
        result = measure_corpus_sizes(args.engine, args.policy, json.loads(args.indexes), args.repeats)
    if args.worker:
        Path(args.out).write_text(json.dumps(result))
        return 0

    machine_at_start = machine()
    policy = args.policy or ensure_default_policy()
    problems = []
    common = ["--policy", policy, "--repeats", str(args.repeats)]
    if "group-size" in args.curves:
        points = []
        for kind in args.engines:
            sizes = [str(g) for g in args.group_sizes]
            measured = run_worker(__file__, ["--worker", "group-size", "--engine", kind, "--group-sizes", *sizes, *common])["points"]
            for point in measured:
                print(json.dumps(point), flush=True)
            points += measured
            latest = remember(measured, "group_size")  # an engine measured alone still plots beside the other
        problems += check(points)
        plot(latest, "group_size", "group size G (B = 4 questions)", BENCH / "rollout-vs-group-size.png",
             "Multi-turn rollout time against group size (geo env, SFT'd SmolLM2-135M, 2 CPU cores)")
        append_section("Rollout time against group size", command_line("scaling.py"),
                       [f"{machine_at_start}; policy {policy}; B = 4 geo:dev questions, median of {args.repeats} after a warm-up; "
                        "plot: bench/rollout-vs-group-size.png"],
                       [("G", "group_size"), *COLUMNS], points)
    if "corpus-size" in args.curves:
        indexes = {str(size): ensure_index(size) for size in args.corpus_sizes}
        points = run_worker(__file__, ["--worker", "corpus-size", "--engine", "vllm", "--indexes", json.dumps(indexes), *common])["points"]
        for point in points:
            print(json.dumps(point), flush=True)
        problems += check(points)
        plot(points, "passages", "passages in the search index", BENCH / "rollout-vs-corpus-size.png",
             "Multi-turn rollout time against corpus size (vLLM, B = 4 x G = 4, 2 CPU cores)", log_x=True)
        append_section("Rollout time against corpus size", command_line("scaling.py"),
                       [f"{machine_at_start}; policy {policy}; vLLM engine, B = 4 x G = 4 geo:dev questions, median of "
                        f"{args.repeats} after a warm-up; geo passages + variants; plot: bench/rollout-vs-corpus-size.png"],
                       [("passages", "passages"), *COLUMNS], points)
    for problem in problems:
        print(f"scaling: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
