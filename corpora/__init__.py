"""Shipped corpora, their question splits, and loaders for the formats the field uses.

    from agentenv.corpora import geo_path, load_corpus, load_questions

    passages = load_corpus(geo_path("passages"))    # iterator of {"id", "title", "text"}
    test = load_questions(geo_path("test"))          # list of Question

See corpora/geo/README.md for what the geography corpus holds and how it is rebuilt, and
corpora/airports/README.md for the airports corpus, a held-out domain for evaluation only.
"""

from pathlib import Path

from agentenv.corpora.loaders import DataFormatError, Question, load_corpus, load_questions

GEO_DIR = Path(__file__).parent / "geo"
AIRPORTS_DIR = Path(__file__).parent / "airports"

__all__ = [
    "DataFormatError",
    "Question",
    "airports_path",
    "geo_path",
    "load_corpus",
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
