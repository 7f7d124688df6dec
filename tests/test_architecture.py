"""The package's shape: no import cycle among its modules, imports that go one way between the
trainer's parts, and an ``import agentenv`` that loads neither torch nor transformers.

Imports are read from the source (every ``import`` statement, inside functions too), so a cycle
that only closes at run time, through a deferred import, is still a cycle here."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The folders setuptools maps into the one ``agentenv`` namespace (pyproject.toml's package-dir).
PACKAGES = {"agentenv": ROOT / "agentenv", "agentenv.tools": ROOT / "tools",
            "agentenv.trainers": ROOT / "trainers", "agentenv.corpora": ROOT / "corpora"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (``from a import b`` is ``a.b`` when that is a
    module, else ``a``)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in known else node.module)
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_package_imports_itself_through_others():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _imports_of(prefix: str) -> dict[str, set[str]]:
    return {name: targets for name, targets in import_graph().items() if name.startswith(prefix)}


def test_the_algorithms_do_not_import_the_loop_or_evaluation():
    offending = {name: sorted(t for t in targets if t.startswith(("agentenv.trainers.loop", "agentenv.trainers.evaluation")))
                 for name, targets in _imports_of("agentenv.trainers.algorithms").items()}
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_evaluation_does_not_import_training_except_the_experiment_runner_that_trains_its_rows():
    training = ("agentenv.trainers.loop.train", "agentenv.trainers.loop.build", "agentenv.trainers.loop.sampling",
                "agentenv.trainers.loop.held_out")
    offending = {name: sorted(t for t in targets if t.startswith(training))
                 for name, targets in _imports_of("agentenv.trainers.evaluation").items()
                 if name != "agentenv.trainers.evaluation.experiment"}
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_the_env_core_and_the_tools_do_not_import_the_trainer():
    offending = {name: sorted(t for t in targets if t.startswith("agentenv.trainers"))
                 for name, targets in import_graph().items() if not name.startswith("agentenv.trainers")}
    # The package's Python API (agentenv.train, agentenv.evaluate) starts the trainer when called.
    offending.pop("agentenv", None)
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_importing_agentenv_loads_neither_torch_nor_transformers():
    code = ("import sys, agentenv, agentenv.tools.retrieval_client, agentenv.tools.server; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == "[]"
