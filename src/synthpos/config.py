"""Configuration: one pydantic schema for every stage, read from YAML.

A run is described by one YAML file (:class:`RunConfig`). Each stage command
(``train-generator``, ``generate``, ``pretrain``, ``evaluate``) reads the same
file and uses its own section, so a recipe is one file. ``--set a.b=c``
overrides any value; the value is parsed as YAML (``--set pretrain.epochs=5``,
``--set data.subset=null``). Unknown keys and wrong types are errors.

Configuration is validated once, here; inner code takes plain arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator,
)

from synthpos.compose import read_recipe
from synthpos.errors import SynthposError


# Whether a setting changes a stage's output is declared on its field (json_schema_extra) and read by
# the stage records (synthpos.stages.table.output_neutral): speed, progress and where files go change
# none; a value recorded as the machine resolves it (precision: auto, a file by its bytes) is left out
# as written; a list names the only stages whose output it changes.
NO_OUTPUT = {"affects_output": False}
RECORDED_RESOLVED = {"affects_output": "resolved"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    #: keys added after runs were recorded, which a dump writes only when they differ from their default:
    #: stage records (and saved configs) of runs made before the key existed stay current while it is left at it
    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ()

    def _leave_out_defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        for key in self.WRITTEN_WHEN_SET:
            if key in data and getattr(self, key) == type(self).model_fields[key].default:
                del data[key]
        return data

    @model_serializer(mode="wrap")
    def _write(self, handler: Any) -> dict[str, Any]:
        return self._leave_out_defaults(handler(self))


def _mode_class(name: str) -> Any:
    """The registered synthetic mode ``name`` (its class: what it declares)."""
    from synthpos.registry import MODES

    return MODES.get(name)


@contextmanager
def _one_line() -> Iterator[None]:
    """A limit's ValueError as the SynthposError the CLI prints as one line."""
    try:
        yield
    except ValueError as err:
        raise SynthposError(str(err)) from None


def _generator_class(kind: str) -> Any:
    """The registered generator ``kind`` (its class: what it declares, such as ``trains_on_data``)."""
    from synthpos.registry import GENERATORS

    return GENERATORS.get(kind)


def dataset_fact(name: str, fact: str) -> Any:
    """What the registered dataset ``name`` declares about itself without being read (``train_images``,
    ``num_classes``, ``native_side``: see ``synthpos.data.datasets.DatasetSource``); None when it does not know."""
    from synthpos.registry import DATASETS

    return getattr(DATASETS.get(name), fact, None) if name in DATASETS else None


def _known(registry: str, name: str) -> str:
    """``name`` if the registry holds it; else a one-line error listing the names it holds."""
    from synthpos import registry as registries

    reg = getattr(registries, registry)
    if name not in reg:
        raise ValueError(reg.unknown(name))
    return name


_REPORTED: set[str] = set()


def deprecated_key(old: str, new: str) -> None:
    """One line on stderr (once per key and process): ``old`` still works but has moved to ``new``."""
    if old not in _REPORTED:
        _REPORTED.add(old)
        sys.stderr.write(f"synthpos: '{old}' is deprecated; write '{new}' instead (docs/architecture.md: moved keys)\n")


