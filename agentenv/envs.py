"""The registered environments: ``gymnasium.make(id, **kwargs)`` after ``import agentenv``.

* ``agentenv/SearchQA-v0`` — search + calculator + answer, over the shipped ``geo`` corpus by default
  (or any index folder, or a Search-R1-protocol retriever URL).
* ``agentenv/Calculator-v0`` — calculator + answer, on generated arithmetic word problems.
* ``agentenv/RagQA-v0`` — retrieve-then-answer: the question with its top-k passages in front, one
  answer turn, no tools (the baseline a search agent must beat).
* ``agentenv/ClosedBookQA-v0`` — one answer turn from the model's own knowledge, no tools.

The two baselines are environments like the agent's, so they are trained (``agentenv train
--set env.id=agentenv/RagQA-v0``), SFT'd on the same questions and evaluated by the same code.

Every keyword of ``ToolEnv`` (tokenizer, parser, reward, max_turns, ...) passes through.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from agentenv.env import ToolEnv
from agentenv.tools.calculator import CalculatorLimits, calculator, evaluate

SEARCH_QA_ID = "agentenv/SearchQA-v0"
CALCULATOR_ID = "agentenv/Calculator-v0"
RAG_QA_ID = "agentenv/RagQA-v0"
CLOSED_BOOK_QA_ID = "agentenv/ClosedBookQA-v0"

CLOSED_BOOK_PROMPT = (
    "Answer the question with a short answer (a name, a number or a code). "
    "Write the final answer as <answer>your answer</answer>."
)
RAG_PROMPT = (
    "Answer the question using the passages given with it. Give a short answer (a name, a "
    "number or a code) and write it as <answer>your answer</answer>."
)


def register_envs() -> None:
    for env_id, entry_point in (
        (SEARCH_QA_ID, "agentenv.envs:make_search_qa_env"),
        (CALCULATOR_ID, "agentenv.envs:make_calculator_env"),
        (RAG_QA_ID, "agentenv.envs:make_rag_qa_env"),
        (CLOSED_BOOK_QA_ID, "agentenv.envs:make_closed_book_qa_env"),
    ):
        if env_id not in gym.registry:
            # No TimeLimit wrapper: ToolEnv truncates on its own turn and token budgets.
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=False)


def load_question_set(questions: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``"geo:train"``/``"geo:dev"``/``"geo:test"``, a file any loader reads, or records as they are."""
    if not isinstance(questions, str):
        return list(questions)
    from agentenv.corpora import geo_path, load_questions

    path = geo_path(questions.split(":", 1)[1]) if questions.startswith("geo:") else questions
    return [
        {**q.extra, "id": q.id, "question": q.question, "answers": list(q.answers), "kind": q.kind,
         "entities": list(q.entities)}
        for q in load_questions(path)
    ]


def geo_index_dir(show_progress: bool = True) -> Path:
    """The BM25 index of the shipped geo corpus, built on first use into the cache (~30 s).

    The folder name carries a hash of the corpus file, so a rebuilt corpus gets a fresh index.
    """
    from agentenv.corpora import geo_path, load_corpus
    from agentenv.models import cache_dir
    from agentenv.tools.bm25 import BM25Index

    passages = geo_path("passages")
    digest = hashlib.sha256(passages.read_bytes()).hexdigest()[:12]
    target = cache_dir() / "indexes" / f"geo-{digest}"
    if (target / "index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place, so a killed build leaves no half index.
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        BM25Index.build(load_corpus(passages), out_dir=staging / "index", show_progress=show_progress)
        try:
            (staging / "index").rename(target)
        except OSError:  # another process finished first; its index is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def make_search_tool(
    index: Any = None, retriever_url: str | None = None, k: int = 3, max_tokens: int = 256, tokenizer: Any = None
):
    """The search tool over ``retriever_url``, an index folder or object, or the shipped geo index."""
    from agentenv.tools.search import search_tool

    if retriever_url is not None:
        from agentenv.tools.retrieval_client import RetrieverClient

        backend = RetrieverClient(retriever_url)
    elif index is None or isinstance(index, str | os.PathLike):
        from agentenv.tools.bm25 import BM25Index

        backend = BM25Index.load(index or geo_index_dir())
    else:
        backend = index
    return search_tool(backend, k=k, max_tokens=max_tokens, tokenizer=tokenizer)


def make_search_qa_env(
    index: Any = None,
    retriever_url: str | None = None,
    questions: str | Sequence[dict[str, Any]] | None = "geo:train",
    k: int = 3,
    max_search_tokens: int = 256,
    tokenizer: Any = "embedded",
    **env_kwargs: Any,
) -> ToolEnv:
    """Search + calculator over a BM25 index (default: the shipped ``geo`` corpus)."""
    if isinstance(tokenizer, str):
        from agentenv.models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    search = make_search_tool(index, retriever_url, k=k, max_tokens=max_search_tokens, tokenizer=tokenizer)
    return ToolEnv(
        tools=[search, calculator],
        tokenizer=tokenizer,
        questions=load_question_set(questions) if questions is not None else None,
        **env_kwargs,
    )


