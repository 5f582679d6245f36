"""The modules of cclb_wire import each other without cycles.

The graph is read from the source (``ast`` over every ``.py`` of the package and its
subpackages, such as ``cclb_wire/runtime/``; for the Cython
extension, the top-level ``from . import`` lines of ``_codec.pyx`` and its ``.pxi``
files). Imports under ``if TYPE_CHECKING:`` never run and are left out.

Two checks:

* import time: the imports that run while a module is being imported (module level,
  class bodies, top-level ``if``/``try``) form no cycle, the package's
  ``__init__`` included;
* every import, deferred ones in function bodies too, forms no cycle among the
  submodules. The package's ``__init__`` is left out of this one: it is the facade
  that loads the codec backend and the plugin host on first use, and submodules
  read the selected backend from it, by design.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = "cclb_wire"
# The sources in the checkout: an installed wheel holds no .pyx/.pxi.
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "cclb_wire"
INIT = PACKAGE  # the node of the package's __init__.py

#: module -> {imported module: where (file:line)}
Graph = Dict[str, Dict[str, str]]


def _node(path: Path) -> str:
    """The module a source file defines (a package's ``__init__.py``: the package)."""
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _python_files() -> List[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def module_names() -> Set[str]:
    names = {_node(p) for p in _python_files()}
    return names | {f"{PACKAGE}.{p.stem}" for p in PACKAGE_DIR.glob("*.pyx")}


def _target(package: str, module: Optional[str], name: Optional[str], modules: Set[str]) -> str:
    """The node ``from {package}.{module} import {name}`` (or ``import``) depends on: the
    submodule it names when there is one, else the module (or package) itself."""
    base = package
    for part in (module or "").split(".") if module else []:
        if f"{base}.{part}" not in modules:
            break
        base = f"{base}.{part}"
    if name is not None and f"{base}.{name}" in modules:
        return f"{base}.{name}"  # ``from . import submodule``
    return base


def _package_of(node: str, is_package: bool) -> str:
    return node if is_package else node.rsplit(".", 1)[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: Set[str], package: str) -> Iterator[Tuple[str, int, bool]]:
    """(imported node, line, deferred) of each import of the package's own modules, for a
    module of ``package`` (relative imports count from there)."""

    def walk(node: ast.AST, deferred: bool) -> Iterator[Tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:  # the body is for type checkers only
                    yield from walk_stmt(stmt, deferred)
                continue
            yield from walk_stmt(child, deferred)

    def walk_stmt(node: ast.AST, deferred: bool) -> Iterator[Tuple[str, int, bool]]:
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                for alias in node.names:
                    yield _target(base, node.module, alias.name, modules), node.lineno, deferred
            elif node.level == 0 and node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
                relative = node.module[len(PACKAGE) + 1 :] or None
                for alias in node.names:
                    yield _target(PACKAGE, relative, alias.name, modules), node.lineno, deferred
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield _target(PACKAGE, alias.name[len(PACKAGE) + 1 :] or None, None, modules), node.lineno, deferred
        inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from walk(node, inner)

    yield from walk(tree, False)


_CYTHON_IMPORT = re.compile(r"^from \.(\w*) import ([\w, ()]+)", re.MULTILINE)


def _cython_imports(path: Path, modules: Set[str]) -> Iterator[Tuple[str, int, bool]]:
    """The extension's top-level relative imports (its sources are not Python syntax)."""
    text = path.read_text(encoding="utf-8")
    for match in _CYTHON_IMPORT.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        names = [n.strip() for n in match.group(2).strip("()").split(",") if n.strip()]
        for name in names:
            yield _target(PACKAGE, match.group(1) or None, name.split(" as ")[0], modules), line, False


def import_graph(include_deferred: bool) -> Graph:
    modules = module_names()
    graph: Graph = {m: {} for m in modules}
    sources: List[Tuple[str, Path, Iterator[Tuple[str, int, bool]]]] = []
    for path in _python_files():
        node = _node(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        sources.append((node, path, _imports(tree, modules, _package_of(node, path.stem == "__init__"))))
    for pyx in sorted(PACKAGE_DIR.glob("*.pyx")):
        node = f"{PACKAGE}.{pyx.stem}"
        for path in [pyx, *sorted(PACKAGE_DIR.glob("*.pxi"))]:
            sources.append((node, path, _cython_imports(path, modules)))
    for node, path, found in sources:
        for target, line, deferred in found:
            if target == node or (deferred and not include_deferred):
                continue
            graph[node].setdefault(target, f"{path.relative_to(PACKAGE_DIR)}:{line}")
    return graph


def find_cycles(graph: Graph) -> List[List[str]]:
    """One cycle (first node repeated at the end) per strongly connected component
    that has one (Tarjan's algorithm, then a path inside the component)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[Set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, {})):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, {}):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        start = min(component)
        # Breadth-first inside the component: the shortest way from start back to start.
        paths = {succ: [start, succ] for succ in sorted(graph[start]) if succ in component}
        queue = list(paths)
        while start not in paths:
            node = queue.pop(0)
            for succ in sorted(graph[node]):
                if succ in component and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    queue.append(succ)
        cycles.append(paths[start])
    return cycles


def describe(graph: Graph, cycle: List[str]) -> str:
    hops = " -> ".join(cycle)
    where = ", ".join(f"{a.rsplit('.', 1)[-1]}: {graph[a][b]}" for a, b in zip(cycle, cycle[1:]))
    return f"{hops} ({where})"


def test_no_import_cycle_at_import_time():
    graph = import_graph(include_deferred=False)
    cycles = find_cycles(graph)
    assert not cycles, "import cycle(s) among cclb_wire's modules:\n  " + "\n  ".join(describe(graph, c) for c in cycles)


def test_no_import_cycle_among_submodules_counting_deferred_imports():
    graph = import_graph(include_deferred=True)
    del graph[INIT]
    for edges in graph.values():
        edges.pop(INIT, None)
    cycles = find_cycles(graph)
    assert not cycles, "import cycle(s) among cclb_wire's submodules:\n  " + "\n  ".join(describe(graph, c) for c in cycles)


def test_the_graph_sees_the_imports():
    eager = import_graph(include_deferred=False)
    every = import_graph(include_deferred=True)
    assert "cclb_wire.host_rules" in eager["cclb_wire.host_types"]
    assert "cclb_wire._reasons" in eager["cclb_wire.host_rules"]
    assert "cclb_wire.host_types" not in eager["cclb_wire.host_rules"]
    assert "cclb_wire.host_types" in eager["cclb_wire._codec"]  # read from the .pyx
    assert "cclb_wire.runtime" not in eager[INIT]  # loaded on first use...
    assert "cclb_wire.runtime" in every[INIT]  # ...by a deferred import
    assert "cclb_wire.errors" in eager[INIT]
    # the runtime package: relative imports of both levels resolve to submodules
    assert "cclb_wire.runtime.host" in eager["cclb_wire.runtime"]
    assert "cclb_wire.runtime.binding" in eager["cclb_wire.runtime.host"]  # ``from . import binding``
    assert "cclb_wire.errors" in eager["cclb_wire.runtime.faults"]  # ``from ..errors import``
    assert "cclb_wire.runtime.adapters" in every["cclb_wire.runtime.host"]  # deferred


def test_a_cycle_is_named():
    graph: Graph = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:2"}, "c": {"a": "c.py:3"}, "d": {"a": "d.py:4"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(graph, ["a", "b", "c", "a"]) == "a -> b -> c -> a (a: a.py:1, b: b.py:2, c: c.py:3)"
    assert find_cycles({"a": {"a": "a.py:1"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b": "a.py:1"}, "b": {}}) == []