class _Sections(_Strict):
    """A config section that also holds the settings sections its registered components declare.

    A component class (a dataset, a generator, a method, a synthetic mode) with ``settings`` set to a
    pydantic model owns the key ``<this section>.<its name>``; the schema of that key is the
    component's, found in the registry when the config is read, so config.py never lists them.
    ``sections`` holds them by name; a dump writes each under its own key again. A key that moved
    into a component's section is declared by the component (``moved = {old: new}`` on its class)
    and still works, with one deprecation line.
    """

    _registry: ClassVar[str]
    _chosen: ClassVar[str]  # the field that names the component in use
    _prefix: ClassVar[str]  # where this section sits in a run config, for messages
    sections: dict[str, Any] = Field(default_factory=dict, description="Settings sections of "
                                                           "registered components, written under their names.")

    @model_validator(mode="before")
    @classmethod
    def _collect_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        from synthpos import registry as registries

        reg = getattr(registries, cls._registry)
        data = dict(data)
        try:
            moved = reg.moved_keys()  # keys that moved into a component's section: each component's own table
        except ValueError as err:
            raise SynthposError(str(err)) from None
        for old, (section, key) in moved.items():
            if old in data:
                deprecated_key(f"{cls._prefix}.{old}", f"{cls._prefix}.{section}.{key}")
                value = data.pop(old)
                target = dict(data.get(section) or {})
                target.setdefault(key, value)  # the new spelling wins where both are written
                data[section] = target
        sections = dict(data.pop("sections", None) or {})
        for name, component in reg.items():
            if getattr(component, "settings", None) is not None and name in data:
                sections[name] = data.pop(name)
        data["sections"] = sections
        return data

    @model_validator(mode="after")
    def _validate_sections(self) -> _Sections:
        from synthpos import registry as registries

        reg = getattr(registries, self._registry)
        chosen = getattr(self, self._chosen)
        raw = dict(self.sections)
        if chosen in reg and getattr(reg.get(chosen), "settings", None) is not None:
            raw.setdefault(chosen, {})  # the component in use records its settings, defaults included
        validated: dict[str, BaseModel] = {}
        for name, value in raw.items():
            settings = reg.get(name).settings
            if isinstance(value, settings):
                validated[name] = value
                continue
            try:
                validated[name] = settings.model_validate(value if value is not None else {})
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join([self._prefix, name, *(str(p) for p in first["loc"])])
                if first["type"] == "extra_forbidden":
                    raise ValueError(f"unknown key '{where}'; check its spelling") from None
                raise ValueError(f"'{where}': {first['msg']} (got {first.get('input')!r})") from None
        self.__dict__["sections"] = validated  # not setattr: validate_assignment would run this validator again
        return self

    @model_serializer(mode="wrap")
    def _write(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        data.update(data.pop("sections", None) or {})
        return self._leave_out_defaults(data)

    def section(self, name: str) -> BaseModel:
        """The settings section of component ``name`` (its defaults where the config sets none)."""
        from synthpos import registry as registries

        if name in self.sections:
            return self.sections[name]
        return getattr(registries, self._registry).get(name).settings()

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """pydantic's copy; an ``update`` may also name a component's section (replaced whole, validated) or a
        key that moved into one (set in that section, which is validated again)."""
        if not update:
            return super().model_copy(update=update, deep=deep)
        from synthpos import registry as registries

        reg = getattr(registries, type(self)._registry)
        moved = reg.moved_keys()
        plain: dict[str, Any] = {}
        whole: dict[str, Any] = {}
        keys: dict[str, dict[str, Any]] = {}
        for key, value in update.items():
            if key in moved:
                deprecated_key(f"{type(self)._prefix}.{key}", f"{type(self)._prefix}.{moved[key][0]}.{moved[key][1]}")
                keys.setdefault(moved[key][0], {})[moved[key][1]] = value
            elif key in reg and getattr(reg.get(key), "settings", None) is not None:
                whole[key] = value
            else:
                plain[key] = value
        copy = super().model_copy(update=plain, deep=deep)
        sections = dict(copy.sections)
        for name, value in whole.items():
            settings = reg.get(name).settings
            sections[name] = value if isinstance(value, settings) else settings.model_validate(value)
        for name, values in keys.items():
            current = sections[name] if name in sections else copy.section(name)
            sections[name] = type(current).model_validate({**current.model_dump(), **values})
        copy.__dict__["sections"] = sections
        return copy

    @property
    def own(self) -> BaseModel | None:
        """The settings section of the component in use (None when it declares no settings)."""
        from synthpos import registry as registries

        component = getattr(registries, self._registry).get(getattr(self, self._chosen))
        return None if getattr(component, "settings", None) is None else self.section(component.name)

    def __getattr__(self, item: str) -> Any:
        # ``config.generate.clsp.num_steps`` reads a component's section like a field; a key that moved
        # there (``config.generate.num_steps``) still reads, with the same deprecation line as in a recipe.
        if item.startswith("_"):
            return super().__getattr__(item)
        from synthpos import registry as registries

        reg = getattr(registries, type(self)._registry)
        if item in reg and getattr(reg.get(item), "settings", None) is not None:
            return self.section(item)
        moved = reg.moved_keys()
        if item in moved:
            section, key = moved[item]
            deprecated_key(f"{type(self)._prefix}.{item}", f"{type(self)._prefix}.{section}.{key}")
            return getattr(self.section(section), key)
        return super().__getattr__(item)


def _registered_default(registry: str) -> Any:
    """A default factory: the name the registry's components declare as default (``default=True``
    where they register), read when a config is validated, not when this module is imported."""

    def default() -> str:
        from synthpos import registry as registries

        return getattr(registries, registry).default

    return default


class DataConfig(_Sections):
    """Which dataset, where it lives, and how much of it to use.

    ``root``, ``test_root``, ``image_size`` and ``subset`` are every dataset's (each source finds its
    folder from ``root``; :func:`synthpos.data.load_dataset` applies ``subset`` and ``image_size`` to
    any source), so they stay here: a recipe switching ``data.name`` keeps them, and the stage
    records of earlier runs keep their keys. A dataset with settings of its own declares them on
    its class and owns ``data.<name>``.
    """

    _registry: ClassVar[str] = "DATASETS"
    _chosen: ClassVar[str] = "name"
    _prefix: ClassVar[str] = "data"

    name: str = Field(default_factory=_registered_default("DATASETS"), description="A registered dataset "
                      "(synthpos.registry.DATASETS; default: the one registered as default): fashion_mnist, cifar10, "
                      "cifar100, image_folder, or one a plugin registers.")
    root: Path | None = Field(
        None,
        description="Folder with the data. Default: $SYNTHPOS_DATA, then the system location the dataset declares "
        "(/usr/share/datasets/fashion-mnist for Fashion-MNIST).",
    )
    test_root: Path | None = Field(None, description="The evaluation split's folder, for a dataset whose splits are "
                                   "separate folders (image_folder).",
                                   json_schema_extra={"affects_output": ["evaluate"]})

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return _known("DATASETS", name)

    image_size: int | None = Field(None, ge=8, description="Resize images to this size when loading (default: native).")
    subset: int | None = Field(None, ge=1, description="Use only the first N training images.")
    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("stream",)  # came with streaming; "auto" is what came before

    stream: Literal["auto"] | bool = Field(
        "auto", description="Decode images from their files or tar shards as batches need them (true), or read the "
        "split into memory once (false). auto: stream when the decoded split at data.image_size is above 200 MB. "
        "Sources without files (CIFAR, Fashion-MNIST) are always in memory.")
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader worker processes that fetch (and, streamed, decode) pretraining batches, "
        "and decode a streamed split's evaluation batches. Default: 0 in memory, up to 4 when streamed. The batches "
        "are the same whatever the count.",
        json_schema_extra=NO_OUTPUT)

    @model_validator(mode="after")
    def _check_sizes(self) -> DataConfig:
        known = dataset_fact(self.name, "train_images")
        if known is not None and self.subset is not None and self.subset > known:
            raise ValueError(f"data.subset={self.subset} but the {self.name} training split has {known} images; "
                             "lower it or set data.subset=null")
        if dataset_fact(self.name, "needs_root") and self.root is None:
            raise ValueError(f"data.name={self.name} needs data.root: {dataset_fact(self.name, 'how_to_fix')}")
        return self

    def train_images(self) -> int | None:
        """Images in the training split as configured (subset or the dataset's size), when knowable."""
        known = dataset_fact(self.name, "train_images")
        return min(self.subset, known) if self.subset and known else (self.subset or known)

    def image_side(self) -> int | None:
        """The side of the images as loaded (data.image_size or the dataset's native size), when knowable."""
        return self.image_size or dataset_fact(self.name, "native_side")


class UNetConfig(_Strict):
    """Shape of the diffusers UNet2DModel (the CLSP/DDPM CIFAR UNet by default)."""

    block_out_channels: list[int] = [128, 256, 256, 256]
    attention_levels: list[int] = Field([1], description="Levels (0 = highest resolution) with self-attention.")
    layers_per_block: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    norm_num_groups: int = Field(32, ge=1)
    attention_head_dim: int | None = Field(None, ge=1, description="Default: one head over all channels.")
    up_attention_levels: list[int] | None = Field(
        None, description="Levels whose up blocks have self-attention; default: attention_levels (a symmetric UNet). "
        "[] with attention_levels at every level is CLSP's official conditional UNet (models/unet_condition.py).")

    @model_validator(mode="after")
    def _check_shape(self) -> UNetConfig:
        levels = len(self.block_out_channels)
        if levels == 0 or any(ch < 1 for ch in self.block_out_channels):
            raise ValueError(f"train_generator.unet.block_out_channels must list one positive channel count per level; got {self.block_out_channels}")
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < levels]
        if bad:
            raise ValueError(f"train_generator.unet.attention_levels {bad} out of range: the UNet has levels 0..{levels - 1}")
        bad = [lvl for lvl in self.up_attention_levels or [] if not 0 <= lvl < levels]
        if bad:
            raise ValueError(f"train_generator.unet.up_attention_levels {bad} out of range: the UNet has levels 0..{levels - 1}")
        if any(ch % self.norm_num_groups for ch in self.block_out_channels):
            raise ValueError(f"train_generator.unet.block_out_channels {self.block_out_channels} must all be multiples of "
                             f"train_generator.unet.norm_num_groups={self.norm_num_groups}")
        return self


