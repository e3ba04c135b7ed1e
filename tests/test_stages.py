"""The stage table: which settings redo which stages, records, adoption, moving outputs aside.

No stage is run here: the outputs are stand-in files with records written for one config,
and :func:`synthpos.stages.plan` says what ``synthpos run`` would redo for another.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import BaseModel

from synthpos.config import RunConfig, load_config
from synthpos.data.synthetic_store import SyntheticStore, dataset_fingerprint
from synthpos.errors import SynthposError
from synthpos.generators.diffusion import resolve_generator_dir
from synthpos.generators.generate import generator_record
from synthpos.precision import resolve_precision
import synthpos.stages as table
from synthpos.stages import (BY_NAME, needed, PREVIOUS, RECORD, STAGES, expected_record, flatten, plan, run_stage, stage_status,
                             write_record)

ORDER = [s.name for s in STAGES]
BASE = ["pretrain.synthetic.mode=clsp", "data.subset=8", "generate.candidates=2", "generate.shard_size=4",
        "pretrain.batch_size=4", "generate.num_steps=5", "train_generator.num_train_timesteps=1000"]


def _config(run_dir: Path, *extra: str) -> RunConfig:
    return load_config(None, [f"run_dir={run_dir}", *BASE, *extra])


def _make_outputs(config: RunConfig) -> None:
    """Stand-ins for every stage's output, each with the record of ``config``."""
    shutil.copytree(resolve_generator_dir("builtin:fashion_mnist"), config.generator_dir / "model")
    (config.generator_dir / "COMPLETE").write_text("{}")
    write_record(BY_NAME["train-generator"], config, expected_record(BY_NAME["train-generator"], config), True)
    record = generator_record(config.generator_model, config.generate, config.seed, torch.device("cpu"))
    images = np.zeros((8, 28, 28, 1), dtype=np.uint8)
    store = SyntheticStore.create(config.store_dir, dataset_fingerprint("fashion_mnist", "train", images), 2, 4, record)
    for shard in range(2):
        store.write_shard(shard, np.zeros((4, 2, 28, 28, 1), dtype=np.uint8))
    write_record(BY_NAME["generate"], config, expected_record(BY_NAME["generate"], config), True)
    config.pretrain_dir.mkdir(parents=True)
    torch.save({"stand-in": torch.zeros(1)}, config.pretrain_dir / "backbone.pt")  # whole (a zip), as pretrain's
    write_record(BY_NAME["pretrain"], config, expected_record(BY_NAME["pretrain"], config), True)
    config.evaluate_dir.mkdir(parents=True)
    (config.evaluate_dir / "metrics.json").write_text(json.dumps({"results": {}}))
    write_record(BY_NAME["evaluate"], config, expected_record(BY_NAME["evaluate"], config), True)


def _redone(config: RunConfig) -> list[str]:
    return [name for name, status in plan(config) if status.state not in ("done", "not needed")]


# ----------------------------------------------------------------------------- which stage each setting decides
#
# Written down here independently of the table: the first stage whose output a setting
# changes (every later one is redone too), or None for a setting that decides nothing.

_LOCATIONS = {"run_dir", "generate.store", "pretrain.store", "pretrain.output_dir", "evaluate.checkpoint",
              "generate.generator", "evaluate.datasets"}
# Not mutated: where outputs go (they change the plan's shape, not a record); the generator
# kind needs other weights; guidance needs a class-conditional generator (an error for this one).
# train_generator.check and evaluate.finetune are whole sections (null here): their keys are those of a section
# set in a recipe (evaluate.finetune is under evaluate's prefix: it decides evaluate).
# seeds: how `run` fans out, not a setting of one run. data.name, pretrain.method and the mode are
# registry names (no literal to draw another from); the contract tests cover every one of them.
_SKIPPED = _LOCATIONS | {"published",  # decides nothing (test_published_numbers_decide_nothing)
                         "generate.kind", "generate.clsp.guidance_scale", "train_generator.check", "evaluate.finetune", "seeds", "data.name",
                         "pretrain.method", "pretrain.synthetic.mode"}
