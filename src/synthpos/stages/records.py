"""Stage records: ``stage_record.json`` beside each output, what made it and whether it is finished.

A record holds the settings that decide the output (its row's ``decides`` minus ``ignores``),
the values the config left open (``resolved``) and the records of the inputs it read. A stage
is done only when its record matches the one the config would write now
(:func:`expected_record`). Outputs written before records existed are adopted when the config
saved beside them (or in the run directory) gives the same record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from synthpos.atomic import atomic_path
from synthpos.config import RunConfig
from synthpos.errors import SynthposError
from synthpos.stages.table import BY_NAME, Stage, flatten

_MISSING = "(not set)"


def read_record(stage: Stage, config: RunConfig) -> dict[str, Any] | None:
    path = stage.record_path(config)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _input_records(stage: Stage, config: RunConfig) -> dict[str, Any]:
    """The records of the inputs as they are on disk (what this stage reads), for inputs in this run."""
    out = {}
    for name in stage.inputs:
        upstream = BY_NAME[name]
        if upstream.feeds(config) is None:
            record = read_record(upstream, config)
            out[name] = None if record is None else _identity(record)
    return out


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a record that says what made the output (not whether it is finished)."""
    return {k: record.get(k) for k in ("stage", "settings", "resolved", "inputs")}


def expected_record(stage: Stage, config: RunConfig) -> dict[str, Any]:
    """The record an output made now with ``config`` would carry."""
    return {"stage": stage.name, "settings": stage.settings(config), "resolved": stage.resolved(config),
            "inputs": _input_records(stage, config)}


def write_record(stage: Stage, config: RunConfig, record: dict[str, Any], complete: bool) -> None:
    path = stage.record_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_text(json.dumps({**record, "complete": complete}, indent=2))


def differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every value that differs between two records."""
    a = flatten(_identity(old)) if old else {}
    b = flatten(_identity(new))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, _MISSING) != b.get(key, _MISSING):
            out.append(f"{key.removeprefix('settings.')} {_short(a.get(key, _MISSING))} -> {_short(b.get(key, _MISSING))}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------- adoption of record-less outputs


def _saved_configs(stage: Stage, config: RunConfig) -> Iterator[RunConfig]:
    """Configs saved by earlier versions beside the outputs: the stage's own, the run's, pretraining's."""
    from synthpos.config import load_config

    for path in (stage.output(config) / "config.yaml", config.run_dir / "config.yaml", config.pretrain_dir / "config.yaml"):
        if path.is_file():
            try:
                yield load_config(path)
            except SynthposError:
                continue


def adopt(stage: Stage, config: RunConfig, expected: dict[str, Any]) -> str | None:
    """How a record-less output is known to match ``config``, or None if it cannot be shown: a config saved
    beside it with the same settings (where the row trusts one), else the output's own evidence (``stage.adopt``)."""
    if stage.adopt_saved_config:
        for saved in _saved_configs(stage, config):
            if stage.settings(saved) == expected["settings"]:
                return "the config saved beside it matches"
    return stage.adopt(stage, config, expected)