class GeneratorCheckConfig(_Strict):
    """Generator training's check: every ``every_steps`` training steps (or ``every_minutes`` of
    wall time), CLSP positives of the first ``anchors`` training images, made with the run's
    ``generate`` settings, judged by the fidelity classifier.

    Training stops when fidelity reaches ``target_fidelity`` with both diversity floors met, or
    when ``patience`` checks in a row each gain less than ``min_gain``.

    The cadence is exactly one of ``every_steps`` and ``every_minutes``. Steps make the stop rule
    reproducible (the checks land at steps N, 2N, ... on any machine, load and resume); minutes
    make it depend on how fast the machine trains. Setting ``every_steps`` alone (without
    ``every_minutes`` in the same mapping) turns the minutes off; a recipe that names
    ``every_minutes`` needs ``every_minutes: null`` beside ``every_steps``.
    """

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("every_steps",)  # came after runs with the minutes cadence

    every_minutes: float | None = Field(30.0, gt=0, description="Check after this much training wall time since "
                                        "the last check (null: every_steps).")
    every_steps: int | None = Field(None, ge=1, description="Check at steps N, 2N, ... (the same steps on any machine "
                                    "and after a resume; null: every_minutes).")
    anchors: int = Field(300, ge=1)
    candidates: int = Field(2, ge=1)
    target_fidelity: float = Field(0.8, gt=0, le=1)
    min_pixel_distance: float = Field(0.20, ge=0, description="Floor of the mean pixel RMS from a candidate to its anchor.")
    min_feature_ratio: float = Field(0.5, ge=0, description="Floor of the candidate-to-anchor feature distance over the "
                                     "distance between two real images of the same class.")
    min_gain: float = Field(0.01, ge=0, description="A check that gains less fidelity than this (a fraction) makes no progress.")
    patience: int = Field(2, ge=1, description="Stop after this many checks in a row without progress.")

    @model_validator(mode="before")
    @classmethod
    def _steps_alone_turn_minutes_off(cls, data: Any) -> Any:
        # `check: {every_steps: 1000}` means steps: the minutes' default must not make it two cadences.
        if isinstance(data, dict) and data.get("every_steps") is not None and "every_minutes" not in data:
            data = {**data, "every_minutes": None}
        return data

    @model_validator(mode="after")
    def _one_cadence(self) -> GeneratorCheckConfig:
        if self.every_steps is not None and self.every_minutes is not None:
            raise ValueError(f"train_generator.check.every_steps={self.every_steps} and every_minutes={self.every_minutes:g} "
                             "are both set; set train_generator.check.every_minutes=null to check by steps (or "
                             "every_steps=null to check by wall time)")
        if self.every_steps is None and self.every_minutes is None:
            raise ValueError("train_generator.check needs a cadence: set train_generator.check.every_steps (or "
                             "every_minutes), or train_generator.check=null for no check")
        return self


class EmbeddingConditionConfig(_Strict):
    """Condition the DDPM on each image's own embedding from a frozen synthpos encoder (no labels):
    see :mod:`synthpos.generators.embedding_condition`."""

    encoder: Path | None = Field(None, description="The frozen encoder: a backbone.pt written by `synthpos pretrain` on "
                                 "the same data. null: round 0 of `synthpos run` pretrains it into <run_dir>/encoder with "
                                 "the run's pretrain settings and no synthetic positives (a label-free method only).")
    crop_size: int | None = Field(None, ge=8, description="Side the encoder reads images at (default: the images' own).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Replace the embedding by zeros with this probability, so "
                           "classifier-free guidance (generate.clsp.guidance_scale) works.")
    neighbour_prob: float = Field(0.0, ge=0, le=1, description="Train toward one of the anchor's nearest training images "
                                  "in embedding space with this probability (IC-GAN's neighbourhood targets).")
    neighbours: int = Field(5, ge=1, description="How many nearest neighbours are targets.")


class TrainGeneratorConfig(_Strict):
    """Stage 1: an unconditional DDPM trained from scratch (CLSP's recipe by default)."""

    unet: UNetConfig = UNetConfig()
    sample_size: int | None = Field(None, ge=8, description="Train (and sample) at this side, padding the images with "
                                    "black borders (e.g. 28 -> 32 px for a 4x4 level); stores keep the data's size. "
                                    "Default: the images' own size, padded up to the next side the UNet's levels can halve.")
    loss_weighting: Literal["none", "min_snr"] = Field("none", description="none: the DDPM's plain epsilon MSE (CLSP); "
                                                       "min_snr: each timestep's loss weighted by min(SNR, gamma) / SNR "
                                                       "(Hang et al., ICCV 2023), which converges faster.")
    min_snr_gamma: float = Field(5.0, gt=0, description="gamma of min_snr weighting.")
    num_train_timesteps: int = Field(1000, ge=2)
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(5000, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    batch_size: int = Field(128, ge=1)
    max_steps: int = Field(800_000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="Stop (and save) after this wall time.")
    checkpoint_every: int = Field(1000, ge=1, json_schema_extra=NO_OUTPUT)
    checkpoint_every_minutes: float | None = Field(5.0, gt=0, description="Also checkpoint after this much wall time "
                                                   "since the last one (null: steps only). SIGTERM always checkpoints.",
                                                   json_schema_extra=NO_OUTPUT)
    hflip: bool = True
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = Field(
        ["csv"], description="Loggers of the training loss (as pretrain.loggers), under <generator>/logs/.",
        json_schema_extra=NO_OUTPUT)
    class_conditional: bool = Field(False, description="Condition the UNet on class labels (CLSP's conditional variant).")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="Class-conditional: drop the label with this probability "
                                 "(the null class), so one model also predicts unconditionally for classifier-free guidance.")
    condition: EmbeddingConditionConfig | None = Field(None, description="Condition on each image's own self-supervised "
                                                       "embedding (instance conditioning; null: unconditional).")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", json_schema_extra=RECORDED_RESOLVED)
    channels_last: bool = Field(True, json_schema_extra=NO_OUTPUT)
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).",
                                    json_schema_extra=NO_OUTPUT)
    check: GeneratorCheckConfig | None = Field(None, description="Measure the positives during training and stop "
                                                "by their fidelity (null: train for max_steps).")

    @model_validator(mode="after")
    def _check_size(self) -> TrainGeneratorConfig:
        step = 2 ** (len(self.unet.block_out_channels) - 1)
        if self.sample_size is not None and self.sample_size % step:
            raise ValueError(f"train_generator.sample_size={self.sample_size} cannot be halved {step.bit_length() - 1} times "
                             f"by the UNet's {len(self.unet.block_out_channels)} levels; use a multiple of {step}")
        if self.beta_start >= self.beta_end:
            raise ValueError(f"train_generator.beta_start={self.beta_start} must be below beta_end={self.beta_end}")
        if self.class_conditional and self.condition is not None:
            raise ValueError("train_generator.class_conditional and train_generator.condition exclude each other; "
                             "set one of them")
        return self

    @model_serializer(mode="wrap")
    def _write_condition_when_set(self, handler: Any) -> dict[str, Any]:
        # An unset condition is left out of dumps, so the records of generators trained before it existed stay current.
        data = handler(self)
        if data.get("condition", 0) is None:
            del data["condition"]
        return data


