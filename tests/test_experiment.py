"""`agentenv experiment` end to end on a tiny random model: train the runs (GRPO from the SFT run's
weights), evaluate every row on two held-out sets (one with its own corpus, indexed by the
experiment), write the table and plots; a second call reuses every stage; a changed run is refused."""

import json

import pytest
import yaml

from agentenv.cli import main

BASE = {
    "mode": "grpo",
    "seed": 0,
    "model": {"name": "tiny-random"},
    "engine": {"kind": "transformers"},
    "env": {"id": "agentenv/SearchQA-v0",
            "kwargs": {"questions": "geo:train", "max_turns": 2, "max_turn_tokens": 6, "max_total_tokens": 768}},
    "grpo": {"questions_per_step": 2, "group_size": 2},
    "sft": {"questions_per_step": 2},
    "lora": {"enabled": False},
    "logging": {"tensorboard": False, "progress": False, "transcripts_per_step": 0},
}

EXPERIMENT = {
    "runs": {
        "sft-agent": ["mode=sft", "max_steps=2"],
        "sft-rag": ["mode=sft", "max_steps=2", "env.id=agentenv/RagQA-v0"],
        "grpo-agent": ["model.init_from=sft-agent", "max_steps=2", "eval.every=1", "eval.limit=2"],
    },
    "rows": [
        {"name": "rag (SFT)", "model": "sft-rag", "mode": "rag"},
        {"name": "agent (SFT)", "model": "sft-agent", "mode": "agent"},
        {"name": "agent (SFT + GRPO)", "model": "grpo-agent", "mode": "agent"},
    ],
    "reference": "agent (SFT + GRPO)",
    "evals": {
        "geo": {"questions": "geo:test", "limit": 3, "search_budgets": [0, 1]},
        "airports": {"questions": "corpora/airports/test.jsonl", "limit": 2, "corpus": "corpora/airports/passages.jsonl.gz"},
    },
    "eval_settings": {"engine": "transformers", "max_turns": 2, "max_turn_tokens": 6, "batch_size": 4},
}


def write_experiment(tmp_path, experiment):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "experiment.yaml"
    data = {**experiment, "base": str(tmp_path / "base.yaml"), "out": str(tmp_path / "out")}
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # runs train in the order listed
    return path


