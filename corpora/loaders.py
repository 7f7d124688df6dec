"""Read corpora and question sets in the formats the field uses, into one internal format.

Passages become ``{"id", "title", "text"}`` dicts (``title`` is optional: "" when absent); questions
become `Question` records (``id`` is optional: derived from the file name and the record's position
when absent). The format
of a file is recognised from its content (gzip and Parquet by their magic bytes, the JSON flavour
by the keys of the first record), never from its name.

    >>> from agentenv.corpora import geo_path, load_corpus, load_questions
    >>> next(load_corpus(geo_path("passages")))["id"]
    'country:AD'
    >>> question = load_questions(geo_path("test"))[0]
    >>> question.question, question.answers  # doctest: +SKIP
    ('What is the population of Itaíba divided by ...', ('2.07',))
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"

# Passage formats: ours (`title` optional), and wiki-18 as Search-R1 and FlashRAG ship it, where
# `contents` is the title in double quotes, a newline, then the text.
OUR_PASSAGE_KEYS = {"id", "text"}
WIKI18_PASSAGE_KEYS = {"id", "contents"}

# Question formats: ours (`id` optional), and Search-R1 / FlashRAG (`golden_answers`, optional `id`
# and `metadata`).
OUR_QUESTION_KEYS = {"question", "answers"}
FLASHRAG_QUESTION_KEYS = {"question", "golden_answers"}


class DataFormatError(ValueError):
    """A corpus or question file that is not in a supported format or cannot be read; says where
    and why, in one line."""

    def __init__(self, path: str | Path, location: str, message: str):
        super().__init__(f"{path}, {location}: {message}")


@dataclass(frozen=True)
class Question:
    """One question with every acceptable answer.

    `entities` are the ids of the passages the question is about (empty when the source does not
    say); `extra` keeps every other field of the source record (`hops`, `needs_calculator`,
    FlashRAG's `metadata`, ...).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    kind: str | None = None
    entities: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


# ---------------------------------------------------------------------------------------------
# Passages
# ---------------------------------------------------------------------------------------------


def load_corpus(path: str | Path) -> Iterator[dict]:
    """Stream the passages of a JSONL corpus (plain or gzipped) as ``{"id", "title", "text"}``.

    Accepts our ``{"id", "title", "text"}`` lines (``title`` may be left out) and wiki-18 lines
    ``{"id", "contents"}`` whose contents are ``"Title"\\ntext``. Reads one line at a time, so
    wiki-scale files fit.
    """
    for _, passage in located_passages(path):
        yield passage


def located_passages(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``load_corpus``'s passages, each with where it is in the file (``"line 12"``)."""
    passage_format = None
    for location, record in _jsonl_records(path):
        if passage_format is None:
            passage_format = _pick_format(
                path,
                location,
                record,
                {"ours": OUR_PASSAGE_KEYS, "wiki-18": WIKI18_PASSAGE_KEYS},
            )
        if passage_format == "ours":
            _require_keys(path, location, record, OUR_PASSAGE_KEYS)
            yield location, {"id": str(record["id"]), "title": record.get("title") or "", "text": record["text"]}
        else:
            _require_keys(path, location, record, WIKI18_PASSAGE_KEYS)
            title, text = split_wiki18_contents(record["contents"])
            yield location, {"id": str(record["id"]), "title": title, "text": text}


def split_wiki18_contents(contents: str) -> tuple[str, str]:
    """'"Aaron"\\nAaron is a prophet...' -> ("Aaron", "Aaron is a prophet...")."""
    first_line, _, text = contents.partition("\n")
    title = first_line.strip()
    if len(title) >= 2 and title.startswith('"') and title.endswith('"'):
        title = title[1:-1]
    return title, text


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------


def load_questions(path: str | Path) -> list[Question]:
    """Read a question set: our JSONL, Search-R1 / FlashRAG JSONL, or Parquet with either's
    columns; plain or gzipped JSONL.

    A record without an ``id`` (in either format) gets ``<file stem>-<index>``, its position in the
    file counting from 0: the same id on every load of the same file.
    """
    path = Path(path)
    with path.open("rb") as file:
        is_parquet = file.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    if is_parquet:
        records = _parquet_records(path)
    else:
        records = _jsonl_records(path)
    questions: list[Question] = []
    question_format = None
    for location, record in records:
        if question_format is None:
            question_format = _pick_format(
                path,
                location,
                record,
                {"ours": OUR_QUESTION_KEYS, "Search-R1/FlashRAG": FLASHRAG_QUESTION_KEYS},
            )
        if question_format == "ours":
            questions.append(_our_question(path, location, record, len(questions)))
        else:
            questions.append(_flashrag_question(path, location, record, len(questions)))
    return questions


def _our_question(path: Path, location: str, record: dict, index: int) -> Question:
    _require_keys(path, location, record, OUR_QUESTION_KEYS)
    known = OUR_QUESTION_KEYS | {"id", "kind", "entities"}
    return Question(
        id=_question_id(path, record, index),
        question=record["question"],
        answers=_answers(path, location, record["answers"]),
        kind=record.get("kind"),
        entities=tuple(record.get("entities") or ()),
        extra={key: value for key, value in record.items() if key not in known},
    )


def _flashrag_question(path: Path, location: str, record: dict, index: int) -> Question:
    _require_keys(path, location, record, FLASHRAG_QUESTION_KEYS)
    known = FLASHRAG_QUESTION_KEYS | {"id"}
    return Question(
        id=_question_id(path, record, index),
        question=record["question"],
        answers=_answers(path, location, record["golden_answers"]),
        extra={key: value for key, value in record.items() if key not in known},
    )


def _question_id(path: Path, record: dict, index: int) -> str:
    return str(record["id"]) if record.get("id") is not None else f"{path.stem}-{index}"


def _answers(path: Path, location: str, answers: Any) -> tuple[str, ...]:
    # Some FlashRAG sets store numeric answers as numbers; a lone string is one answer.
    if isinstance(answers, str | int | float):
        answers = [answers]
    if not isinstance(answers, list | tuple) or not all(
        isinstance(answer, str | int | float) for answer in answers
    ):
        raise DataFormatError(
            path, location, f"answers must be a list of strings, got {answers!r:.200}"
        )
    return tuple(str(answer) for answer in answers)


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    """("row <n>" counting from 1, row as a dict), one record batch at a time."""
    try:
        import pyarrow.parquet
    except ImportError as error:
        raise ImportError(
            f"{path} is a Parquet file; reading it needs pyarrow: pip install pyarrow"
        ) from error
    row_number = 0
    for batch in pyarrow.parquet.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            row_number += 1
            yield f"row {row_number}", row


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _jsonl_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """("line <n>", JSON object) for every non-blank line of a plain or gzipped JSONL file; a
    damaged file raises DataFormatError at the line where the damage shows."""
    path = Path(path)
    with path.open("rb") as raw:
        is_gzip = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        lines = iter(gzip.GzipFile(fileobj=raw) if is_gzip else raw)
        line_number = 0
        while True:
            line_number += 1
            location = f"line {line_number}"
            line = _next_line(path, location, lines)
            if line is None:
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    path, location, f"not UTF-8 text (byte {line[error.start]:#04x} at column {error.start + 1})"
                ) from None
            except RecursionError:
                raise DataFormatError(path, location, "JSON nested too deeply to be a record") from None
            except ValueError as error:  # JSONDecodeError, or an integer of over 4300 digits
                raise DataFormatError(path, location, f"not valid JSON ({error})") from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    path, location, f"expected a JSON object, got {type(record).__name__}"
                )
            yield location, record


def _next_line(path: Path, location: str, lines: Iterator[bytes]) -> bytes | None:
    """The next line, None at the end; damage in the file's gzip stream is found as it is read."""
    try:
        return next(lines, None)
    except EOFError:
        raise DataFormatError(path, location, "the gzip data ends early: the file is truncated") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataFormatError(path, location, f"damaged gzip data ({error}): the file is corrupt") from None
    except OSError as error:
        raise DataFormatError(path, location, f"cannot be read ({error})") from None


def _pick_format(
    path: str | Path, location: str, record: dict, formats: dict[str, set[str]]
) -> str:
    """The name of the first format whose required keys the record has."""
    for name, required in formats.items():
        if required <= record.keys():
            return name
    expected = "; or ".join(f"{name}: {sorted(keys)}" for name, keys in formats.items())
    raise DataFormatError(
        path,
        location,
        f"unrecognised record format; found keys {sorted(record)}, expected {expected}",
    )


def _require_keys(path: str | Path, location: str, record: dict, required: set[str]) -> None:
    missing = required - record.keys()
    if missing:
        raise DataFormatError(
            path,
            location,
            f"missing keys {sorted(missing)}; found keys {sorted(record)}, "
            f"expected {sorted(required)} (as on the file's first record)",
        )