class GenerateConfig(_Sections):
    """Stage 2: synthetic positives into a store.

    The fields here are the store's and every generator's (where it goes, K, the layout, the seed,
    batching and precision); ``kind`` names a registered generator, whose own settings (its sampler)
    it declares on its class and owns under ``generate.<kind>`` (``generate.clsp.num_steps``,
    ``generate.unclip.guidance_scale``). Keys that moved there from this section still work, with
    one deprecation line: each generator lists its own (``moved`` on its class).
    """

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("store_format", "store_quality")  # came with encoded shards

    _registry: ClassVar[str] = "GENERATORS"
    _chosen: ClassVar[str] = "kind"
    _prefix: ClassVar[str] = "generate"

    kind: str = Field(default_factory=_registered_default("GENERATORS"), description="A registered generator "
                      "(synthpos.registry.GENERATORS; default: the one registered as default): 'clsp' (a DDPM, "
                      "optionally class-conditional or embedding-conditioned, with bottleneck interpolation), 'unclip' "
                      "(Stable unCLIP image variations), 'anchors' (K copies of the anchor itself: the real-view control "
                      "of a synthetic run), or one a plugin registers.")

    @field_validator("kind")
    @classmethod
    def _known_generator(cls, kind: str) -> str:
        return _known("GENERATORS", kind)
    generator: Path | None = Field(
        None, description="Generator directory (diffusers format). Default: <run_dir>/generator/model. "
        "'builtin:fashion_mnist' names the checkpoint shipped with synthpos.",
    )
    store: Path | None = Field(None, description="Store directory. Default: <run_dir>/store.")
    seed: int | None = Field(None, description="Seed of generation (and of the generator's training). Default: the "
                             "run's seed; runs with several seeds keep the first, so they share one store.")
    candidates: int = Field(8, ge=1, description="K: candidates per anchor.")
    compile: bool = Field(False, description="torch.compile the generator's network (pays off on long runs on GPUs).")
    num_anchors: int | None = Field(None, ge=1, description="Generate for the first N training images only.")
    shard_size: int = Field(500, ge=1, description="Anchors per shard.")
    store_format: Literal["auto", "raw", "png", "jpeg", "webp"] = Field(
        "auto", description="How shards keep candidates: 'raw' uint8 .npy (memory-mapped), or one pack of encoded "
        "images per shard ('png' lossless, 'jpeg'/'webp' lossy at store_quality). 'auto': an existing store's "
        "format; for a new one raw up to 64 px a side, JPEG above (an import: its files' own codec).")
    store_quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality of encoded shards.")
    batch_size: int = Field(128, ge=1, description="Images (anchor x candidate) per network call.")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    num_threads: int | None = Field(None, ge=1)
    verify_store: Literal["auto", "always"] = Field(
        "auto", description="Hash every shard of an existing store before resuming: 'auto' unless the store's stamp "
        "(verified.json) says these very files were verified; 'always' in any case (finds bytes flipped in place).")


class BackboneConfig(_Strict):
    name: Literal["resnet18", "resnet50", "small_resnet", "convnet"] = "resnet18"
    cifar_stem: bool = Field(True, description="3x3 stride-1 first conv, no max-pool (for 28-64 px images).")
    width: int = Field(32, ge=4, description="small_resnet / convnet base width.")


_Prob = Annotated[float, Field(ge=0, le=1)]


class AugmentConfig(_Strict):
    """SimCLR augmentations at CIFAR scale (CLSP's parameters)."""

    crop_size: int = Field(32, ge=8)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_prob: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.4, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    hflip_prob: float = Field(0.5, ge=0, le=1)
    solarize_prob: _Prob | tuple[_Prob, _Prob] = Field(
        0.0, description="RandomSolarize (threshold 0.5 on [0, 1], i.e. 128 on uint8) after grayscale; the official CLSP "
        "MoCo pipeline uses 0.2. A pair [view 1, view 2] gives each view its own (GenView MoCo v3: [0.0, 0.2]); "
        "views after the second use the second's.")
    blur_prob: _Prob | tuple[_Prob, _Prob] = Field(
        0.0, description="RandomApply(GaussianBlur) after grayscale, before solarization (GenerativeSSL: 0.5); a pair "
        "[view 1, view 2] gives each view its own (GenView MoCo v3: [1.0, 0.1]).")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Blur sigma ~ U[low, high] in pixels (solo-learn, GenView).")
    blur_kernel_size: int | None = Field(None, ge=1, description="Odd kernel side (default: 2 * ceil(3 * high) + 1).")

    @field_validator("crop_scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"pretrain.augment.crop_scale={list(value)} must satisfy 0 < low <= high <= 1 "
                             "(shares of the image's area), e.g. [0.08, 1.0]")
        return value


class SyntheticConfig(_Sections):
    """How synthetic data enter pretraining: ``mode`` names a registered mode (synthpos.modes).

    The fields below are the settings of the built-in modes (shared: ``replace`` and
    ``quality`` both read ``replace_prob``, and ``--set pretrain.synthetic.mode=...`` switches
    modes without rewriting them); a mode with settings of its own declares them and owns
    ``pretrain.synthetic.<mode>`` (``mochi``).

    - ``clsp`` (Zeng et al.): a third view from one candidate and ``weight * mean(2 - 2cos(z1, z3))``.
    - ``replace`` (Ayromlou et al.): view 2's source is a candidate with probability ``replace_prob``.
    - ``multipos``: ``positives`` candidates per anchor as extra positives of a multi-positive InfoNCE.
    - ``quality`` (GenView): ``replace``, with each positive pair's loss weighted by ``N * softmax(gamma * q)``,
      q = foreground minus background similarity of the pair under the frozen ``scorer``.
    """

    _registry: ClassVar[str] = "MODES"
    _chosen: ClassVar[str] = "mode"
    _prefix: ClassVar[str] = "pretrain.synthetic"

    mode: str = Field(default_factory=_registered_default("MODES"), description="A registered synthetic mode "
                      "(default: the one registered as default): none, clsp, replace, multipos, quality, mochi, or one a "
                      "plugin registers.")
    weight: float = Field(1.0, ge=0, description="clsp: lambda of the synthetic term.")
    replace_prob: float = Field(0.5, ge=0, le=1, description="replace/quality: probability that view 2 comes from a candidate.")
    replace_view: Literal["second", "each", "random"] = Field(
        "second", description="replace/quality: which view's source may be a candidate: second (view 2, as GenerativeSSL's "
        "solo-learn/DALI loader), each (each view independently with replace_prob, each its own candidate, as "
        "GenerativeSSL's SimCLR loader), random (one view per image, drawn uniformly, as GenView's MultiView).")
    crop_synthetic: bool = Field(True, description="replace/quality: a synthetic view gets RandomResizedCrop like a real "
                                 "one; false: the whole candidate, resized to crop_size (GenerativeSSL's SimCLR loader).")
    positives: int = Field(1, ge=1, description="multipos: synthetic candidates of each anchor used per step.")
    scorer: Path | None = Field(None, description="quality: the frozen scorer, a synthpos backbone.pt or a TorchScript file "
                                "mapping normalised images (B, C, H, W) to feature maps (B, C', h, w).")
    gamma: float = Field(1.0, ge=0, description="quality: sharpness of the pair weights.")
    scorer_fit_images: int = Field(1000, ge=2, description="quality: images used to fit the scorer's first principal component.")
    augment: AugmentConfig | None = Field(
        None, description="The augmentation of views made from a stored candidate (clsp's and multipos's extra views, "
        "replace's and quality's replaced rows): the keys of pretrain.augment, each one left out taking pretrain.augment's "
        "value (crop_size must be the same); null: the same augmentation as real views. Weaker colour jitter on "
        "synthetic views: AdaInf (Wang et al., ICLR 2024).")

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("augment",)

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        return _known("MODES", mode)


