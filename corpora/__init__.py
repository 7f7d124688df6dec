"""Shipped corpora, their question splits, and loaders for the formats the field uses.

    from agentenv.corpora import geo_path, load_corpus, load_questions

    passages = load_corpus(geo_path("passages"))    # iterator of {"id", "title", "text"}
    test = load_questions(geo_path("test"))          # list of Question

See corpora/geo/README.md for what the geography corpus holds and how it is rebuilt, and
corpora/airports/README.md for the airports corpus, a held-out domain for evaluation only.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentenv.corpora.loaders import DataFormatError, Question, load_corpus, load_questions

GEO_DIR = Path(__file__).parent / "geo"
AIRPORTS_DIR = Path(__file__).parent / "airports"

__all__ = [
    "DataFormatError",
    "Question",
    "airports_path",
    "geo_path",
    "load_corpus",
    "load_question_set",
    "question_class",
    "load_questions",
]


def geo_path(name: str) -> Path:
    """Path of a shipped geography file: "passages", "train", "dev" or "test".

    Each is stored as ``<name>.jsonl.gz`` or ``<name>.jsonl``; the loaders read either.
    """
    return _shipped_file(GEO_DIR, name, "geography")


def airports_path(name: str) -> Path:
    """Path of a shipped airports file: "passages", "dev" or "test" (there is no train split)."""
    return _shipped_file(AIRPORTS_DIR, name, "airports")


def _shipped_file(directory: Path, name: str, corpus: str) -> Path:
    for candidate in (directory / f"{name}.jsonl.gz", directory / f"{name}.jsonl"):
        if candidate.exists():
            return candidate
    available = sorted(p.name.split(".")[0] for p in directory.glob("*.jsonl*"))
    raise FileNotFoundError(
        f"no shipped {corpus} file named {name!r} in {directory}; available: {available}"
    )


def load_question_set(questions: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Question records ``{"id", "question", "answers", "kind", "entities", ...}`` of
    ``"geo:train"``/``"geo:dev"``/``"geo:test"``, of a file any loader reads, or records as they are."""
    if not isinstance(questions, str):
        return list(questions)
    path = geo_path(questions.split(":", 1)[1]) if questions.startswith("geo:") else questions
    return [
        {**q.extra, "id": q.id, "question": q.question, "answers": list(q.answers), "kind": q.kind,
         "entities": list(q.entities)}
        for q in load_questions(path)
    ]


def question_class(question: dict[str, Any]) -> str | None:
    """The class a question's EM is reported by: its own ``class`` field if it has one, else
    ``calculator``, ``two-hop`` or ``single-hop`` from its ``needs_calculator`` and ``hops`` (the geo
    and airports sets carry both); None when it says neither."""
    if question.get("class"):
        return str(question["class"])
    if question.get("needs_calculator"):
        return "calculator"
    hops = question.get("hops")
    if hops is None:
        return None
    return "two-hop" if int(hops) >= 2 else "single-hop"
