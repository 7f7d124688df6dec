"""A rollout turn's tool time with tools shared by every environment against one tool per environment.

    nice .venv/bin/python bench/tool_batching.py [--envs 64] [--rounds 5]

Before environments were built from one ``EnvSpec``, each of a rollout's B·G environments built its
own search tool (over one shared index, or with a retrieval server its own HTTP client), so a
turn's calls reached the retriever one query at a time. Built from a spec, they share one tool, and
``step_batch`` hands it the whole turn: one ``search_batch`` over the index (its thread pool runs),
one HTTP request to the server. This measures one search turn of ``--envs`` environments both ways,
against the shipped geo index in this process and against ``agentenv serve-retriever`` on loopback
(a subprocess serving the same index), in one run: the queries are the first ``--envs`` geo dev
questions, and the time is ``step_batch``'s (tool calls, formatting and tokenising the output),
the median of ``--rounds`` turns. No model runs: the actions are the search calls themselves.

Prints one JSON line, appends a table to bench/RESULTS.md, and exits 1 when sharing is not faster
than one tool per environment in either setting (the ratio ``per-environment / shared`` > 1).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

import httpx
from common import append_section, command_line, machine, median

import agentenv  # noqa: F401  (registers the environments)
from agentenv.corpora import load_question_set
from agentenv.env import step_batch
from agentenv.envs import geo_index_dir, make_search_qa_env
from agentenv.models import load_tokenizer
from agentenv.spec import EnvSpec
from agentenv.tools.bm25 import BM25Index


def turn_seconds(envs: list, questions: list[dict], rounds: int) -> float:
    """The median time of ``step_batch`` over one search turn of every environment."""
    times = []
    for _ in range(rounds):
        for env, question in zip(envs, questions, strict=True):
            env.reset(options=question)
        actions = [f"<search>{question['question']}</search>" for question in questions]
        started = time.perf_counter()
        step_batch(envs, actions)
        times.append(time.perf_counter() - started)
    return median(times)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(index_dir: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "agentenv.cli", "serve-retriever", "--index", index_dir, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the retrieval server did not start within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=64, help="environments stepped together (B·G)")
    parser.add_argument("--rounds", type=int, default=5, help="turns measured per configuration; the median is kept")
    args = parser.parse_args()
    machine_at_start = machine()
    tokenizer = load_tokenizer("embedded")
    questions = [{"question": q["question"], "answers": q["answers"]} for q in load_question_set("geo:dev")[: args.envs]]
    index_dir = str(geo_index_dir())
    index = BM25Index.load(index_dir)

    rows = []
    # One index object for all: before the spec, the trainer already shared the loaded index,
    # but each environment wrapped it in a search tool of its own.
    per_env = [make_search_qa_env(index=index, questions=None, tokenizer=tokenizer) for _ in range(args.envs)]
    shared = EnvSpec("agentenv/SearchQA-v0", {"index": index, "questions": None}).factory(tokenizer).make(args.envs)
    rows.append({"retriever": "shipped geo index, in process",
                 "per_env_s": turn_seconds(per_env, questions, args.rounds),
                 "shared_s": turn_seconds(shared, questions, args.rounds)})
    server, url = serve(index_dir)
    try:
        per_env = [make_search_qa_env(retriever_url=url, questions=None, tokenizer=tokenizer) for _ in range(args.envs)]
        shared = EnvSpec("agentenv/SearchQA-v0", {"retriever_url": url, "questions": None}).factory(tokenizer).make(args.envs)
        rows.append({"retriever": "agentenv serve-retriever on loopback",
                     "per_env_s": turn_seconds(per_env, questions, args.rounds),
                     "shared_s": turn_seconds(shared, questions, args.rounds)})
    finally:
        server.terminate()
        server.wait()
    for row in rows:
        row["envs"] = args.envs
        row["speedup"] = round(row["per_env_s"] / row["shared_s"], 2)
        row["per_env_s"], row["shared_s"] = round(row["per_env_s"], 4), round(row["shared_s"], 4)
        row["goal_met"] = row["speedup"] > 1.0
        print(json.dumps(row), flush=True)
    append_section(
        "Tool batching: one search turn of B·G environments",
        command_line("tool_batching.py"),
        [machine_at_start, f"{len(index):,} passages; the median of {args.rounds} turns; goal: shared faster than "
                           "one tool per environment (speedup > 1)"],
        [("retriever", "retriever"), ("environments", "envs"), ("one tool per env s", "per_env_s"),
         ("shared tools s", "shared_s"), ("speedup", "speedup"), ("goal met", "goal_met")],
        rows,
    )
    return 0 if all(row["goal_met"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