@pytest.mark.slow
def test_experiment_trains_evaluates_reports_and_resumes(tmp_path, capsys):
    config = write_experiment(tmp_path, EXPERIMENT)
    assert main(["experiment", "--config", str(config)]) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    for set_name, n in (("geo", 3), ("airports", 2)):
        rows = results["sets"][set_name]["rows"]
        assert list(rows) == ["rag (SFT)", "agent (SFT)", "agent (SFT + GRPO)"]
        assert all(row["questions"] == n for row in rows.values())
        assert "reference_minus_row" in rows["agent (SFT)"] and "reference_minus_row" not in rows["agent (SFT + GRPO)"]
    assert results["budgets"]["agent (SFT + GRPO)"]["sft_examples"] == 4  # its warm start counts
    assert results["budgets"]["agent (SFT + GRPO)"]["samples"] == 2 * 2 * 2
    assert results["budgets"]["agent (SFT + GRPO)"]["mode"] == "grpo"
    assert (out / "indexes" / "airports" / "index.json").is_file()
    table = (out / "results.md").read_text()
    assert "### geo (geo:test)" in table and "| agent (SFT) | 3 |" in table
    # Agent rows on geo were also evaluated with at most 0 and 1 searches; rag has no search to cut.
    geo = results["sets"]["geo"]["rows"]
    assert list(geo["agent (SFT)"]["search_budgets"]) == ["0", "1"] and geo["rag (SFT)"]["search_budgets"] == {}
    assert geo["agent (SFT)"]["search_budgets"]["0"]["searches"] == 0.0
    assert results["sets"]["airports"]["rows"]["agent (SFT)"]["search_budgets"] == {}
    assert "| EM with at most k searches | k = 0 | k = 1 | unlimited |" in table
    assert "| what the searches did |" in table and "answer recall" in table
    for plot in ("em-by-method.png", "em-vs-searches.png", "em-by-kind.png", "dev-curve.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG", plot
    dev = [json.loads(line) for line in (out / "grpo-agent" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in dev if "dev/exact_match" in r] == [0, 1, 2]
    # The figures' content, drawn again from the results and the logs the command drew them from.
    from agentenv.trainers.evaluation.experiment_plots import (
        draw_dev_curve,
        draw_em_by_kind,
        draw_em_by_method,
        draw_em_vs_searches,
    )

    by_method = draw_em_by_method(results)
    assert [ax.get_title() for ax in by_method.axes] == ["geo (n = 3)", "airports (n = 2)"]
    for ax, block in zip(by_method.axes, results["sets"].values(), strict=True):
        assert [bar.get_height() for bar in ax.patches] == [row["exact_match"] for row in block["rows"].values()]
    (scatter,) = draw_em_vs_searches(results).axes
    assert len(scatter.containers) == 2 * 3  # a point (or a budget line) per set and row
    assert [ax.get_title() for ax in draw_em_by_kind(results).axes] == ["geo", "airports"]
    dev_ax = draw_dev_curve({name: out / name for name in EXPERIMENT["runs"]}).axes[0]
    em_line, f1_line = dev_ax.get_lines()  # only grpo-agent logged a dev curve
    assert (em_line.get_label(), f1_line.get_label()) == ("grpo-agent: dev EM", "grpo-agent: dev F1")
    assert list(em_line.get_xdata()) == [0, 1, 2]
    assert list(em_line.get_ydata()) == [r["dev/exact_match"] for r in dev if "dev/exact_match" in r]

    summaries = sorted(out.glob("eval/*/*/summary.json"))
    assert len(summaries) == 6
    written = {path: path.stat().st_mtime_ns for path in summaries}
    capsys.readouterr()
    assert main(["experiment", "--config", str(config)]) == 0
    assert {path: path.stat().st_mtime_ns for path in summaries} == written  # nothing evaluated again
    assert capsys.readouterr().err.count("is complete") == 3

    changed = {**EXPERIMENT, "runs": {**EXPERIMENT["runs"], "sft-agent": ["mode=sft", "max_steps=2", "sft.lr=0.5"]}}
    assert main(["experiment", "--config", str(write_experiment(tmp_path, changed))]) == 2
    assert "trained with another config" in capsys.readouterr().err


def test_a_broken_experiment_config_names_the_problem(tmp_path, capsys):
    broken = {**EXPERIMENT, "reference": "nobody"}
    assert main(["experiment", "--config", str(write_experiment(tmp_path, broken))]) == 2
    assert "reference 'nobody' is not a row name" in capsys.readouterr().err
    bad_run = {**EXPERIMENT, "runs": {"sft-agent": ["grpo.group_sise=2"]}}
    assert main(["experiment", "--config", str(write_experiment(tmp_path, bad_run))]) == 2
    assert "runs.sft-agent: unknown key 'grpo.group_sise'" in capsys.readouterr().err
    runs = EXPERIMENT["runs"]
    misordered = {**EXPERIMENT, "runs": {"grpo-agent": runs["grpo-agent"], "sft-agent": runs["sft-agent"]}}
    assert main(["experiment", "--config", str(write_experiment(tmp_path, misordered))]) == 2
    assert "starts from sft-agent, which is trained later" in capsys.readouterr().err


def test_budget_counts_each_modes_steps_samples_and_optimizer_steps(tmp_path):
    from agentenv.trainers.evaluation.experiment import format_report, load_experiment, run_budget

    runs = {
        "sft-agent": ["mode=sft", "max_steps=2"],
        "rft-agent": ["model.init_from=sft-agent", "mode=rft", "max_steps=3", "rft.questions_per_round=4",
                      "rft.samples_per_question=8"],
        "dpo-file": ["mode=dpo", "max_steps=2", "dpo.pairs=pairs.jsonl"],
        "later-run": ["model.init_from=sft-agent", "mode=ppo", "max_steps=2"],
    }
    rows = [{"name": name, "model": name, "mode": "agent"} for name in runs]
    experiment = load_experiment(write_experiment(tmp_path, {**EXPERIMENT, "runs": runs, "rows": rows,
                                                             "reference": "rft-agent"}))
    logged = {
        "sft-agent": [{"step": s, "phase": "sft", "time/step_s": 30.0} for s in (1, 2)],
        "rft-agent": [{"step": 0, "time/dev_eval_s": 6.0}]
        + [{"step": s, "phase": "rft", "update/optimizer_steps": 2.0, "time/step_s": 60.0} for s in (1, 2)]
        + [{"step": 3, "phase": "rft", "update/skipped": 1.0, "time/step_s": 60.0}],  # nothing accepted
        "dpo-file": [{"step": s, "phase": "dpo", "update/optimizer_steps": 1.0, "time/step_s": 6.0} for s in (1, 2)],
    }
    for name, records in logged.items():
        experiment.run_dir(name).mkdir(parents=True)
        (experiment.run_dir(name) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # Killed after step 3 and resumed from checkpoint 2: the first step 3 cost time too.
    (experiment.run_dir("rft-agent") / "metrics.redone.jsonl").write_text(
        json.dumps({"step": 3, "phase": "rft", "update/optimizer_steps": 2.0, "time/step_s": 54.0}) + "\n")
    rft = run_budget(experiment, "rft-agent")
    assert rft == {"sft_steps": 2, "sft_examples": 4, "mode": "rft", "mode_steps": 3, "samples": 3 * 4 * 8,
                   "optimizer_steps": 2 + 4, "wall_s": 60.0 + 186.0 + 54.0, "redone_steps": 1}
    assert run_budget(experiment, "dpo-file")["samples"] == 0  # pairs read from a file: nothing sampled
    assert run_budget(experiment, "later-run") is None  # not started: its warm start's cost is not its own
    table = format_report(experiment, {"sets": {}, "budgets": {"rft-agent": rft, "later-run": None}})
    assert "| rft-agent | 2 | 4 | 3 (rft) | 96 | 6 | 5.0 min (1 step redone after a kill) |" in table
    assert "| later-run | not trained yet |" in table


def test_only_trains_and_evaluates_the_named_runs(tmp_path, capsys):
    runs = {"sft-agent": EXPERIMENT["runs"]["sft-agent"], "sft-rag": EXPERIMENT["runs"]["sft-rag"]}
    rows = EXPERIMENT["rows"][:2]
    evals = {"geo": EXPERIMENT["evals"]["geo"]}
    config = write_experiment(tmp_path, {**EXPERIMENT, "runs": runs, "rows": rows, "reference": "rag (SFT)",
                                         "evals": evals})
    assert main(["experiment", "--config", str(config), "--only", "sft-rags"]) == 2
    assert "--only sft-rags: not a run of" in capsys.readouterr().err
    assert main(["experiment", "--config", str(config), "--only", "sft-rag"]) == 0
    out = tmp_path / "out"
    assert not (out / "sft-agent").exists()
    assert sorted(p.parent.name for p in out.glob("eval/*/*/summary.json")) == ["rag--sft"]  # slug("rag (SFT)")
    results = json.loads((out / "results.json").read_text())
    assert list(results["sets"]["geo"]["rows"]) == ["rag (SFT)"]  # the report covers what was evaluated


def test_the_report_adds_gold_passage_recall_where_a_row_measured_it(tmp_path):
    from agentenv.trainers.evaluation.experiment import Experiment, Row, format_report

    search = {"per_episode": 1.5, "answer_recall": 0.6, "reading_accuracy": 0.7, "verdict/no_search": 0.0,
              "verdict/not_found": 0.4, "verdict/found_misread": 0.18, "verdict/found_read_right": 0.42,
              "duplicate_rate": 0.01}
    row = {"questions": 10, "exact_match": 0.42, "exact_match_ci95": [0.2, 0.6], "f1": 0.45, "valid_format": 1.0,
           "tool_calls": {"search": 1.5}, "exact_match_by_class": {}}
    rows = {"agent": {**row, "search": {**search, "passage_recall": 0.75}}, "old agent": {**row, "search": search}}
    experiment = Experiment(tmp_path, "base.yaml", {}, [Row("agent", "m", "agent"), Row("old agent", "m", "agent")], [], "agent")
    table = format_report(experiment, {"sets": {"geo": {"questions": "geo:dev", "rows": rows}}, "budgets": {}})
    assert "| answer recall | gold passage recall | reading accuracy |" in table
    assert "| agent | 1.50 | 0.600 | 0.750 | 0.700 |" in table and "| old agent | 1.50 | 0.600 | — | 0.700 |" in table
    del rows["agent"]["search"]["passage_recall"]
    assert "gold passage recall" not in format_report(experiment, {"sets": {"geo": {"questions": "geo:dev", "rows": rows}}, "budgets": {}})
