"""load_config: YAML recipes, --set overrides, errors that name the key, derived paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthpos.config import RunConfig, load_config, parse_overrides
from synthpos.errors import SynthposError


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


RECIPE = """\
run_dir: runs/exp1
seed: 3
data:
  name: fashion_mnist
  subset: 500
pretrain:
  epochs: 7
  batch_size: 64
  backbone:
    name: convnet
    width: 8
  synthetic:
    mode: clsp
    weight: 0.5
  augment:
    crop_scale: [0.2, 1.0]
"""


def test_defaults_without_file() -> None:
    cfg = load_config(None, [])
    assert cfg == RunConfig()
    assert cfg.pretrain.epochs == 1000 and cfg.generate.candidates == 8
    assert cfg.run_dir == Path("runs/default")


def test_yaml_values_are_read(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, RECIPE))
    assert cfg.run_dir == Path("runs/exp1")
    assert cfg.seed == 3
    assert cfg.data.subset == 500
    assert cfg.pretrain.epochs == 7 and cfg.pretrain.batch_size == 64
    assert cfg.pretrain.backbone.name == "convnet" and cfg.pretrain.backbone.width == 8
    assert cfg.pretrain.synthetic.mode == "clsp" and cfg.pretrain.synthetic.weight == 0.5
    assert tuple(cfg.pretrain.augment.crop_scale) == (0.2, 1.0)
    # Values the file does not name keep their defaults, also inside a section it does name.
    assert cfg.pretrain.temperature == 0.2
    assert cfg.pretrain.backbone.cifar_stem is True
    assert cfg.generate.num_steps == 100


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == RunConfig()


def test_set_overrides_nested_values_over_the_file(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, RECIPE),
        [
            "pretrain.epochs=12",  # overrides the file
            "pretrain.backbone.width=16",  # nested three deep, the section exists in the file
            "pretrain.optimizer.name=lars",  # a section the file does not have
            "train_generator.unet.block_out_channels=[8, 16]",  # YAML list
            "train_generator.unet.norm_num_groups=8",  # the channels must be multiples of it
            "generate.clip_x0=true",  # YAML bool
            "pretrain.optimizer.lr=1e-2",  # YAML float (exponent with a dot-free mantissa)
            "run_dir=runs/other",
        ],
    )
    assert cfg.pretrain.epochs == 12 and isinstance(cfg.pretrain.epochs, int)
    assert cfg.pretrain.backbone.width == 16
    assert cfg.pretrain.backbone.name == "convnet"  # the sibling from the file survives
    assert cfg.pretrain.optimizer.name == "lars"
    assert cfg.train_generator.unet.block_out_channels == [8, 16]
    assert cfg.generate.clip_x0 is True
    assert cfg.pretrain.optimizer.lr == pytest.approx(0.01)
    assert cfg.run_dir == Path("runs/other")


def test_set_null_clears_an_optional_value(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, RECIPE), ["data.subset=null"])
    assert cfg.data.subset is None
    cfg = load_config(_write(tmp_path, RECIPE), ["data.subset="])  # an empty value is null too
    assert cfg.data.subset is None


def test_set_value_keeps_text_after_an_equals_sign() -> None:
    cfg = load_config(None, ["data.root=/tmp/a=b"])
    assert cfg.data.root == Path("/tmp/a=b")


def test_later_set_wins() -> None:
    assert load_config(None, ["seed=1", "seed=2"]).seed == 2


def test_parse_overrides_types() -> None:
    assert parse_overrides(["a=1", "b=x", "c=[1, 2]", "d=null", "e=0.5", "f=no"]) == [
        ("a", 1), ("b", "x"), ("c", [1, 2]), ("d", None), ("e", 0.5), ("f", False),
    ]


# ----------------------------------------------------------------------------- errors


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "pretrain:\n  epochz: 3\n")
    with pytest.raises(SynthposError, match=r"pretrain\.epochz") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_top_level_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(SynthposError, match="pretrian"):
        load_config(_write(tmp_path, "pretrian:\n  epochs: 3\n"))


def test_unknown_key_via_set_is_named() -> None:
    with pytest.raises(SynthposError, match=r"generate\.candidatez"):
        load_config(None, ["generate.candidatez=3"])


def test_wrong_type_in_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SynthposError, match=r"pretrain\.epochs") as info:
        load_config(_write(tmp_path, "pretrain:\n  epochs: many\n"))
    assert "many" in str(info.value)


def test_wrong_type_via_set_is_named() -> None:
    with pytest.raises(SynthposError, match=r"pretrain\.batch_size"):
        load_config(None, ["pretrain.batch_size=big"])
    with pytest.raises(SynthposError, match=r"pretrain\.backbone\.name"):
        load_config(None, ["pretrain.backbone.name=vgg"])


def test_out_of_range_value_is_named() -> None:
    with pytest.raises(SynthposError, match=r"'generate\.clsp\.interpolation_weight'"):
        load_config(None, ["generate.clsp.interpolation_weight=1.5"])
    # The key's old spelling: the error names the key where it lives now (the deprecation line names both).
    with pytest.raises(SynthposError, match=r"generate\.clsp\.interpolation_weight"):
        load_config(None, ["generate.interpolation_weight=1.5"])


def test_negative_adaptive_noise_level_is_named() -> None:
    with pytest.raises(SynthposError, match=r"levels must be >= 0"):
        load_config(None, ["generate.unclip.adaptive_noise.levels=[-100, 0, 100, 200, 300]"])


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SynthposError, match="nope.yaml"):
        load_config(missing)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  name: fashion_mnist\n  subset: [1, 2\n")
    with pytest.raises(SynthposError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "line" in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SynthposError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_set_without_equals_is_named() -> None:
    with pytest.raises(SynthposError, match="pretrain.epochs") as info:
        load_config(None, ["pretrain.epochs"])
    assert "key=value" in str(info.value)


def test_set_with_empty_key() -> None:
    with pytest.raises(SynthposError, match="empty"):
        load_config(None, ["=3"])


def test_set_through_a_scalar_is_named(tmp_path: Path) -> None:
    # pretrain.epochs is a value; pretrain.epochs.x cannot exist.
    with pytest.raises(SynthposError, match=r"pretrain\.epochs\.x") as info:
        load_config(_write(tmp_path, RECIPE), ["pretrain.epochs.x=1"])
    assert "'epochs'" in str(info.value)
    # Also when the scalar came from another --set rather than the file.
    with pytest.raises(SynthposError, match=r"seed\.b"):
        load_config(None, ["seed=1", "seed.b=2"])


def test_set_into_a_section_replaced_by_a_scalar_is_an_error() -> None:
    with pytest.raises(SynthposError, match="pretrain"):
        load_config(None, ["pretrain=3"])


# ----------------------------------------------------------------------------- derived paths


def test_derived_paths_default_to_the_run_dir() -> None:
    cfg = load_config(None, ["run_dir=/tmp/r"])
    run = Path("/tmp/r")
    assert cfg.generator_dir == run / "generator"
    assert cfg.generator_model == run / "generator" / "model"
    assert cfg.store_dir == run / "store"
    assert cfg.pretrain_dir == run / "pretrain"
    assert cfg.backbone_path == run / "pretrain" / "backbone.pt"
    assert cfg.evaluate_dir == run / "evaluate"


def test_derived_paths_follow_explicit_settings() -> None:
    cfg = load_config(None, [
        "run_dir=/tmp/r", "generate.generator=/g/model", "generate.store=/s/gen",
        "pretrain.output_dir=/p/out",
    ])
    assert cfg.generator_model == Path("/g/model")
    assert cfg.store_dir == Path("/s/gen")  # pretraining reads the store generation wrote
    assert cfg.pretrain_dir == Path("/p/out")
    assert cfg.backbone_path == Path("/p/out/backbone.pt")
    # One store path for both stages: pretrain.store alone serves generation too; two different ones are an error.
    cfg = load_config(None, ["pretrain.store=/s/pre", "evaluate.checkpoint=/c/b.pt"])
    assert cfg.store_dir == Path("/s/pre")
    assert cfg.backbone_path == Path("/c/b.pt")
    with pytest.raises(SynthposError, match="generate.store and pretrain.store differ"):
        load_config(None, ["generate.store=/s/gen", "pretrain.store=/s/pre"])