_SPEED_ONLY = {"shard_size", "num_threads", "channels_last", "batch_size", "compile", "checkpoint_every", "checkpoint_every_minutes", "verify_store",
               "checkpoint_every_epochs", "knn_every_epochs", "knn_subset",
               "loggers"}  # loggers: where the curves are written, not what is trained
# Settings the DDIM sampler of an unconditional CLSP generator does not read (the neighbour count is read only with
# a neighbour blend, which needs an embedding-conditioned generator; the blend itself is an error for this one).
_GENERATE_UNUSED = ("generate.unclip.", "generate.clsp.neighbours")


def _decided_by(key: str) -> str | None:
    section, _, rest = key.partition(".")
    leaf = key.rsplit(".", 1)[-1]
    if key == "data.num_workers":
        return None  # the batches are the same whatever the workers (tests/data/test_stream.py)
    if key == "seed" or (section == "data" and key != "data.test_root"):
        return "train-generator"
    if key in ("seeds", "seed_store"):
        return None  # how `run` fans out over seeds: each seed's run has its own records
    if key == "generate.seed":
        return "train-generator"  # the generation seed trains the generator too
    if key == "data.test_root":
        return "evaluate"
    if section == "fidelity":
        return None  # the quick start's and inspect-store's classifier, not a stage of run
    if section == "generate":
        if key.startswith(_GENERATE_UNUSED) or leaf in _SPEED_ONLY:
            return None
        return "generate"
    if section == "train_generator":
        # its batch size decides the model; only generation's batch size is speed only.
        return None if leaf in _SPEED_ONLY - {"batch_size"} and rest.count(".") == 0 else "train-generator"
    if section == "pretrain":
        # pretrain.batch_size decides the backbone; only generation's batch size is speed only.
        if rest.count(".") == 0 and leaf in _SPEED_ONLY - {"batch_size"}:
            return None
        return "pretrain"
    if section == "evaluate":
        return None if key == "evaluate.batch_size" else "evaluate"
    raise AssertionError(f"no expectation for {key}")


def _field(key: str):
    """The pydantic annotation of a dotted key of RunConfig."""
    model: type[BaseModel] = RunConfig
    annotation = None
    for part in key.split("."):
        if part not in model.model_fields:  # a component's own section (generate.clsp): its settings model
            import synthpos.registry as registries

            model = getattr(registries, model._registry).get(part).settings
            annotation = model
            continue
        annotation = model.model_fields[part].annotation
        inner = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif inner:
            model = inner[0]
    return annotation


def _candidates(key: str, value):
    """Other values for ``key``, most likely valid first."""
    annotation = _field(key)
    literals = [a for a in typing.get_args(annotation) if isinstance(a, str)]
    if typing.get_origin(annotation) is typing.Literal:
        literals = list(typing.get_args(annotation))
    if literals:
        return [v for v in literals[literals.index(value) + 1:] + literals if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, max(0, value - 1)]
    if isinstance(value, float):
        return [value / 2 if value else 0.5, min(value + 0.05, 0.99), value * 2]
    if isinstance(value, list):
        if not value:
            return [[1]]
        first = value[0]
        others = [[first / 2 if isinstance(first, float) else first * 2, *value[1:]], [0, *value[1:]],
                  *([[first + 1, *value[1:]]] if isinstance(first, int) else []), value[:-1]]
        return [o for o in others if o != value]  # halving a leading 0.0 changes nothing
    if isinstance(value, str) and bool in typing.get_args(annotation):
        return [True, False]  # a word or a switch (data.stream: auto | true | false)
    if isinstance(value, str):
        return [value + "x"]  # free text (a prompt)
    if value is None:
        args = typing.get_args(annotation)
        if any(typing.get_origin(a) is list for a in args):
            return [[0], [1]]  # an optional list of levels
        if int in args:
            return [32, 1000, 4, 1]
        if float in args:
            return [1.0, 0.5]
        return ["elsewhere"]
    return []


