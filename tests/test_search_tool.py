"""The search tool: numbered passages within a token budget, one batch per turn, errors as observations."""

import pytest

from agentenv.tools import BM25Index, search_tool
from agentenv.tools.bm25 import Hit
from agentenv.tools.search import ELLIPSIS, NO_RESULTS, format_passages, hf_token_counter

PASSAGES = [
    {"id": "ouaga", "title": "Ouagadougou", "text": "Ouagadougou is the capital of Burkina Faso."},
    {
        "id": "bobo",
        "title": "Bobo-Dioulasso",
        "text": "Bobo-Dioulasso is the second city of Burkina Faso.",
    },
    {"id": "nile", "title": "Nile", "text": "The Nile is a river in Africa."},
]


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(PASSAGES, show_progress=False)


class CountingRetriever:
    """A real index that records each batch it is asked for."""

    def __init__(self, index):
        self.index = index
        self.batches = []

    def search_batch(self, queries, k):
        self.batches.append(list(queries))
        return self.index.search_batch(queries, k)


def _long_hit(rank, words):
    return Hit(
        id=str(rank),
        title=f"Title {rank}",
        text=" ".join(f"w{rank}x{i}" for i in range(words)),
        score=1.0,
    )


def test_the_tool_is_called_search_and_takes_a_query_string(index):
    tool = search_tool(index)
    assert tool.name == "search"
    assert tool.parameters["required"] == ["query"]
    assert tool.parameters["properties"]["query"]["type"] == "string"


def test_observation_numbers_passages_with_their_titles(index):
    output = search_tool(index, k=2).run({"query": "capital of Burkina Faso"})
    assert output.ok
    assert output.text.splitlines() == [
        "Doc 1 (Title: Ouagadougou) Ouagadougou is the capital of Burkina Faso.",
        "Doc 2 (Title: Bobo-Dioulasso) Bobo-Dioulasso is the second city of Burkina Faso.",
    ]


def test_a_query_that_matches_nothing_says_so_without_failing(index):
    output = search_tool(index).run({"query": "zeppelin"})
    assert output.ok
    assert output.text == NO_RESULTS


def test_long_passages_are_cut_to_the_budget_in_words():
    text = format_passages([_long_hit(rank, 200) for rank in (1, 2, 3)], max_tokens=90)
    lines = text.splitlines()
    assert len(text.split()) <= 90
    assert [line.split(" (")[0] for line in lines] == ["Doc 1", "Doc 2", "Doc 3"]
    assert all(line.endswith(ELLIPSIS) for line in lines)


def test_short_passages_keep_their_text_and_leave_the_budget_to_long_ones():
    short = Hit(id="s", title="Short", text="just five words here now", score=2.0)
    text = format_passages([short, _long_hit(2, 500)], max_tokens=100)
    first, second = text.splitlines()
    assert first == "Doc 1 (Title: Short) just five words here now"
    assert len(second.split()) == 100 - len(first.split())


def test_budget_counts_tokens_of_the_given_tokenizer(tokenizer):
    hits = [_long_hit(rank, 120) for rank in (1, 2, 3)]
    text = format_passages(
        hits,
        max_tokens=100,
        count_tokens=hf_token_counter(tokenizer),
    )
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 100
    assert len(text.splitlines()) == 3


def test_the_tool_passes_its_tokenizer_to_the_budget(index, tokenizer):
    hits_text = (
        search_tool(index, k=3, max_tokens=12, tokenizer=tokenizer)
        .run({"query": "Burkina Faso"})
        .text
    )
    assert len(tokenizer(hits_text, add_special_tokens=False)["input_ids"]) <= 12


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty query"),
        ("   \n\t", "empty query"),
        ("x" * 10_000, "10000 characters long; the limit is 1000"),
    ],
)
def test_bad_queries_become_error_observations(index, query, message):
    output = search_tool(index).run({"query": query})
    assert not output.ok
    assert output.text.startswith("Error (search): ")
    assert message in output.text


def test_a_query_that_is_not_a_string_becomes_an_error_observation(index):
    output = search_tool(index).run({"query": ["capital"]})
    assert not output.ok
    assert "must be of type string" in output.text


def test_all_calls_of_a_turn_go_to_the_retriever_as_one_batch(index):
    retriever = CountingRetriever(index)
    tool = search_tool(retriever, k=1)
    outputs = tool.run_batch([{"query": "capital"}, {"query": "river"}, {"query": "second city"}])
    assert retriever.batches == [["capital", "river", "second city"]]
    assert [output.text.split(")")[0] for output in outputs] == [
        "Doc 1 (Title: Ouagadougou",
        "Doc 1 (Title: Nile",
        "Doc 1 (Title: Bobo-Dioulasso",
    ]


def test_one_bad_call_in_a_turn_fails_alone(index):
    outputs = search_tool(index).run_batch(
        [{"query": "capital"}, {"query": " "}, {"query": "river"}]
    )
    assert [output.ok for output in outputs] == [True, False, True]
    assert outputs[2].text.startswith("Doc 1 (Title: Nile)")


def test_budget_smaller_than_k_is_refused(index):
    with pytest.raises(ValueError, match="max_tokens >= k"):
        search_tool(index, k=3, max_tokens=2)
