"""Keys that moved into a component's own section still work: the same resolved config, one stderr line each,
and the same stage records, so runs made before the move are not redone.

The generator's own settings moved from ``generate.<key>`` to ``generate.<kind>.<key>``
(``generate.num_steps`` -> ``generate.clsp.num_steps``); each generator declares its old keys
(``moved`` on its class). tests/stage_records_before_generate_sections.json holds the stage records
(settings and resolved values) that the code before the move computed for the config below, written
with that code (commit 8e7674f); today's must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import synthpos.config as config_module
from synthpos.config import load_config
from synthpos.registry import GENERATORS

PINNED = Path(__file__).with_name("stage_records_before_generate_sections.json")

# Every key CLSP took flat before, with a value other than its default.
CLSP_FLAT = {"num_steps": 20, "eta": 0.3, "interpolation_weight": 0.4, "clip_x0": True, "strength": 0.5,
             "sampler": "dpmsolver++", "share_anchor_noise": True, "guidance_scale": 1.0, "condition_noise": 0.0}


@pytest.fixture
def fresh_reports(monkeypatch):
    """Deprecation lines are printed once per key and process: start from none reported."""
    monkeypatch.setattr(config_module, "_REPORTED", set())


def test_every_moved_key_is_declared_by_the_generator_that_owns_it() -> None:
    moved = GENERATORS.moved_keys()
    assert {key for key, (owner, _) in moved.items() if owner == "clsp"} == set(CLSP_FLAT)
    for old, (owner, new) in moved.items():
        assert new in GENERATORS.get(owner).settings.model_fields, (old, owner, new)


def test_flat_keys_resolve_like_the_new_ones_with_one_line_each(fresh_reports, capsys, tmp_path: Path) -> None:
    old = load_config(None, [f"generate.{k}={json.dumps(v)}" for k, v in CLSP_FLAT.items()])
    lines = capsys.readouterr().err.splitlines()
    new = load_config(None, [f"generate.clsp.{k}={json.dumps(v)}" for k, v in CLSP_FLAT.items()])
    assert capsys.readouterr().err == ""
    assert old.model_dump(mode="json") == new.model_dump(mode="json")
    assert old.generate.clsp.model_dump() == {**new.generate.clsp.model_dump(), **CLSP_FLAT}
    assert lines == [f"synthpos: 'generate.{k}' is deprecated; write 'generate.clsp.{k}' instead "
                     "(docs/architecture.md: moved keys)" for k in CLSP_FLAT]
    # A recipe file with the flat keys (as the recipes were written before): the same config, no more lines.
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({"generate": {"candidates": 2, **CLSP_FLAT}}))
    assert load_config(recipe).generate.model_dump() == new.generate.model_copy(update={"candidates": 2}).model_dump()
    assert capsys.readouterr().err == ""  # each key's line was printed once already in this process


def test_a_flat_key_prints_exactly_one_line(fresh_reports, capsys) -> None:
    config = load_config(None, ["generate.num_steps=7"])
    assert capsys.readouterr().err.splitlines() == [
        "synthpos: 'generate.num_steps' is deprecated; write 'generate.clsp.num_steps' instead (docs/architecture.md: moved keys)"]
    assert config.generate.clsp.num_steps == 7
    assert config.generate.num_steps == 7  # reading it in Python: the same (its line was printed already)
    assert capsys.readouterr().err == ""


def test_the_later_setting_wins_whichever_spelling_each_uses(tmp_path: Path) -> None:
    assert load_config(None, ["generate.num_steps=7", "generate.clsp.num_steps=9"]).generate.clsp.num_steps == 9
    assert load_config(None, ["generate.clsp.num_steps=9", "generate.num_steps=7"]).generate.clsp.num_steps == 7
    # A recipe in the new spelling, an old --set: the --set wins (as it did before the move).
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"generate": {"clsp": {"strength": 0.7}}}))
    assert load_config(base, ["generate.strength=1.0"]).generate.clsp.strength == 1.0
    # A recipe extending one in the other spelling: the extending file wins, either way round.
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "base.yaml", "generate": {"strength": 0.4}}))
    assert load_config(child).generate.clsp.strength == 0.4
    base.write_text(yaml.safe_dump({"generate": {"strength": 0.7}}))
    child.write_text(yaml.safe_dump({"extends": "base.yaml", "generate": {"clsp": {"strength": 0.4}}}))
    assert load_config(child).generate.clsp.strength == 0.4
    # One file with both: the new spelling.
    base.write_text(yaml.safe_dump({"generate": {"strength": 0.7, "clsp": {"strength": 0.5}}}))
    assert load_config(base).generate.clsp.strength == 0.5


def test_stage_records_are_those_made_before_the_move() -> None:
    """A run recorded by the code before the move (flat keys) is current for today's code: same settings, same
    resolved generator record, for the config written either way."""
    pinned = json.loads(PINNED.read_text())
    from synthpos.stages import BY_NAME, expected_record

    common = ["run_dir=runs/pinned", "pretrain.synthetic.mode=clsp", "data.subset=8", "generate.candidates=2",
              "generate.shard_size=4", "pretrain.batch_size=4", "generate.generator=builtin:fashion_mnist",
              "evaluate.knn_k=5", "generate.precision=fp32", "train_generator.precision=fp32", "pretrain.precision=fp32"]
    sampler = {"num_steps": 5, "eta": 0.2, "interpolation_weight": 0.3, "clip_x0": "true"}
    for prefix in ("generate.", "generate.clsp."):
        config = load_config(None, [*common, *(f"{prefix}{k}={v}" for k, v in sampler.items())])
        for name, want in pinned.items():
            record = expected_record(BY_NAME[name], config)
            assert {"settings": record["settings"], "resolved": record["resolved"]} == want, (prefix, name)


def test_the_defaults_are_declared_where_the_components_register() -> None:
    from synthpos.registry import DATASETS, METHODS, MODES

    config = load_config(None)
    chosen = (config.data.name, config.pretrain.method, config.pretrain.synthetic.mode, config.generate.kind)
    assert chosen == (DATASETS.default, METHODS.default, MODES.default, GENERATORS.default)
    assert all(name in registry for name, registry in zip(chosen, (DATASETS, METHODS, MODES, GENERATORS)))
    with pytest.raises(ValueError, match="both declare themselves the default"):
        GENERATORS.register("second_default", default=True)(type("SecondDefault", (), {}))
    assert "second_default" not in GENERATORS


def test_config_py_names_no_component() -> None:
    """No registered name in a comparison or as a table's key in config.py (descriptions may mention them)."""
    import re

    from synthpos.registry import DATASETS, METHODS, MODES

    source = Path(config_module.__file__).read_text()
    for registry in (DATASETS, METHODS, MODES, GENERATORS):
        for name in registry:
            # (a Field's own default, Field("none", ...) of train_generator.loss_weighting, is a value, not a name)
            pattern = rf'(==|!=|\bin)\s*\(?"{re.escape(name)}"|"{re.escape(name)}"\s*:|(?<!Field)\(\s*"{re.escape(name)}"\s*,'
            assert not re.search(pattern, source), (registry.kind, name)
