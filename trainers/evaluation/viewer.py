"""`agentenv view RUN_DIR`: the episodes of a run as one static HTML page.

    agentenv view runs/cpu-smollm2               # a training run: transcripts/step_NNNNNN.jsonl
    agentenv view runs/eval-trained              # an eval output: transcripts-<mode>.jsonl
    agentenv view runs/experiment-geo            # a folder holding several of either
    agentenv view runs/cpu-smollm2 --steps 1,40-50 --out /tmp/rollouts.html

Each episode shows its question and gold answers, its tool calls with what came
back, its answer, its reward and every reward component, and its whole token sequence with each
segment coloured by its source, as the loss mask sees it: policy tokens get loss, prompt and tool
output do not. The page is self-contained (inline CSS, a few lines of JS to open or close every
episode at once); everything a model or a dataset wrote is HTML-escaped.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentenv.trainers.loop.metrics import read_jsonl

DEFAULT_LAST_STEPS = 50  # a run with more steps shows its last 50 unless --steps picks others
DEFAULT_EPISODES = 20  # per eval mode: an eval of 400 questions would be a page of megabytes
SOURCES = ("prompt", "policy", "tool")
SOURCE_COLOURS = {"prompt": "#e4e9f2", "policy": "#c8ecc8", "tool": "#fbe2b8"}
LEGEND = {
    "prompt": "prompt (and chat template): no loss",
    "policy": "policy: these tokens get loss",
    "tool": "tool output: no loss",
}


class ViewError(Exception):
    """Nothing to show, or an option that cannot be read; printed without a traceback."""


@dataclass
class Section:
    title: str  # "step 3", "mode agent"
    records: list[dict[str, Any]]
    note: str = ""  # what was left out


@dataclass
class Source:
    kind: str  # "training run" | "evaluation"
    path: Path
    sections: list[Section]
    note: str  # which steps or episodes the page shows


# --- finding the transcripts ------------------------------------------------------------------


def find_sources(root: Path, steps: str | None = None, episodes: int = DEFAULT_EPISODES) -> list[Source]:
    """Every training run (``transcripts/step_*.jsonl``) and eval output (``transcripts-*.jsonl``)
    at or under ``root``, in path order."""
    if not root.is_dir():
        raise ViewError(f"{root}: no such folder")
    runs = {path.parent.parent for path in root.rglob("step_*.jsonl") if path.parent.name == "transcripts"}
    evals = {path.parent for path in root.rglob("transcripts-*.jsonl")}
    sources = [training_source(run, steps) for run in runs] + [eval_source(folder, episodes) for folder in evals]
    if not sources:
        raise ViewError(
            f"{root}: no transcripts here: a training run writes transcripts/step_NNNNNN.jsonl "
            "(logging.transcripts_per_step > 0), `agentenv eval` writes transcripts-<mode>.jsonl"
        )
    return sorted(sources, key=lambda source: (source.path, source.kind))


def training_source(run: Path, steps: str | None) -> Source:
    files = {}
    for path in (run / "transcripts").glob("step_*.jsonl"):
        match = re.fullmatch(r"step_(\d+)\.jsonl", path.name)
        if match:
            files[int(match.group(1))] = path
    chosen, note = pick_steps(sorted(files), steps)
    return Source("training run", run, [Section(f"step {step}", read_jsonl(files[step])) for step in chosen], note)


def pick_steps(available: list[int], spec: str | None) -> tuple[list[int], str]:
    """The steps ``--steps`` names (``1,5,10-20`` or ``all``); by default all of them, or the last
    ``DEFAULT_LAST_STEPS`` of a longer run. Also the sentence the page says about the choice."""
    total = f"{len(available)} steps with transcripts"
    if spec is None and len(available) > DEFAULT_LAST_STEPS:
        return available[-DEFAULT_LAST_STEPS:], f"the last {DEFAULT_LAST_STEPS} of {total} (--steps picks others)"
    if spec is None or spec == "all":
        return available, f"all {total}"
    wanted = parse_steps(spec)
    chosen = [step for step in available if step in wanted]
    return chosen, f"--steps {spec}: {len(chosen)} of {total}"


def parse_steps(spec: str) -> set[int]:
    wanted: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ViewError(f"--steps {spec!r}: expected step numbers and ranges such as 1,5,10-20, or all")
        first = int(match.group(1))
        wanted.update(range(first, int(match.group(2) or first) + 1))
    return wanted


def eval_source(folder: Path, episodes: int) -> Source:
    sections = []
    for path in sorted(folder.glob("transcripts-*.jsonl")):
        records = read_jsonl(path)
        shown = records[:episodes]
        left_out = f"the first {len(shown)} of {len(records)} episodes (--episodes shows more)"
        sections.append(Section(f"mode {path.stem.removeprefix('transcripts-')}", shown, "" if shown == records else left_out))
    summary = folder / "summary.json"
    note = ""
    if summary.is_file():
        about = json.loads(summary.read_text())
        note = f"model {about.get('model')}, questions {about.get('questions')}"
    return Source("evaluation", folder, sections, note)


# --- what an episode holds ----------------------------------------------------------------------


def segments_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """The record's segments; an eval record written before records kept them has only its decoded
    text after the prompt, shown as one segment of unknown source."""
    if record.get("segments") is not None:
        return record["segments"]
    return [{"source": "unknown", "text": record.get("transcript") or record.get("text") or ""}]


def tool_calls(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(tool, argument, what came back) for every call in the policy turns, in order. The tool
    segment after a turn holds the output of all its calls (the environment answers them at once)."""
    names = sorted(record.get("tool_calls") or {})  # the tools the episode called, by name
    tag_call = re.compile(rf"<({'|'.join(map(re.escape, names))})>(.*?)</\1>", re.DOTALL) if names else None
    segments = segments_of(record)
    calls = []
    for index, segment in enumerate(segments):
        if segment["source"] != "policy":
            continue
        found = [(m.group(1), m.group(2).strip()) for m in tag_call.finditer(segment["text"])] if tag_call else []
        found += [_json_call(m.group(1)) for m in re.finditer(r"<tool_call>(.*?)</tool_call>", segment["text"], re.DOTALL)]
        following = segments[index + 1] if index + 1 < len(segments) else None
        result = following["text"] if following and following["source"] == "tool" else ""
        calls += [(name, argument, result) for name, argument in found]
    return calls