def test_every_setting_redoes_exactly_the_stages_it_decides(tmp_path):
    config = _config(tmp_path)
    _make_outputs(config)
    assert _redone(config) == []
    flat = flatten(config.model_dump(mode="json"))
    tried, unchanged = 0, []
    for key, value in flat.items():
        if any(key == s or key.startswith(s + ".") for s in _SKIPPED):
            continue
        changed = None
        for other in _candidates(key, value):
            try:
                changed = _config(tmp_path, f"{key}={yaml.safe_dump(other, default_flow_style=True).strip()}")
                break
            except SynthposError:
                continue
        if changed is None:
            unchanged.append(key)
            continue
        tried += 1
        first = _decided_by(key)
        if key.endswith(".precision"):  # decides through its resolved value only
            device = torch.device("cpu")
            same = resolve_precision(value, device) == resolve_precision(flatten(changed.model_dump(mode="json"))[key], device)
            first = None if same else first
        want = [] if first is None else ORDER[ORDER.index(first):]
        assert _redone(changed) == want, (key, value, flatten(changed.model_dump(mode="json"))[key])
    assert tried > 100
    assert unchanged == [], unchanged


def test_an_embedding_condition_redoes_the_generator_and_an_unset_one_changes_no_record(tmp_path):
    """``train_generator.condition`` (a section with a required encoder, so the sweep above cannot set it) decides
    the generator; left unset it is not written, so records made before it existed stay current."""
    config = _config(tmp_path)
    _make_outputs(config)
    assert "condition" not in config.model_dump()["train_generator"]
    encoder = tmp_path / "encoder.pt"
    encoder.write_bytes(b"weights")
    changed = _config(tmp_path, f"train_generator.condition.encoder={encoder}")
    assert _redone(changed) == ORDER[ORDER.index("train-generator"):]
    conditioned = _config(tmp_path / "conditioned", f"train_generator.condition.encoder={encoder}")
    _make_outputs(conditioned)
    assert _redone(conditioned) == []
    encoder.write_bytes(b"weights pretrained again")  # the same path, another encoder
    assert _redone(conditioned) == ORDER[ORDER.index("train-generator"):]


def test_round_zero_runs_only_for_a_generator_conditioned_on_this_runs_encoder(tmp_path):
    """``train_generator.condition`` without an encoder: round 0 pretrains one, and its settings decide the generator
    and everything after it; the synthetic mode does not decide round 0 (it trains without positives)."""
    plain = _config(tmp_path / "plain")
    assert needed(BY_NAME["encoder"], plain) is not None
    config = _config(tmp_path, "train_generator.condition.dropout=0.1")
    assert config.train_generator.condition.encoder is None and needed(BY_NAME["encoder"], config) is None
    assert config.condition_encoder == config.run_dir / "encoder" / "backbone.pt"
    assert _redone(config) == ORDER
    given = tmp_path / "given.pt"
    given.write_bytes(b"weights")
    assert needed(BY_NAME["encoder"], _config(tmp_path, f"train_generator.condition.encoder={given}")) is not None
    # Round 0's record holds the run's pretraining settings, less the synthetic ones.
    record = expected_record(BY_NAME["encoder"], config)
    moved = expected_record(BY_NAME["encoder"], _config(tmp_path, "train_generator.condition.dropout=0.1",
                                                        "pretrain.synthetic.mode=clsp"))
    assert record == moved
    assert record != expected_record(BY_NAME["encoder"], _config(tmp_path, "train_generator.condition.dropout=0.1",
                                                                 "pretrain.epochs=7"))


