"""The stage table: what each stage's output depends on, and whether that output is current.

Every stage (``train-generator``, ``generate``, ``pretrain``, ``evaluate``) is one row of
:data:`STAGES`. A row declares the config settings that decide the stage's output (dotted
key prefixes, minus the keys under them that change only speed, progress or where files
go), the values the config leaves to the machine (``precision: auto``, the generator's
record of what makes a store's bytes), and the earlier stages it reads. :func:`run_stage`
is the one way a stage runs, for its CLI command, for ``synthpos run`` and for the quick
start: it writes ``stage_record.json`` beside the output (those settings' values and its
inputs' records), and a stage is done only when that record matches the config. An output
made with other settings is moved to ``<run_dir>/previous/<stage>/`` (the last one kept),
never reused as current and never deleted.

Outputs written before records existed are adopted when the config saved beside them (or in
the run directory) gives the same record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from synthpos.atomic import NoSpaceError, atomic_path, created_dirs
from synthpos.config import RunConfig
from synthpos.errors import SynthposError

console = Console(stderr=True)

RECORD = "stage_record.json"
PREVIOUS = "previous"
_MISSING = "(not set)"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists are leaves."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Stage:
    """One row of the table.

    Attributes:
        name: the CLI command.
        decides: dotted prefixes of the settings that decide the output.
        ignores: keys under ``decides`` that change only speed, progress or file locations.
        inputs: earlier stages whose outputs this one reads (their records become part of its own).
        output: the directory the stage owns (its record goes inside; moved aside when replaced).
        finished: whether the output is complete.
        run: runs the stage, ``run(config, show_progress)``, and returns its result.
        result: the result of a finished stage, as ``run`` returns it.
        feeds: None when the next stage reads this one's output with this config, else why not
            (a stage that feeds nothing is not part of ``synthpos run``; see :func:`needed`).
        resolved: values the config leaves open (resolved precision, the generator's record).
        notes: lines worth a user's look that change nothing (a store's stray shard files).
        space: (about how many bytes the unfinished output still needs, what it is), for a full disk's message.
        stops_anywhere: SIGTERM stops the stage where it is (its outputs are atomic files, nothing to save
            first); stages that checkpoint on SIGTERM catch it themselves.
    """

    name: str
    decides: tuple[str, ...]
    ignores: tuple[str, ...]
    inputs: tuple[str, ...]
    output: Callable[[RunConfig], Path]
    finished: Callable[[RunConfig], bool]
    run: Callable[[RunConfig, bool], Any]
    result: Callable[[RunConfig], Any]
    feeds: Callable[[RunConfig], str | None] = lambda config: None
    resolved: Callable[[RunConfig], dict[str, Any]] = field(default=lambda config: {})
    notes: Callable[[RunConfig], list[str]] = field(default=lambda config: [])
    space: Callable[[RunConfig], tuple[int | None, str | None]] = field(default=lambda config: (None, None))
    stops_anywhere: bool = False

    def settings(self, config: RunConfig) -> dict[str, Any]:
        """The output-deciding settings' values, flattened."""
        flat = flatten(config.model_dump(mode="json"))
        return {k: v for k, v in sorted(flat.items()) if _under(k, self.decides) and not _under(k, self.ignores)}

    def record_path(self, config: RunConfig) -> Path:
        return self.output(config) / RECORD


# ----------------------------------------------------------------------------- the rows


def _store_feeds(config: RunConfig) -> str | None:
    """None when pretraining reads a store: the synthetic mode says (``none`` and ``mochi`` read none)."""
    from synthpos.registry import MODES

    mode = config.pretrain.synthetic.mode
    if mode == "none":
        return "no synthetic positives in this run"
    return None if MODES.get(mode).needs_store else f"pretrain.synthetic.mode={mode} needs no store"


def _generator_feeds(config: RunConfig) -> str | None:
    from synthpos.generators.registry import generator_class

    if not generator_class(config.generate.kind).trains_on_data:
        # The generator class says whether it is trained on the data (clsp's DDPM) or loads pretrained weights.
        return (f"generate.kind={config.generate.kind} is not trained on the data "
                "(it loads pretrained weights from generate.generator, or needs none)")
    if config.generate.generator is not None:
        return f"using generator {config.generate.generator}"
    return None


