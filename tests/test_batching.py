"""Environments built from one spec share their tools, so a turn of many environments gives each
tool one batch: one ``search_batch`` with every query of the turn, one HTTP request per server."""

import pytest

import agentenv  # noqa: F401  (registers the environments)
from agentenv.env import step_batch
from agentenv.spec import EnvSpec
from agentenv.tools.bm25 import BM25Index
from agentenv.tools.server import running_server

PASSAGES = [
    {"id": f"p{i}", "title": f"Town {i}", "text": f"Town {i} lies on river {i % 3} and has {1000 + i} people."}
    for i in range(40)
]


class CountingIndex:
    """A real BM25 index that records the size of every ``search_batch`` it answers."""

    def __init__(self, index: BM25Index):
        self.index, self.batches = index, []
        self.backend = index.backend

    def __len__(self) -> int:
        return len(self.index)

    def search_batch(self, queries, k):
        self.batches.append(len(queries))
        return self.index.search_batch(queries, k)

    def get(self, passage_id):
        return self.index.get(passage_id)


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(PASSAGES, show_progress=False)


def _one_search_turn(envs, tokenizer):
    for i, env in enumerate(envs):
        env.reset(options={"question": f"How many people live in Town {i}?", "answers": [str(1000 + i)]})
    return step_batch(envs, [f"<search>Town {i} people</search>" for i in range(len(envs))])


def test_the_environments_of_one_spec_share_one_search_tool_and_one_question_list(tokenizer, index):
    counting = CountingIndex(index)
    factory = EnvSpec("agentenv/SearchQA-v0", {"index": counting, "questions": "geo:dev"}).factory(tokenizer)
    envs = factory.make(8)
    assert len({id(env.tools["search"]) for env in envs}) == 1
    assert len({id(env.tools["calculator"]) for env in envs}) == 1
    assert len({id(env.questions[0]) for env in envs}) == 1  # loaded once: the same records
    assert len({id(env) for env in envs}) == 8  # the episodes' state is each environment's own


def test_a_turn_of_64_environments_makes_one_search_batch_of_64_queries(tokenizer, index):
    counting = CountingIndex(index)
    envs = EnvSpec("agentenv/SearchQA-v0", {"index": counting, "questions": None}).factory(tokenizer).make(64)
    results = _one_search_turn(envs, tokenizer)
    assert counting.batches == [64]
    assert all("Town" in tokenizer.decode(observation[-80:]) for observation, *_ in results)


def test_a_turn_of_64_environments_makes_one_http_request_to_the_retrieval_server(tokenizer, index):
    counting = CountingIndex(index)  # the server's index: one search_batch per request it answers
    with running_server(counting) as url:
        envs = EnvSpec("agentenv/SearchQA-v0", {"retriever_url": url, "questions": None}).factory(tokenizer).make(64)
        _one_search_turn(envs, tokenizer)
    assert counting.batches == [64]


def test_environments_made_one_by_one_each_search_alone(tokenizer, index):
    """What the spec's factory avoids: an environment built on its own builds its own tool."""
    from agentenv.envs import make_search_qa_env

    counting = CountingIndex(index)
    envs = [make_search_qa_env(index=counting, questions=None, tokenizer=tokenizer) for _ in range(4)]
    _one_search_turn(envs, tokenizer)
    assert counting.batches == [1, 1, 1, 1]


def test_a_turn_larger_than_the_servers_limit_goes_as_several_requests(tokenizer, index):
    """The server answers at most 256 queries a request: a turn of 600 environments' searches
    arrives as requests of 256, 256 and 88, and every environment gets its own passages."""
    from agentenv.tools.retrieval_client import RetrieverClient

    counting = CountingIndex(index)
    queries = [f"Town {i % 40} people" for i in range(600)]
    with running_server(counting) as url, RetrieverClient(url) as client:
        hits = client.search_batch(queries, 3)
    assert counting.batches == [256, 256, 88]
    assert [h[0].title for h in hits] == [index.search(q, 3)[0].title for q in queries]
