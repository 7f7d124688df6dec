"""Shipped corpora, their question splits, and loaders for the formats the field uses.

    from agentenv.corpora import geo_path, load_corpus, load_questions

    passages = load_corpus(geo_path("passages"))    # iterator of {"id", "title", "text"}
    test = load_questions(geo_path("test"))          # list of Question

See corpora/geo/README.md for what the geography corpus holds and how it is rebuilt.
"""

from pathlib import Path

from agentenv.corpora.loaders import DataFormatError, Question, load_corpus, load_questions

GEO_DIR = Path(__file__).parent / "geo"

__all__ = ["DataFormatError", "Question", "geo_path", "load_corpus", "load_questions"]


def geo_path(name: str) -> Path:
    """Path of a shipped geography file: "passages", "train", "dev" or "test".

    Each is stored as ``<name>.jsonl.gz`` or ``<name>.jsonl``; the loaders read either.
    """
    for candidate in (GEO_DIR / f"{name}.jsonl.gz", GEO_DIR / f"{name}.jsonl"):
        if candidate.exists():
            return candidate
    available = sorted(p.name.split(".")[0] for p in GEO_DIR.glob("*.jsonl*"))
    raise FileNotFoundError(
        f"no shipped geography file named {name!r} in {GEO_DIR}; available: {available}"
    )
