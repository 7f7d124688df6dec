"""What every benchmark shares: the machine line, peak memory, worker subprocesses, RESULTS.md.

Each benchmark measures every configuration in a subprocess of its own (``run_worker``), so peak
RSS is that configuration's alone and one engine's threads or caches never slow the next one.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
OUT = BENCH / "out"  # scratch: cached policies, venvs, profiles (git-ignored)


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss is in kilobytes on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def process_memory_mb(pid: int | str = "self") -> dict[str, float]:
    """A process's VmRSS (resident now), VmHWM (its peak) and RssAnon (resident memory that is not
    file pages: index files it maps are page cache, which the kernel can drop), in MB; {} once it
    is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM", "RssAnon") if key in fields}


def wait_watching_memory(process: subprocess.Popen) -> dict[str, float]:
    """Wait for ``process``, reading its memory every 50 ms: its peak VmHWM and RssAnon, in MB.
    (Its ru_maxrss would not do: Linux counts in a child's the peak of the process that started it.)"""
    peak = {"VmHWM": 0.0, "RssAnon": 0.0}
    while process.poll() is None:
        memory = process_memory_mb(process.pid)
        peak = {key: max(value, memory.get(key, 0.0)) for key, value in peak.items()}
        time.sleep(0.05)
    return peak


def cpu_name() -> str:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )


def machine() -> str:
    """Cores, CPU (or GPU) and the load average now: the line every results table starts with."""
    device = cpu_name()
    try:
        import torch

        if torch.cuda.is_available():
            device = f"{torch.cuda.get_device_name(0)} (GPU) + {device}"
    except ImportError:
        pass
    return f"{len(os.sched_getaffinity(0))} cores (nproc), {device}, load average {os.getloadavg()[0]:.1f} at start"


def command_line(script: str) -> str:
    return f"python bench/{script} " + " ".join(sys.argv[1:])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run_worker(script: str, arguments: Sequence[str], python: str = sys.executable, profile: str | None = None) -> dict:
    """Run ``python script ARGUMENTS --out FILE`` and return the JSON it wrote to FILE.

    ``profile``: record the worker with py-spy into bench/out/profile-<profile>.txt (collapsed
    stacks, one per line with its sample count; ``python bench/profile_top.py FILE`` sums them).
    """
    with tempfile.NamedTemporaryFile(suffix=".json", prefix="bench-") as out:
        command = [python, str(script), *arguments, "--out", out.name]
        if profile:
            OUT.mkdir(parents=True, exist_ok=True)
            py_spy = Path(sys.executable).with_name("py-spy")
            command = [str(py_spy), "record", "--format", "raw", "--rate", "50", "--subprocesses",
                       "-o", str(OUT / f"profile-{profile}.txt"), "--", *command]
        subprocess.run(command, check=True)
        return json.loads(Path(out.name).read_text())


def append_section(title: str, command: str, notes: Sequence[str], columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> None:
    """Append ``## title, date`` with the command, notes and a table to bench/RESULTS.md.

    ``columns`` are ``(header, row key)``; a missing key prints as an en dash, text is
    left-aligned and numbers right-aligned.
    """
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    numeric = [all(isinstance(row.get(key), int | float) for row in rows if row.get(key) is not None) for _, key in columns]
    lines = [
        f"\n## {title}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"`{command}`  ",
        *[f"{note}  " for note in notes[:-1]],
        f"{notes[-1]}\n" if notes else "",
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "|".join("---:" if is_number else "---" for is_number in numeric) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(key)) for _, key in columns) + " |")
    with RESULTS.open("a") as file:
        file.write("\n".join(lines) + "\n")
