"""What more GRPO steps do at the demo's batch: the whole geo dev split at every tenth step.

    python docs/results/demo/budget/plot_budget.py    # the table, and budget.png beside this file

Reads the evaluation summaries in this folder (``dev-<label>.json``, each ``agentenv eval --questions
geo:dev --mode agent`` of one checkpoint; ``dev-sft.json`` is the start) and prints, for each, EM
with its 95 % interval, the paired difference to the SFT agent with its interval (percentile
bootstrap over the same questions), and EM by class with the calculator calls per question.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agentenv.trainers.evaluation.stats import bootstrap_interval  # noqa: E402

HERE = Path(__file__).parent


def agent_block(path: Path) -> dict:
    return json.loads(path.read_text())["modes"]["agent"]


start = agent_block(HERE / "dev-sft.json")
curve = sorted((int(p.stem.removeprefix("dev-step")), agent_block(p)) for p in HERE.glob("dev-step*.json"))
others = {p.stem.removeprefix("dev-"): agent_block(p) for p in sorted(HERE.glob("dev-*.json"))
          if p.stem not in ("dev-sft",) and not p.stem.startswith("dev-step")}


def row(label: str, block: dict) -> tuple[float, tuple[float, float]]:
    ids = sorted(start["per_question_exact_match"])
    difference = [block["per_question_exact_match"][i] - start["per_question_exact_match"][i] for i in ids]
    mean = sum(difference) / len(difference)
    low, high = bootstrap_interval(difference)
    classes = block["exact_match_by_class"]
    em_low, em_high = block["exact_match_ci95"]
    print(f"| {label} | {block['exact_match']:.3f} [{em_low:.3f}, {em_high:.3f}] | {mean:+.3f} [{low:+.3f}, {high:+.3f}] | "
          + " | ".join(f"{classes[c]['exact_match']:.3f}" for c in ("calculator", "single-hop", "two-hop"))
          + f" | {block['tool_calls'].get('calculator', 0.0):.2f} | {block['tool_calls'].get('search', 0.0):.2f} |")
    return mean, (low, high)


print("| dev (493) | EM [95 % CI] | − SFT, paired | calculator | single-hop | two-hop | calculator calls/q | searches/q |")
print("|---|---|---|---:|---:|---:|---:|---:|")
row("SFT agent (step 0)", start)
differences = [(0, 0.0, (0.0, 0.0))]
for step, block in curve:
    mean, interval = row(f"GRPO step {step}", block)
    differences.append((step, mean, interval))
for label, block in others.items():
    row(label, block)

figure, (em_axis, class_axis) = plt.subplots(1, 2, figsize=(12, 4))
steps = [s for s, _, _ in differences]
em_axis.plot(steps, [m for _, m, _ in differences], marker="o", color="tab:blue", label="GRPO − SFT, paired")
em_axis.fill_between(steps, [i[0] for _, _, i in differences], [i[1] for _, _, i in differences], alpha=0.2,
                     color="tab:blue", label="95 % interval")
em_axis.axhline(0.0, color="grey", linewidth=0.8)
em_axis.axhline(0.03, color="tab:green", linestyle="--", linewidth=0.8, label="goal: +3 points")
em_axis.axvline(20, color="tab:red", linestyle=":", linewidth=0.8, label="the demo's 20 steps")
em_axis.set_xlabel("GRPO step (B 8 x G 4, 16 questions rolled out a step)")
em_axis.set_ylabel("EM difference on the whole geo dev split")
em_axis.legend(fontsize=8)
blocks = [(0, start), *curve]
for cls, colour in (("calculator", "tab:orange"), ("single-hop", "tab:green"), ("two-hop", "tab:purple")):
    class_axis.plot([s for s, _ in blocks], [b["exact_match_by_class"][cls]["exact_match"] for _, b in blocks],
                    marker="o", color=colour, label=cls)
class_axis.plot([s for s, _ in blocks], [b["tool_calls"].get("calculator", 0.0) for _, b in blocks], marker="x",
                linestyle="--", color="tab:orange", label="calculator calls / question")
class_axis.set_xlabel("GRPO step")
class_axis.set_ylabel("EM by class (dev)")
class_axis.legend(fontsize=8)
figure.tight_layout()
figure.savefig(HERE / "budget.png", dpi=120)
print(f"wrote {HERE / 'budget.png'}")
