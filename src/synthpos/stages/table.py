"""The stage table: each stage's row, what its output depends on and which stages it reads.

Every stage (``encoder``, ``train-generator``, ``generate``, ``pretrain``, ``evaluate``) is one
row of :data:`STAGES`, in the order ``synthpos run`` runs them. A row declares the config
settings that decide the stage's output (dotted key prefixes, minus the keys under them that
its fields declare output-neutral: :func:`output_neutral`), the values the config leaves to the machine
(:mod:`synthpos.stages.resolved`), the earlier stages it reads, and how to run it, check its
inputs (:mod:`synthpos.stages.checks`) and tell whether its output is finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from synthpos.config import RunConfig
from synthpos.stages import checks, encoder, resolved, store_state

#: One console for the whole stage layer (tests silence or capture it in one place).
console = Console(stderr=True)

RECORD = "stage_record.json"
PREVIOUS = "previous"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists are leaves."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or below one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def output_neutral(config: BaseModel, stage: str, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of the settings whose field declares that they do not decide ``stage``'s output.

    A field's ``json_schema_extra["affects_output"]`` (config.py's ``NO_OUTPUT``,
    ``RECORDED_RESOLVED``): ``False`` for speed, progress or where files go; ``"resolved"`` for a
    value recorded as the machine resolves it (the row's ``resolved``), not as written; a list for
    the only stages whose output it decides. Unmarked fields decide the output. The walk follows the
    config's own values, so a section a component adds is read as it is.
    """
    out: list[str] = []
    for name, info in type(config).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        affects = extra.get("affects_output", True)
        if affects is False or affects == "resolved" or (isinstance(affects, list) and stage not in affects):
            out.append(prefix + name)
        elif isinstance(value := getattr(config, name, None), BaseModel):
            out += output_neutral(value, stage, f"{prefix}{name}.")
    return tuple(out)


def _no_check(config: RunConfig, explicit: bool, upfront: bool) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    """One row of the table.

    Attributes:
        name: the CLI command.
        decides: dotted prefixes of the settings that decide the output.
        ignores: keys under ``decides`` this row leaves out beyond those its fields declare
            output-neutral (:func:`output_neutral`): round 0 runs without the synthetic settings.
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
        check: ``check(config, explicit, upfront)`` raises for a bad input before anything is touched.
        stops_anywhere: SIGTERM stops the stage where it is (its outputs are atomic files, nothing to save
            first); stages that checkpoint on SIGTERM catch it themselves.
        limits: ``limits(config)`` raises for a value beyond a limit between sections that this stage reads
            (:meth:`RunConfig.check_pretrain_limits` and the like), checked before it starts.
        every_rank: under torchrun every process runs the stage (generate splits its shards): rank 0
            decides (moves a stale output aside, writes the record) while the others wait.
        adopt_saved_config: a record-less output (made before records were written) is taken as current
            when a config saved beside it gives the same settings (:func:`synthpos.stages.records.adopt`).
        adopt: ``adopt(stage, config, expected)``: the output's own evidence that a record-less output
            matches the ``expected`` record (a manifest, a saved section), in words; None where it shows none.
        shared_by_seeds: with ``seed_store: shared``, ``run --seeds`` runs the stage once in the run directory,
            before the seeds, for every seed to read (the generator and the encoder it is conditioned on).
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
    check: Callable[[RunConfig, bool, bool], None] = _no_check
    stops_anywhere: bool = False
    limits: Callable[[RunConfig], None] = lambda config: None
    every_rank: bool = False
    adopt_saved_config: bool = True
    adopt: Callable[[Stage, RunConfig, dict[str, Any]], str | None] = lambda stage, config, expected: None
    shared_by_seeds: bool = False

    def left_out(self, config: RunConfig) -> tuple[str, ...]:
        """The keys under ``decides`` that do not decide this stage's output."""
        return self.ignores + output_neutral(config, self.name)

    def settings(self, config: RunConfig) -> dict[str, Any]:
        """The output-deciding settings' values, flattened."""
        flat = flatten(config.model_dump(mode="json"))
        left_out = self.left_out(config)
        return {k: v for k, v in sorted(flat.items()) if under(k, self.decides) and not under(k, left_out)}

    def record_path(self, config: RunConfig) -> Path:
        return self.output(config) / RECORD


