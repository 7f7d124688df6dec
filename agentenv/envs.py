"""The registered environments: ``gymnasium.make(id, **kwargs)`` after ``import agentenv``.

* ``agentenv/SearchQA-v0`` — search + calculator + answer, over the shipped ``geo`` corpus by default
  (or shipped corpora together, ``corpora="geo+zipcodes"``; or any index folder, or a
  Search-R1-protocol retriever URL).
* ``agentenv/Calculator-v0`` — calculator + answer, on generated arithmetic word problems.
* ``agentenv/RagQA-v0`` — retrieve-then-answer: the question with its top-k passages in front, one
  answer turn, no tools (the baseline a search agent must beat).
* ``agentenv/ClosedBookQA-v0`` — one answer turn from the model's own knowledge, no tools.

The two baselines are environments like the agent's, so they are trained (``agentenv train
--set env.id=agentenv/RagQA-v0``), SFT'd on the same questions and evaluated by the same code.

Every keyword of ``ToolEnv`` (tokenizer, parser, reward, max_turns, ...) passes through.

``make_env(id, **kwargs)`` builds any of them, or any environment of your own: an id registered in
this process, or Gymnasium's ``module:Id`` form, whose module is imported first (``mymod:my/Env-v0``
imports ``mymod``, from ``sys.path`` or the current folder, as ``gymnasium.make`` and ``python -m``
would). A keyword the constructor does not take is an error that names it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import math
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from agentenv.corpora import load_question_set  # noqa: F401  (agentenv.envs.load_question_set, as before)
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
    share_tools(SEARCH_QA_ID, _search_once(with_retriever=True))
    share_tools(RAG_QA_ID, _search_once(with_retriever=False))


class UnknownEnvironment(ValueError):
    """An environment id that is not registered, or whose ``module:`` part cannot be imported."""


class EnvArgumentError(ValueError):
    """A keyword an environment's constructor does not take, lacks, sets itself or cannot use the
    value of; ``key`` names it (None when the constructor failed otherwise)."""

    def __init__(self, message: str, key: str | None):
        super().__init__(message)
        self.key = key


def resolve_env_id(env_id: str) -> str:
    """The registered id that ``env_id`` names; for ``module:Id``, after importing ``module``.

    The module is looked for on ``sys.path``, then in the current folder (``agentenv`` run as a
    console script does not have it on its path, as ``python -m`` would)::

        resolve_env_id("mymod:my/WordLength-v0")   # imports mymod, returns "my/WordLength-v0"
    """
    module, colon, name = env_id.partition(":")
    if not colon:
        module, name = "", env_id
    if module:
        _import_env_module(env_id, module)
    if name in gym.registry:
        return name
    close = difflib.get_close_matches(name, [key for key in gym.registry if "/" in key], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if module:
        raise UnknownEnvironment(f"{env_id!r}: {module} was imported but registered no {name!r}{hint}")
    raise UnknownEnvironment(
        f"{env_id!r} is not a registered environment{hint} (for one of your own, name its module: "
        "module:Id, e.g. mymod:my/Env-v0)"
    )


def _import_env_module(env_id: str, module: str) -> None:
    for attempt in ("sys.path", "current folder"):
        try:
            importlib.import_module(module)
            return
        except ModuleNotFoundError as error:
            if error.name != module and not module.startswith(f"{error.name}."):
                raise UnknownEnvironment(f"{env_id!r}: importing {module} failed: {error}") from error
        if attempt == "sys.path" and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
            importlib.invalidate_caches()
    raise UnknownEnvironment(
        f"{env_id!r}: no module named {module!r} to import (looked on sys.path and in {os.getcwd()})"
    )


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs).unwrapped`` for any id, ``module:Id`` included.

    A keyword the constructor refuses is an ``EnvArgumentError`` naming it and the closest keyword it
    takes, not Gymnasium's message (which repeats every keyword's value, a tokenizer's whole repr).
    """
    name = resolve_env_id(env_id)
    try:
        return gym.make(name, **kwargs).unwrapped
    except TypeError as error:
        message = str(error).split(" was raised from the environment creator", 1)[0]
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
        required = re.search(r"missing \d+ required .*?arguments?: (.+)", message)
        missing = re.findall(r"'(\w+)'", required.group(1)) if required else []
        twice = re.search(r"multiple values for (?:keyword )?argument '(\w+)'", message)
        if unexpected:
            key = unexpected.group(1)
            close = difflib.get_close_matches(key, accepted_keywords(name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EnvArgumentError(f"{name} does not take {key!r}{hint}", key) from None
        if missing:
            raise EnvArgumentError(f"{name} needs {' and '.join(map(repr, missing))}", missing[0]) from None
        if twice:
            raise EnvArgumentError(f"{name} sets {twice.group(1)!r} itself; leave it out", twice.group(1)) from None
        raise EnvArgumentError(f"creating {name} failed: {message}", None) from error


def accepted_keywords(env_id: str) -> list[str]:
    """The keywords an environment's entry point names, and ``ToolEnv``'s where it passes ``**kwargs`` on."""
    from gymnasium.envs.registration import load_env_creator

    entry_point = gym.spec(env_id).entry_point
    try:
        creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
        parameters = list(inspect.signature(creator).parameters.values())
    except (ValueError, TypeError, ImportError, AttributeError):
        return []
    names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        names += [name for name in inspect.signature(ToolEnv.__init__).parameters if name != "self"]
    return names


# Env id -> a function that turns an environment's keywords into keywords holding tools built once
# (``shared_tools``); ids without one get their keywords unchanged.
SHARED_TOOL_BUILDERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def share_tools(env_id: str, build: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Register how the environments of ``env_id`` share their tools: ``build(kwargs)`` returns the
    keywords with the tools built (say, an index path replaced by one loaded search tool), and
    ``EnvSpec.factory`` calls it once for all the environments it makes."""
    SHARED_TOOL_BUILDERS[env_id] = build


def shared_tools(env_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``env_id``'s tools built once (``share_tools``), to hand to every environment."""
    build = SHARED_TOOL_BUILDERS.get(env_id)
    return build(dict(kwargs)) if build is not None else dict(kwargs)


def corpus_names(corpora: str | Sequence[str]) -> list[str]:
    """ "geo+zipcodes" (or ["geo", "zipcodes"]) -> ["geo", "zipcodes"]; a ValueError naming the
    shipped corpora for a name that is none of them."""
    from agentenv.corpora import SHIPPED_CORPORA

    names = corpora.split("+") if isinstance(corpora, str) else list(corpora)
    unknown = [name for name in names if name not in SHIPPED_CORPORA]
    if unknown or not names or len(set(names)) < len(names):
        raise ValueError(
            f"corpora {corpora!r}: name shipped corpora once each, joined by + "
            f"(the shipped ones: {', '.join(SHIPPED_CORPORA)}; e.g. geo+zipcodes)"
        )
    return names


def shipped_index_dir(corpora: str | Sequence[str] = "geo", show_progress: bool = True) -> Path:
    """The BM25 index of shipped corpora ("geo", "geo+zipcodes", ["geo", "zipcodes"]), their
    passages in one index, built on first use into the cache (~30 s for geo).

    The folder name carries each corpus's name and a hash of its passage file
    (``geo-3100728d7fcb``, ``geo-3100728d7fcb+zipcodes-…``), so a rebuilt corpus gets a fresh
    index. Passage ids differ across the shipped corpora (``city:``, ``country:``, ``zip:``,
    ``state:``, ``airport:``), so a hit says which corpus it came from.
    """
    from agentenv.corpora import load_corpus, shipped_path
    from agentenv.models import cache_dir
    from agentenv.tools.bm25 import BM25Index

    names = corpus_names(corpora)
    files = [shipped_path(name, "passages") for name in names]
    digests = [hashlib.sha256(path.read_bytes()).hexdigest()[:12] for path in files]
    target = cache_dir() / "indexes" / "+".join(f"{name}-{digest}" for name, digest in zip(names, digests, strict=True))
    if (target / "index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place, so a killed build leaves no half index.
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        passages = (passage for path in files for passage in load_corpus(path))
        BM25Index.build(passages, out_dir=staging / "index", show_progress=show_progress)
        try:
            (staging / "index").rename(target)
        except OSError:  # another process finished first; its index is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def geo_index_dir(show_progress: bool = True) -> Path:
    """The BM25 index of the shipped geo corpus (``shipped_index_dir("geo")``)."""
    return shipped_index_dir("geo", show_progress=show_progress)


def make_retriever(
    index: Any = None, retriever_url: str | list[str] | None = None, corpora: str | Sequence[str] = "geo"
) -> Any:
    """What the search tool searches: a client of ``retriever_url`` (one server, or a list that
    shares each turn's queries), an index folder or object, or else the index of the shipped
    ``corpora`` ("geo", "geo+zipcodes")."""
    if retriever_url is not None:
        from agentenv.tools.retrieval_client import RetrieverClient

        return RetrieverClient(retriever_url)
    if index is None or isinstance(index, str | os.PathLike):
        from agentenv.tools.bm25 import BM25Index

        return BM25Index.load(index or shipped_index_dir(corpora))
    return index


def make_search_tool(
    index: Any = None, retriever_url: str | list[str] | None = None, k: int = 3, max_tokens: int = 256,
    tokenizer: Any = None, corpora: str | Sequence[str] = "geo",
):
    """The search tool over ``make_retriever(index, retriever_url, corpora)``."""
    from agentenv.tools.search import search_tool

    return search_tool(make_retriever(index, retriever_url, corpora), k=k, max_tokens=max_tokens, tokenizer=tokenizer)


def _search_once(with_retriever: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``share_tools`` for the search environments: one retriever and one search tool for all."""

    def build(kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("search") is not None:
            return kwargs
        from agentenv.tools.search import search_tool

        tokenizer = kwargs.get("tokenizer", "embedded")
        if isinstance(tokenizer, str):
            from agentenv.models import load_tokenizer

            tokenizer = kwargs["tokenizer"] = load_tokenizer(tokenizer)
        corpora = kwargs.pop("corpora", "geo")
        try:
            corpus_names(corpora)
        except ValueError as error:
            raise EnvArgumentError(str(error), "corpora") from None
        retriever = make_retriever(kwargs.pop("index", None), kwargs.pop("retriever_url", None), corpora)
        kwargs["search"] = search_tool(
            retriever, k=kwargs.pop("k", 3), max_tokens=kwargs.pop("max_search_tokens", 256), tokenizer=tokenizer
        )
        if with_retriever:
            kwargs["retriever"] = retriever
        return kwargs

    return build


class CalculatorEnv(ToolEnv):
    """A ``ToolEnv`` whose oracle calculates a question's ``expression`` before answering."""

    def oracle_calls(self, question: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        calls = super().oracle_calls(question)
        if question.get("expression") and "calculator" in self.tools:
            calls.append(self.main_argument_call("calculator", question["expression"]))
        return calls


class SearchQAEnv(CalculatorEnv):
    """Search + calculator + answer. Its oracle searches for the titles of the passages a question
    was written from (its ``entities``, looked up in the retriever), or for the question itself
    when the retriever cannot say, then calculates, then answers."""

    def __init__(self, search: Any, retriever: Any = None, **env_kwargs: Any):
        super().__init__(tools=[search, calculator], **env_kwargs)
        self.retriever = retriever

    def oracle_calls(self, question: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        queries = self.entity_titles(question) or [question["question"]]
        return [self.main_argument_call("search", query) for query in queries] + super().oracle_calls(question)

    def entity_titles(self, question: Mapping[str, Any]) -> list[str]:
        get = getattr(self.retriever, "get", None)
        titles = []
        for entity in question.get("entities", []) if get is not None else []:
            try:
                titles.append(get(entity)["title"])
            except (KeyError, TypeError):
                continue
        return titles


def make_search_qa_env(
    index: Any = None,
    retriever_url: str | list[str] | None = None,
    questions: str | Sequence[dict[str, Any]] | None = "geo:train",
    k: int = 3,
    max_search_tokens: int = 256,
    tokenizer: Any = "embedded",
    search: Any = None,
    retriever: Any = None,
    corpora: str | Sequence[str] = "geo",
    **env_kwargs: Any,
) -> ToolEnv:
    """Search + calculator over a BM25 index (default: the index of the shipped ``corpora``, "geo"
    or several joined by + such as "geo+zipcodes"), a retrieval server, or a ``search`` tool built
    already (with the ``retriever`` it searches)."""
    if search is None:
        shared = _search_once(with_retriever=True)(
            {"index": index, "retriever_url": retriever_url, "k": k, "max_search_tokens": max_search_tokens,
             "tokenizer": tokenizer, "corpora": corpora}
        )
        search, retriever, tokenizer = shared["search"], shared["retriever"], shared["tokenizer"]
    return SearchQAEnv(
        search,
        retriever,
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
    retriever_url: str | list[str] | None = None,
    questions: str | Sequence[dict[str, Any]] | None = "geo:train",
    k: int = 3,
    max_search_tokens: int = 256,
    tokenizer: Any = "embedded",
    search: Any = None,
    corpora: str | Sequence[str] = "geo",
    **env_kwargs: Any,
) -> ToolEnv:
    """Retrieve-then-answer over a BM25 index (default: the index of the shipped ``corpora``), or
    ``search``."""
    if isinstance(tokenizer, str):
        from agentenv.models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    if search is None:
        search = make_search_tool(
            index, retriever_url, k=k, max_tokens=max_search_tokens, tokenizer=tokenizer, corpora=corpora
        )
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
    return CalculatorEnv(tools=[calculator], questions=questions, **env_kwargs)


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
