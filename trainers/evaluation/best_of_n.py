"""Best-of-N at evaluation: N sampled episodes per question, one of them answers.

    agentenv eval --model runs/my-run --mode agent --best-of 8 --select majority verifier
    agentenv eval --model runs/my-run --mode agent --best-of 8 --select reward-model --reward-model runs/rm-geo

With samples τ_1 … τ_N of one question, the answer is that of τ_î, where î is::

    verifier      argmax_i R(τ_i)        the environment's own reward. R reads the gold answers, so
                                         this is an oracle: an upper bound on what selection can
                                         gain, not a method an agent without the answers could use
    majority      the first τ_i whose normalised answer is the most frequent one (self-consistency,
                  Wang et al. 2023); episodes without an answer do not vote
    reward-model  argmax_i r(x, τ_i)     a learned score (trainers/algorithms/reward_model.py)

Ties go to the earliest sample. The EM of the selected answer is reported for n = 1, 2, 4, …, N,
each from the first n samples of every question (the same samples for every n and every selector),
next to pass@n (any of the first n correct), the ceiling of any selector. Each point has a 95 %
bootstrap interval over questions, and each selector the paired gain of its choice among N over
the first sample alone (n = 1: one sampled episode), with its interval: what selection adds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentenv.rewards import normalize_answer
from agentenv.trainers.evaluation.stats import bootstrap_interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SELECTORS = ("verifier", "majority", "reward-model")


def select_verifier(samples: Sequence[dict[str, Any]]) -> int:
    """The index of the sample with the highest environment reward (an oracle: it sees the gold)."""
    return max(range(len(samples)), key=lambda i: (samples[i]["reward"], -i))


def select_majority(samples: Sequence[dict[str, Any]]) -> int:
    """The index of the first sample giving the most frequent normalised answer (0 if none answered)."""
    answers = [normalize_answer(s["answer"]) if s.get("answer") is not None else None for s in samples]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0
    top = max(votes.values())
    return next(i for i, a in enumerate(answers) if a is not None and votes[a] == top)


def select_reward_model(samples: Sequence[dict[str, Any]]) -> int:
    """The index of the sample the reward model scored highest (``reward_model_score``)."""
    if any("reward_model_score" not in s for s in samples):
        raise ValueError("select reward-model needs a reward_model_score on every sample (--reward-model PATH)")
    return max(range(len(samples)), key=lambda i: (samples[i]["reward_model_score"], -i))


SELECT: dict[str, Callable[[Sequence[dict[str, Any]]], int]] = {
    "verifier": select_verifier,
    "majority": select_majority,
    "reward-model": select_reward_model,
}


def sizes_up_to(n: int) -> list[int]:
    """1, 2, 4, … below ``n``, then ``n`` itself."""
    sizes, size = [], 1
    while size < n:
        sizes.append(size)
        size *= 2
    return [*sizes, n]


def samples_by_question(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each question's records in sample order."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["id"]].append(record)
    return {q: sorted(rs, key=lambda r: r["sample"]) for q, rs in grouped.items()}


def best_of_n(records: Sequence[dict[str, Any]], selectors: Sequence[str], n: int) -> dict[str, Any]:
    """For each selector, the selected answer's EM at every size in ``sizes_up_to(n)`` and the
    sample it selects from all n; ``pass_at_n`` beside them. Keys of the curves are sizes as strings."""
    questions = samples_by_question(records)
    sizes = sizes_up_to(n)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    result: dict[str, Any] = {
        "n": n,
        "sizes": sizes,
        "pass_at_n": {str(k): mean([float(any(r["exact_match"] for r in rs[:k])) for rs in questions.values()])
                      for k in sizes},
        "selectors": {},
    }
    for name in selectors:
        select = SELECT[name]
        correct = {k: [float(rs[:k][select(rs[:k])]["exact_match"]) for rs in questions.values()] for k in sizes}
        curve = {str(k): mean(values) for k, values in correct.items()}
        gains = [chosen - first for chosen, first in zip(correct[n], correct[1], strict=True)]
        result["selectors"][name] = {
            "exact_match": curve[str(n)],
            "exact_match_by_n": curve,
            "exact_match_interval_by_n": {str(k): list(bootstrap_interval(values)) for k, values in correct.items()},
            "gain_over_first": {"mean": mean(gains), "interval": list(bootstrap_interval(gains))},
            "selected_sample": {q: rs[select(rs)]["sample"] for q, rs in questions.items()},
            "oracle": name == "verifier",
        }
    return result


def format_best_of_n(mode: str, result: dict[str, Any]) -> str:
    """One line per selector: EM of the selected answer at each n."""
    sizes = result["sizes"]
    header = f"best-of-N {mode:<18}" + "".join(f"{'N=' + str(k):>8}" for k in sizes)
    lines = [header]
    for name, entry in result["selectors"].items():
        label = f"{name} (oracle)" if entry["oracle"] else name
        lines.append(f"  {label:<26}" + "".join(f"{entry['exact_match_by_n'][str(k)]:>8.3f}" for k in sizes))
    lines.append(f"  {'pass@n (ceiling)':<26}" + "".join(f"{result['pass_at_n'][str(k)]:>8.3f}" for k in sizes))
    for name, entry in result["selectors"].items():
        gain = entry["gain_over_first"]
        low, high = gain["interval"]
        lines.append(f"  {name}: N={result['n']} − N=1 {gain['mean']:+.3f} [95 % CI {low:+.3f}, {high:+.3f}] (paired)")
    return "\n".join(lines)


def draw_best_of_n(results: dict[str, dict[str, Any]]) -> Figure:
    """EM of the selected answer against N (log₂ axis), a line per mode and selector with its 95 %
    interval shaded, pass@N dashed."""
    import matplotlib
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state to close

    fig = Figure(figsize=(5.6, 3.8))
    ax = fig.subplots()
    colours = iter(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for mode, result in results.items():
        sizes = result["sizes"]
        for name, entry in result["selectors"].items():
            label = f"{mode}: {name}" + (" (oracle)" if entry["oracle"] else "")
            colour = next(colours)
            ax.plot(sizes, [entry["exact_match_by_n"][str(k)] for k in sizes], marker="o", label=label, color=colour)
            low, high = zip(*(entry["exact_match_interval_by_n"][str(k)] for k in sizes), strict=True)
            ax.fill_between(sizes, low, high, color=colour, alpha=0.12, linewidth=0)
        ax.plot(sizes, [result["pass_at_n"][str(k)] for k in sizes], linestyle="--", color="#999999", linewidth=1,
                label=f"{mode}: pass@N (ceiling)")
    ax.set_xscale("log", base=2)
    all_sizes = sorted({k for r in results.values() for k in r["sizes"]})
    ax.set_xticks(all_sizes, [str(k) for k in all_sizes])
    ax.set_xlabel("N (samples per question)")
    ax.set_ylabel("exact match of the selected answer")
    ax.set_ylim(-0.02, 1.02)  # a curve at 0 stays visible
    ax.set_title("best-of-N", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_best_of_n(results: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """:func:`draw_best_of_n` saved as a PNG at ``path``; None without matplotlib."""
    try:
        fig = draw_best_of_n(results)
    except ImportError:
        return None
    fig.savefig(path, dpi=120)
    return path