def _device_precision(precision: str, device: str) -> str:
    import torch

    from synthpos.precision import resolve_precision

    return resolve_precision(precision, torch.device(device))


def _train_generator_resolved(config: RunConfig) -> dict[str, Any]:
    import torch

    # The generator is trained with the generation seed (generate.seed, else the run's), so the
    # seeds of a `run --seeds` share one generator.
    out = {"precision": _device_precision(config.train_generator.precision, "cuda" if torch.cuda.is_available() else "cpu"),
           "generation_seed": config.generation_seed}
    encoder = config.condition_encoder
    if config.train_generator.condition is not None and config.train_generator.condition.encoder is not None \
            and encoder.is_file():
        # The encoder's bytes, not its path: an encoder pretrained again with other settings redoes the generator.
        # (Round 0's encoder is an input stage: its record stands in the generator's.)
        out["condition_encoder_sha256"] = _sha256(encoder)
    return out


def _encoder_feeds(config: RunConfig) -> str | None:
    """None when the generator is embedding-conditioned on an encoder this run pretrains (round 0)."""
    condition = config.train_generator.condition
    if condition is None:
        return "the generator is not embedding-conditioned (train_generator.condition)"
    if condition.encoder is not None:
        return f"train_generator.condition.encoder={condition.encoder} is given"
    return None


def _encoder_config(config: RunConfig) -> RunConfig:
    """Round 0's settings: the run's pretraining without synthetic positives, into ``<run_dir>/encoder``."""
    sub = config.model_copy(deep=True)
    sub.pretrain.synthetic.mode = "none"
    sub.pretrain.output_dir = config.encoder_dir
    return sub


def _run_encoder(config: RunConfig, show_progress: bool) -> Path:
    from synthpos.methods.pretrain import pretrain_stage

    return pretrain_stage(_encoder_config(config), show_progress=show_progress)


_GENERATOR_RECORDS: dict[tuple, dict[str, Any]] = {}


def _files_state(folder: Path) -> tuple:
    """(name, size, mtime) of every file under ``folder``: changes when a generator is rewritten there."""
    if not folder.is_dir():
        return ()
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file()))


def _generate_resolved(config: RunConfig) -> dict[str, Any]:
    """The generator's own record of what decides the bytes (the store's manifest keeps the same one).

    Building it loads the generator, so it is kept per (weights on disk, settings, seed, device).
    """
    from synthpos.generators.diffusion import resolve_generator_dir
    from synthpos.generators.generate import default_device, generator_record

    device = default_device()
    folder = resolve_generator_dir(config.generator_model)
    seed = config.generation_seed
    key = (str(folder), _files_state(folder), config.generate.model_dump_json(), seed, str(device))
    if key not in _GENERATOR_RECORDS:
        _GENERATOR_RECORDS[key] = generator_record(config.generator_model, config.generate, seed, device)
    return {"generator": _GENERATOR_RECORDS[key]}


def _pretrain_device(config: RunConfig) -> str:
    import torch

    accelerator = config.pretrain.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else "cpu"


def _pretrain_resolved(config: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"precision": _device_precision(config.pretrain.precision, _pretrain_device(config))}
    if config.pretrain.synthetic.scorer is not None and Path(config.pretrain.synthetic.scorer).is_file():
        out["scorer_sha256"] = _sha256(Path(config.pretrain.synthetic.scorer))
    return out


def _evaluate_resolved(config: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"feature_size": config.evaluate.feature_size or config.pretrain.augment.crop_size}
    if config.evaluate.checkpoint is not None and Path(config.evaluate.checkpoint).is_file():
        out["checkpoint_sha256"] = _sha256(Path(config.evaluate.checkpoint))  # a backbone from elsewhere
    return out