# ----------------------------------------------------------------------------- the rows' parts


def _generator_feeds(config: RunConfig) -> str | None:
    from synthpos.generators.registry import generator_class

    if not generator_class(config.generate.kind).trains_on_data:
        # The generator class says whether it is trained on the data (clsp's DDPM) or loads pretrained weights.
        return (f"generate.kind={config.generate.kind} is not trained on the data "
                "(it loads pretrained weights from generate.generator, or needs none)")
    if config.generate.generator is not None:
        return f"using generator {config.generate.generator}"
    return None


def _train_config_matches(stage: Stage, config: RunConfig, expected: dict[str, Any]) -> str | None:
    """A generator trained before records: the ``train_config.json`` it wrote gives the same ``train_generator``
    settings (the data and the seed it did not save are taken as the current ones)."""
    saved_section = stage.output(config) / "train_config.json"
    if not saved_section.is_file():
        return None
    ours = {k: v for k, v in expected["settings"].items() if k.startswith("train_generator.")}
    left_out = stage.left_out(config)
    theirs = {k: v for k, v in flatten({"train_generator": json.loads(saved_section.read_text())}).items()
              if not under(k, left_out)}
    if ours == theirs:
        return "its train_config.json matches (data and seed were not saved; taken as the current ones)"
    return None


def _generator_finished(config: RunConfig) -> bool:
    """COMPLETE is there and the weights are whole: damaged weights are not a finished generator, so the
    train-generator that generate advises for them writes them again."""
    return (config.generator_dir / "COMPLETE").is_file() and _weights_whole(config.generator_dir / "model")


def _weights_whole(model: Path) -> bool:
    """The UNet's weight file is there and whole (a deleted one is not a whole generator either)."""
    return any(model.glob("unet/diffusion_pytorch_model.*")) and checks.weights_damage(model) is None


def _run_train_generator(config: RunConfig, show_progress: bool) -> Path:
    import shutil

    from synthpos.generators.diffusion import train_generator_stage

    model, complete = config.generator_dir / "model", config.generator_dir / "COMPLETE"
    stop_at = None
    if model.is_dir() and not _weights_whole(model):
        # Written from the training state at each checkpoint: a resume that has no step left to train (the
        # checkpoint is the last one) writes it only where it is absent. A finished training (COMPLETE) is
        # not trained past its last step: a time limit or a minutes-cadence stop would train on otherwise.
        shutil.rmtree(model)
        if complete.is_file():
            stop_at = json.loads(complete.read_text())["step"]
    return train_generator_stage(config, show_progress=show_progress, stop_at=stop_at)


def _run_generate(config: RunConfig, show_progress: bool):
    from synthpos.generators.generate import generate_stage

    return generate_stage(config, show_progress=show_progress)


def _run_pretrain(config: RunConfig, show_progress: bool) -> Path:
    from synthpos.methods.pretrain import pretrain_stage

    return pretrain_stage(config, show_progress=show_progress)


def _whole_backbone(path: Path) -> bool:
    """``path`` is there and whole: torch's zip ends in a central directory that a file cut short or zeroed
    lacks (read without loading), so the pretrain evaluate advises for a damaged backbone remakes it."""
    import zipfile

    return path.is_file() and zipfile.is_zipfile(path)


def _whole_metrics(path: Path) -> bool:
    """``path`` is there and reads back as metrics.json (a JSON object with its results), so a metrics.json cut short,
    zeroed or overwritten is not a finished evaluation: the `synthpos evaluate` the report advises remakes it."""
    from synthpos.report.collect import metrics_damage

    return path.is_file() and metrics_damage(path) is None


def _evaluates_own_pretraining(config: RunConfig) -> bool:
    """Pretraining feeds evaluation unless ``evaluate.checkpoint`` is a synthpos backbone (a baseline encoder does not
    replace the run's own)."""
    from synthpos.evaluation.external import external_checkpoint

    return config.evaluate.checkpoint is None or external_checkpoint(config) is not None


