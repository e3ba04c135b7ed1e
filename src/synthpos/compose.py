"""Composable recipes: a YAML recipe may ``extends:`` others, deep-merged in order.

::

    # configs/cifar100/simclr.yaml
    extends: ../cifar10/simclr.yaml        # one file, or a list: [../_base/a.yaml, b.yaml]
    run_dir: runs/cifar100_simclr
    data: {name: cifar100}

Each parent is read (with its own ``extends``) and merged into the ones before it; the
recipe's own keys come last. Mappings merge key by key; any other value (a list, a
number) replaces what was there. ``--set`` overrides are applied to the result, and the
whole tree is validated once (:func:`synthpos.config.load_config`).

A parent is found relative to the recipe that names it, so a recipe shipped inside the
package (``synthpos/recipes/``) resolves its parents inside the installed package just as
one in the repository does; ``synthpos:recipes/quickstart.yaml`` names a file of the
installed package from anywhere.
"""

from __future__ import annotations

from importlib import resources
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from synthpos.errors import SynthposError

__all__ = ["deep_merge", "read_recipe", "resolve_parent"]

PACKAGE_PREFIX = "synthpos:"


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``: mappings merged recursively, anything else replaced (new dicts; inputs untouched)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_parent(name: str, recipe: Path) -> Path:
    """Where the parent ``name`` of ``recipe`` lives: relative to the recipe, absolute, or ``synthpos:<path>``."""
    if name.startswith(PACKAGE_PREFIX):
        return Path(str(resources.files("synthpos").joinpath(name[len(PACKAGE_PREFIX):])))
    path = Path(name).expanduser()
    return path if path.is_absolute() else recipe.parent / path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SynthposError(f"{path} is not valid YAML{at}; fix the syntax there") from err
    if not isinstance(tree, dict):
        raise SynthposError(f"{path} must hold a mapping of sections (data:, pretrain:, ...), not a {type(tree).__name__}")
    return tree


def read_recipe(path: Path, _chain: tuple[Path, ...] = (),
                normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The recipe at ``path`` with every ``extends`` resolved and merged (not validated).

    ``normalize`` rewrites each file's tree before it is merged (the config spells moved keys anew
    there, so a later file or ``--set`` overrides an earlier one whichever spelling each uses).

    Raises:
        SynthposError: the file or a parent is missing or not YAML, ``extends`` is not a
            file name or a list of them, or recipes extend each other in a loop.
    """
    path = Path(path)
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise SynthposError(f"recipes extend each other in a loop ({loop}); remove one of these extends")
    tree = _read_yaml(path)
    if normalize is not None:
        tree = normalize(tree)
    parents = tree.pop("extends", None)
    if parents is None:
        return tree
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SynthposError(f"{path}: 'extends' must be a file name or a list of them, got {parents!r}")
    merged: dict[str, Any] = {}
    for name in parents:
        parent = resolve_parent(name, path)
        if not parent.is_file():
            raise SynthposError(f"{path} extends {name}, which does not exist ({parent}); fix the path "
                                "(it is relative to the recipe that names it)")
        merged = deep_merge(merged, read_recipe(parent, (*_chain, path.resolve()), normalize))
    return deep_merge(merged, tree)