class MomentumConfig(_Strict):
    """Momentum (EMA) encoder, cosine schedule from ``base`` to ``final`` (MoCo, BYOL, MoCo v3, All4One)."""

    base: float = Field(0.99, ge=0, le=1)
    final: float = Field(1.0, ge=0, le=1)


class OptimizerConfig(_Strict):
    name: Literal["sgd", "lars"] = "sgd"
    lr: float = Field(0.5, gt=0, description="Peak learning rate (after warm-up).")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(10, ge=0)
    warmup_start_lr: float = Field(1e-3, ge=0)
    min_lr: float = Field(0.0, ge=0)
    exclude_bias_and_norm: bool = Field(True, description="Exempt biases and normalisation parameters from weight decay "
                                        "(and LARS scaling); false: decay on every parameter, as the official CLSP code "
                                        "(SGD over model.parameters()).")
    eta: float = Field(0.02, gt=0, description="LARS trust coefficient (SimCLR 0.02; solo-learn's BYOL and Barlow Twins, "
                       "and mmpretrain's default, 0.001).")
    lars_trust: Literal["update", "grad_and_decay"] = Field(
        "update", description="LARS trust ratio: update = eta ||w|| / ||g + wd w|| (SimCLR); grad_and_decay = "
        "eta ||w|| / (||g|| + wd ||w||) (solo-learn / lightning-bolts and mmpretrain, which GenerativeSSL and GenView run).")
    lars_clip: bool = Field(False, description="LARS: each layer's rate is min(lr * ratio, lr) (solo-learn's clip_lr).")


