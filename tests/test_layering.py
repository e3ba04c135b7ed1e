"""The layering of src/synthpos is checked: no import cycle between modules, and the layers
declared in pyproject.toml (`[tool.importlinter]`) hold.

The module graph is built here from the source with `ast`, not by importing it: every
`import` counts wherever it is (module level, inside a function or a method, under `try`),
because a cycle through a function-level import is still a cycle (it only moves the failure
to run time). The one exemption is an `if TYPE_CHECKING:` block, which never runs.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "synthpos"


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of `package` under `src` by dotted name (a package is its `__init__`)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """The Import/ImportFrom nodes of `tree` at any depth, minus `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the `else:` of `if TYPE_CHECKING:` does run
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """`{module: {imported module of the package: line}}`.

    `from a.b import c` is an edge to `a.b.c` when `c` is a submodule, else to `a.b`;
    importing `a.b.c` also runs `a` and `a.b` (their `__init__`), so those are edges too,
    except to the importer's own ancestors (already running when it is imported).
    """
    modules = module_files(src, package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _imports(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets.append(prefix)
                targets += [f"{prefix}.{alias.name}" for alias in node.names if f"{prefix}.{alias.name}" in modules]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:i])
                    if ancestor in modules and ancestor != name and not name.startswith(ancestor + "."):
                        edges.setdefault(ancestor, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each with one
    cycle through it written out as a path `a -> b -> ... -> a`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_one_cycle(graph, set(c), c[0]) for c in components]


def _one_cycle(graph: dict[str, dict[str, int]], component: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside `component` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is in a cycle but none was found")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_no_import_cycle_between_modules():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(describe(graph, c) for c in cycles)


def test_the_graph_sees_what_it_must(tmp_path):
    """The checker itself: a cycle through a function-level import and a `from pkg import
    submodule` is found; one through `if TYPE_CHECKING:` is not; relative imports resolve."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n")
    (pkg / "e.py").write_text("from pkg.d import something\n")
    graph = import_graph(tmp_path, "pkg")
    assert set(graph["pkg.a"]) == {"pkg.sub", "pkg.sub.b"}
    assert set(graph["pkg.sub.b"]) == {"pkg.c"}
    assert set(graph["pkg.d"]) == set()
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert "pkg.a (line 2) -> pkg.sub.b (line 1) -> pkg.c (line 1) -> pkg.a" == describe(graph, cycles[0])


def test_layers_declared_in_pyproject_hold():
    """`lint-imports` checks the `[tool.importlinter]` contracts of pyproject.toml (layers)."""
    pytest.importorskip("importlinter", reason="import-linter is in the test extras: pip install -e .[test]")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    env = {"PYTHONPATH": str(SRC), "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