def _json_call(text: str) -> tuple[str, str]:
    """A chat-template call ``{"name": ..., "arguments": {...}}``: its tool and its arguments."""
    try:
        call = json.loads(text)
        arguments = call.get("arguments") or {}
        shown = next(iter(arguments.values())) if len(arguments) == 1 else json.dumps(arguments)
        return str(call.get("name")), str(shown)
    except (json.JSONDecodeError, AttributeError):
        return "?", text.strip()  # the policy wrote a call the parser refused


def answer_of(record: dict[str, Any]) -> str | None:
    """The parsed answer; for a training transcript written before transcripts kept it, the last
    ``<answer>`` of the policy's text."""
    if "answer" in record:
        return record["answer"]
    policy = "".join(s["text"] for s in segments_of(record) if s["source"] == "policy")
    found = re.findall(r"<answer>(.*?)</answer>", policy, re.DOTALL)
    return found[-1].strip() if found else None


def reward_components(record: dict[str, Any]) -> dict[str, float]:
    if record.get("reward_components") is not None:
        return record["reward_components"]
    return {key: record[key] for key in ("exact_match", "f1") if key in record}  # older eval records


# --- the page -------------------------------------------------------------------------------------


def render_page(root: Path, sources: list[Source]) -> str:
    swatches = "".join(
        f'<span class="swatch {source}"></span>{escape(LEGEND[source])}&emsp;' for source in SOURCES
    )
    contents = "".join(
        f'<li><a href="#source-{i}">{escape(_relative(s.path, root))}</a> ({s.kind})</li>'
        for i, s in enumerate(sources)
    ) if len(sources) > 1 else ""
    body = "".join(render_source(i, source, root) for i, source in enumerate(sources))
    episodes = sum(len(section.records) for source in sources for section in source.sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>rollouts: {escape(root.name)}</title>
<style>{_css()}</style></head>
<body>
<h1>Rollouts of {escape(str(root))}</h1>
<p class="legend">{swatches}</p>
<p class="hint">{episodes} episodes. Each coloured block is one segment of the token sequence the
trainer scores; the loss mask is 1 on the green (policy) blocks only.
<button onclick="toggleAll(true)">open all</button> <button onclick="toggleAll(false)">close all</button></p>
{f'<ul class="contents">{contents}</ul>' if contents else ""}
{body}
<script>
function toggleAll(open) {{ document.querySelectorAll("details.episode").forEach(d => d.open = open); }}
</script>
</body></html>
"""


def render_source(index: int, source: Source, root: Path) -> str:
    sections = "".join(render_section(section) for section in source.sections)
    note = f'<p class="note">{escape(source.note)}</p>' if source.note else ""
    return f'<section id="source-{index}"><h2>{escape(_relative(source.path, root))} <small>{source.kind}</small></h2>{note}{sections}</section>\n'


def render_section(section: Section) -> str:
    note = f' <small>{escape(section.note)}</small>' if section.note else ""
    episodes = "".join(render_episode(record, is_open=i == 0) for i, record in enumerate(section.records))
    return f"<h3>{escape(section.title)}{note}</h3>\n{episodes}"


def render_episode(record: dict[str, Any], is_open: bool = False) -> str:
    answer = answer_of(record)
    reward = record.get("reward")
    components = reward_components(record)
    em = components.get("exact_match")
    summary = (
        f'<span class="qid">{escape(record.get("id"))}</span> {escape(record.get("question"))} '
        f'<span class="badge">reward {_number(reward)}</span>'
        + (f' <span class="badge {"right" if em else "wrong"}">EM {_number(em)}</span>' if em is not None else "")
        + f' <span class="answer-brief">→ {escape(answer) if answer is not None else "<i>no answer</i>"}</span>'
        + verdict_badge(record)
    )
    facts = [
        ("gold answers", ", ".join(str(a) for a in record.get("answers") or [])),
        ("answer", answer if answer is not None else "(none)"),
        ("finish reason", record.get("finish_reason")),
        ("turns", record.get("turns", record.get("num_turns"))),  # num_turns: training transcripts before 0.2
    ]
    search = record.get("search")
    if search:
        facts.append(("search", f"{search['verdict']}: {search['searches']} searches, {search['duplicate_queries']} "
                                f"repeated, {search['near_duplicate_queries']} near-repeated, "
                                f"{search['question_copies']} copying the question"))
    if record.get("group") is not None:
        facts.append(("group", record["group"]))
    if record.get("sample") is not None:
        facts.append(("sample", record["sample"]))
    fact_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    reward_rows = f'<tr class="total"><th>reward</th><td>{_number(reward)}</td></tr>' + "".join(
        f"<tr><th>{escape(name)}</th><td>{_number(value)}</td></tr>" for name, value in components.items()
    )
    calls = tool_calls(record)
    call_rows = "".join(
        f'<tr><td>{escape(name)}</td><td class="query">{escape(argument)}</td>'
        f'<td><details><summary>{escape(_first_line(result))}</summary><div class="results">{escape(result)}</div></details></td></tr>'
        for name, argument, result in calls
    )
    call_table = (
        f'<table class="calls"><tr><th>tool</th><th>called with</th><th>what came back</th></tr>{call_rows}</table>'
        if calls else '<p class="note">no tool calls</p>'
    )
    transcript = "".join(render_segment(segment) for segment in segments_of(record))
    return (
        f'<details class="episode"{" open" if is_open else ""}><summary>{summary}</summary>'
        f'<div class="cards"><table class="facts">{fact_rows}</table><table class="rewards">{reward_rows}</table></div>'
        f"{call_table}<div class=\"transcript\">{transcript}</div></details>\n"
    )


VERDICT_CLASSES = {"found, read right": "right", "found, misread": "misread", "not found": "wrong", "no search": ""}


def verdict_badge(record: dict[str, Any]) -> str:
    """Where the episode's answer came from, for records whose environment searches: found and read
    right, found and misread, not found, no search (agentenv/search_behaviour.py)."""
    verdict = (record.get("search") or {}).get("verdict")
    if verdict is None:
        return ""
    return f' <span class="badge {VERDICT_CLASSES.get(verdict, "")}" title="what its searches did">{escape(verdict)}</span>'


def render_segment(segment: dict[str, str]) -> str:
    """One element per segment, its class the segment's source; chat-template special tokens dimmed."""
    source = segment["source"] if segment["source"] in SOURCES else "unknown"
    text = re.sub(r"(&lt;\|[^|<>]*?\|&gt;)", r'<span class="special">\1</span>', escape(segment["text"]))
    return f'<span class="segment {source}" title="{source}">{text}</span>'


def _css() -> str:
    colours = "\n".join(f".segment.{s}, .swatch.{s} {{ background: {c}; }}" for s, c in SOURCE_COLOURS.items())
    return f"""
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }}
h1 {{ font-size: 1.35em; margin: 0 0 .3em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }}
h3 {{ font-size: 1em; margin: 1.1em 0 .4em; }} small, .note, .hint {{ color: #666; font-weight: normal; }}
{colours}
.segment.unknown {{ background: #eee; outline: 1px dashed #999; }}
.swatch {{ display: inline-block; width: 1.1em; height: 1.1em; vertical-align: -0.2em; margin-right: .35em; border: 1px solid #999; }}
.legend {{ font-size: 1.05em; }}
.episode {{ border: 1px solid #ccc; border-radius: 6px; margin: .5em 0; padding: .3em .7em; }}
.episode > summary {{ cursor: pointer; }}
.qid {{ font-family: monospace; color: #555; }}
.badge {{ background: #eee; border-radius: 4px; padding: 0 .4em; font-size: .9em; }}
.badge.right {{ background: #bfe5bf; }} .badge.wrong {{ background: #f3c9c9; }} .badge.misread {{ background: #f6dea6; }}
.answer-brief {{ font-weight: 600; }}
.cards {{ display: flex; gap: 2em; margin: .5em 0; }}
table {{ border-collapse: collapse; font-size: .92em; }}
th, td {{ text-align: left; padding: .1em .6em .1em 0; vertical-align: top; }}
th {{ color: #555; font-weight: 600; }} .rewards tr.total td {{ font-weight: 700; }}
.calls {{ margin: .3em 0 .6em; }} .calls td.query {{ font-family: monospace; }}
.results {{ white-space: pre-wrap; font-family: monospace; font-size: .9em; background: {SOURCE_COLOURS["tool"]}; padding: .3em; }}
.transcript {{ white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12.5px; line-height: 1.5;
  border-top: 1px solid #ddd; padding-top: .5em; }}
.segment {{ border-radius: 3px; padding: 1px 0; box-decoration-break: clone; -webkit-box-decoration-break: clone; }}
.segment.policy {{ outline: 1px solid #8fcc8f; }}
.special {{ color: #999; }}
"""


def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(value)
    return f"{value + 0.0:.3f}".replace("-0.000", "0.000")


def _first_line(text: str, width: int = 90) -> str:
    """The first line that says something: not blank, not only a wrapping tag such as <result>."""
    lines = [line.strip() for line in text.splitlines()]
    line = next((line for line in lines if line and not re.fullmatch(r"</?\w+>", line)), "(nothing)")
    return line if len(line) <= width else line[: width - 1] + "…"


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else path.name or str(path)


def write_page(root: str | Path, out: str | Path | None = None, steps: str | None = None,
               episodes: int = DEFAULT_EPISODES) -> Path:
    """Write the page for ``root`` to ``out`` (default ``root/rollouts.html``); return its path."""
    root = Path(root)
    if episodes < 1:
        raise ViewError(f"--episodes must be at least 1, got {episodes}")
    page = render_page(root, find_sources(root, steps, episodes))
    out = Path(out) if out else root / "rollouts.html"
    out.write_text(page, encoding="utf-8")
    return out


# --- the command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run, an eval output folder, or an experiment folder holding several")
    parser.add_argument("--out", default=None, help="HTML path (default RUN_DIR/rollouts.html)")
    parser.add_argument("--steps", default=None,
                        help=f"training steps to show, e.g. 1,5,10-20, or all (default: all, or the last {DEFAULT_LAST_STEPS})")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES,
                        help=f"episodes per eval mode, the first N (default {DEFAULT_EPISODES})")


def run(args: argparse.Namespace) -> int:
    try:
        path = write_page(args.run_dir, args.out, args.steps, args.episodes)
    except ViewError as error:
        print(f"agentenv view: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0
