"""The package layering, read from the source with ``ast`` (nothing is imported).

- The stages (index, diagnose, select, train, evaluate, serve) never import ``edray.world``: the skills
  world is one data source and one model among many, so it may use the stages' protocols, never the
  reverse.
- The package import graph (``edray.<a>`` imports ``edray.<b>``, at module level or inside a function)
  has no cycles. A top-level module (``edray/cli.py``) is a node of its own.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "edray"
STAGES = ("index", "diagnose", "select", "train", "evaluate", "serve")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """Every module an ``edray`` source file imports, anywhere in it, with the line number.

    ``from a.b import c`` yields ``a.b.c`` as well as ``a.b`` (``c`` may be a module); relative imports
    are resolved against the file's package.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return out


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _node(module: str) -> str | None:
    """``edray.<pkg>`` of a module inside edray (``edray`` itself for ``edray/__init__.py``)."""
    parts = module.split(".")
    if parts[0] != "edray":
        return None
    return ".".join(parts[:2])


def _is_source(node: str) -> bool:
    """``edray.<x>`` names a package folder or a module file of edray."""
    rel = Path(*node.split("."))
    return (ROOT.parent / rel).is_dir() or (ROOT.parent / rel.with_suffix(".py")).is_file()


def package_graph() -> dict[str, dict[str, list[str]]]:
    """``edray.<a>`` -> ``edray.<b>`` -> the ``file:line`` places that make the edge."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in _sources():
        src = _node(_module_name(path))
        for module, line in imported_modules(path):
            dst = _node(module)
            if dst is None or dst in (src, "edray") or not _is_source(dst):
                continue
            place = f"{path.relative_to(ROOT.parent)}:{line}"
            if place not in graph[src][dst]:
                graph[src][dst].append(place)
    return graph


def find_cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan), as a node path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(set(graph) | {w for e in graph.values() for w in e}):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:
        # A concrete cycle through the component's first node, by breadth-first search inside it.
        start, members = comp[0], set(comp)
        parent: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parent:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, {})):
                    if w in members and w not in parent:
                        parent[w] = v
                        nxt.append(w)
            frontier = nxt
        path, v = [start], parent[start]
        while v != start:
            path.append(v)
            v = parent[v]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def cyclic_components(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The packages of each cycle's strongly connected component (every package some cycle passes)."""
    reach: dict[str, set[str]] = {}
    for v in graph:
        seen, todo = set(), [v]
        while todo:
            for w in graph.get(todo.pop(), {}):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        reach[v] = seen
    comps = {tuple(sorted(w for w in reach[v] if v in reach.get(w, set()))) for v in graph if v in reach[v]}
    return sorted(list(c) for c in comps)


# --- the checker itself, on hand-made sources ----------------------------------------------------


def test_imports_are_found_anywhere_and_relative_ones_resolved(tmp_path):
    pkg = tmp_path / "edray" / "index"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(
        "import os\n"
        "from edray import world\n"
        "def f():\n"
        "    from edray.world.teacher import WorldTeacher\n"
        "    import edray.world.config as c\n"
        "from . import core\n"
        "from ..serve import engine\n"
    )
    found = {m for m, _ in imported_modules(pkg / "job.py", root=tmp_path / "edray")}
    assert {"os", "edray.world", "edray.world.teacher", "edray.world.config", "edray.index.core", "edray.serve.engine"} <= found


def test_cycle_finder_on_hand_made_graphs():
    assert find_cycles({"a": {"b": ["x"]}, "b": {"c": ["x"]}}) == []
    (cycle,) = find_cycles({"a": {"b": ["x"]}, "b": {"c": ["x"]}, "c": {"a": ["x"]}, "d": {"a": ["x"]}})
    assert cycle == ["a", "b", "c", "a"]
    assert find_cycles({"a": {"b": ["x"]}, "b": {"a": ["x"]}}) == [["a", "b", "a"]]


# --- the rules, on edray --------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_stages_never_import_the_world(stage):
    offending: dict[str, str] = {}
    for path in sorted((ROOT / stage).rglob("*.py")):
        for module, line in imported_modules(path):
            if module == "edray.world" or module.startswith("edray.world."):
                offending.setdefault(f"{path.relative_to(ROOT.parent)}:{line}", module)
    assert not offending, "\n".join(f"{place} imports {module}" for place, module in offending.items())


def test_package_import_graph_has_no_cycles():
    graph = package_graph()
    assert "edray.evaluate" in graph and "edray.serve" in graph["edray.evaluate"]  # the graph is read at all
    cycles = find_cycles(graph)
    lines = [f"packages on a cycle: {', '.join(c)}" for c in cyclic_components(graph)]
    for cycle in cycles:
        lines.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            lines.append(f"    {a} -> {b}: {', '.join(graph[a][b][:3])}")
    assert not cycles, "\n".join(lines)
