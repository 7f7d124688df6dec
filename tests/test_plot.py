"""`agentenv plot`: a run's metrics.jsonl becomes a PNG of curves."""

import json

import pytest

from agentenv.cli import main
from agentenv.trainers.evaluation.plot import draw_run, moving_average, plot_run


def write_metrics(run_dir, steps=12):
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("w") as file:
        for step in range(1, steps + 1):
            file.write(json.dumps({"step": step, "reward/mean": step / steps, "exact_match": step / 20, "kl": 0.01, "episode/search_calls": 1.5}) + "\n")
        file.write('{"step": 13, "reward/me')  # a line cut by kill -9


def test_plot_writes_a_png_with_the_supported_panels(tmp_path):
    write_metrics(tmp_path / "run")
    path = plot_run(tmp_path / "run")
    assert path == tmp_path / "run" / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = draw_run(tmp_path / "run", window=3)
    # One panel per logged metric's question, in PANELS order; the cut last line adds no point.
    assert [ax.get_title() for ax in fig.axes] == [
        "reward and its components", "exact match / F1", "tool calls per episode", "KL to reference"]
    steps = list(range(1, 13))
    logged = {"reward/mean": [s / 12 for s in steps], "exact_match": [s / 20 for s in steps],
              "episode/search_calls": [1.5] * 12, "kl": [0.01] * 12}
    for ax, (key, values) in zip(fig.axes, logged.items(), strict=True):
        raw, smooth = ax.get_lines()  # thin raw values, then the labelled moving average
        assert smooth.get_label() == key
        assert list(raw.get_xdata()) == steps and list(smooth.get_xdata()) == steps
        assert list(raw.get_ydata()) == pytest.approx(values)
        assert list(smooth.get_ydata()) == pytest.approx(moving_average(values, 3))


def test_plot_cli_reports_a_missing_log(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def png_width(path):
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width field


def test_dev_curve_adds_the_learned_reward_panel_when_a_run_was_scored_by_one(tmp_path):
    from agentenv.trainers.evaluation.experiment_plots import dev_curve, draw_dev_curve

    def log(name, learned):
        (tmp_path / name).mkdir()
        lines = []
        for step in range(1, 11):
            record = {"step": step, "reward/mean": step / 10, "exact_match": 0.5}
            if learned:
                record["reward/reward_model_score"] = step / 5
            if step % 5 == 0:
                record["dev/exact_match"], record["dev/f1"] = 0.5, 0.55
                if learned:
                    record["dev/reward_model_score"] = step / 4
            lines.append(json.dumps(record) + "\n")
        (tmp_path / name / "metrics.jsonl").write_text("".join(lines))
        return tmp_path / name

    verifier, learned = log("verifier", learned=False), log("learned", learned=True)
    two = dev_curve({"verifier": verifier}, tmp_path / "two.png")
    three = dev_curve({"verifier": verifier, "learned": learned}, tmp_path / "three.png")
    assert (png_width(two), png_width(three)) == (11 * 120, int(16.5 * 120))  # 2 panels, then 3
    assert dev_curve({"none": tmp_path / "missing"}, tmp_path / "none.png") is None

    fig = draw_dev_curve({"verifier": verifier, "learned": learned})
    dev_ax, reward_ax, score_ax = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "held-out dev questions, greedy", "training rollouts (sampled): reward, exact match",
        "learned reward model's raw score"]
    assert [line.get_label() for line in dev_ax.get_lines()] == [
        "verifier: dev EM", "verifier: dev F1", "learned: dev EM", "learned: dev F1"]
    for line, values in zip(dev_ax.get_lines(), [[0.5, 0.5], [0.55, 0.55]] * 2, strict=True):
        assert list(line.get_xdata()) == [5, 10] and list(line.get_ydata()) == values
    # Per run: the raw reward (unlabelled), its moving mean, the rollouts' EM.
    assert [line.get_label() for line in reward_ax.get_lines()][1::3] == [
        "verifier: reward (moving mean of 10)", "learned: reward (moving mean of 10)"]
    assert list(reward_ax.get_lines()[0].get_ydata()) == pytest.approx([s / 10 for s in range(1, 11)])
    rollouts, dev = score_ax.get_lines()  # only the learned run was scored by the reward model
    assert (rollouts.get_label(), dev.get_label()) == ("learned: rollouts", "learned: dev")
    assert list(rollouts.get_ydata()) == pytest.approx(moving_average([s / 5 for s in range(1, 11)], 10))
    assert list(dev.get_xdata()) == [5, 10] and list(dev.get_ydata()) == [1.25, 2.5]


