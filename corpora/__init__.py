"""Shipped corpora, their question splits, and loaders for the formats the field uses.

    from agentenv.corpora import geo_path, load_corpus, load_questions

    passages = load_corpus(geo_path("passages"))    # iterator of {"id", "title", "text"}
    test = load_questions(geo_path("test"))          # list of Question

See corpora/geo/README.md for what the geography corpus holds and how it is rebuilt,
corpora/zipcodes/README.md for the US ZIP code corpus, a second training domain with a layout of
its own, and corpora/airports/README.md for the airports corpus, a held-out domain for evaluation
only.

A question set is named ``"<corpus>:<split>"`` (``"geo:train"``, ``"zipcodes:dev"``,
``"airports:test"``), and several joined by ``+`` are one mixed set (``"geo:train+zipcodes:train"``);
``load_question_set`` reads any of them, or a question file.
"""

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from agentenv.corpora.loaders import DataFormatError, Question, load_corpus, load_questions

GEO_DIR = Path(__file__).parent / "geo"
AIRPORTS_DIR = Path(__file__).parent / "airports"
ZIPCODES_DIR = Path(__file__).parent / "zipcodes"

# name -> (folder, what error messages call it). The names are those of question sets
# ("zipcodes:train") and of the corpora a search environment searches (``corpora: geo+zipcodes``).
SHIPPED_CORPORA = {
    "geo": (GEO_DIR, "geography"),
    "airports": (AIRPORTS_DIR, "airports"),
    "zipcodes": (ZIPCODES_DIR, "ZIP codes"),
}

__all__ = [
    "DataFormatError",
    "Question",
    "SHIPPED_CORPORA",
    "airports_path",
    "geo_path",
    "load_corpus",
    "load_question_set",
    "question_class",
    "question_set_paths",
    "load_questions",
    "shipped_path",
    "shipped_question_sets",
    "zipcodes_path",
]


def geo_path(name: str) -> Path:
    """Path of a shipped geography file: "passages", "train", "dev" or "test".

    Each is stored as ``<name>.jsonl.gz`` or ``<name>.jsonl``; the loaders read either.
    """
    return shipped_path("geo", name)


def airports_path(name: str) -> Path:
    """Path of a shipped airports file: "passages", "dev" or "test" (there is no train split)."""
    return shipped_path("airports", name)


def zipcodes_path(name: str) -> Path:
    """Path of a shipped ZIP codes file: "passages", "train", "dev" or "test"."""
    return shipped_path("zipcodes", name)


def shipped_path(corpus: str, name: str) -> Path:
    """Path of the file ``name`` ("passages" or a split) of the shipped corpus ``corpus``."""
    if corpus not in SHIPPED_CORPORA:
        raise FileNotFoundError(
            f"no shipped corpus named {corpus!r}; the shipped ones: {', '.join(SHIPPED_CORPORA)}"
        )
    directory, description = SHIPPED_CORPORA[corpus]
    for candidate in (directory / f"{name}.jsonl.gz", directory / f"{name}.jsonl"):
        if candidate.exists():
            return candidate
    available = sorted(p.name.split(".")[0] for p in directory.glob("*.jsonl*"))
    raise FileNotFoundError(
        f"no shipped {description} file named {name!r} in {directory}; available: {available}"
    )


def shipped_question_sets() -> list[str]:
    """ "geo:train", "geo:dev", ...: every split of every shipped corpus, train first."""
    order = {"train": 0, "dev": 1, "test": 2}
    names = []
    for corpus, (directory, _) in SHIPPED_CORPORA.items():
        splits = {p.name.split(".")[0] for p in directory.glob("*.jsonl*")} - {"passages"}
        splits = sorted(splits, key=lambda split: (order.get(split, len(order)), split))
        names += [f"{corpus}:{split}" for split in splits]
    return names


def question_set_paths(questions: str) -> list[Path]:
    """The files a question set reads: a question file, a shipped split (``"geo:test"``), or
    several of either joined by ``+`` (``"geo:train+zipcodes:train"``).

    A name that is neither a shipped split nor a file is a FileNotFoundError naming the choices.
    """
    # A file whose own name holds a "+" or a ":" is still that file (read alone: a mix splits at
    # every "+").
    parts = [questions] if Path(questions).is_file() else questions.split("+")
    paths = []
    for part in parts:
        corpus, colon, split = part.partition(":")
        if colon and corpus in SHIPPED_CORPORA and f"{corpus}:{split}" in shipped_question_sets():
            paths.append(shipped_path(corpus, split))
        elif Path(part).is_file():
            paths.append(Path(part))
        else:
            what = "no shipped question set" if colon and "/" not in corpus else "no such file"
            raise FileNotFoundError(
                f"{part}: {what} (the shipped sets: {', '.join(shipped_question_sets())}; "
                "join them with + to mix, e.g. geo:train+zipcodes:train; or give a question file)"
            )
    if len(set(paths)) < len(paths):
        raise FileNotFoundError(
            f"{questions}: names one question set twice; its questions would repeat"
        )
    return paths


def load_question_set(questions: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Question records ``{"id", "question", "answers", "kind", "entities", ...}`` of a set that
    ``question_set_paths`` names, or records as they are.

    A mix (``"geo:train+zipcodes:train"``) interleaves its sets in proportion to their sizes (see
    ``interleave``), so every stretch of it holds each set in its share; each question keeps its id.
    """
    if not isinstance(questions, str):
        return list(questions)
    return interleave([_records(path) for path in question_set_paths(questions)])


def _records(path: Path) -> list[dict[str, Any]]:
    return [
        {**q.extra, "id": q.id, "question": q.question, "answers": list(q.answers), "kind": q.kind,
         "entities": list(q.entities)}
        for q in load_questions(path)
    ]


def interleave(sets: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The sets merged in proportion to their sizes, each in its own order: the i-th of a set of n
    goes to the position (i + 1/2) / n of the whole, ties in the order of the sets.

    So a slice (``--limit 200``, ``eval.limit``) takes each set in its share; training draws its
    own seeded order over all of them. Exact fractions: the same order on every machine.
    """
    keyed = [
        (Fraction(2 * position + 1, 2 * len(questions)), which, question)
        for which, questions in enumerate(sets)
        for position, question in enumerate(questions)
    ]
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [question for _, _, question in keyed]


def question_class(question: dict[str, Any]) -> str | None:
    """The class a question's EM is reported by: its own ``class`` field if it has one, else
    ``calculator``, ``two-hop`` or ``single-hop`` from its ``needs_calculator`` and ``hops`` (the geo,
    zipcodes and airports sets carry both); None when it says neither."""
    if question.get("class"):
        return str(question["class"])
    if question.get("needs_calculator"):
        return "calculator"
    hops = question.get("hops")
    if hops is None:
        return None
    return "two-hop" if int(hops) >= 2 else "single-hop"
