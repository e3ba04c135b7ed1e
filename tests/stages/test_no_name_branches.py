"""The stage layer and config.py branch on what a component or a stage declares, never on its name.

A comparison such as ``mode == "none"`` or ``stage.name == "generate"`` is a fact kept far from its
owner: a plugin mode that needs no store, or a new stage that runs on every rank, would be treated
wrongly without a word. This test reads the source (AST) of ``synthpos/stages/`` and
``synthpos/config.py`` and fails on any comparison of a value with a registered component's name or
a stage's name, and in config.py also on any table (dict literal) keyed by one (the stage layer's
dicts of results may have a key that is also a name, such as a store's ``anchors``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import synthpos
from synthpos.registry import DATASETS, GENERATORS, METHODS, MODES
from synthpos.stages.table import STAGES

SRC = Path(synthpos.__file__).resolve().parent
CHECKED = sorted((SRC / "stages").glob("*.py")) + [SRC / "config.py"]


def _names() -> set[str]:
    """Every registered method, mode, generator and dataset, and every stage of the table."""
    return {*METHODS.names(), *MODES.names(), *GENERATORS.names(), *DATASETS.names(), *(s.name for s in STAGES)}


def _literals(node: ast.expr) -> list[str]:
    """The string constants ``node`` is, or holds as a tuple, list or set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _literals(element)]
    return []


def name_branches(source: str, names: set[str], tables: bool = False) -> list[tuple[int, str]]:
    """(line, the named component) for each comparison with one of ``names`` (``tables``: and each dict literal
    keyed by one)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            found = [s for operand in (node.left, *node.comparators) for s in _literals(operand) if s in names]
        elif isinstance(node, ast.Dict) and tables:
            found = [s for key in node.keys if key is not None for s in _literals(key) if s in names]
        else:
            continue
        out += [(node.lineno, name) for name in found]
    return out


def test_the_probe_finds_each_form_of_a_name_branch() -> None:
    names = {"none", "clsp", "generate"}
    source = ('if mode == "none": pass\n'
              'x = kind in ("clsp", "other")\n'
              'y = "generate" != stage.name\n'
              'z = {"clsp": 1}\n'
              'ok = state == "done" and key in ("a", "b") and {"done": 1}\n')
    assert name_branches(source, names, tables=True) == [(1, "none"), (2, "clsp"), (3, "generate"), (4, "clsp")]
    assert name_branches(source, names) == [(1, "none"), (2, "clsp"), (3, "generate")]


def test_the_stage_layer_and_config_branch_on_no_component_or_stage_name() -> None:
    names = _names()
    assert {"none", "clsp", "simclr", "fashion_mnist", "generate", "train-generator"} <= names
    found = {f"{path.relative_to(SRC)}:{line}: {name!r}"
             for path in CHECKED for line, name in name_branches(path.read_text(), names, path.name == "config.py")}
    assert not found, "compare with what the component or stage declares, not its name:\n" + "\n".join(sorted(found))
