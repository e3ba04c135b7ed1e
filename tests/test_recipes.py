"""Every recipe resolves (extends merged, validated) to the tree checked in as tests/configs_snapshot.json.

A change to a shared block in configs/_base/ changes every recipe that extends it; this
test shows each such change in review. After an intended change, regenerate the snapshot:

    PYTHONPATH=src python tests/test_recipes.py --update
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from synthpos.compose import read_recipe
from synthpos.config import load_config
from synthpos.errors import SynthposError

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).with_name("configs_snapshot.json")
PACKAGE_RECIPES = REPO / "src" / "synthpos" / "recipes"


def recipes() -> list[Path]:
    """Every runnable recipe: configs/ (shared blocks in configs/_base/ are not recipes) and the package's."""
    found = [p for p in sorted((REPO / "configs").rglob("*.yaml")) if "_base" not in p.relative_to(REPO).parts]
    return found + sorted(p for p in PACKAGE_RECIPES.rglob("*.yaml") if "_base" not in p.parts)


def resolved() -> dict[str, dict]:
    return {str(p.relative_to(REPO)): load_config(p).model_dump(mode="json") for p in recipes()}


def test_every_recipe_resolves_to_the_snapshot() -> None:
    snapshot = json.loads(SNAPSHOT.read_text())
    now = resolved()
    assert sorted(now) == sorted(snapshot), "recipes added or removed: regenerate the snapshot (see the docstring)"
    changed = [name for name in now if now[name] != snapshot[name]]
    assert not changed, f"resolved values changed in {changed}; if intended, regenerate the snapshot"


def test_extends_merges_in_order_then_set_overrides(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "a.yaml").write_text("seed: 1\npretrain: {epochs: 3, batch_size: 8, optimizer: {lr: 0.1}}\n")
    (tmp_path / "base" / "b.yaml").write_text("extends: a.yaml\npretrain: {epochs: 4, optimizer: {momentum: 0.5}}\n")
    (tmp_path / "r.yaml").write_text("extends: [base/b.yaml]\nseed: 2\npretrain: {batch_size: 16}\n")
    config = load_config(tmp_path / "r.yaml", ["pretrain.epochs=7"])
    assert config.seed == 2 and config.pretrain.batch_size == 16 and config.pretrain.epochs == 7
    assert config.pretrain.optimizer.lr == 0.1 and config.pretrain.optimizer.momentum == 0.5  # merged, not replaced
    assert read_recipe(tmp_path / "base" / "b.yaml")["pretrain"]["epochs"] == 4


@pytest.mark.parametrize(("text", "message"), [
    ("extends: missing.yaml\n", "extends missing.yaml, which does not exist"),
    ("extends: r.yaml\n", "extend each other in a loop"),
    ("extends: {a: 1}\n", "must be a file name or a list"),
])
def test_bad_extends_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(SynthposError, match=message):
        load_config(tmp_path / "r.yaml")


def test_package_recipes_resolve_their_parents_inside_the_package(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("extends: synthpos:recipes/quickstart.yaml\nseed: 9\n")
    mine = load_config(tmp_path / "mine.yaml")
    quickstart = load_config(PACKAGE_RECIPES / "quickstart.yaml")
    assert mine.seed == 9 and mine.model_copy(update={"seed": quickstart.seed}) == quickstart


def test_a_moved_key_still_works_with_one_deprecation_line(capsys) -> None:
    import synthpos.config

    synthpos.config._REPORTED.clear()
    for _ in range(2):
        config = load_config(None, ["pretrain.method=dclw", "pretrain.dclw_sigma=0.3"])
        assert config.pretrain.section("dclw").sigma == 0.3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'pretrain.dclw_sigma' is deprecated; write 'pretrain.dclw.sigma'" in lines[0]
    # The new spelling wins where a recipe writes both.
    both = load_config(None, ["pretrain.method=dclw", "pretrain.dclw_sigma=0.3", "pretrain.dclw.sigma=0.7"])
    assert both.pretrain.section("dclw").sigma == 0.7


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    SNAPSHOT.write_text(json.dumps(resolved(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} ({len(recipes())} recipes)")
