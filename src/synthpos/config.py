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
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator,
)

from synthpos.compose import read_recipe
from synthpos.errors import SynthposError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class DataConfig(_Strict):
    """Which dataset, where it lives, and how much of it to use."""

    name: str = Field("fashion_mnist", description="A registered dataset (synthpos.registry.DATASETS): fashion_mnist, "
                      "cifar10, cifar100, image_folder, or one a plugin registers.")
    root: Path | None = Field(
        None,
        description="Folder with the data. Default: $SYNTHPOS_DATA, then the system location "
        "(/usr/share/datasets/fashion-mnist for Fashion-MNIST).",
    )
    test_root: Path | None = Field(None, description="image_folder only: the evaluation split's folder.")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return _known("DATASETS", name)

    image_size: int | None = Field(None, ge=8, description="Resize images to this size when loading (default: native).")
    subset: int | None = Field(None, ge=1, description="Use only the first N training images.")


class UNetConfig(_Strict):
    """Shape of the diffusers UNet2DModel (the CLSP/DDPM CIFAR UNet by default)."""

    block_out_channels: list[int] = [128, 256, 256, 256]
    attention_levels: list[int] = Field([1], description="Levels (0 = highest resolution) with self-attention.")
    layers_per_block: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    norm_num_groups: int = Field(32, ge=1)
    attention_head_dim: int | None = Field(None, description="Default: one head over all channels.")


class TrainGeneratorConfig(_Strict):
    """Stage 1: an unconditional DDPM trained from scratch (CLSP's recipe by default)."""

    unet: UNetConfig = UNetConfig()
    sample_size: int | None = Field(None, ge=8, description="Train (and sample) at this side, padding the images with "
                                    "black borders (e.g. 28 -> 32 px for a 4x4 level); stores keep the data's size. "
                                    "Default: the images' own size.")
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
    checkpoint_every: int = Field(1000, ge=1)
    hflip: bool = True
    class_conditional: bool = Field(False, description="Condition the UNet on class labels (CLSP's conditional variant).")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="Class-conditional: drop the label with this probability "
                                 "(the null class), so one model also predicts unconditionally for classifier-free guidance.")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")


class AdaptiveNoiseConfig(_Strict):
    """GenView's adaptive noise level: a foreground ratio per image, binned to a noise level."""

    enabled: bool = Field(False, description="Off: every image uses unclip.noise_level (Ayromlou et al.).")
    bins: list[float] = Field([0.2, 0.4, 0.6, 0.8], description="Foreground-ratio bin edges (ascending).")
    levels: list[int] = Field([0, 100, 200, 300, 400], description="Noise level of each bin (one more than bins).")
    fit_images: int = Field(1000, ge=2, description="Images sampled from the dataset to fit the principal component.")
    foreground_share: float = Field(0.6, gt=0, lt=1, description="Share of the fitting images' patches counted as "
                                    "foreground: sets the threshold (GenView: the 60% point of the component's histogram).")

    @model_validator(mode="after")
    def _check_bins(self) -> AdaptiveNoiseConfig:
        if len(self.levels) != len(self.bins) + 1:
            raise ValueError(f"levels needs one entry more than bins ({len(self.bins) + 1}); got {len(self.levels)}")
        if any(b <= a for a, b in zip(self.bins, self.bins[1:])):
            raise ValueError("bins must be strictly ascending")
        if any(level < 0 for level in self.levels):
            raise ValueError(f"levels must be >= 0 (noise levels of the image embedding); got {self.levels}")
        return self


class UnCLIPConfig(_Strict):
    """Stable unCLIP image variations (Ayromlou et al.; GenView with adaptive noise)."""

    num_steps: int = Field(10, ge=1, description="DDIM steps.")
    eta: float = Field(0.0, ge=0.0)
    guidance_scale: float = Field(10.0, ge=0.0, description="Classifier-free guidance against a zero image embedding "
                                  "and the empty prompt (1 = off; 10 = the pipeline's default, which Ayromlou et al. ran; GenView: 7).")
    noise_level: int = Field(0, ge=0, description="Noise added to the image embedding when adaptive noise is off.")
    trailing_zero_snr: bool = Field(True, description="DDIM with trailing timesteps and betas rescaled to zero terminal SNR "
                                    "(Ayromlou et al.'s code); off: the model's own DDIM schedule (GenView).")
    image_size: int | None = Field(None, ge=8, multiple_of=8, description="Generate at this size (default: the model's, "
                                   "768 for stable-diffusion-2-1-unclip-small); results are resized to the dataset's size.")
    adaptive_noise: AdaptiveNoiseConfig = AdaptiveNoiseConfig()


