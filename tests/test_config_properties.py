"""Every bad config value is caught at the edge: property-based, in-process.

Invalid values are drawn for the fields of every stage's section (read from the schema: past
each declared bound, of the wrong type, outside a Literal's choices) and for the orderings and
limits between fields; each goes through the real CLI entry point (``synthpos run``), which must
exit with code 2 and one ``error:`` line naming the field, raise nothing else, and write nothing.
Valid values drawn inside the same bounds must be accepted.

How many examples ran: ``pytest --hypothesis-show-statistics tests/test_config_properties.py``
(hypothesis's own count; a strategy that filters most draws away fails its health check).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import typing
from pathlib import Path

import annotated_types as at
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from synthpos import cli
from synthpos.config import RunConfig, load_config
from synthpos.registry import GENERATORS

def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, typing.Any, list]]:
    out = []
    for name, field in model.model_fields.items():
        key, annotation = prefix + name, field.annotation
        nested = [a for a in (typing.get_args(annotation) or (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested and typing.get_origin(annotation) is not list:
            out += _leaves(nested[0], key + ".")
        else:
            out.append((key, annotation, list(field.metadata)))
    return out


# generate.kind is a free string checked by the generator registry; `sections` is where a section keeps
# its components' own settings sections (written under their own keys, e.g. pretrain.barlow_twins), not a key.
# evaluate.knn_k is a k or a grid of them (int | list[int]): its checks are tested in tests/evaluation/test_protocols.py.
FIELDS = [f for f in _leaves(RunConfig) if f[0] not in ("generate.kind", "evaluate.knn_k") and not f[0].endswith(".sections")]
# Each generator's own settings (generate.clsp.*, generate.unclip.*), declared on its class.
FIELDS += [f for name, cls in GENERATORS.items() if cls.settings is not None for f in _leaves(cls.settings, f"generate.{name}.")]

# Optional sections with a required key: a draw inside one sets that key too (an existing file), so the draw is
# judged on its own value, not on the section's missing key.
_REQUIRED = {"train_generator.condition.": [f"train_generator.condition.encoder={__file__}"]}


def _with_required(key: str) -> list[str]:
    return [o for prefix, needed in _REQUIRED.items() if key.startswith(prefix)
            for o in needed if not o.startswith(key + "=")]


def _bounds(metadata: list) -> dict[str, float]:
    out = {}
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(at, attr.capitalize())):
                out[attr] = getattr(m, attr)
    return out


def _is(annotation, kind) -> bool:
    return annotation is kind or kind in typing.get_args(annotation)


def _invalid_values(annotation, metadata: list) -> st.SearchStrategy:
    """Values the field must refuse on its own."""
    if typing.get_origin(annotation) is typing.Literal or any(typing.get_origin(a) is typing.Literal
                                                                for a in typing.get_args(annotation)):
        choices = {c for a in (annotation, *typing.get_args(annotation)) for c in typing.get_args(a) if isinstance(c, str)}
        return st.text(alphabet="abcxyz_", min_size=1, max_size=8).filter(lambda t: t not in choices and not t.isdigit())
    if _is(annotation, bool):
        return st.sampled_from(["maybe", "2", [True]])
    listed = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple) or (listed and all(typing.get_origin(a) in (list, tuple)
                                                                         for a in listed)):
        return st.sampled_from(["x", 3, [["x"]], {"a": 1}])
    numeric = [k for k in (int, float) if _is(annotation, k)]
    if numeric:
        wrong_type = st.sampled_from(["many", [1], {"a": 1}])
        bounds = _bounds(metadata)
        integer = numeric == [int]
        below = []
        for attr, limit in bounds.items():
            if attr in ("ge", "gt"):
                top = limit - 1 if integer and attr == "ge" else limit if attr == "gt" else limit - 1e-3
                below.append(st.integers(max_value=int(math.floor(top)), min_value=-10**6) if integer
                             else st.floats(max_value=top, min_value=-1e6, allow_nan=False))
            else:
                bottom = limit + 1 if integer and attr == "le" else limit if attr == "lt" else limit + 1e-3
                below.append(st.integers(min_value=int(math.ceil(bottom)), max_value=10**9) if integer
                             else st.floats(min_value=bottom, max_value=1e6, allow_nan=False))
        step = next((m.multiple_of for m in metadata if isinstance(m, at.MultipleOf)), None)
        if step:
            below.append(st.integers(1, 100).map(lambda i: i * step + 1))
        return st.one_of(wrong_type, *below)
    return st.sampled_from([[1, 2], {"a": 1}])  # paths: a list or a mapping is never one


def _valid_values(annotation, metadata: list) -> st.SearchStrategy | None:
    """Values within the field's own bounds (None: no general recipe, e.g. lists with rules of their own)."""
    if typing.get_origin(annotation) is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if _is(annotation, bool):
        return st.booleans()
    bounds = _bounds(metadata)
    if annotation in (int, int | None):
        low = bounds.get("ge", bounds.get("gt", -10) + 1)
        high = bounds.get("le", bounds.get("lt", low + 10**4) - 1)
        step = next((m.multiple_of for m in metadata if isinstance(m, at.MultipleOf)), 1)
        return st.integers(min_value=-(-int(low) // step), max_value=int(high) // step).map(lambda i: i * step)
    if annotation in (float, float | None):
        low = bounds.get("ge", bounds.get("gt", -10.0))
        high = bounds.get("le", bounds.get("lt", low + 10.0))
        return st.floats(min_value=low, max_value=high, exclude_min="gt" in bounds, exclude_max="lt" in bounds,
                         allow_nan=False)
    return None


# Orderings and limits between fields: (overrides, the key the message must name).
def _cross_field() -> st.SearchStrategy:
    crop = st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).filter(lambda t: t[0] > t[1]).map(
        lambda t: ([f"pretrain.augment.crop_scale=[{t[0]}, {t[1]}]"], "pretrain.augment.crop_scale"))
    crop_above_one = st.floats(1.001, 10).map(lambda h: ([f"pretrain.augment.crop_scale=[0.5, {h}]"], "pretrain.augment.crop_scale"))
    groups = st.sampled_from([3, 5, 7]).map(lambda g: ([f"train_generator.unet.norm_num_groups={g}"], "unet.norm_num_groups"))
    levels = st.integers(4, 9).map(lambda lv: ([f"train_generator.unet.attention_levels=[{lv}]"], "unet.attention_levels"))
    sample = st.integers(8, 200).filter(lambda s: s % 8).map(
        lambda s: ([f"train_generator.sample_size={s}"], "train_generator.sample_size"))
    batch = st.integers(2, 500).flatmap(lambda n: st.integers(n + 1, 4 * n + 2).map(
        lambda b: ([f"data.subset={n}", f"pretrain.batch_size={b}"], "pretrain.batch_size")))
    split = st.integers(2, 8).flatmap(lambda d: st.integers(2, 400).filter(lambda b: b % d).map(
        lambda b: ([f"pretrain.devices={d}", f"pretrain.batch_size={b}"], "pretrain.batch_size")))
    knn = st.integers(1, 300).flatmap(lambda m: st.integers(m + 1, 2 * m + 1).map(
        lambda k: ([f"evaluate.max_train={m}", f"evaluate.knn_k={k}"], "evaluate.knn_k")))
    anchors = st.integers(2, 300).flatmap(lambda n: st.integers(n + 1, 2 * n).map(
        lambda a: ([f"data.subset={n}", f"generate.num_anchors={a}", "pretrain.batch_size=2",
                    "pretrain.synthetic.mode=clsp"], "generate.num_anchors")))
    positives = st.integers(1, 8).flatmap(lambda k: st.integers(k + 1, 16).map(
        lambda p: ([f"generate.candidates={k}", f"pretrain.synthetic.positives={p}", "pretrain.synthetic.mode=multipos"],
                   "pretrain.synthetic.positives")))
    steps = st.integers(2, 100).flatmap(lambda t: st.integers(t + 1, 3 * t).map(
        lambda s: ([f"train_generator.num_train_timesteps={t}", f"generate.clsp.num_steps={s}", "pretrain.synthetic.mode=clsp"],
                   "generate.clsp.num_steps")))
    milestones = st.floats(1.01, 5).map(lambda m: ([f"evaluate.linear.milestones=[0.5, {m}]"], "evaluate.linear.milestones"))
    subset = st.integers(60001, 10**6).map(lambda n: ([f"data.subset={n}"], "data.subset"))
    missing = st.sampled_from([
        (["pretrain.synthetic.mode=quality", "pretrain.synthetic.scorer=/nonexistent/scorer.pt"], "pretrain.synthetic.scorer"),
        (["evaluate.checkpoint=/nonexistent/backbone.pt"], "evaluate.checkpoint"),
    ])
    # Synthetic views are batched with the real ones: the same crop size.
    synthetic_crop = st.integers(8, 256).filter(lambda c: c != 32).map(
        lambda c: ([f"pretrain.synthetic.augment.crop_size={c}"], "pretrain.synthetic.augment.crop_size"))
    # The generator check's cadence: exactly one of every_steps and every_minutes.
    cadence = st.one_of(
        st.tuples(st.integers(1, 10**6), st.floats(0.01, 600)).map(lambda t: (
            [f"train_generator.check.every_steps={t[0]}", f"train_generator.check.every_minutes={t[1]}"],
            "train_generator.check.every_steps")),
        st.just((["train_generator.check.every_minutes=null"], "train_generator.check.every_steps")))
    return st.one_of(crop, crop_above_one, groups, levels, sample, batch, split, knn, anchors, positives, steps,
                     milestones, subset, missing, synthetic_crop, cadence)


def _yaml(value) -> str:
    return json.dumps(value)  # JSON is YAML


class _StageWouldRun(Exception):
    pass


def _no_stage(*args, **kwargs):
    raise _StageWouldRun("a stage was about to run: the value was not refused at the edge")


def _cli_run(tmp: Path, overrides: list[str]) -> tuple[int, str]:
    """``synthpos run --set ...`` in this process: (exit code, stderr). No stage may start."""
    import synthpos.stages.run

    synthpos.stages.run.run_stage = _no_stage  # (restored by the module fixture)
    err = io.StringIO()
    argv = ["synthpos", "run", "-q", "--set", f"run_dir={tmp / 'run'}", *[a for o in overrides for a in ("--set", o)]]
    old = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = old
    return code, err.getvalue()


def _assert_refused(tmp: Path, overrides: list[str], key: str) -> None:
    code, err = _cli_run(tmp, overrides)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (overrides, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (overrides, err)
    assert key in lines[0], (key, lines[0])
    assert not any(tmp.iterdir()), list(tmp.iterdir())  # nothing written


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    import synthpos.stages.run

    real = synthpos.stages.run.run_stage
    yield tmp_path_factory.mktemp("properties")
    synthpos.stages.run.run_stage = real


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_invalid_field_value_is_one_line_naming_it(workdir, data):
    key, annotation, metadata = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(_invalid_values(annotation, metadata), label="value")
    _assert_refused(workdir, [*_with_required(key), f"{key}={_yaml(value)}"], key)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_cross_field())
def test_an_ordering_or_limit_between_fields_is_one_line_naming_it(workdir, case):
    overrides, key = case
    _assert_refused(workdir, overrides, key)


VALID_FIELDS = [(k, a, m) for k, a, m in FIELDS if _valid_values(a, m) is not None
                # limited by other fields (checked by the cross-field cases): keep them at their defaults
                and k not in ("pretrain.batch_size", "data.subset", "evaluate.knn_k", "generate.clsp.num_steps",
                              "train_generator.sample_size", "train_generator.beta_start", "train_generator.beta_end",
                              "generate.clsp.guidance_scale", "generate.num_anchors", "pretrain.synthetic.positives",
                              "train_generator.unet.norm_num_groups", "pretrain.synthetic.mode", "data.name",
                              "evaluate.max_train", "train_generator.num_train_timesteps", "pretrain.num_nodes",
                              "generate.clsp.strength",  # strength: at least 1 / num_steps
                              "evaluate.validation_fraction",  # the kNN grid needs knn_k images left after the carve
                              "pretrain.synthetic.augment.crop_size")]  # pretrain.augment.crop_size's


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_valid_values_are_accepted(data):
    key, annotation, metadata = data.draw(st.sampled_from(VALID_FIELDS), label="field")
    value = data.draw(_valid_values(annotation, metadata), label="value")
    config = load_config(None, [*_with_required(key), f"{key}={_yaml(value)}"])
    config.check_limits()
    got, section = config.model_dump(mode="json"), config
    for part in key.split("."):
        if part not in got and part in getattr(section, "WRITTEN_WHEN_SET", ()):
            # A key added after runs were recorded is left out of dumps at its default (config._Strict).
            assert value == type(section).model_fields[part].default, (key, value)
            return
        got, section = got[part], getattr(section, part, None)
    assert got == value or (isinstance(value, float) and math.isclose(got, value))
