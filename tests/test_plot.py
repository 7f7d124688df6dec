"""`agentenv plot`: a run's metrics.jsonl becomes a PNG of curves."""

import json

from agentenv.cli import main
from agentenv.trainers.plot import moving_average, plot_run


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


def test_plot_cli_reports_a_missing_log(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def png_width(path):
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width field


def test_dev_curve_adds_the_learned_reward_panel_when_a_run_was_scored_by_one(tmp_path):
    from agentenv.trainers.experiment_plots import dev_curve

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
