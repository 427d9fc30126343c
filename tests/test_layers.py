"""Arrows only run down, gateway -> tasks -> core -> handlers, and no module imports itself back.

The graph is read from the source with ``ast``, not from ``sys.modules``: an import inside a
function or under ``if TYPE_CHECKING:`` counts as much as one at the top, since each ties the two
modules together all the same. Relative imports are resolved; ``import a.b.c`` also imports the
packages ``a`` and ``a.b`` (Python runs their ``__init__`` first), except the packages that
contain the importing module, which Python has imported before it runs. A failure lists every
offending edge with its file and line. One module, a little over 250 lines: the walker and the
synthetic tree that proves each of its checks can fail belong together.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# top to bottom: a package may import its own layer and the layers below it, never one above
LAYERS = ("gateway", "tasks", "core", "handlers")


@dataclass(frozen=True)
class Edge:
    """One import of one of our modules by another, where the source says it."""

    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target}"


def find_modules(root: Path) -> dict[str, Path]:
    """Every module of the layered packages under ``root``, by dotted name."""
    found: dict[str, Path] = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _ours(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours a dotted name lands in (its longest known prefix), if any."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported(
    node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]
) -> set[str]:
    """Our modules an import statement imports, relative ones resolved against ``package``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        # `from a import b` imports the module a.b when there is one, else a name of a
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        ]
    return {found for name in names if (found := _ours(name, modules)) is not None}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def read_edges(root: Path) -> tuple[dict[str, Path], list[Edge], list[Edge]]:
    """The modules, the imports as written, and the graph's edges (with the parent packages)."""
    modules = find_modules(root)
    written: list[Edge] = []
    graph: list[Edge] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        shown = str(path.relative_to(root))
        tree = ast.parse(path.read_bytes(), filename=shown)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in sorted(_imported(node, package, modules)):
                written.append(Edge(name, target, shown, node.lineno))
                if target != name:
                    graph.append(Edge(name, target, shown, node.lineno))
                # the packages Python runs first, less this one and those it ran before this module
                for package_run in _ancestors(target):
                    if package_run not in (*_ancestors(name), name) and package_run in modules:
                        graph.append(Edge(name, package_run, shown, node.lineno))
    return modules, written, graph


def upward_arrows(written: list[Edge]) -> list[str]:
    """Each import of a layer above the importer's, as a line of the failure message."""
    rank = {layer: index for index, layer in enumerate(LAYERS)}
    found = []
    for edge in written:
        source, target = edge.source.split(".")[0], edge.target.split(".")[0]
        if rank[target] < rank[source]:
            found.append(f"{edge} ({source} may not import {target})")
    return sorted(found)


def strongly_connected(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(edges.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(edges.get(successor, ()))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def import_cycles(modules: dict[str, Path], graph: list[Edge]) -> list[str]:
    """Each cycle (a strongly connected component of two or more modules), with its edges."""
    successors: dict[str, list[str]] = {}
    for edge in graph:
        successors.setdefault(edge.source, []).append(edge.target)
    found = []
    for component in strongly_connected(sorted(modules), successors):
        members = set(component)
        inside = [e for e in graph if e.source in members and e.target in members]
        if len(component) > 1:
            lines = "".join(f"\n    {edge}" for edge in sorted(set(inside), key=str))
            found.append(f"cycle of {len(component)}: {', '.join(component)}{lines}")
    return sorted(found)


@cache
def _tree() -> tuple[dict[str, Path], list[Edge], list[Edge]]:
    return read_edges(ROOT)


def test_the_walk_sees_the_whole_tree() -> None:
    started = time.perf_counter()
    modules, written, _ = read_edges(ROOT)
    elapsed = time.perf_counter() - started
    assert len(modules) > 50, sorted(modules)
    pairs = {(edge.source, edge.target) for edge in written}
    # a known downward arrow across layers, and one of ours inside a layer
    assert ("gateway.main", "tasks.pipelined") in pairs
    assert ("tasks.broker", "tasks.broker_fetch") in pairs
    layer_pairs = {(s.split(".")[0], t.split(".")[0]) for s, t in pairs}
    assert {("gateway", "tasks"), ("tasks", "core"), ("core", "handlers")} <= layer_pairs
    # ~0.1 s on the 2-core CI machine; a bound that holds under load, so the test stays cheap
    assert elapsed < 5.0, f"reading the import graph took {elapsed:.2f}s"


def test_arrows_only_run_down() -> None:
    _, written, _ = _tree()
    found = upward_arrows(written)
    assert not found, (
        "imports of a layer above (order: " + " -> ".join(LAYERS) + "):\n" + ("\n".join(found))
    )


def test_no_import_cycles() -> None:
    modules, _, graph = _tree()
    found = import_cycles(modules, graph)
    assert not found, "import cycles between our modules:\n" + "\n".join(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for layer in LAYERS:
        (root / layer).mkdir(exist_ok=True)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """Each way an arrow can hide is found: relative, in a function, type-only, via a package."""
    _write(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/api.py": "import tasks.work\n",
            "tasks/__init__.py": "",
            "tasks/work.py": "def f():\n    from ..gateway import api\n",
            "tasks/deep/__init__.py": "from tasks.deep import leaf\n",
            "tasks/deep/leaf.py": "from . import other\n",
            "tasks/deep/other.py": "",
            "core/__init__.py": "",
            "core/a.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from core import b\n"
            ),
            "core/b.py": "from .a import x\n",
            "handlers/__init__.py": "",
            "handlers/h.py": "import core.a\n",
            "handlers/pkg/__init__.py": "from handlers.pkg.impl import f\n",
            "handlers/pkg/impl.py": "from handlers.pkg import other, g\n",
            "handlers/pkg/other.py": "",
        },
    )
    modules, written, graph = read_edges(tmp_path)
    arrows = upward_arrows(written)
    assert arrows == [
        "handlers/h.py:1: handlers.h -> core.a (handlers may not import core)",
        "tasks/work.py:2: tasks.work -> gateway.api (tasks may not import gateway)",
    ]
    cycles = import_cycles(modules, graph)
    assert [c.splitlines()[0] for c in cycles] == [
        "cycle of 2: core.a, core.b",
        "cycle of 2: gateway.api, tasks.work",
        "cycle of 2: handlers.pkg, handlers.pkg.impl",
    ]
    # a package that gathers its own modules is no cycle; a module taking a name from its own
    # package's __init__ is (above)
    assert ("tasks.deep.leaf", "tasks.deep.other") in {(e.source, e.target) for e in graph}
    assert not any(e.target == "tasks.deep" for e in graph if e.source.startswith("tasks.deep"))