def _evaluates_own_pretraining(config: RunConfig) -> bool:
    """Pretraining feeds evaluation unless ``evaluate.checkpoint`` is a synthpos backbone (a baseline encoder does not
    replace the run's own)."""
    from synthpos.evaluation.external import external_checkpoint

    return config.evaluate.checkpoint is None or external_checkpoint(config) is not None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _store_finished(config: RunConfig) -> bool:
    """Every shard present and matching its recorded hash: a store that does not verify is not done.

    Shards the stamp of the last full check vouches for (same size, mtime, inode) are not hashed
    again; a shard changed since (zeroed in place, copied over) is. Writes nothing.
    """
    from synthpos.data.store_integrity import stamped_states
    from synthpos.data.synthetic_store import SyntheticStore

    if not (config.store_dir / "manifest.json").is_file():
        return False
    try:
        store = SyntheticStore.open(config.store_dir, require_complete=False)
    except SynthposError:
        return False
    return not any(state.bad for state in stamped_states(store))


def _store_notes(config: RunConfig) -> list[str]:
    """Shard files the store's manifest does not know: reported, never read or removed."""
    from synthpos.data.store_integrity import unknown_note
    from synthpos.data.synthetic_store import SyntheticStore

    if not (config.store_dir / "manifest.json").is_file():
        return []
    try:
        note = unknown_note(SyntheticStore.open(config.store_dir, require_complete=False))
    except SynthposError:
        return []
    return [note] if note else []


def _store_space(config: RunConfig) -> tuple[int | None, str | None]:
    """The bytes of the shards still to write (missing or of the wrong size): what a full disk must make room for."""
    from synthpos.data.store_integrity import check_store
    from synthpos.data.synthetic_store import SyntheticStore

    try:
        store = SyntheticStore.open(config.store_dir, require_complete=False)
    except SynthposError:
        return None, "the synthetic store"
    todo = [s.shard for s in check_store(store, full=False) if s.bad]
    return sum(store.expected_bytes(s) for s in todo) or None, f"the synthetic store: {len(todo)} shards to write"


def _run_train_generator(config: RunConfig, show_progress: bool) -> Path:
    from synthpos.generators.diffusion import train_generator_stage

    return train_generator_stage(config, show_progress=show_progress)


def _run_generate(config: RunConfig, show_progress: bool):
    from synthpos.generators.generate import generate_stage

    return generate_stage(config, show_progress=show_progress)


def _open_store(config: RunConfig):
    from synthpos.data.synthetic_store import SyntheticStore

    return SyntheticStore.open(config.store_dir)


def _whole_backbone(path: Path) -> bool:
    """``path`` is there and whole: torch's zip ends in a central directory that a file cut short or zeroed
    lacks (read without loading), so the pretrain evaluate advises for a damaged backbone remakes it."""
    import zipfile

    return path.is_file() and zipfile.is_zipfile(path)


def _run_pretrain(config: RunConfig, show_progress: bool) -> Path:
    from synthpos.methods.pretrain import pretrain_stage

    return pretrain_stage(config, show_progress=show_progress)


def _run_evaluate(config: RunConfig, show_progress: bool) -> dict:
    from synthpos.evaluation.evaluate import evaluate_stage

    return evaluate_stage(config, show_progress=show_progress)


# Keys that change only speed, progress or where things are written (and data.test_root, which
# only evaluation reads). Precision is left out here because its resolved value is recorded.
_DATA_TRAIN_ONLY = ("data.test_root",)
_TRAIN_GENERATOR_IGNORES = ("train_generator.num_threads", "train_generator.channels_last", "train_generator.precision",
                            "train_generator.checkpoint_every", "train_generator.checkpoint_every_minutes",
                            "train_generator.loggers")
_PRETRAIN_IGNORES = ("pretrain.store", "pretrain.output_dir", "pretrain.num_threads", "pretrain.channels_last",
                     "pretrain.precision", "pretrain.knn_every_epochs", "pretrain.knn_subset",
                     "pretrain.checkpoint_every_epochs", "pretrain.checkpoint_every_minutes", "pretrain.verify_store",
                     "pretrain.compile", "pretrain.loggers")