class PretrainConfig(_Sections):
    """Stage 3: self-supervised pretraining, with or without synthetic positives.

    ``method`` names a registered method (synthpos.methods); the head sizes, temperature,
    queue and momentum below are shared by the methods that have them (``--set
    pretrain.method=byol`` keeps them). A method with settings of its own declares them
    and owns ``pretrain.<method>`` (``barlow_twins``, ``vicreg``, ``dclw``).
    """

    _registry: ClassVar[str] = "METHODS"
    _chosen: ClassVar[str] = "method"
    _prefix: ClassVar[str] = "pretrain"

    method: str = Field(default_factory=_registered_default("METHODS"), description="A registered method (default: "
                        "the one registered as default): simclr, mocov2plus, mocov3, byol, simsiam, barlow_twins, vicreg, "
                        "nnclr, dcl, dclw, all4one, supcon, or one a plugin registers.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)  # built on use: it reads the registry
    store: Path | None = Field(None, description="Synthetic store (default: <run_dir>/store).",
                              json_schema_extra=NO_OUTPUT)
    output_dir: Path | None = Field(None, description="Default: <run_dir>/pretrain (or pretrain_<name>).",
                                   json_schema_extra=NO_OUTPUT)
    backbone: BackboneConfig = BackboneConfig()
    projector_hidden_dim: int = Field(4096, ge=1)
    projector_out_dim: int = Field(256, ge=1)
    temperature: float = Field(0.2, gt=0, description="Contrastive methods' softmax temperature.")
    predictor_hidden_dim: int = Field(4096, ge=1, description="BYOL, SimSiam, MoCo v3, NNCLR, All4One predictor.")
    momentum: MomentumConfig = MomentumConfig()
    queue_size: int = Field(65536, ge=1, description="MoCo v2+ negatives per view; NNCLR/All4One support set.")
    augment: AugmentConfig = AugmentConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: int = Field(1024, ge=2, description="Global batch size (split across devices).")
    epochs: int = Field(1000, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    checkpoint_every_epochs: int = Field(1, ge=1, description="Write checkpoints/last.ckpt every N epochs.",
                                         json_schema_extra=NO_OUTPUT)
    checkpoint_every_minutes: float | None = Field(5.0, gt=0, description="Also after this much wall time since the "
                                                   "last one, mid-epoch too (null: epochs only). SIGTERM always checkpoints.",
                                                   json_schema_extra=NO_OUTPUT)
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", json_schema_extra=RECORDED_RESOLVED)
    channels_last: bool = Field(True, json_schema_extra=NO_OUTPUT)
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = Field(
        ["csv"], description="Lightning loggers, each writing under <output>/logs/ (wandb offline unless logged in; "
        "mlflow: logs/mlflow.db). The resolved config is logged as hyper-parameters.", json_schema_extra=NO_OUTPUT)
    compile: bool = Field(False, description="torch.compile the backbone and heads in place (synthpos.methods.compiled): "
                          "paid once on the first step, cached on disk by torch; pays off on long runs",
                          json_schema_extra=NO_OUTPUT)
    knn_every_epochs: int = Field(0, ge=0, description="Online kNN monitor on the test split (0: off).",
                                  json_schema_extra=NO_OUTPUT)
    knn_subset: int = Field(2000, ge=1, json_schema_extra=NO_OUTPUT)
    online_probe: bool = Field(False, description="Online linear probe (solo-learn's): a linear layer trained during "
                               "pretraining on the detached backbone features of the real views, its test top-1 on "
                               "knn_subset test images logged per epoch as online/linear_top1. Reported apart from the "
                               "offline evaluation, never mixed with it.")
    online_probe_lr: float = Field(0.1, gt=0, description="SGD learning rate of the online probe (momentum 0.9).")
    devices: int | Literal["auto"] = 1
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    num_nodes: int = Field(1, ge=1)
    sync_batchnorm: bool = False
    num_threads: int | None = Field(None, ge=1, json_schema_extra=NO_OUTPUT)
    verify_store: Literal["auto", "always"] = Field(
        "auto", description="Hash every shard of the store before training: 'auto' when no stamp (verified.json) "
        "says these very files were verified (first use, copied in, changed); 'always' in any case.",
        json_schema_extra=NO_OUTPUT)
    per_view_batchnorm: bool = Field(False, description="Forward each view alone, so BatchNorm statistics are those of "
                                     "one view (the official MoCo code); false: all views in one batch (faster).")

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return _known("METHODS", method)

    @model_validator(mode="after")
    def _resolve_synthetic_augment(self) -> PretrainConfig:
        """``synthetic.augment``: the keys it sets over ``augment``'s, every key then written out (so a saved
        config reads back the same)."""
        own = self.synthetic.augment
        if own is None:
            return self
        merged = AugmentConfig.model_validate({**self.augment.model_dump(), **own.model_dump(exclude_unset=True)})
        if merged.crop_size != self.augment.crop_size:
            raise ValueError(f"pretrain.synthetic.augment.crop_size={merged.crop_size} must equal pretrain.augment.crop_size="
                             f"{self.augment.crop_size}: every view of a step goes through the backbone in one batch")
        # Not setattr: validate_assignment would run this validator again; a copy, so a shared section is left alone.
        self.__dict__["synthetic"] = self.synthetic.model_copy(update={"augment": merged})
        return self


def _epoch_fractions(value: list[float], key: str) -> list[float]:
    """Learning-rate milestones as fractions of the epochs, each in (0, 1]."""
    if any(not 0 < f <= 1 for f in value):
        raise ValueError(f"{key}.milestones={value} must be fractions of the epochs in (0, 1]")
    return value


class LinearProbeConfig(_Strict):
    epochs: int = Field(100, ge=1)
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    milestones: list[float] = Field([0.6, 0.8], description="Fractions of the epochs where lr is cut by 10.")
    lr_grid: list[float] | None = Field([0.1, 1.0], description="linear-fast: learning rates tried on the validation "
                                        "split (null: lr alone).")
    weight_decay_grid: list[float] | None = Field([0.0, 1e-4, 1e-3], description="linear-fast: weight decays tried on "
                                                  "the validation split (null: weight_decay alone).")

    _check_milestones = field_validator("milestones")(classmethod(lambda cls, v: _epoch_fractions(v, "evaluate.linear")))


class PaperProbeConfig(_Strict):
    """linear-paper: CLSP's official offline linear evaluation (its values are the defaults)."""

    epochs: int = Field(100, ge=1)
    lr: float = Field(1.0, gt=0)
    batch_size: int = Field(256, ge=1)
    milestones: list[float] = Field([0.6, 0.8], description="Fractions of the epochs where lr is cut by 10 (60, 80 of 100).")

    _check_milestones = field_validator("milestones")(classmethod(lambda cls, v: _epoch_fractions(v, "evaluate.linear_paper")))


class FinetuneConfig(_Strict):
    """The fine-tuning protocol (evaluation/finetune.py): the whole backbone and a linear head trained on
    class-balanced label subsets (GenView's semi-supervised 1% and 10%); optimiser, epochs and learning rate chosen
    on the validation carve, the test split scored once."""

    fractions: list[float] = Field([0.01, 0.1], description="Shares of each class's training labels fine-tuned on.")
    optimizers: list[Literal["sgd", "adamw"]] = Field(["sgd"], description="Optimisers tried on the validation "
                                                      "carve (sgd: Nesterov momentum 0.9).")
    epochs: list[int] = Field([30], description="Epoch counts tried on the validation carve (cosine schedule).")
    lr_grid: list[float] = Field([0.03, 0.1, 0.3], description="Learning rates tried on the validation carve.")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _check_grid(self) -> FinetuneConfig:
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"evaluate.finetune.fractions must be shares in (0, 1]; got {self.fractions}")
        if not self.optimizers or not self.epochs or min(self.epochs) < 1 or not self.lr_grid or min(self.lr_grid) <= 0:
            raise ValueError("evaluate.finetune needs at least one optimizer, epochs >= 1 and lr_grid values > 0")
        return self


class EvaluateConfig(_Strict):
    """Stage 4: kNN and linear probe on frozen features."""

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("arch", "finetune")  # came with baseline encoders, fine-tuning

    checkpoint: Path | None = Field(None, description="Backbone state_dict (default: <pretrain>/backbone.pt), or an "
                                    "external encoder evaluated as a baseline beside the run's own: a TorchScript "
                                    "file, a torchvision/timm state_dict (with evaluate.arch) or a CLIP folder.",
                                    json_schema_extra=RECORDED_RESOLVED)  # its bytes are recorded
    arch: str | None = Field(None, description="Architecture of a state_dict in evaluate.checkpoint: "
                             "torchvision:<name> or timm:<name> (e.g. timm:resnet18).")
    finetune: FinetuneConfig | None = Field(None, description="Fine-tuning protocol on label subsets (off: null; "
                                            "it trains the backbone once per grid setting and fraction).")
    datasets: list[DataConfig] | None = Field(None, description="Datasets to evaluate on (default: the run's data).")
    knn_k: int | list[int] = Field([5, 10, 20, 50, 100, 200], description="k of the weighted kNN, or a grid of k "
                                   "(CLSP's official kNN grid) from which the validation split picks one.")
    knn_temperature: float = Field(0.07, gt=0, description="Vote temperature (CLSP's official kNN: 0.07).")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="Share of each class of the training split held "
                                       "out to choose hyper-parameters (kNN k, probe lr and weight decay).")
    linear: LinearProbeConfig = LinearProbeConfig()
    linear_protocols: list[Literal["fast", "paper"]] = Field(["fast", "paper"], description="fast: a probe on cached, "
                                                             "standardised features (settings under linear); paper: "
                                                             "CLSP's official protocol (settings under linear_paper).")
    linear_paper: PaperProbeConfig = PaperProbeConfig()
    label_fractions: list[float] = Field([0.01, 0.1, 1.0], description="Label efficiency: linear-fast probes on "
                                         "class-balanced seeded subsets with these shares of the training labels.")

    @model_validator(mode="after")
    def _check_grids(self) -> EvaluateConfig:
        ks = [self.knn_k] if isinstance(self.knn_k, int) else self.knn_k
        if not ks or min(ks) < 1:
            raise ValueError(f"knn_k must be a k >= 1 or a non-empty list of them; got {self.knn_k}")
        if any(not 0 < f <= 1 for f in self.label_fractions):
            raise ValueError(f"label_fractions must lie in (0, 1]; got {self.label_fractions}")
        lin = self.linear
        if (lin.lr_grid is not None and (not lin.lr_grid or min(lin.lr_grid) <= 0)) or (
                lin.weight_decay_grid is not None and (not lin.weight_decay_grid or min(lin.weight_decay_grid) < 0)):
            raise ValueError("linear.lr_grid needs values > 0 and linear.weight_decay_grid values >= 0 (or null)")
        return self
    feature_size: int | None = Field(None, ge=8, description="Resize images to this before the backbone (default: crop size).")
    max_train: int | None = Field(None, ge=1, description="Use only the first N training images for kNN and the probe.")
    batch_size: int = Field(512, ge=1, json_schema_extra=NO_OUTPUT)

    @property
    def largest_k(self) -> int:
        """The largest k of the kNN (grid)."""
        return self.knn_k if isinstance(self.knn_k, int) else max(self.knn_k)

    @model_validator(mode="after")
    def _check_knn(self) -> EvaluateConfig:
        if self.max_train is not None and self.largest_k > self.max_train:
            raise ValueError(f"evaluate.knn_k={self.knn_k} is more than the evaluate.max_train={self.max_train} "
                             "training images it votes over; lower knn_k or raise max_train")
        return self