class GenerateConfig(_Strict):
    """Stage 2: synthetic positives into a store (CLSP's DDIM with bottleneck interpolation by default)."""

    kind: str = Field("clsp", description="Which generator: 'clsp' (a DDPM, optionally class-conditional, with bottleneck "
                      "interpolation) or 'unclip' (Stable unCLIP image variations); see synthpos.generators.registry.")
    generator: Path | None = Field(
        None, description="Generator directory (diffusers format). Default: <run_dir>/generator/model. "
        "'builtin:fashion_mnist' names the checkpoint shipped with synthpos.",
    )
    store: Path | None = Field(None, description="Store directory. Default: <run_dir>/store.")
    candidates: int = Field(8, ge=1, description="K: candidates per anchor.")
    num_steps: int = Field(100, ge=1, description="DDIM steps.")
    eta: float = Field(0.1, ge=0.0)
    interpolation_weight: float = Field(
        0.1, ge=0.0, le=1.0, description="w in w*h + (1-w)*h_anchor (1 = plain DDIM, 0 = the anchor's bottleneck)."
    )
    clip_x0: bool = Field(False, description="Clip the predicted x0 to [-1, 1] at every step (paper: off).")
    sampler: Literal["ddim", "dpmsolver++"] = Field("ddim", description="ddim: the paper's sampler; dpmsolver++: "
                                                    "DPM-Solver++ with the same interpolation, in far fewer steps.")
    share_anchor_noise: bool = Field(False, description="One noised copy of the anchor per step for all its K candidates "
                                     "(saves encoder passes; the paper draws fresh noise per candidate).")
    guidance_scale: float = Field(1.0, ge=0.0, description="Class-conditional generators: classifier-free guidance scale "
                                  "(1 = the conditional prediction alone).")
    compile: bool = Field(False, description="torch.compile the UNet (pays off on long runs on GPUs).")
    unclip: UnCLIPConfig = UnCLIPConfig()
    num_anchors: int | None = Field(None, ge=1, description="Generate for the first N training images only.")
    shard_size: int = Field(500, ge=1, description="Anchors per shard.")
    batch_size: int = Field(128, ge=1, description="Images (anchor x candidate) per UNet call.")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    num_threads: int | None = Field(None, ge=1)


class BackboneConfig(_Strict):
    name: Literal["resnet18", "resnet50", "small_resnet", "convnet"] = "resnet18"
    cifar_stem: bool = Field(True, description="3x3 stride-1 first conv, no max-pool (for 28-64 px images).")
    width: int = Field(32, ge=4, description="small_resnet / convnet base width.")


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


def _known(registry: str, name: str) -> str:
    """``name`` if the registry holds it; else a one-line error listing the names it holds."""
    from synthpos import registry as registries

    reg = getattr(registries, registry)
    if name not in reg:
        raise ValueError(f"{name!r} is not a known {reg.kind}; known: {', '.join(reg.names())}")
    return name


_REPORTED: set[str] = set()


def deprecated_key(old: str, new: str) -> None:
    """One line on stderr (once per key and process): ``old`` still works but has moved to ``new``."""
    if old not in _REPORTED:
        _REPORTED.add(old)
        sys.stderr.write(f"synthpos: '{old}' is deprecated; write '{new}' instead (docs/architecture.md: moved keys)\n")