def _run_evaluate(config: RunConfig, show_progress: bool) -> dict:
    from synthpos.evaluation.evaluate import evaluate_stage

    return evaluate_stage(config, show_progress=show_progress)


# ----------------------------------------------------------------------------- the table

STAGES: tuple[Stage, ...] = (
    Stage(
        # Round 0 (synthpos.stages.encoder): pretrained with the run's settings and no synthetic positives.
        name="encoder",
        decides=("seed", "data", "pretrain"),
        ignores=("pretrain.synthetic",),  # it runs with mode none whatever the run's synthetic settings
        inputs=(),
        output=lambda c: c.encoder_dir,
        finished=lambda c: _whole_backbone(c.encoder_dir / "backbone.pt"),
        run=encoder.run_encoder,
        result=lambda c: c.encoder_dir / "backbone.pt",
        feeds=encoder.encoder_feeds,
        resolved=resolved.pretrain_resolved,
        check=encoder.check_encoder,
        shared_by_seeds=True,
    ),
    Stage(
        name="train-generator",
        decides=("data", "train_generator"),  # and the generation seed (resolved)
        ignores=(),
        inputs=("encoder",),
        output=lambda c: c.generator_dir,
        finished=_generator_finished,
        run=_run_train_generator,
        result=lambda c: c.generator_dir / "model",
        feeds=_generator_feeds,
        resolved=resolved.train_generator_resolved,
        check=checks.check_train_generator,
        limits=RunConfig.check_train_generator_limits,
        adopt=_train_config_matches,
        shared_by_seeds=True,
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
        ignores=(),
        inputs=("train-generator",),
        output=lambda c: c.store_dir,
        finished=store_state.store_finished,
        run=_run_generate,
        result=store_state.open_store,
        feeds=store_state.store_feeds,
        resolved=resolved.generate_resolved,
        notes=store_state.store_notes,
        space=store_state.store_space,
        check=checks.check_generate,
        limits=RunConfig.check_generate_limits,
        every_rank=True,
        # The store's manifest holds the generator record: the model for every record, and the only evidence
        # taken (a saved config does not say which generator made the shards).
        adopt_saved_config=False,
        adopt=lambda stage, config, expected: store_state.manifest_matches(config, expected["resolved"]["generator"]),
    ),
    Stage(
        name="pretrain",
        decides=("seed", "data", "pretrain"),
        ignores=(),
        inputs=("generate",),
        output=lambda c: c.pretrain_dir,
        finished=lambda c: _whole_backbone(c.pretrain_dir / "backbone.pt"),
        run=_run_pretrain,
        result=lambda c: c.pretrain_dir / "backbone.pt",
        feeds=lambda c: None if _evaluates_own_pretraining(c) else f"evaluate.checkpoint={c.evaluate.checkpoint} is evaluated",
        resolved=resolved.pretrain_resolved,
        check=checks.check_pretrain,
        limits=RunConfig.check_pretrain_limits,
    ),
    Stage(
        name="evaluate",
        decides=("seed", "data", "evaluate"),
        ignores=(),
        inputs=("pretrain",),
        output=lambda c: c.evaluate_dir,
        finished=lambda c: _whole_metrics(c.evaluate_dir / "metrics.json"),
        run=_run_evaluate,
        result=lambda c: json.loads((c.evaluate_dir / "metrics.json").read_text()),
        resolved=resolved.evaluate_resolved,
        check=checks.check_evaluate,
        stops_anywhere=True,
        limits=RunConfig.check_evaluate_limits,
    ),
)

BY_NAME = {stage.name: stage for stage in STAGES}


def needed(stage: Stage, config: RunConfig) -> str | None:
    """None when ``stage`` is part of ``synthpos run`` for ``config``; else why not (its output feeds nothing)."""
    # The latest reason first: no store to make also means no generator to train.
    for later in reversed(STAGES[[s.name for s in STAGES].index(stage.name):-1]):
        if (why := later.feeds(config)) is not None:
            return why
    return None