STAGES: tuple[Stage, ...] = (
    Stage(
        # Round 0: the frozen encoder an embedding-conditioned generator is trained on, pretrained with the run's
        # settings and no synthetic positives (its record is the train-generator's input).
        name="encoder",
        decides=("seed", "data", "pretrain"),
        ignores=_DATA_TRAIN_ONLY + _PRETRAIN_IGNORES + ("pretrain.synthetic", "pretrain.output_dir"),
        inputs=(),
        output=lambda c: c.encoder_dir,
        finished=lambda c: _whole_backbone(c.encoder_dir / "backbone.pt"),
        run=_run_encoder,
        result=lambda c: c.encoder_dir / "backbone.pt",
        feeds=_encoder_feeds,
        resolved=_pretrain_resolved,
    ),
    Stage(
        name="train-generator",
        decides=("data", "train_generator"),  # and the generation seed (resolved)
        ignores=_DATA_TRAIN_ONLY + _TRAIN_GENERATOR_IGNORES,
        inputs=("encoder",),
        output=lambda c: c.generator_dir,
        finished=lambda c: (c.generator_dir / "COMPLETE").is_file(),
        run=_run_train_generator,
        result=lambda c: c.generator_dir / "model",
        feeds=_generator_feeds,
        resolved=_train_generator_resolved,
    ),
    Stage(
        # The sampler's settings are in the generator's record (resolved): it knows which of
        # its settings change the bytes (e.g. eta only for DDIM, unclip.* only for unclip).
        name="generate",
        # shard_size is the layout, not the bytes: a complete store of another layout is as good.
        # The seed is the generation seed, in the generator's record (resolved).
        # The shard format decides the bytes (JPEG and WebP also the pixels): store_format, store_quality.
        decides=("data", "generate.kind", "generate.generator", "generate.candidates", "generate.num_anchors",
                 "generate.store_format", "generate.store_quality"),
        ignores=_DATA_TRAIN_ONLY,
        inputs=("train-generator",),
        output=lambda c: c.store_dir,
        finished=_store_finished,
        run=_run_generate,
        result=_open_store,
        feeds=_store_feeds,
        resolved=_generate_resolved,
        notes=_store_notes,
        space=_store_space,
    ),
    Stage(
        name="pretrain",
        decides=("seed", "data", "pretrain"),
        ignores=_DATA_TRAIN_ONLY + _PRETRAIN_IGNORES,
        inputs=("generate",),
        output=lambda c: c.pretrain_dir,
        finished=lambda c: _whole_backbone(c.pretrain_dir / "backbone.pt"),
        run=_run_pretrain,
        result=lambda c: c.pretrain_dir / "backbone.pt",
        feeds=lambda c: None if _evaluates_own_pretraining(c) else f"evaluate.checkpoint={c.evaluate.checkpoint} is evaluated",
        resolved=_pretrain_resolved,
    ),
    Stage(
        name="evaluate",
        decides=("seed", "data", "evaluate"),
        ignores=("evaluate.batch_size", "evaluate.checkpoint"),
        inputs=("pretrain",),
        output=lambda c: c.evaluate_dir,
        finished=lambda c: (c.evaluate_dir / "metrics.json").is_file(),
        run=_run_evaluate,
        result=lambda c: json.loads((c.evaluate_dir / "metrics.json").read_text()),
        resolved=_evaluate_resolved,
        stops_anywhere=True,
    ),
    # The report stage (issue 12) is the next row: decides=("report",...), inputs=("evaluate",).
)

BY_NAME = {stage.name: stage for stage in STAGES}


def needed(stage: Stage, config: RunConfig) -> str | None:
    """None when ``stage`` is part of ``synthpos run`` for ``config``; else why not (its output feeds nothing)."""
    # The latest reason first: no store to make also means no generator to train.
    for later in reversed(STAGES[[s.name for s in STAGES].index(stage.name):-1]):
        if (why := later.feeds(config)) is not None:
            return why
    return None


# ----------------------------------------------------------------------------- records


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


