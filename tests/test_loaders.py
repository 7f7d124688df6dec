"""The loaders read every supported format into one internal format and explain bad files."""

import gzip
import json
import sys
from pathlib import Path

import pytest

from agentenv.corpora import (
    DataFormatError,
    Question,
    geo_path,
    load_corpus,
    load_question_set,
    load_questions,
    question_set_paths,
)

FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_reads_our_passage_format():
    passages = list(load_corpus(FIXTURES / "passages_ours.jsonl"))
    assert passages == [
        {
            "id": "city:1",
            "title": "Paducah",
            "text": "Paducah is a town in Kentucky, United States.",
        },
        {
            "id": "country:DE",
            "title": "Germany",
            "text": "Its capital is Berlin.\nThe currency is the Euro (EUR).",
        },
    ]


def test_reads_wiki18_passages_with_the_title_on_the_first_line():
    passages = list(load_corpus(FIXTURES / "passages_wiki18.jsonl"))
    assert passages[0] == {
        "id": "0",
        "title": "Aaron",
        "text": "Aaron is a prophet, high priest, and the brother of Moses.",
    }
    # Only the outer quotes are the title's delimiters; the text keeps its own line breaks.
    assert passages[1]["title"] == 'Quoted "inner" title'
    assert passages[1]["text"] == "First line.\nSecond line."


def test_reads_gzipped_files_by_content_not_by_name(tmp_path):
    plain = FIXTURES / "passages_wiki18.jsonl"
    disguised = tmp_path / "corpus.jsonl"  # gzipped, though the name does not say so
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(load_corpus(disguised)) == list(load_corpus(plain))

    questions = tmp_path / "questions.jsonl.gz"
    questions.write_bytes(gzip.compress((FIXTURES / "questions_ours.jsonl").read_bytes()))
    assert load_questions(questions) == load_questions(FIXTURES / "questions_ours.jsonl")


def test_load_corpus_streams_records_before_reading_the_rest(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        json.dumps({"id": "1", "title": "A", "text": "a"}) + "\nthis line is not JSON\n"
    )
    passages = load_corpus(path)
    assert next(passages)["id"] == "1"
    with pytest.raises(DataFormatError):
        next(passages)


def test_reads_our_questions_and_keeps_extra_fields():
    questions = load_questions(FIXTURES / "questions_ours.jsonl")
    assert questions[0] == Question(
        id="geo-test-00000",
        question="How many people live in Paducah?",
        answers=("24864", "24,864"),
        kind="city_population",
        entities=("city:1",),
    )
    assert questions[0].extra == {"hops": 1, "needs_calculator": False}


def test_reads_flashrag_questions():
    path = FIXTURES / "questions_flashrag.jsonl"
    first, second = load_questions(path)
    assert first.id == "test_0"
    assert first.answers == ("Wilhelm Conrad Röntgen",)
    assert first.kind is None and first.entities == ()
    assert first.extra == {"metadata": {"source": "nq"}}
    # No id in the record: one is made from the file name and the position.
    assert second.id == "questions_flashrag-1"
    assert second.answers == ("8",)


def test_reads_parquet_questions(tmp_path):
    parquet = pytest.importorskip("pyarrow.parquet")
    pyarrow = pytest.importorskip("pyarrow")
    path = tmp_path / "nq_test.data"  # a name that hides the format
    table = pyarrow.table(
        {
            "id": ["test_0", "test_1"],
            "question": ["who wrote hamlet?", "capital of peru?"],
            "golden_answers": [["Shakespeare", "William Shakespeare"], ["Lima"]],
            "data_source": ["nq", "nq"],
        }
    )
    parquet.write_table(table, path)
    questions = load_questions(path)
    assert [q.id for q in questions] == ["test_0", "test_1"]
    assert questions[0].answers == ("Shakespeare", "William Shakespeare")
    assert questions[1].extra == {"data_source": "nq"}


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "questions.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 16)
    # A None entry in sys.modules makes `import pyarrow.parquet` raise ImportError.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install pyarrow") as error:
        load_questions(path)
    assert str(path) in str(error.value)


def test_unknown_format_names_the_file_line_and_keys(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('\n{"doc_id": "1", "body": "text"}\n')
    with pytest.raises(DataFormatError) as error:
        list(load_corpus(path))
    message = str(error.value)
    assert f"{path}, line 2" in message  # the blank first line still counts
    assert "['body', 'doc_id']" in message
    assert "['id', 'text']" in message and "['contents', 'id']" in message


def test_a_later_record_missing_a_key_names_its_line(tmp_path):
    path = write_jsonl(
        tmp_path / "questions.jsonl",
        [
            {"id": "1", "question": "q?", "answers": ["a"]},
            {"id": "2", "question": "q?", "golden_answers": ["a"]},
        ],
    )
    with pytest.raises(DataFormatError, match=r"line 2: missing keys \['answers'\]"):
        load_questions(path)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text('{"id": "1", "question": "q?", "answers": ["a"]}\n{"id": "2", \n')
    with pytest.raises(DataFormatError, match=r"line 2: not valid JSON"):
        load_questions(path)


def test_answers_must_be_a_list_of_strings(tmp_path):
    path = write_jsonl(
        tmp_path / "questions.jsonl", [{"id": "1", "question": "q?", "answers": [{"text": "a"}]}]
    )
    with pytest.raises(DataFormatError, match=r"line 1: answers must be a list of strings"):
        load_questions(path)


def test_geo_path_finds_plain_and_gzipped_files_and_lists_the_names_otherwise():
    assert geo_path("passages").name == "passages.jsonl.gz"
    assert geo_path("test").name == "test.jsonl"
    assert geo_path("train").name == "train.jsonl.gz"
    with pytest.raises(FileNotFoundError, match=r"'validation'.*'dev'"):
        geo_path("validation")


def test_question_sets_are_named_by_corpus_and_split_or_mixed_with_a_plus(tmp_path):
    assert [p.parent.name for p in question_set_paths("geo:test+zipcodes:dev+airports:test")] == [
        "geo", "zipcodes", "airports"]
    assert load_question_set("zipcodes:dev")[0]["id"] == "zipcodes-dev-00000"
    # A file named like a mix is still that file; a mix may hold files too.
    odd = write_jsonl(tmp_path / "a+b:c.jsonl", [{"id": "odd-0", "question": "q?", "answers": ["a"]}])
    assert [q["id"] for q in load_question_set(str(odd))] == ["odd-0"]
    own = write_jsonl(tmp_path / "own.jsonl", [{"id": "own-0", "question": "q?", "answers": ["a"]}])
    mixed = load_question_set(f"airports:dev+{own}")
    assert len(mixed) == 97 and "own-0" in {q["id"] for q in mixed}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("geo:validation", "geo:validation: no shipped question set (the shipped sets: geo:train, geo:dev"),
        ("airports:train", "airports:train: no shipped question set"),
        ("mars:train", "zipcodes:train, zipcodes:dev, zipcodes:test; join them with + to mix"),
        ("geo:train+nope.jsonl", "nope.jsonl: no such file"),
        ("geo:dev+geo:dev", "names one question set twice"),
    ],
)
def test_an_unknown_question_set_is_a_one_line_error_naming_the_choices(name, message):
    with pytest.raises(FileNotFoundError) as raised:
        load_question_set(name)
    assert message in str(raised.value) and "\n" not in str(raised.value)