def result_row(em, questions, searches, by_kind):
    return {"exact_match": em, "exact_match_ci95": [em - 0.1, em + 0.1], "questions": questions,
            "tool_calls": {"search": searches}, "exact_match_by_kind": {k: {"exact_match": v} for k, v in by_kind.items()}}


RESULTS = {  # results.json's shape: per held-out set, a row per method
    "reference": "agent",
    "sets": {
        "geo": {"rows": {"rag": result_row(0.4, 10, 1.0, {"single-hop": 0.5, "two-hop": 0.2}),
                         "agent": result_row(0.6, 10, 2.5, {"single-hop": 0.7, "two-hop": 0.4})}},
        "airports": {"rows": {"rag": result_row(0.3, 4, 1.0, {"calculator": 0.25}),
                              "agent": result_row(0.2, 4, 3.0, {"calculator": 0.0})}},
    },
}


def test_experiment_figures_draw_every_set_and_row_of_the_results(tmp_path):
    from agentenv.trainers.evaluation.experiment_plots import (
        draw_em_by_kind,
        draw_em_by_method,
        draw_em_vs_searches,
        em_by_method,
    )

    sets = RESULTS["sets"]
    fig = draw_em_by_method(RESULTS)
    assert [ax.get_title() for ax in fig.axes] == ["geo (n = 10)", "airports (n = 4)"]
    for ax, block in zip(fig.axes, sets.values(), strict=True):
        assert [label.get_text() for label in ax.get_xticklabels()] == ["rag", "agent"]
        assert [bar.get_height() for bar in ax.patches] == [r["exact_match"] for r in block["rows"].values()]

    (ax,) = draw_em_vs_searches(RESULTS).axes
    # One point per set and row, set by set, with its interval; the legend names each row once.
    points = [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers]
    assert points == [(r["tool_calls"]["search"], r["exact_match"]) for b in sets.values() for r in b["rows"].values()]
    assert ax.get_legend_handles_labels()[1] == ["rag", "agent"]

    fig = draw_em_by_kind(RESULTS)
    assert [ax.get_title() for ax in fig.axes] == ["geo", "airports"]
    geo, airports = fig.axes
    assert [label.get_text() for label in geo.get_yticklabels()] == ["single-hop", "two-hop"]
    assert [bar.get_width() for bar in geo.patches] == [0.5, 0.2, 0.7, 0.4]  # rag's kinds, then agent's
    assert [bar.get_width() for bar in airports.patches] == [0.25, 0.0]
    assert geo.get_legend_handles_labels()[1] == ["rag", "agent"]

    path = em_by_method(RESULTS, tmp_path / "em-by-method.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_em_vs_searches_puts_rag_at_one_search_and_draws_an_agent_s_search_budgets_as_a_line():
    from agentenv.trainers.evaluation.experiment_plots import draw_em_vs_searches

    agent = result_row(0.6, 10, 1.4, {})
    agent["search_budgets"] = {"0": {"exact_match": 0.2, "exact_match_ci95": [0.1, 0.3], "searches": 0.0},
                               "1": {"exact_match": 0.5, "exact_match_ci95": [0.4, 0.6], "searches": 0.9}}
    rag = dict(result_row(0.4, 10, 0.0, {}), mode="rag")  # rag's env has no search tool: it retrieves once
    results = {"reference": "agent", "sets": {"geo": {"rows": {"rag": rag, "agent": agent}}}}
    (ax,) = draw_em_vs_searches(results).axes
    rag_line, agent_line = (c.lines[0] for c in ax.containers)
    assert list(rag_line.get_xdata()) == [1.0]
    assert list(zip(agent_line.get_xdata(), agent_line.get_ydata(), strict=True)) == [(0.0, 0.2), (0.9, 0.5), (1.4, 0.6)]