class FidelityConfig(_Strict):
    """The small classifier that judges synthetic positives (trained on real train images)."""

    train_images: int = Field(60000, ge=1)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4)


class PublishedConfig(_Strict):
    """What a paper reports for this recipe (percent), printed beside the run's own numbers."""

    source: str = Field("", description="Where the numbers come from, e.g. \"CLSP README.md:19-38 (dewenzeng/clsp)\".")
    protocol: str = Field("", description="Their protocol in words (probe, epochs, test split).")
    linear_top1: float | None = Field(None, ge=0, le=100, description="Linear-probe top-1 (percent).")
    knn_top1: float | None = Field(None, ge=0, le=100, description="kNN top-1 (percent).")


class RunConfig(_Strict):
    """A whole run: data, the four stages, one run directory."""

    run_dir: Path = Path("runs/default")
    seed: int = 0
    seeds: list[int] | None = Field(None, description="Run the whole pipeline once per seed, into <run_dir>/seed-<s>, "
                                    "and aggregate (synthpos run --seeds 0,1,2 sets it).")
    seed_store: Literal["shared", "per-seed"] = Field("shared", description="With seeds: shared: one generator and store "
                                                      "(made with generate.seed) for all seeds; per-seed: each seed "
                                                      "generates its own store with its seed.")
    data: DataConfig = Field(default_factory=DataConfig)
    train_generator: TrainGeneratorConfig = TrainGeneratorConfig()
    generate: GenerateConfig = Field(default_factory=GenerateConfig)  # built on use: it reads the registry
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    evaluate: EvaluateConfig = EvaluateConfig()
    fidelity: FidelityConfig = FidelityConfig()
    published: PublishedConfig | None = Field(None, description="A paper's numbers for this recipe, printed at the "
                                                   "end of `synthpos run` beside the run's own; decides nothing.")

    @model_validator(mode="after")
    def _check_stages(self) -> RunConfig:
        if self.generate.store and self.pretrain.store and self.generate.store != self.pretrain.store:
            raise ValueError("generate.store and pretrain.store differ; set one of them (both stages use it)")
        from synthpos.registry import METHODS, MODES

        # Each mode says what it needs of a method and of its settings; each method which modes it has.
        MODES.get(self.pretrain.synthetic.mode).check(METHODS.get(self.pretrain.method), self.pretrain.synthetic)
        return self

    # Limits between sections, where the config alone sets them: one check per stage, which the stage
    # table's rows name (``Stage.limits``), so that a stage about to run checks its own (a recipe's pretrain
    # section need not suit the data of a ``synthpos generate`` call). Each raises SynthposError, one line
    # naming the key and how to fix it.

    def check_limits(self) -> None:
        """The limits of every stage (``synthpos run`` with all of them).

        Raises:
            SynthposError: a value beyond its limit, named with its key and how to fix it.
        """
        for check in (self.check_pretrain_limits, self.check_generate_limits, self.check_evaluate_limits,
                      self.check_train_generator_limits):
            check()

    def check_pretrain_limits(self) -> None:
        """The batch against the data and the devices, the mode's needs of the store, its scorer file."""
        with _one_line():
            self._check_pretrain_limits(self.data.train_images())
            # Files that must exist (checked here, not in the sections: a config names them before they are made).
            scorer = self.pretrain.synthetic.scorer
            mode = _mode_class(self.pretrain.synthetic.mode)
            if getattr(mode, "uses_scorer", False) and scorer and not Path(scorer).is_file():
                raise ValueError(f"pretrain.synthetic.scorer={scorer} does not exist; point it at a synthpos "
                                 "backbone.pt or a TorchScript file")

    def check_generate_limits(self) -> None:
        """The anchors against the data; what a generator trained in this run must give its settings."""
        gen, tg = self.generate, self.train_generator
        with _one_line():
            images = self.data.train_images()
            if images is not None and gen.num_anchors is not None and gen.num_anchors > images:
                raise ValueError(f"generate.num_anchors={gen.num_anchors} but the training split has {images} images")
            generator = _generator_class(gen.kind)
            if generator.trains_on_data and gen.generator is None:
                # The generator is trained in this run: it says which of its settings the training settings limit.
                generator.check_training(gen.own, tg)

    def check_evaluate_limits(self) -> None:
        """The checkpoint evaluated exists; the kNN's k within the labelled images."""
        checkpoint = self.evaluate.checkpoint
        with _one_line():
            if checkpoint is not None and not Path(checkpoint).exists():  # CLIP: a folder
                raise ValueError(f"evaluate.checkpoint={checkpoint} does not exist; point it at a backbone.pt written "
                                 "by synthpos (or leave it unset to evaluate this run's pretraining)")
            self._check_knn_limits()

    def check_train_generator_limits(self) -> None:
        """The conditioning encoder exists; the padded sample size fits the images."""
        tg = self.train_generator
        with _one_line():
            if tg.condition is not None and tg.condition.encoder is not None and not Path(tg.condition.encoder).is_file():
                raise ValueError(f"train_generator.condition.encoder={tg.condition.encoder} does not exist; point it "
                                 "at a backbone.pt written by `synthpos pretrain` on this data, or leave it unset to "
                                 "pretrain one in round 0 of `synthpos run`")
            side = self.data.image_side()
            if side is not None and tg.sample_size is not None and (tg.sample_size < side or (tg.sample_size - side) % 2):
                raise ValueError(f"train_generator.sample_size={tg.sample_size} must be the images' {side} px plus an "
                                 "even number of padding pixels")

    def _check_knn_limits(self) -> None:
        """``evaluate.knn_k`` within the labelled set the kNN is fitted on, for every evaluated dataset.

        Evaluation reads the whole training split (not ``data.subset``), cut to ``evaluate.max_train``;
        a grid of k is chosen on the part left after the validation carve, which per class keeps
        ``n_c - round(fraction * n_c)``: at most ``n * (1 - fraction) + classes`` images. A k above
        that can never be fitted; one just under it that the carve's rounding leaves out is dropped
        at evaluation, with a notice.
        """
        ev = self.evaluate
        for data in ev.datasets or [self.data]:
            sizes = [n for n in (dataset_fact(data.name, "train_images"), ev.max_train) if n is not None]
            if not sizes:
                continue  # a folder of unknown size: checked when its labels are read
            n, classes = min(sizes), dataset_fact(data.name, "num_classes")
            grid = not isinstance(ev.knn_k, int) and len(ev.knn_k) > 1
            fit = int(n * (1 - ev.validation_fraction)) + classes if grid and classes else n
            if ev.largest_k > min(fit, n):
                where = f"evaluate.max_train={ev.max_train}" if ev.max_train == n else f"{data.name}'s {n} training images"
                carve = (f", less the validation carve (evaluate.validation_fraction={ev.validation_fraction}) the grid "
                         "is chosen on") if grid and classes else ""
                raise ValueError(f"evaluate.knn_k={ev.knn_k} is more than the {min(fit, n)} labelled images the kNN is "
                                 f"fitted on ({where}{carve}); lower knn_k or raise evaluate.max_train")

    def _check_pretrain_limits(self, images: int | None) -> None:
        pre, gen = self.pretrain, self.generate
        if images is not None and pre.batch_size > images:
            raise ValueError(f"pretrain.batch_size={pre.batch_size} is larger than the dataset ({images} images); "
                             "lower pretrain.batch_size or use more data (data.subset)")
        if isinstance(pre.devices, int):
            world = pre.devices * pre.num_nodes
            if pre.batch_size % world:
                raise ValueError(f"pretrain.batch_size={pre.batch_size} must divide evenly over {world} devices "
                                 f"(pretrain.devices x pretrain.num_nodes); set it to a multiple of {world}")
            if pre.batch_size // world < 2:
                raise ValueError(f"pretrain.batch_size={pre.batch_size} leaves fewer than 2 images per device on {world} "
                                 "devices; the losses need negatives or batch statistics")
        # The mode says what it needs of the store's candidates per anchor (multipos: its positives).
        _mode_class(pre.synthetic.mode).check_candidates(pre.synthetic, gen.candidates)

    # Paths a stage writes or reads, derived from run_dir unless set.
    @property
    def generation_seed(self) -> int:
        """The seed of the generator's training and of generation (``generate.seed``, else the run's)."""
        return self.seed if self.generate.seed is None else self.generate.seed

    @property
    def generator_dir(self) -> Path:
        return self.run_dir / "generator"

    @property
    def encoder_dir(self) -> Path:
        """Round 0: where ``synthpos run`` pretrains the encoder of an embedding-conditioned generator."""
        return self.run_dir / "encoder"

    @property
    def condition_encoder(self) -> Path | None:
        """The encoder an embedding-conditioned generator is trained on: the configured file or round 0's; None
        when the generator is not embedding-conditioned."""
        condition = self.train_generator.condition
        if condition is None:
            return None
        return condition.encoder or self.encoder_dir / "backbone.pt"

    @property
    def generator_model(self) -> Path:
        return self.generate.generator or self.generator_dir / "model"

    @property
    def store_dir(self) -> Path:
        """Where generation writes and pretraining reads (one path for both stages)."""
        return self.generate.store or self.pretrain.store or self.run_dir / "store"

    @property
    def pretrain_dir(self) -> Path:
        return self.pretrain.output_dir or self.run_dir / "pretrain"

    @property
    def backbone_path(self) -> Path:
        return self.evaluate.checkpoint or self.pretrain_dir / "backbone.pt"

    @property
    def evaluate_dir(self) -> Path:
        return self.run_dir / "evaluate"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise SynthposError(f"--set {dotted}: '{key}' is a value, not a section; drop the part after it")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; the value is read as YAML."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise SynthposError(f"--set {item!r}: expected key=value, e.g. --set pretrain.epochs=10")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise SynthposError(f"--set {item!r}: the key is empty")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise SynthposError(f"--set {item!r}: the value is not valid YAML ({err.__class__.__name__})") from err
        parsed.append((key, value))
    return parsed


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    # Union members add their own names to the path ("constrained-int", "literal['auto']"): keep the keys.
    where = ".".join(str(p) for p in first["loc"] if isinstance(p, int) or str(p).isidentifier()) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'; check its spelling (see the recipes in configs/)"
    if first["type"] == "value_error":
        # A validator's own sentence says what to do; the input may be a whole section, so it is left out.
        message = " ".join(str(first["msg"]).removeprefix("Value error, ").split())
        deeper = message.startswith((f"'{where}.", f"unknown key '{where}."))  # it names the key itself
        named = where == "(top level)" or deeper or where in message
        return f"{source}: {message}" if named else f"{source}: '{where}': {message}"
    got = " ".join(repr(first.get("input")).split())
    return f"{source}: '{where}': {first['msg']} (got {got[:200]})"


