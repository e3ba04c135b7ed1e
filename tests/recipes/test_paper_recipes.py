"""Every paper recipe against the official values, typed by hand in official_values.py.

An entry marked xfail(strict=True) in KNOWN_GAPS is a setting our recipe (or our schema) does
not match yet; once it is fixed the test passes, strict xfail turns that into a failure, and
the mark must go. docs/recipes.md explains every row and every gap.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from official_values import PUBLISHED, RECIPES, Official
from synthpos.config import load_config

ROOT = Path(__file__).resolve().parents[2]

#: (recipe glob, key) -> why our recipe does not match the official value yet (none at present; a
#: glob may use {a,b} alternatives). Deviations kept on purpose are not in the table: docs/recipes.md.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _brace(pattern: str) -> list[str]:
    match = re.search(r"\{([^}]*)\}", pattern)
    if not match:
        return [pattern]
    return [p for option in match.group(1).split(",") for p in _brace(pattern[: match.start()] + option + pattern[match.end():])]


def _gap(recipe: str, key: str) -> str | None:
    for (pattern, gap_key), reason in KNOWN_GAPS.items():
        if gap_key == key and any(Path(recipe).match(p) for p in _brace(pattern)):
            return reason
    return None


def _resolve(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if hasattr(node, part):
            node = getattr(node, part)
        elif hasattr(node, "section") and part in node.model_dump():
            node = node.section(part)  # a method's own settings section (pretrain.barlow_twins, ...)
        else:
            raise AssertionError(f"{dotted}: no such setting ({part!r} missing)")
    return node


def _same(ours: Any, official: Any) -> bool:
    if isinstance(official, (list, tuple)):
        return isinstance(ours, (list, tuple)) and len(ours) == len(official) and all(map(_same, ours, official))
    if isinstance(official, (int, float)) and not isinstance(official, bool):
        # Numbers compare by value (a float field holds the official integer 10 as 10.0), never with a bool.
        return isinstance(ours, (int, float)) and not isinstance(ours, bool) and ours == pytest.approx(official, rel=1e-9)
    return type(ours) is type(official) and ours == official


def _cases() -> list:
    cases = []
    for recipe, entries in RECIPES.items():
        for entry in entries:
            reason = _gap(recipe, entry.key)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(recipe, entry, id=f"{recipe.removeprefix('configs/')}:{entry.key}", marks=marks))
    return cases


_LOADED: dict[str, Any] = {}


def _load(recipe: str):
    if recipe not in _LOADED:
        _LOADED[recipe] = load_config(ROOT / recipe)
    return _LOADED[recipe]


@pytest.mark.parametrize(("recipe", "entry"), _cases())
def test_recipe_matches_official(recipe: str, entry: Official) -> None:
    ours = _resolve(_load(recipe), entry.key)
    assert _same(ours, entry.value), f"{recipe}: {entry.key} = {ours!r}, official {entry.value!r} ({entry.source})"


def test_every_paper_recipe_is_in_the_table() -> None:
    named = {str(p.relative_to(ROOT)) for p in ROOT.glob("configs/cifar*/clsp_*.yaml")}
    named |= {str(p.relative_to(ROOT)) for p in ROOT.glob("configs/imagenet/*.yaml")}
    assert named <= set(RECIPES), f"paper recipes without official values: {sorted(named - set(RECIPES))}"
    assert all(RECIPES.get(p) for p in named)
    # Every gap names a recipe and a key the table has (no stale marks).
    for pattern, key in KNOWN_GAPS:
        assert any(any(Path(r).match(p) for p in _brace(pattern)) and key in {e.key for e in RECIPES[r]} for r in RECIPES), (pattern, key)


@pytest.mark.parametrize(("recipe", "numbers"), [pytest.param(r, n, id=r.removeprefix("configs/")) for r, n in PUBLISHED.items()])
def test_header_quotes_the_published_numbers(recipe: str, numbers: tuple[float, float]) -> None:
    header = "".join(line for line in (ROOT / recipe).read_text().splitlines(keepends=True) if line.startswith("#"))
    backbone = "ResNet-50" if recipe.endswith("_resnet50.yaml") else "ResNet-18"
    published = next((line for line in header.splitlines() if "Published" in line), "")
    assert backbone in published and all(f"{n:.2f}" in published for n in numbers), published
    # The number `synthpos run` prints beside the run's own: the baseline's or CLSP's, per recipe.
    config = _load(recipe)
    ours = numbers[0] if "/clsp_baseline_" in recipe else numbers[1]
    assert config.published is not None and config.published.linear_top1 == pytest.approx(ours)
    assert "README.md:19-38" in config.published.source and backbone in config.published.source


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("configs/imagenet/*.yaml")))
def test_new_recipe_names_its_official_loader_and_loads_local_weights(recipe: str) -> None:
    text = (ROOT / recipe).read_text()
    assert "Follows the official" in text and "@" in text.split("Follows the official", 1)[1].splitlines()[0]
    config = _load(recipe)
    assert config.data.name == "image_folder" and config.data.test_root is not None
    assert not str(config.generate.generator).startswith(("stabilityai/", "http")), "weights come from a local folder"
