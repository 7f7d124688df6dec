"""The demo's two GRPO batches side by side: does the agent keep its calculator?

    python docs/results/demo/plot_calculator.py      # writes docs/results/demo/calculator.png

Left: calculator calls per training episode on calculator questions, per step (the rolled-out
episodes of episodes.jsonl). Right: the 50-question dev slice every 5 steps, EM and calculator calls
per question (metrics.jsonl).
"""

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
RUNS = {"B 4 x G 8 (before)": HERE / "grpo-b4-g8", "B 8 x G 4, oversample 2 (now)": HERE / "grpo-b8-g4-oversample2"}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


figure, (train_axis, dev_axis) = plt.subplots(1, 2, figsize=(12, 4))
for (label, run), colour in zip(RUNS.items(), ("tab:red", "tab:blue"), strict=True):
    calls = defaultdict(list)
    for episode in lines(run / "episodes.jsonl"):
        if episode["class"] == "calculator":
            calls[episode["step"]].append(episode["tool_calls"].get("calculator", 0))
    steps = sorted(calls)
    train_axis.plot(steps, [sum(calls[s]) / len(calls[s]) for s in steps], "o-", color=colour, label=label)
    dev = [m for m in lines(run / "metrics.jsonl") if "dev/exact_match" in m]
    dev_steps = [m["step"] for m in dev]
    dev_axis.plot(dev_steps, [m["dev/exact_match"] for m in dev], "o-", color=colour, label=f"{label}: EM")
    dev_axis.plot(dev_steps, [m["dev/tools/calculator_calls"] for m in dev], "s--", color=colour,
                  label=f"{label}: calculator calls / question")
train_axis.set(title="training episodes of calculator questions", xlabel="GRPO step",
               ylabel="calculator calls per episode")
dev_axis.set(title="dev slice (50 questions), greedy", xlabel="GRPO step")
for axis in (train_axis, dev_axis):
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
figure.tight_layout()
figure.savefig(HERE / "calculator.png", dpi=110)
print(HERE / "calculator.png")
