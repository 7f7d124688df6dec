"""The shipped ZIP codes corpus and its questions keep the promises of corpora/zipcodes/README.md,
and a run can train on it beside geo: one mixed question set, one index over both corpora."""

import re
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal

import pytest
from test_airports_corpus import ungroup_digits

from agentenv.corpora import (
    airports_path,
    geo_path,
    load_corpus,
    load_question_set,
    load_questions,
    zipcodes_path,
)

SPLITS = ("train", "dev", "test")
KIND_COUNTS = {
    "train": {
        "zip_city": 500,
        "zip_county": 500,
        "zip_state": 500,
        "zip_timezone": 500,
        "zip_area_code": 500,
        "state_capital": 35,
        "statehood_year": 35,
        "state_zip_count": 35,
        "zip_state_capital": 700,
        "zip_statehood_year": 700,
        "latitude_difference": 591,
        "statehood_difference": 250,
        "zip_count_difference": 250,
    },
    "dev": {
        "zip_city": 25,
        "zip_county": 25,
        "zip_state": 25,
        "zip_timezone": 25,
        "zip_area_code": 25,
        "state_capital": 5,
        "statehood_year": 5,
        "state_zip_count": 5,
        "zip_state_capital": 40,
        "zip_statehood_year": 40,
        "latitude_difference": 40,
        "statehood_difference": 10,
        "zip_count_difference": 10,
    },
    "test": {
        "zip_city": 25,
        "zip_county": 25,
        "zip_state": 25,
        "zip_timezone": 25,
        "zip_area_code": 25,
        "state_capital": 10,
        "statehood_year": 10,
        "state_zip_count": 10,
        "zip_state_capital": 40,
        "zip_statehood_year": 40,
        "latitude_difference": 39,
        "statehood_difference": 20,
        "zip_count_difference": 20,
    },
}
TWO_HOP_KINDS = {"zip_state_capital", "zip_statehood_year"}
CALCULATOR_KINDS = {"latitude_difference", "statehood_difference", "zip_count_difference"}
# How every template states a fact: "latitude 43.1025" or "43.1025° N"; "statehood in 1788",
# "Statehood: 1788"; "1,935 standard ZIP codes" or "standard ZIP codes: 1935".
LATITUDE = re.compile(r"latitude (\d+\.\d{4})|(\d+\.\d{4})° N")
STATEHOOD = re.compile(r"[Ss]tatehood\D*?(\d{4})")
ZIP_COUNT = re.compile(r"(\d[\d,]*) standard ZIP codes|standard ZIP codes: (\d+)")


@pytest.fixture(scope="module")
def passages():
    return {passage["id"]: passage for passage in load_corpus(zipcodes_path("passages"))}


@pytest.fixture(scope="module")
def questions():
    return {split: load_questions(zipcodes_path(split)) for split in SPLITS}


def all_questions(questions):
    return [question for split in SPLITS for question in questions[split]]


def stated(pattern: re.Pattern, passage: dict) -> Decimal:
    """The one number ``pattern`` finds in the passage."""
    (match,) = pattern.findall(ungroup_digits(passage["text"]))
    (number,) = [group for group in match if group] if isinstance(match, tuple) else [match]
    return Decimal(number)


def zip_codes_of(questions) -> set[str]:
    return {e for question in questions for e in question.entities if e.startswith("zip:")}


def test_every_passage_is_a_zip_code_or_a_state(passages):
    kinds = Counter(passage_id.split(":")[0] for passage_id in passages)
    assert kinds == {"state": 50, "zip": 4000}
    for passage_id, passage in passages.items():
        kind, key = passage_id.split(":")
        if kind == "zip":
            assert re.fullmatch(r"\d{5}", key) and passage["title"] == f"ZIP Code {key}", passage
            assert key in passage["text"], passage
        else:
            assert re.fullmatch(r"[A-Z]{2}", key) and passage["title"].endswith(" (U.S. state)"), (
                passage
            )
            assert passage["title"].removesuffix(" (U.S. state)") in passage["text"], passage
            assert "U.S. state" in passage["text"] and key in passage["text"], passage


def test_passage_ids_differ_from_the_other_shipped_corpora(passages):
    """One index may hold several shipped corpora: a hit's id must say which passage it is."""
    geo = {passage["id"] for passage in load_corpus(geo_path("passages"))}
    airports = {passage["id"] for passage in load_corpus(airports_path("passages"))}
    assert passages.keys().isdisjoint(geo) and passages.keys().isdisjoint(airports)
    assert geo.isdisjoint(airports)


@pytest.mark.parametrize("split", SPLITS)
def test_split_has_every_kind_with_its_count(questions, split):
    assert Counter(question.kind for question in questions[split]) == KIND_COUNTS[split]


def test_question_ids_are_unique_and_name_their_split(questions):
    ids = [question.id for question in all_questions(questions)]
    assert len(ids) == len(set(ids))
    for split in SPLITS:
        assert all(re.fullmatch(rf"zipcodes-{split}-\d{{5}}", q.id) for q in questions[split])


