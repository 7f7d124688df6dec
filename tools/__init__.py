"""Tools an agent can call: the protocol, the calculator, BM25 search (local or over HTTP)."""

from agentenv.tools.base import Retrieved, Tool, ToolError, ToolOutput, ToolUnavailable, tool
from agentenv.tools.calculator import calculator

__all__ = ["BM25Index", "Retrieved", "RetrieverClient", "Tool", "ToolError", "ToolOutput", "ToolUnavailable", "calculator", "search_tool", "tool"]

# Retrieval pulls in tantivy and httpx; import it only when asked for.
_LAZY = {
    "BM25Index": "agentenv.tools.bm25",
    "search_tool": "agentenv.tools.search",
    "RetrieverClient": "agentenv.tools.retrieval_client",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentenv.tools' has no attribute {name!r}")