def _adopt(stage: Stage, config: RunConfig, expected: dict[str, Any]) -> str | None:
    """How a record-less output is known to match ``config``, or None if it cannot be shown."""
    if stage.name == "generate":
        # The store's manifest already holds the generator record: the model for every record.
        try:
            manifest = json.loads((config.store_dir / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        same = (manifest.get("generator") == expected["resolved"]["generator"]
                and manifest.get("candidates") == config.generate.candidates)
        return "its manifest's generator record matches" if same else None
    for saved in _saved_configs(stage, config):
        if stage.settings(saved) == expected["settings"]:
            return "the config saved beside it matches"
    if stage.name == "train-generator":
        saved_section = stage.output(config) / "train_config.json"
        if saved_section.is_file():
            ours = {k: v for k, v in expected["settings"].items() if k.startswith("train_generator.")}
            theirs = {k: v for k, v in flatten({"train_generator": json.loads(saved_section.read_text())}).items()
                      if not _under(k, stage.ignores)}
            if ours == theirs:
                return "its train_config.json matches (data and seed were not saved; taken as the current ones)"
    return None


# ----------------------------------------------------------------------------- status and running


@dataclass
class Status:
    """Where a stage stands for a config."""

    state: str  # "not needed" | "done" | "resume" | "new" | "redo"
    why: str = ""
    changes: list[str] = field(default_factory=list)
    expected: dict[str, Any] | None = None


def _exists(path: Path) -> bool:
    """Something is there (an empty directory is nothing)."""
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def stage_status(stage: Stage, config: RunConfig, adopt: bool = False, explicit: bool = False) -> Status:
    """Whether ``stage``'s output is current for ``config``; with ``adopt`` a record-less output that
    is shown to match gets its record written. ``explicit``: the stage's own command, which runs
    it even where ``synthpos run`` would not (:func:`needed`)."""
    if not explicit and (why := needed(stage, config)) is not None:
        return Status("not needed", why)
    output = stage.output(config)
    record = read_record(stage, config)
    try:
        expected = expected_record(stage, config)
    except SynthposError as err:
        # e.g. the generator this stage reads is not trained yet: nothing on disk can match.
        return Status("redo" if _exists(output) else "new", f"its inputs are not ready ({err})")
    if record is None:
        if not _exists(output):
            return Status("new", "", expected=expected)
        # A finished output is adopted as done, an unfinished one (a checkpoint left by an earlier
        # version mid-training) as something to resume: moving it aside would throw hours away.
        how = _adopt(stage, config, expected)
        if how is None:
            return Status("redo", "no record of the settings that made it", ["(no record)"], expected)
        if adopt:
            write_record(stage, config, expected, complete=stage.finished(config))
        if stage.finished(config):
            return Status("done", f"adopted: {how}", expected=expected)
        return Status("resume", f"adopted: {how}", expected=expected)
    changes = differences(record, expected)
    if changes:
        return Status("redo", "made with other settings", changes, expected)
    if record.get("complete") and stage.finished(config):
        return Status("done", "", expected=expected)
    if record.get("complete"):
        # Finished once, damaged since (a store's shard zeroed or deleted): the stage remakes what is bad.
        return Status("resume", "its output was finished but is now incomplete or damaged", expected=expected)
    return Status("resume", "", expected=expected)


def _is_lead_process() -> bool:
    """Rank 0 of a launched job (torchrun, Lightning's DDP children, SLURM), or a single process."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def move_aside(stage: Stage, config: RunConfig) -> Path:
    """Move ``stage``'s output to ``<run_dir>/previous/<stage>/<name>`` (replacing the one kept there)."""
    output = stage.output(config)
    target = config.run_dir / PREVIOUS / stage.name / output.name
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(output), str(target))
    return target


def prepare_stage(stage: Stage, config: RunConfig, force: bool = False, explicit: bool = False) -> Status:
    """Decide whether ``stage`` runs; move a stale output aside and write the starting record.

    ``force``: run even if done (an earlier stage was redone), moving the old output aside.
    Only the lead process decides and writes; the others follow what it wrote.
    """
    status = stage_status(stage, config, adopt=_is_lead_process(), explicit=explicit)
    if status.state == "not needed":
        console.print(f"[dim]skip {stage.name}: {status.why}[/dim]")
        return status
    if _is_lead_process():
        for line in stage.notes(config):
            console.print(f"note: {line}", markup=False, highlight=False)
    if status.state == "done" and not force:
        note = f" ({status.why})" if status.why else ""
        console.print(f"[dim]skip {stage.name}: done, made with these settings{note}[/dim]")
        return status
    lead = _is_lead_process()
    # Computed before anything moves: an input that is not there (an untrained generator) is
    # the stage's own one-line error, with nothing written.
    start = expected_record(stage, config)
    if status.state == "redo" or (force and status.state == "done"):
        why = ", ".join(status.changes) if status.changes else "an earlier stage was redone"
        if lead:
            where = move_aside(stage, config)
            console.print(f"[bold]redo {stage.name}[/bold]: {why}; the previous output is kept in {where}")
        status = Status("new", why)
    elif status.state == "resume" and lead:
        console.print(f"[bold]{stage.name}[/bold] (resuming){' ' + status.why if status.why else ''}")
    elif status.state != "resume" and not explicit and lead:  # a stage's own command needs no header
        console.print(f"[bold]{stage.name}[/bold]")
    if lead:
        # The record of the inputs as they are now, written before any output: a killed
        # stage resumes only with the same settings.
        write_record(stage, config, start, complete=False)
    return status



def _undo_start(stage: Stage, config: RunConfig, created: list[Path]) -> None:
    """Remove the starting record (and the folders made for it) of a stage that refused its input."""
    output = stage.output(config)
    if output.is_dir() and [p.name for p in output.iterdir()] == [RECORD]:
        stage.record_path(config).unlink()
        for folder in [output, *created]:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _readable_backbone(path: Path, key: str) -> None:
    """Raise unless ``path`` loads as a synthpos backbone (weights and the ``.json`` that describes them)."""
    from synthpos.models.backbones import load_backbone

    try:
        load_backbone(path)
    except SynthposError as err:
        raise SynthposError(f"{key}={path}: {err}") from None
    except (ValueError, KeyError, TypeError) as err:  # a .json that is not a synthpos description
        raise SynthposError(f"{key}={path} is not a synthpos backbone ({path.with_suffix('.json').name} does not "
                            f"describe one: {type(err).__name__}); point it at a backbone.pt written by synthpos") from None


def check_inputs(stage: Stage, config: RunConfig, explicit: bool = False, upfront: bool = False) -> None:
    """Every path and value ``stage`` reads, checked before the lock, any record or any file is touched.

    ``upfront``: ``synthpos run`` checking all of its stages before the first starts; an input
    an earlier stage of the run makes (the run's store, its backbone) is left for the check
    at that stage's turn, when it is there.

    Raises:
        SynthposError: one line naming the key, the value and the fix.
    """
    if not explicit and needed(stage, config) is not None:
        return  # not part of this run: its settings are not read
    config.check_limits((stage.name,))
    if stage.name == "encoder":
        from synthpos.registry import METHODS

        if METHODS.get(config.pretrain.method).needs_labels:
            raise SynthposError(f"round 0 pretrains the generator's encoder with pretrain.method={config.pretrain.method}, "
                                "which uses labels; the condition must be label-free: use a self-supervised method or "
                                "set train_generator.condition.encoder to a backbone.pt")
    elif stage.name == "train-generator" and config.train_generator.condition is not None:
        encoder = config.condition_encoder
        if config.train_generator.condition.encoder is not None:
            _readable_backbone(encoder, "train_generator.condition.encoder")
        elif not upfront and not encoder.is_file():
            raise SynthposError(f"the generator is conditioned on round 0's encoder, {encoder}, which is not there; "
                                "`synthpos run --config FILE` pretrains it first, or set train_generator.condition.encoder")
    elif stage.name == "generate" and config.generate.generator is not None:
        from synthpos.generators.diffusion import resolve_generator_dir

        folder = resolve_generator_dir(config.generate.generator)
        if not folder.is_dir():
            raise SynthposError(f"generate.generator={config.generate.generator}: {folder} does not exist; point it at "
                                "a generator folder (`synthpos train-generator` writes one) or builtin:fashion_mnist")
    elif stage.name == "pretrain":
        from synthpos.registry import MODES

        if (scorer := config.pretrain.synthetic.scorer) is not None and MODES.get(config.pretrain.synthetic.mode).uses_scorer:
            from synthpos.models.scorer import load_scorer_network

            load_scorer_network(Path(scorer))
        if not upfront:  # in a run, generate makes or repairs the store first
            _check_store_input(config)
    elif stage.name == "evaluate":
        # A backbone or baseline encoder from elsewhere, or the run's own when `synthpos evaluate` is asked for
        # alone (in `run`, pretraining has just written it).
        from synthpos.evaluation.external import check_evaluate_input

        check_evaluate_input(config, explicit, _readable_backbone)


def _check_store_input(config: RunConfig) -> None:
    """The store pretraining reads opens, is complete and verifies (its stamp spares the hashing when fresh).

    Read-only, as it runs before the lock: a store no stamp vouches for (copied in) is hashed here
    and again, stamped, by pretraining's own check.
    """
    if _store_feeds(config) is not None:
        return
    from synthpos.data.store_integrity import damage_message, stamped_states
    from synthpos.data.synthetic_store import SyntheticStore

    key = "pretrain.store" if config.pretrain.store or config.generate.store else "the run's store"
    try:
        store = SyntheticStore.open(config.store_dir)  # manifest readable, every shard there and of its size
    except SynthposError as err:
        raise SynthposError(f"{key}: {err}") from None
    if message := damage_message(store, stamped_states(store)):
        raise SynthposError(message)


def run_stage(name: str, config: RunConfig, show_progress: bool = True, force: bool = False,
              explicit: bool = False) -> tuple[Any, bool]:
    """Run stage ``name`` unless its output is current; returns (its result, whether it ran).

    ``force``: redo it even if done (an earlier stage ran). ``explicit``: the stage's own CLI
    command, which runs it also where ``synthpos run`` would not need it.

    The run directory's lock (:mod:`synthpos.run_lock`) is held from the first record read to
    the last one written; a second process on the same run directory is refused.

    The result is what the stage function returns (a path, a store, the metrics) or, for a
    stage that is done, the same read from its output; None for a stage not in this run.

    SIGTERM outside the stage's own handling (while records are written, a backbone saved after
    training) is noted and raised as :class:`~synthpos.signals.Terminated` at the next safe point:
    before the stage's work starts, or once its record is written.
    """
    from synthpos.run_lock import run_lock
    from synthpos.signals import sigterm_raises, stop_requests

    stage = BY_NAME[name]
    check_inputs(stage, config, explicit)
    with run_lock(config.run_dir), stop_requests() as stop, \
            (sigterm_raises() if stage.stops_anywhere else nullcontext()):
        result = _run_stage_locked(stage, config, show_progress, force, explicit, stop)
        stop.raise_if_requested(f"stage {name} finished first")
        return result


def _run_stage_locked(stage: Stage, config: RunConfig, show_progress: bool, force: bool,
                      explicit: bool, stop) -> tuple[Any, bool]:
    name = stage.name
    created = created_dirs(stage.output(config))
    # Under torchrun every rank generates: rank 0 decides (moves a stale store aside, writes the
    # record) while the others wait, then they read what it wrote.
    from synthpos.distributed import launched_world_size, wait_for_launched_processes

    launched, lead = name == "generate" and launched_world_size() > 1, _is_lead_process()
    if launched and not lead:
        wait_for_launched_processes(f"stage {name}")
    status = prepare_stage(stage, config, force, explicit)
    if launched and lead:
        wait_for_launched_processes(f"stage {name}")
    if status.state == "not needed":
        return None, False
    if status.state == "done" and not force:
        return stage.result(config), False
    stop.raise_if_requested(f"before stage {name} started")
    try:
        result = stage.run(config, show_progress)
    except NoSpaceError as err:
        # The writer knows the file; the stage knows how much more its output needs.
        if err.needed is None:
            err.needed, what = stage.space(config)
            err.what = err.what or what
        if _is_lead_process():
            _undo_start(stage, config, created)
        raise
    except SynthposError:
        if _is_lead_process():
            _undo_start(stage, config, created)
        raise
    if _is_lead_process():
        write_record(stage, config, expected_record(stage, config), complete=True)
    return result, True


def plan(config: RunConfig) -> list[tuple[str, Status]]:
    """What ``synthpos run`` would do, stage by stage, without running or writing anything."""
    out, redo = [], False
    for stage in STAGES:
        status = stage_status(stage, config)
        if redo and status.state == "done":
            status = Status("redo", "an earlier stage was redone")
        redo = redo or status.state in ("new", "redo", "resume")
        out.append((stage.name, status))
    return out