@pytest.mark.parametrize("held_out", ["dev", "test"])
def test_held_out_questions_share_no_zip_code_with_train(questions, held_out):
    assert zip_codes_of(questions[held_out])
    assert zip_codes_of(questions[held_out]).isdisjoint(zip_codes_of(questions["train"]))


def test_dev_and_test_share_no_zip_code(questions):
    assert zip_codes_of(questions["dev"]).isdisjoint(zip_codes_of(questions["test"]))


def test_questions_about_states_alone_are_split_by_state(questions):
    """Two-hop questions reach the state of a ZIP code of any split (the README says so); the
    questions about states alone share no state across splits."""
    states = {
        split: {
            e
            for q in questions[split]
            if q.kind not in TWO_HOP_KINDS
            for e in q.entities
            if e.startswith("state:")
        }
        for split in SPLITS
    }
    assert states["train"].isdisjoint(states["dev"] | states["test"])
    assert states["dev"].isdisjoint(states["test"])


def test_records_are_consistent(questions, passages):
    for question in all_questions(questions):
        assert question.answers and all(question.answers), question
        assert question.entities and set(question.entities) <= passages.keys(), question
        assert question.extra["hops"] == len(question.entities), question
        needs_calculator = question.kind in CALCULATOR_KINDS
        assert question.extra["needs_calculator"] == needs_calculator, question
        assert ("expression" in question.extra) == needs_calculator, question


def test_questions_name_their_zip_codes_and_states(questions, passages):
    """A ZIP code by its code; a state by its name, unless the question reaches it from a ZIP code."""
    for question in all_questions(questions):
        for hop, entity in enumerate(question.entities):
            kind, key = entity.split(":")
            if kind == "zip":
                assert f"ZIP code {key}" in question.question, question
            elif not (question.kind in TWO_HOP_KINDS and hop == 1):
                assert (
                    passages[entity]["title"].removesuffix(" (U.S. state)") in question.question
                ), question


def test_every_answer_is_stated_in_a_passage_the_question_is_about(questions, passages):
    for question in all_questions(questions):
        if question.kind in CALCULATOR_KINDS:
            continue
        texts = [ungroup_digits(passages[e]["text"]).casefold() for e in question.entities]
        for answer in question.answers:
            assert any(ungroup_digits(answer).casefold() in text for text in texts), (
                question,
                answer,
            )


def test_two_hop_questions_go_from_a_zip_code_to_the_state_its_passage_names(questions, passages):
    """The ZIP code passage names the state (never its capital), and the state passage answers."""
    for question in all_questions(questions):
        if question.kind not in TWO_HOP_KINDS:
            continue
        zip_id, state_id = question.entities
        assert zip_id.startswith("zip:") and state_id.startswith("state:"), question
        zip_text, state = passages[zip_id]["text"], passages[state_id]
        assert state["title"].removesuffix(" (U.S. state)") in zip_text, question
        assert all(answer in state["text"] for answer in question.answers), question
        if question.kind == "zip_state_capital":
            assert question.answers[0].casefold() not in zip_text.casefold(), question


def test_calculator_answers_follow_from_the_numbers_in_the_passages(questions, passages):
    """The expression's inputs are the numbers the entity passages state, in the question's order,
    and the calculator's result on it is a gold answer (rounding halves up, as promised)."""
    from agentenv.rewards import exact_match
    from agentenv.tools.calculator import evaluate

    fact = {
        "latitude_difference": LATITUDE,
        "statehood_difference": STATEHOOD,
        "zip_count_difference": ZIP_COUNT,
    }
    for question in all_questions(questions):
        if question.kind not in CALCULATOR_KINDS:
            continue
        first, second = (stated(fact[question.kind], passages[e]) for e in question.entities)
        assert first > second, question
        operands = [Decimal(n) for n in re.findall(r"\d+(?:\.\d+)?", question.extra["expression"])]
        assert operands[:2] == [first, second], question  # round(a - b, 2) has a trailing 2
        expected = (first - second).quantize(
            Decimal("0.01") if "." in str(first) else Decimal("1"), ROUND_HALF_UP
        )
        assert str(expected) in question.answers, question
        assert exact_match(evaluate(question.extra["expression"]), question.answers), question


def test_rebuilding_gives_identical_bytes(tmp_path):
    """The shipped files are what the build script makes today, byte for byte."""
    reason = "the corpus-build extra is not installed: pip install -e '.[corpus-build]'"
    pytest.importorskip("zipcodes", reason=reason)
    pytest.importorskip("us", reason=reason)
    from agentenv.corpora.build_zipcodes import build

    build(tmp_path)
    for name in ("passages", *SPLITS):
        shipped = zipcodes_path(name)
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name


# ---------------------------------------------------------------------------------------------
# Training on it beside geo
# ---------------------------------------------------------------------------------------------