class _Sections(_Strict):
    """A config section that also holds the settings sections its registered components declare.

    A component class (a method, a synthetic mode) with ``settings`` set to a pydantic model
    owns the key ``<this section>.<its name>``; the schema of that key is the component's,
    found in the registry when the config is read, so config.py never lists them.
    ``sections`` holds them by name; a dump writes each under its own key again.
    """

    _registry: ClassVar[str]
    _chosen: ClassVar[str]  # the field that names the component in use
    _prefix: ClassVar[str]  # where this section sits in a run config, for messages
    #: keys that moved: old spelling -> (section, key); each still works, with one deprecation line
    MOVED: ClassVar[dict[str, tuple[str, str]]] = {}
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
        for old, (section, key) in cls.MOVED.items():
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
    def _write_sections(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        data.update(data.pop("sections", None) or {})
        return data

    def section(self, name: str) -> BaseModel:
        """The settings section of component ``name`` (its defaults where the config sets none)."""
        from synthpos import registry as registries

        if name in self.sections:
            return self.sections[name]
        return getattr(registries, self._registry).get(name).settings()


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

    mode: str = Field("none", description="A registered synthetic mode: none, clsp, replace, multipos, quality, mochi, "
                      "or one a plugin registers.")
    weight: float = Field(1.0, ge=0, description="clsp: lambda of the synthetic term.")
    replace_prob: float = Field(0.5, ge=0, le=1, description="replace/quality: probability that view 2 comes from a candidate.")
    positives: int = Field(1, ge=1, description="multipos: synthetic candidates of each anchor used per step.")
    scorer: Path | None = Field(None, description="quality: the frozen scorer, a synthpos backbone.pt or a TorchScript file "
                                "mapping normalised images (B, C, H, W) to feature maps (B, C', h, w).")
    gamma: float = Field(1.0, ge=0, description="quality: sharpness of the pair weights.")
    scorer_fit_images: int = Field(1000, ge=2, description="quality: images used to fit the scorer's first principal component.")

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

    method: str = Field("simclr", description="A registered method: simclr, mocov2plus, mocov3, byol, simsiam, "
                        "barlow_twins, vicreg, nnclr, dcl, dclw, all4one, supcon, or one a plugin registers.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)  # built on use: it reads the registry
    store: Path | None = Field(None, description="Synthetic store (default: <run_dir>/store).")
    output_dir: Path | None = Field(None, description="Default: <run_dir>/pretrain (or pretrain_<name>).")
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
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    knn_every_epochs: int = Field(0, ge=0, description="Online kNN monitor on the test split (0: off).")
    knn_subset: int = Field(2000, ge=1)
    devices: int | Literal["auto"] = 1
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    num_nodes: int = Field(1, ge=1)
    sync_batchnorm: bool = False
    num_threads: int | None = Field(None, ge=1)

    MOVED: ClassVar[dict[str, tuple[str, str]]] = {"dclw_sigma": ("dclw", "sigma")}

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return _known("METHODS", method)


class LinearProbeConfig(_Strict):
    epochs: int = Field(100, ge=1)
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    milestones: list[float] = Field([0.6, 0.8], description="Fractions of the epochs where lr is cut by 10.")


class EvaluateConfig(_Strict):
    """Stage 4: kNN and linear probe on frozen features."""

    checkpoint: Path | None = Field(None, description="Backbone state_dict (default: <pretrain>/backbone.pt).")
    datasets: list[DataConfig] | None = Field(None, description="Datasets to evaluate on (default: the run's data).")
    knn_k: int = Field(200, ge=1)
    knn_temperature: float = Field(0.1, gt=0)
    linear: LinearProbeConfig = LinearProbeConfig()
    feature_size: int | None = Field(None, description="Resize images to this before the backbone (default: crop size).")
    max_train: int | None = Field(None, ge=1, description="Use only the first N training images for kNN and the probe.")
    batch_size: int = Field(512, ge=1)


class FidelityConfig(_Strict):
    """The small classifier that judges synthetic positives (trained on real train images)."""

    train_images: int = Field(60000, ge=1)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4)


class RunConfig(_Strict):
    """A whole run: data, the four stages, one run directory."""

    run_dir: Path = Path("runs/default")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    train_generator: TrainGeneratorConfig = TrainGeneratorConfig()
    generate: GenerateConfig = GenerateConfig()
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    evaluate: EvaluateConfig = EvaluateConfig()
    fidelity: FidelityConfig = FidelityConfig()

    @model_validator(mode="after")
    def _check_stages(self) -> RunConfig:
        if self.generate.store and self.pretrain.store and self.generate.store != self.pretrain.store:
            raise ValueError("generate.store and pretrain.store differ; set one of them (both stages use it)")
        from synthpos.registry import METHODS, MODES

        # Each mode says what it needs of a method and of its settings; each method which modes it has.
        MODES.get(self.pretrain.synthetic.mode).check(METHODS.get(self.pretrain.method), self.pretrain.synthetic)
        return self

    # Paths a stage writes or reads, derived from run_dir unless set.
    @property
    def generator_dir(self) -> Path:
        return self.run_dir / "generator"

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
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}'; check its spelling (see the recipes in configs/)"
    if first["type"] == "value_error":  # a validator's own sentence; the input may be a whole section
        message = first["msg"].removeprefix("Value error, ")
        deeper = message.startswith((f"'{where}.", f"unknown key '{where}."))  # it names the key itself
        return f"{source}: {message}" if where == "(top level)" or deeper else f"{source}: '{where}': {message}"
    return f"{source}: '{where}': {first['msg']} (got {first.get('input')!r})"


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
        tree = read_recipe(path)  # with its extends: merged in order (synthpos.compose)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise SynthposError(_describe(err, source + (" with --set" if overrides else ""))) from err


def dump_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config beside a stage's outputs, so a run records what it ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
