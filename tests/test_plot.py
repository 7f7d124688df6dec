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