class RetrieveThenAnswerEnv(ToolEnv):
    """One answer turn on the question with the search tool's top-k passages in front of it.

    The passages are retrieved with the question text when the episode starts and shown as the
    agent's search results are (``Doc i (Title: …) text``); ``info["question"]`` keeps the question
    as asked.
    """

    def __init__(self, search: Any, **env_kwargs: Any):
        super().__init__(tools=[], **env_kwargs)
        self.search = search

    def _render_prompt(self, question: str) -> str:
        [passages] = self.search.run_batch([{"query": question}])
        return super()._render_prompt(f"Passages:\n{passages.text}\n\nQuestion: {question}")


def _one_turn(env_kwargs: dict[str, Any], system_prompt: str) -> dict[str, Any]:
    """A baseline is one answer turn whatever ``max_turns`` the caller shares with the agent's env.

    A model that ignores the answer tags is still scored on what it said (EM/F1 of the whole
    reply): the baselines get every chance, so beating them means something."""
    return {"system_prompt": system_prompt, **env_kwargs, "max_turns": 1, "on_no_call": "answer"}


def make_rag_qa_env(
    index: Any = None,
    retriever_url: str | None = None,
    questions: str | Sequence[dict[str, Any]] | None = "geo:train",
    k: int = 3,
    max_search_tokens: int = 256,
    tokenizer: Any = "embedded",
    search: Any = None,
    **env_kwargs: Any,
) -> ToolEnv:
    """Retrieve-then-answer over a BM25 index (default: the shipped ``geo`` corpus), or ``search``."""
    if isinstance(tokenizer, str):
        from agentenv.models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    if search is None:
        search = make_search_tool(index, retriever_url, k=k, max_tokens=max_search_tokens, tokenizer=tokenizer)
    return RetrieveThenAnswerEnv(
        search,
        tokenizer=tokenizer,
        questions=load_question_set(questions) if questions is not None else None,
        **_one_turn(env_kwargs, RAG_PROMPT),
    )


def make_closed_book_qa_env(
    questions: str | Sequence[dict[str, Any]] | None = "geo:train", tokenizer: Any = "embedded", **env_kwargs: Any
) -> ToolEnv:
    """One answer turn, no tools, no passages."""
    return ToolEnv(
        tools=[],
        tokenizer=tokenizer,
        questions=load_question_set(questions) if questions is not None else None,
        **_one_turn(env_kwargs, CLOSED_BOOK_PROMPT),
    )


def make_calculator_env(
    questions: Sequence[dict[str, Any]] | None = None, num_questions: int = 1000, seed: int = 0, **env_kwargs: Any
) -> ToolEnv:
    """Calculator + answer on arithmetic word problems (generated unless ``questions`` are given)."""
    if questions is None:
        questions = arithmetic_questions(num_questions, seed)
    env_kwargs.setdefault("reward", None)
    return ToolEnv(tools=[calculator], questions=questions, **env_kwargs)


_WORD_PROBLEMS = (
    ("A library has {a} books and buys {b} more. How many books does it have?", "{a} + {b}"),
    ("A farm had {a} sheep and sold {b}. How many sheep are left?", "{a} - {b}"),
    ("A crate holds {a} bottles. How many bottles are in {b} crates?", "{a} * {b}"),
    ("What is {a} multiplied by {b}?", "{a} * {b}"),
    ("What is {a} plus {b} minus {c}?", "{a} + {b} - {c}"),
    ("A train travels {a} km on each of {b} days and then {c} km more. How far does it travel?", "{a} * {b} + {c}"),
)


def arithmetic_questions(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic word problems whose answers need a calculator for a small model."""
    rng = random.Random(seed)
    questions = []
    for i in range(n):
        template, expression = _WORD_PROBLEMS[i % len(_WORD_PROBLEMS)]
        values = {"a": rng.randint(100, 9999), "b": rng.randint(11, 999), "c": rng.randint(10, 99)}
        if "- {b}" in expression:
            values["b"] = rng.randint(11, values["a"])
        # Data generation has no deadline: a pause on a loaded machine must not abort it.
        answer = evaluate(expression.format(**values), CalculatorLimits(timeout_s=math.inf))
        questions.append(
            {
                "id": f"arith-{seed}-{i}",
                "question": template.format(**values),
                "answers": [answer, f"{int(answer):,}"],
                "kind": "arithmetic",
                "expression": expression.format(**values),
            }
        )
    return questions