#: where the sections that hold components' settings sit in a run config (their moved keys are spelled anew there)
_SECTION_PATHS: tuple[tuple[tuple[str, ...], type[_Sections]], ...] = (
    (("data",), DataConfig), (("generate",), GenerateConfig), (("pretrain",), PretrainConfig),
    (("pretrain", "synthetic"), SyntheticConfig))


def _moved_keys(registry: str) -> dict[str, tuple[str, str]]:
    """The registry's moved keys (old -> (component, key)); two components claiming one key is a config error."""
    from synthpos import registry as registries

    try:
        return getattr(registries, registry).moved_keys()
    except ValueError as err:
        raise SynthposError(str(err)) from None


def _moved_path(keys: list[str]) -> list[str]:
    """A dotted key's parts with a moved key spelled anew (``generate.num_steps`` -> ``generate.clsp.num_steps``),
    with its deprecation line; other keys unchanged."""
    for path, section in _SECTION_PATHS:
        n = len(path)
        if tuple(keys[:n]) == path and len(keys) > n:
            moved = _moved_keys(section._registry)
            if keys[n] in moved:
                owner, key = moved[keys[n]]
                deprecated_key(".".join(keys[: n + 1]), ".".join([*path, owner, key]))
                return [*path, owner, key, *keys[n + 1:]]
    return keys


def _spell_moved_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """One recipe file's tree with its moved keys spelled anew (the new spelling wins where a file has both), so
    files merged later and ``--set`` override them whichever spelling each uses."""
    for path, section in _SECTION_PATHS:
        node = tree
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        moved = _moved_keys(section._registry)
        for old in [k for k in node if k in moved]:
            owner, key = moved[old]
            deprecated_key(".".join([*path, old]), ".".join([*path, owner, key]))
            value = node.pop(old)
            target = node.get(owner)
            node[owner] = target = dict(target) if isinstance(target, dict) else {}
            target.setdefault(key, value)
    return tree


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config from YAML (or the defaults), apply ``--set`` overrides and validate.

    The recipe's ``extends:`` are merged first (:mod:`synthpos.compose`), then ``--set``,
    then the whole tree is validated once.

    Raises:
        SynthposError: the file is missing or not YAML, a key is unknown, a value has the wrong type.
    """
    tree: dict[str, Any] = {}
    source = "the defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise SynthposError(f"config file {path} does not exist; pass --config with a YAML recipe such as configs/fashion_mnist/clsp_simclr.yaml")
        tree = read_recipe(path, normalize=_spell_moved_keys)  # with its extends: merged in order (synthpos.compose)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, ".".join(_moved_path(key.split("."))), value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise SynthposError(_describe(err, source + (" with --set" if overrides else ""))) from err


def dump_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config beside a stage's outputs, so a run records what it ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