def test_a_mixed_question_set_interleaves_both_domains_from_the_start():
    mixed = load_question_set("geo:train+zipcodes:train")
    geo, zipcodes = load_question_set("geo:train"), load_question_set("zipcodes:train")
    assert len(mixed) == len(geo) + len(zipcodes)
    assert len({q["id"] for q in mixed}) == len(mixed)
    assert {q["id"].split("-")[0] for q in mixed[:20]} == {"geo", "zipcodes"}
    # Each set keeps its own order, and the mix is the same on every load.
    assert [q for q in mixed if q["id"].startswith("zipcodes-")] == zipcodes
    assert [q["id"] for q in load_question_set("geo:train+zipcodes:train")] == [
        q["id"] for q in mixed
    ]
    # Any stretch holds each set in its share: zipcodes is a third of the whole.
    share = sum(q["id"].startswith("zipcodes-") for q in mixed[:300]) / 300
    assert share == pytest.approx(len(zipcodes) / len(mixed), abs=0.01)


@pytest.fixture(scope="module")
def geo_and_zipcodes_env(tokenizer):
    """SearchQA over geo and zipcodes together, made as a training run makes it (its spec)."""
    from agentenv.spec import EnvSpec

    spec = EnvSpec(
        "agentenv/SearchQA-v0",
        {"corpora": "geo+zipcodes", "questions": "zipcodes:dev", "max_turns": 4},
    )
    return spec.factory(tokenizer).make(1)[0]


def test_search_over_geo_and_zipcodes_finds_passages_of_both(geo_and_zipcodes_env):
    search = geo_and_zipcodes_env.tools["search"]
    zip_hit, geo_hit = search.run_batch([{"query": "ZIP Code 03868"}, {"query": "Paducah"}])
    assert zip_hit.passage_ids[0] == "zip:03868"
    assert geo_hit.passage_ids[0] == "city:4048662"


def test_the_oracle_answers_a_zipcodes_two_hop_question_from_both_passages(geo_and_zipcodes_env):
    from agentenv.trainers.algorithms.sft import oracle_episode

    question = next(q for q in geo_and_zipcodes_env.questions if q["kind"] == "zip_state_capital")
    episode = oracle_episode(geo_and_zipcodes_env, question)
    assert episode.reward_components["exact_match"] == 1.0
    found = [
        ids for turn in episode.turns for call in turn["calls"] for ids in [call["passage_ids"]]
    ]
    assert [ids[0] for ids in found] == question["entities"]  # each search's first hit is its hop


def test_a_training_config_names_the_mix_and_its_corpora(tokenizer, geo_and_zipcodes_env):
    """env.kwargs reach the environments as they reach the run's env_spec.json, which evaluation
    rebuilds the environment from."""
    from agentenv.trainers.loop.build import env_spec, make_envs
    from agentenv.trainers.loop.config import load_config

    config = load_config(
        None,
        [
            "env.id=agentenv/SearchQA-v0",
            "env.kwargs={questions: 'geo:train+zipcodes:train', corpora: 'geo+zipcodes', max_turns: 4}",
        ],
    )
    assert env_spec(config).to_record()["kwargs"]["corpora"] == "geo+zipcodes"
    [env] = make_envs(config, tokenizer, 1)
    assert {q["id"].split("-")[0] for q in env.questions[:20]} == {"geo", "zipcodes"}
    assert env.retriever.get("state:GA")["title"] == "Georgia (U.S. state)"
    assert env.retriever.get("country:GE")["title"] == "Georgia"


def test_eval_searches_the_run_s_corpora_unless_a_flag_says_otherwise():
    from agentenv.spec import EnvSpec
    from agentenv.trainers.evaluation.evaluate import mode_spec, parse_args

    run = EnvSpec(
        "agentenv/SearchQA-v0", {"corpora": "geo+zipcodes", "questions": "geo:train+zipcodes:train"}
    )
    assert mode_spec("agent", run, parse_args([])).kwargs["corpora"] == "geo+zipcodes"
    assert (
        mode_spec("agent", run, parse_args(["--corpora", "zipcodes"])).kwargs["corpora"]
        == "zipcodes"
    )
    assert (
        mode_spec("rag", None, parse_args(["--corpora", "zipcodes"])).kwargs["corpora"]
        == "zipcodes"
    )
    assert (
        "corpora"
        not in mode_spec("closed-book", None, parse_args(["--corpora", "zipcodes"])).kwargs
    )


def test_unknown_corpora_are_an_error_naming_the_key_and_the_choices(tokenizer):
    from agentenv.envs import EnvArgumentError
    from agentenv.spec import EnvSpec

    with pytest.raises(EnvArgumentError, match=r"'geo\+mars'.*geo, airports, zipcodes") as raised:
        EnvSpec(
            "agentenv/SearchQA-v0", {"corpora": "geo+mars", "questions": "zipcodes:dev"}
        ).factory(tokenizer)
    assert raised.value.key == "corpora"