def test_changed_settings_are_named_and_the_old_output_is_kept(tmp_path, monkeypatch):
    config = _config(tmp_path)
    _make_outputs(config)
    changed = _config(tmp_path, "pretrain.epochs=3")
    ran = []

    def fake(name):
        def stage(cfg, show_progress=True):
            ran.append(name)
            out = BY_NAME[name].output(cfg)
            if name == "pretrain":
                torch.save({}, out / "backbone.pt")
            else:
                (out / "metrics.json").write_text('{"results": {}}')  # a stand-in that reads back as metrics.json
            return None
        return stage

    for name in ("pretrain", "evaluate"):
        monkeypatch.setitem(table.BY_NAME, name, dataclasses.replace(BY_NAME[name], run=fake(name)))
    messages = []
    monkeypatch.setattr(table.console, "print", lambda text, *a, **k: messages.append(str(text)))
    for name in ORDER:
        run_stage(name, changed, show_progress=False, force=bool(ran))
    assert ran == ["pretrain", "evaluate"]
    line = next(m for m in messages if "redo pretrain" in m)
    assert "pretrain.epochs 1000 -> 3" in line and str(tmp_path / PREVIOUS / "pretrain") in line
    kept = tmp_path / PREVIOUS / "pretrain" / "pretrain"
    assert "stand-in" in torch.load(kept / "backbone.pt")
    assert json.loads((kept / RECORD).read_text())["settings"]["pretrain.epochs"] == 1000
    assert json.loads((config.pretrain_dir / RECORD).read_text())["settings"]["pretrain.epochs"] == 3
    assert (tmp_path / PREVIOUS / "evaluate" / "evaluate" / "metrics.json").is_file()
    assert _redone(changed) == []


def test_outputs_without_records_are_adopted_from_the_saved_config(tmp_path):
    config = _config(tmp_path)
    _make_outputs(config)
    for stage in STAGES:
        if needed(stage, config) is None:  # round 0 (the encoder) is not part of this run
            stage.record_path(config).unlink()
    # As an earlier synthpos left them: pretraining saved the whole config beside its backbone.
    (config.pretrain_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert _redone(config) == []
    for _, status in plan(config):
        assert status.why.startswith("adopted") or status.state == "not needed", status
    other = _config(tmp_path, "pretrain.epochs=2")
    assert _redone(other) == ["pretrain", "evaluate"]
    assert (config.pretrain_dir / "backbone.pt").is_file()  # planning moves nothing


def test_a_store_without_record_is_adopted_only_if_its_manifest_matches(tmp_path):
    config = _config(tmp_path)
    _make_outputs(config)
    BY_NAME["generate"].record_path(config).unlink()
    assert dict(plan(config))["generate"].state == "done"
    assert _redone(_config(tmp_path, "generate.interpolation_weight=0.5"))[:1] == ["generate"]


def test_pretrain_feeds_nothing_when_evaluate_reads_another_backbone(tmp_path):
    other = tmp_path / "elsewhere.pt"
    other.write_bytes(b"x")
    other.with_suffix(".json").write_text("{}")  # a synthpos backbone: weights beside their description
    states = dict((n, s.state) for n, s in plan(_config(tmp_path, f"evaluate.checkpoint={other}")))
    assert states["pretrain"] == "not needed" and states["evaluate"] == "new"


def test_pretrain_still_feeds_when_evaluate_reads_a_baseline_encoder_beside_the_runs_own(tmp_path):
    baseline = tmp_path / "torchscript_or_state_dict.pt"  # no .json beside it: an external encoder
    baseline.write_bytes(b"x")
    states = dict((n, s.state) for n, s in plan(_config(tmp_path, f"evaluate.checkpoint={baseline}")))
    assert states["pretrain"] == "new" and states["evaluate"] == "new"


def test_an_unfinished_generator_without_record_is_resumed_not_moved(tmp_path):
    # An earlier synthpos stopped mid-training: a checkpoint and train_config.json, no COMPLETE, no record.
    config = _config(tmp_path)
    _make_outputs(config)
    stage = BY_NAME["train-generator"]
    stage.record_path(config).unlink()
    (config.generator_dir / "COMPLETE").unlink()
    section = {k.split(".", 1)[1]: v for k, v in stage.settings(config).items() if k.startswith("train_generator.")}
    nested: dict = {}
    for key, value in section.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (config.generator_dir / "train_config.json").write_text(json.dumps(nested))
    status = stage_status(stage, config)
    assert status.state == "resume" and status.why.startswith("adopted"), status
    nested["learning_rate"] = nested["learning_rate"] * 2
    (config.generator_dir / "train_config.json").write_text(json.dumps(nested))
    assert stage_status(stage, config).state == "redo"


def test_published_numbers_decide_nothing(tmp_path):
    config = _config(tmp_path)
    _make_outputs(config)
    assert _redone(_config(tmp_path, "published.source=paper", "published.linear_top1=94.45")) == []
