"""Whether a setting decides a stage's output is declared on its field (config.py's ``NO_OUTPUT``,
``RECORDED_RESOLVED``, a list of stages), and the stage table reads it from there."""

from __future__ import annotations

from pydantic import BaseModel, Field

from synthpos.config import load_config
from synthpos.stages import BY_NAME
from synthpos.stages.table import output_neutral

# The hand-kept lists the field declarations replaced (stages.py before the stage layer): the
# reference the declarations must reproduce, so every stage record stays byte-identical.
# data.num_workers came later (streaming), speed only from the start: the batches are the same whatever the count.
_TRAIN_ONLY = {"data.test_root", "data.num_workers"}
_TRAIN_GENERATOR = {"train_generator.num_threads", "train_generator.channels_last", "train_generator.precision",
                    "train_generator.checkpoint_every", "train_generator.checkpoint_every_minutes",
                    "train_generator.loggers"}
_PRETRAIN = {"pretrain.store", "pretrain.output_dir", "pretrain.num_threads", "pretrain.channels_last",
             "pretrain.precision", "pretrain.knn_every_epochs", "pretrain.knn_subset", "pretrain.checkpoint_every_epochs",
             "pretrain.checkpoint_every_minutes", "pretrain.verify_store", "pretrain.compile", "pretrain.loggers"}
_BEFORE = {
    "encoder": _TRAIN_ONLY | _PRETRAIN | {"pretrain.synthetic"},
    "train-generator": _TRAIN_ONLY | _TRAIN_GENERATOR,
    "generate": _TRAIN_ONLY,
    "pretrain": _TRAIN_ONLY | _PRETRAIN,
    "evaluate": {"evaluate.batch_size", "evaluate.checkpoint", "data.num_workers"},
}


def _left_out_under_decides(name: str, config) -> set[str]:
    stage = BY_NAME[name]
    return {k for k in stage.left_out(config) if any(k == p or k.startswith(p + ".") for p in stage.decides)}


def test_the_declared_fields_are_the_keys_the_lists_named():
    config = load_config(None, ["train_generator.condition={}"])  # a nested optional section, set
    for name, keys in _BEFORE.items():
        assert _left_out_under_decides(name, config) == keys, name


def test_a_speed_setting_leaves_the_record_and_an_output_setting_changes_it():
    base = load_config(None, [])
    pretrain = BY_NAME["pretrain"]
    for key, value in (("pretrain.num_threads", 3), ("pretrain.compile", True), ("pretrain.precision", "fp32"),
                       ("pretrain.store", "elsewhere"), ("data.test_root", "test")):
        assert pretrain.settings(load_config(None, [f"{key}={value}"])) == pretrain.settings(base), key
    assert pretrain.settings(load_config(None, ["pretrain.epochs=2"])) != pretrain.settings(base)
    # data.test_root decides only the evaluation's output
    evaluate = BY_NAME["evaluate"]
    assert evaluate.settings(load_config(None, ["data.test_root=test"])) != evaluate.settings(base)


class _Inner(BaseModel):
    speed: int = Field(1, json_schema_extra={"affects_output": False})
    size: int = 2


class _Outer(BaseModel):
    inner: _Inner = _Inner()
    maybe: _Inner | None = None
    only_b: int = Field(0, json_schema_extra={"affects_output": ["b"]})
    resolved: str = Field("auto", json_schema_extra={"affects_output": "resolved"})


def test_the_walk_follows_nested_sections_and_reads_each_kind_of_mark():
    assert set(output_neutral(_Outer(), "a")) == {"inner.speed", "only_b", "resolved"}
    assert set(output_neutral(_Outer(), "b")) == {"inner.speed", "resolved"}
    assert set(output_neutral(_Outer(maybe=_Inner()), "b")) == {"inner.speed", "maybe.speed", "resolved"}
