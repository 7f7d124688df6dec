"""`agentenv view`: a real tiny training run and a real tiny eval output as one HTML page, read back
with the standard library's HTML parser."""

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import gymnasium as gym
import pytest

import agentenv  # noqa: F401  (registers the environments)
from agentenv.cli import main
from agentenv.trainers.algorithms.sft import oracle_episode
from agentenv.trainers.evaluation import viewer
from agentenv.trainers.loop.config import load_config
from agentenv.trainers.loop.metrics import write_transcripts
from agentenv.trainers.loop.train import train
from agentenv.trainers.rollout.rollout import Episode

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "<script>alert('pwned')</script>"
VOID = {"meta", "br", "hr", "img", "input", "link"}


class Element:
    def __init__(self, tag, attrs):
        self.tag, self.classes, self.text = tag, set((dict(attrs).get("class") or "").split()), ""


class Page(HTMLParser):
    """Every element with its classes and all the text inside it (entities decoded)."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.elements, self._open = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs)
        self.elements.append(element)
        if tag not in VOID:
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open and self._open.pop().tag != tag:
            pass

    def handle_data(self, data):
        for element in self._open:
            element.text += data

    def having(self, *classes):
        return [e for e in self.elements if set(classes) <= e.classes]


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("train") / "run"
    train(load_config(REPO / "configs" / "tiny-test.yaml", ["logging.transcripts_per_step=2"]), run)
    return run


@pytest.fixture(scope="module")
def eval_output(tmp_path_factory, tokenizer):
    from agentenv.models import tiny_random_model

    folder = tmp_path_factory.mktemp("eval")
    tiny_random_model(tokenizer).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    questions = folder / "questions.jsonl"
    questions.write_text(
        json.dumps({"id": "hostile", "question": f"Which country is {HOSTILE} in?", "answers": [HOSTILE]}) + "\n"
        + json.dumps({"id": "plain", "question": "Which country is Le Petit-Quevilly in?", "answers": ["France"]}) + "\n"
    )
    out = folder / "out"
    assert main(["eval", "--model", str(folder / "model"), "--questions", str(questions), "--mode", "agent",
                 "closed-book", "--max-turn-tokens", "8", "--max-turns", "2", "--engine", "transformers",
                 "--out", str(out)]) == 0
    return out


def view(folder, *extra):
    assert main(["view", str(folder), *extra]) == 0
    return Page((folder / "rollouts.html").read_text())


def records_of(paths):
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def test_every_training_segment_is_one_element_of_its_source_class(training_run):
    page = view(training_run)
    records = records_of(sorted((training_run / "transcripts").glob("step_*.jsonl")))
    segments = [s for record in records for s in record["segments"]]
    shown = page.having("segment")
    assert [e.classes - {"segment"} for e in shown] == [{s["source"]} for s in segments]
    assert [e.text for e in shown] == [s["text"] for s in segments]
    assert [e.text for e in page.elements if e.tag == "h3"] == ["step 1", "step 2", "step 3"]


def test_eval_records_carry_segments_and_the_page_colours_them(eval_output):
    records = records_of(sorted(eval_output.glob("transcripts-*.jsonl")))
    assert all(r["segments"][0]["source"] == "prompt" and r["reward_components"] for r in records)
    page = view(eval_output)
    shown = page.having("segment")
    assert [e.classes - {"segment"} for e in shown] == [{s["source"]} for r in records for s in r["segments"]]
    assert {"policy", "prompt"} <= {s["source"] for r in records for s in r["segments"]}


def test_the_css_gives_each_source_its_own_colour(training_run):
    page = view(training_run)
    [style] = [e.text for e in page.elements if e.tag == "style"]
    colours = {source: re.search(rf"\.segment\.{source}\b[^{{]*\{{\s*background:\s*([^;]+);", style).group(1)
               for source in ("prompt", "policy", "tool")}
    assert len(set(colours.values())) == 3
    legend = " ".join(e.text for e in page.having("legend"))
    assert "policy: these tokens get loss" in legend and "prompt" in legend and "tool output: no loss" in legend


def test_the_reward_components_and_the_answer_are_shown(eval_output):
    page = view(eval_output)
    episodes = page.having("episode")
    records = records_of(sorted(eval_output.glob("transcripts-*.jsonl")))
    assert len(episodes) == len(records)
    rewards = [e for e in page.elements if e.tag == "table" and "rewards" in e.classes]
    facts = [e for e in page.elements if e.tag == "table" and "facts" in e.classes]
    for record, reward_table, fact_table in zip(records, rewards, facts, strict=True):
        assert f"reward{record['reward']:.3f}" in reward_table.text
        for name, value in record["reward_components"].items():
            assert f"{name}{value + 0.0:.3f}".replace("-0.000", "0.000") in reward_table.text
        assert f"answer{record['answer'] if record['answer'] is not None else '(none)'}" in fact_table.text


def test_text_from_the_model_or_the_data_is_escaped(eval_output):
    page = view(eval_output)
    html = (eval_output / "rollouts.html").read_text()
    assert HOSTILE not in html and "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert [e.tag for e in page.elements].count("script") == 1  # the page's own toggle, nothing else
    assert any(HOSTILE in e.text for e in page.having("segment", "prompt"))  # shown as text


def test_searches_are_listed_with_their_results(tmp_path, tokenizer):
    env = gym.make("agentenv/SearchQA-v0", tokenizer=tokenizer).unwrapped
    question = {"id": "q", "question": "Which country is Le Petit-Quevilly in?", "answers": ["France"], "hops": 1}
    oracle = oracle_episode(env, question)  # searches the question, then answers
    turns = sum(segment.source == "policy" for segment in oracle.trajectory.segments)
    episode = Episode(
        oracle.trajectory, oracle.reward, group=0, question=question,
        reward_components=oracle.reward_components, finish_reason=oracle.finish_reason,
        num_turns=turns, tool_calls={"search": 1}, answer="France",
    )
    write_transcripts(tmp_path, 1, [episode], tokenizer, 1)
    page = view(tmp_path)
    [calls] = [e for e in page.elements if e.tag == "table" and "calls" in e.classes]
    assert "search" in calls.text and "Le Petit-Quevilly" in calls.text
    [results] = page.having("results")
    tool_segments = [s["text"] for s in records_of([tmp_path / "transcripts" / "step_000001.jsonl"])[0]["segments"]
                     if s["source"] == "tool"]
    assert results.text == tool_segments[0] and "Doc 1" in results.text


def test_steps_picks_steps_and_the_page_says_which(training_run, tmp_path, monkeypatch):
    assert main(["view", str(training_run), "--steps", "1,3", "--out", str(tmp_path / "picked.html")]) == 0
    page = Page((tmp_path / "picked.html").read_text())
    assert [e.text for e in page.elements if e.tag == "h3"] == ["step 1", "step 3"]
    assert any("--steps 1,3: 2 of 3 steps with transcripts" in e.text for e in page.having("note"))
    monkeypatch.setattr(viewer, "DEFAULT_LAST_STEPS", 2)
    page = view(training_run)
    assert [e.text for e in page.elements if e.tag == "h3"] == ["step 2", "step 3"]
    assert any("the last 2 of 3 steps" in e.text for e in page.having("note"))


def test_an_experiment_folder_shows_its_runs_and_its_evals(training_run, eval_output, tmp_path):
    shutil.copytree(training_run / "transcripts", tmp_path / "grpo-agent" / "transcripts")
    for path in eval_output.glob("transcripts-*.jsonl"):
        (tmp_path / "eval" / "geo-test" / "grpo-agent").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "eval" / "geo-test" / "grpo-agent" / path.name)
    page = view(tmp_path)
    titles = [e.text for e in page.elements if e.tag == "h2"]
    assert titles == ["eval/geo-test/grpo-agent evaluation", "grpo-agent training run"]
    assert [e.text for e in page.elements if e.tag == "h3"] == [
        "mode agent", "mode closed-book", "step 1", "step 2", "step 3"]


def test_a_folder_without_transcripts_is_a_clear_error(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    assert "no transcripts here" in capsys.readouterr().err
