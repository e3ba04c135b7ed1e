"""The CLSP generator (``generate.kind: clsp``): a DDPM with bottleneck interpolation.

Loads a diffusers DDPMPipeline folder (unconditional or class-conditional), and makes
K candidates per anchor with :func:`synthpos.generators.clsp.clsp_interpolation_sample`,
the K candidates of an anchor in one batch. Every draw of candidate c of anchor a comes
from a generator seeded by ``derive_seed(seed, a, c)`` (and, with ``share_anchor_noise``,
the anchor's shared re-noising from ``derive_seed(seed, a, SHARED_ANCHOR_NOISE)``), so a
candidate is the same in any batch, shard or process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from synthpos.errors import SynthposError
from synthpos.generators.clsp import (
    SHARED_ANCHOR_NOISE,
    check_unet,
    clsp_interpolation_sample,
    derive_seed,
    embedding_conditioned,
    num_classes,
)
from synthpos.generators.diffusion import (
    crop_from_model,
    images_to_model_range,
    load_generator,
    model_range_to_images,
    pad_to_model,
    padding_for,
    resolve_generator_dir,
    trained_image_size,
)
from synthpos.generators.embedding_condition import CONDITION_DIR, EmbeddingCondition
from synthpos.generators.registry import CandidateGenerator, register_generator
from synthpos.generators.samplers import DPMSOLVER_ORDER, build_sampler
from synthpos.precision import resolve_precision

if TYPE_CHECKING:
    from synthpos.config import TrainGeneratorConfig

__all__ = ["CONDITION_NOISE", "NEIGHBOUR_CHOICE", "CLSPGenerator", "CLSPSettings", "generator_id"]

#: Candidate c's embedding noise is drawn from ``derive_seed(seed, anchor, CONDITION_NOISE + c)``: a stream no
#: candidate's own draws (``c``) nor the shared re-noising (``SHARED_ANCHOR_NOISE``) use.
CONDITION_NOISE = 2**33
#: Candidate c's neighbour (``neighbour_blend``) is drawn from ``derive_seed(seed, anchor, NEIGHBOUR_CHOICE + c)``.
NEIGHBOUR_CHOICE = 2**34
#: In the store directory: the anchors' nearest neighbours that ``neighbour_blend`` reads, fitted once per store.
NEIGHBOURS_FILE = "condition_neighbours.json"


def generator_id(generator_dir: Path) -> str:
    """SHA-256 of the UNet weights and the noise schedule: the store records which generator made it."""
    digest = hashlib.sha256()
    for path in sorted((generator_dir / "unet").glob("diffusion_pytorch_model.*")):
        digest.update(path.read_bytes())
    digest.update((generator_dir / "scheduler" / "scheduler_config.json").read_bytes())
    if (generator_dir / CONDITION_DIR).is_dir():  # an embedding-conditioned generator: its projection and encoder too
        digest.update(EmbeddingCondition.digest(generator_dir))
    return digest.hexdigest()[:16]


class CLSPSettings(BaseModel):
    """``generate.clsp``: CLSP's DDIM with bottleneck interpolation (the paper's values by default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_steps: int = Field(100, ge=1, description="DDIM steps.")
    eta: float = Field(0.1, ge=0.0)
    interpolation_weight: float = Field(
        0.1, ge=0.0, le=1.0, description="w in w*h + (1-w)*h_anchor (1 = plain DDIM, 0 = the anchor's bottleneck)."
    )
    clip_x0: bool = Field(False, description="Clip the predicted x0 to [-1, 1] at every step (paper: off).")
    strength: float = Field(1.0, gt=0.0, le=1.0, description="diffusers' img2img strength: 1 starts from pure noise (the "
                            "paper); 0.3 starts from the anchor noised 30% of the way and takes 30% of num_steps.")
    sampler: Literal["ddim", "dpmsolver++"] = Field("ddim", description="ddim: the paper's sampler; dpmsolver++: "
                                                    "DPM-Solver++ with the same interpolation, in far fewer steps.")
    share_anchor_noise: bool = Field(False, description="One noised copy of the anchor per step for all its K candidates "
                                     "(saves encoder passes; the paper draws fresh noise per candidate).")
    guidance_scale: float = Field(1.0, ge=0.0, description="Class-conditional generators: classifier-free guidance scale "
                                  "(1 = the conditional prediction alone).")
    condition_noise: float = Field(0.0, ge=0.0, description="Embedding-conditioned generators: Gaussian noise of this "
                                   "standard deviation on each candidate's L2-normalised embedding (then normalised "
                                   "again); 0 conditions every candidate on its anchor's own embedding.")
    neighbour_blend: float = Field(0.0, ge=0.0, le=1.0, description="Embedding-conditioned generators: condition "
                                   "each candidate on normalise((1 - b) e_anchor + b e_neighbour), the neighbour one of "
                                   "the anchor's `neighbours` nearest images of the run's training split in the "
                                   "encoder's embedding, drawn per candidate; 0: the anchor's own embedding.")
    neighbours: int = Field(5, ge=1, description="How many nearest neighbours of an anchor neighbour_blend draws from.")

    @model_validator(mode="after")
    def _check_strength(self) -> CLSPSettings:
        if int(self.num_steps * self.strength) < 1:
            raise ValueError(f"generate.clsp.strength={self.strength} leaves no step of num_steps={self.num_steps}; "
                             f"raise strength to at least {1 / self.num_steps:.3g} or num_steps")
        return self


@register_generator("clsp", default=True)  # a recipe that names no generator: the paper's
class CLSPGenerator(CandidateGenerator):
    """CLSP's synthetic positives from a DDPM folder (``builtin:NAME`` for a shipped one).

    Args:
        generator_dir: a DDPMPipeline directory, as ``train-generator`` writes it.
        settings: its own (``generate.clsp``: sampler, steps, w, share_anchor_noise, guidance_scale, ...);
            None: the defaults.
        seed: the run's seed; every candidate's noise derives from it.
        device: where the UNet runs.
        candidates: K per anchor; batch_size: images per UNet call; precision, channels_last, compile: how the
            UNet runs (``generate.*``, every generator's).

    Raises:
        SynthposError: the folder is missing or incomplete, or holds a UNet that bottleneck
            interpolation cannot split; ``num_steps`` exceeds the trained timesteps;
            ``guidance_scale`` is set for an unconditional generator.
    """

    trains_on_data = True  # stage 1 trains its DDPM on the run's data (unless generate.generator names one)
    settings = CLSPSettings
    #: flat ``generate.<key>`` spellings from before the settings moved to ``generate.clsp`` (keys added since have none)
    moved = {key: key for key in CLSPSettings.model_fields if key not in ("neighbour_blend", "neighbours")}

    def __init__(self, generator_dir: Path, settings: CLSPSettings | None, seed: int, device: torch.device | str, *,
                 candidates: int, batch_size: int = 128, precision: str = "auto", channels_last: bool = True,
                 compile: bool = False) -> None:
        self.generator_dir = resolve_generator_dir(generator_dir)
        self.settings = settings = settings if settings is not None else CLSPSettings()
        self.seed = seed
        self.device = torch.device(device)
        self.candidates, self.batch_size = candidates, batch_size
        self.channels_last, self.compile = channels_last, compile
        self.precision = resolve_precision(precision, self.device)
        unet, self.noise_scheduler = load_generator(self.generator_dir)
        try:
            check_unet(unet)
        except ValueError as err:
            raise SynthposError(f"{self.generator_dir} cannot make CLSP positives: {err}") from err
        trained_steps = self.noise_scheduler.config.num_train_timesteps
        if settings.num_steps > trained_steps:
            raise SynthposError(
                f"generate.clsp.num_steps={settings.num_steps} is more than the {trained_steps} timesteps {self.generator_dir} "
                f"was trained with; set generate.clsp.num_steps to at most {trained_steps}"
            )
        self.num_classes = num_classes(unet)
        self.condition = EmbeddingCondition.load(self.generator_dir) if embedding_conditioned(unet) else None
        for key in ("condition_noise", "neighbour_blend"):
            if self.condition is None and getattr(settings, key):
                raise SynthposError(f"generate.clsp.{key}={getattr(settings, key)} needs an embedding-conditioned "
                                    f"generator, but {self.generator_dir} is not; set generate.clsp.{key}=0")
        self._pool: tuple[np.ndarray, np.ndarray] | None = None  # neighbour_blend's (embeddings, neighbours), by prepare()
        if self.num_classes is None and self.condition is None and settings.guidance_scale != 1.0:
            raise SynthposError(
                f"generate.clsp.guidance_scale={settings.guidance_scale} needs a conditional generator, but "
                f"{self.generator_dir} is unconditional; set generate.clsp.guidance_scale=1 or train one with "
                "train_generator.class_conditional=true or train_generator.condition"
            )
        unet = unet.to(self.device)
        if channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        self.unet = unet
        # A UNet trained on padded images (train_generator.sample_size) takes its anchors padded the same way.
        self.image_size = trained_image_size(self.generator_dir, unet.config.sample_size)
        self.scheduler = build_sampler(settings.sampler, self.noise_scheduler, clip_x0=settings.clip_x0)

    # ------------------------------------------------------------------ the registry contract

    @classmethod
    def check_training(cls, settings: CLSPSettings | None, train: TrainGeneratorConfig) -> None:
        """The DDPM trained in this run: no more sampler steps than its timesteps, guidance only if it is conditional."""
        s = settings if settings is not None else CLSPSettings()
        if s.num_steps > train.num_train_timesteps:
            raise ValueError(f"generate.clsp.num_steps={s.num_steps} is more than the train_generator.num_train_timesteps="
                             f"{train.num_train_timesteps} the generator is trained with")
        if s.guidance_scale != 1.0 and not train.class_conditional and train.condition is None:
            raise ValueError(f"generate.clsp.guidance_scale={s.guidance_scale} needs a conditional generator; set "
                             "train_generator.class_conditional=true, train_generator.condition, or generate.clsp.guidance_scale=1")

    def check_images(self, images: np.ndarray) -> None:
        channels, size = self.unet.config.in_channels, self.image_size
        if images.shape[1:] != (size, size, channels):
            raise SynthposError(
                f"the generator makes {size}x{size}x{channels} images but the data is {'x'.join(map(str, images.shape[1:]))}; "
                "set data.image_size (or use a generator trained on this data)"
            )

    def prepare(self, images: np.ndarray, labels: np.ndarray | None, work_dir: Path) -> None:
        """A class-conditional generator checks that every anchor has a label it knows; with ``neighbour_blend`` the
        anchors are embedded and each one's nearest others found (no labels), saved in the store directory.

        Raises:
            SynthposError: fewer anchors than ``neighbours + 1``; ``work_dir`` holds neighbours found with another
                encoder, data or count, or a store without them.
        """
        if self.num_classes is not None:
            self._check_labels(labels, len(images))
        if self.condition is not None and self.settings.neighbour_blend > 0:
            self._pool = self._fit_neighbours(images, Path(work_dir))

    def _fit_neighbours(self, images: np.ndarray, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        """Every anchor's embedding (N, D) and its ``neighbours`` nearest other anchors (N, k), by cosine."""
        import json

        from synthpos.atomic import publish_once
        from synthpos.evaluation.features import images_digest
        from synthpos.generators.embedding_condition import nearest_neighbours

        k, n = self.settings.neighbours, len(images)
        if n <= k:
            raise SynthposError(f"generate.clsp.neighbours={k} needs more than {k} training images, but the split has "
                                f"{n}; lower generate.clsp.neighbours or generate.clsp.neighbour_blend=0")
        # Embedded in chunks, so a streamed split is decoded a chunk at a time.
        embeddings = np.concatenate([self.condition.embed(np.asarray(images[i: i + 4096])) for i in range(0, n, 4096)])
        made_with = {"encoder_sha256": self.condition.encoder_sha256, "neighbours": k, "images": images_digest(images)}
        path = work_dir / NEIGHBOURS_FILE
        if not path.is_file():
            if (work_dir / "manifest.json").is_file():
                # Shards may exist that were made with the lost neighbours; ties could be broken otherwise now.
                raise SynthposError(f"store {work_dir} exists but has no {NEIGHBOURS_FILE} (made without neighbour_blend, "
                                    "or the file was deleted); delete the store, or use another generate.store, to "
                                    "generate it again")
            work_dir.mkdir(parents=True, exist_ok=True)
            near = nearest_neighbours(embeddings, k)
            publish_once(path, json.dumps({"made_with": made_with, "neighbours": near.tolist()}))  # the first rank's
        saved = json.loads(path.read_text())
        if saved.get("made_with") != made_with:
            raise SynthposError(f"{path} was found with another encoder, data or generate.clsp.neighbours "
                                f"({saved.get('made_with')}); use another generate.store (or delete that store) to "
                                "start again")
        return embeddings, np.asarray(saved["neighbours"], dtype=np.int64)

    def record(self) -> dict[str, Any]:
        """What decides the bytes: weights, sampler and its settings, precision, seed.

        Settings that change speed only (batch_size, compile, num_threads, channels_last)
        are left out, so a store made with other ones is still reused.
        """
        s = self.settings
        ddim = s.sampler == "ddim"
        return {
            "kind": "clsp",
            "generator_sha256": generator_id(self.generator_dir),
            "num_classes": self.num_classes,
            "sampler": s.sampler,
            "solver_order": None if ddim else DPMSOLVER_ORDER,
            "num_steps": s.num_steps,
            "eta": s.eta if ddim else None,  # DPM-Solver++ draws no noise
            "interpolation_weight": s.interpolation_weight,
            "clip_x0": s.clip_x0,
            "share_anchor_noise": s.share_anchor_noise,
            "guidance_scale": s.guidance_scale if self.num_classes is not None or self.condition is not None else None,
            **({} if self.condition is None else {"condition_noise": s.condition_noise}),
            **({} if self.condition is None or s.neighbour_blend == 0 else {"neighbour_blend": s.neighbour_blend,
                                                                          "neighbours": s.neighbours}),
            "precision": self.precision,
            "seed": self.seed,
        } | ({} if s.strength == 1.0 else {"strength": s.strength}) | (
            {} if self.condition is None else {"encoder_sha256": self.condition.encoder_sha256})  # stores made before strength existed stay current

    def generate(self, anchors: np.ndarray, first_index: int, labels: np.ndarray | None = None, bar: Any = None) -> np.ndarray:
        """K candidates per anchor, ``max(1, batch_size // K)`` anchors (all their candidates) per UNet call.

        Shape: anchors (n, H, W, C) uint8 -> (n, K, H, W, C) uint8.
        """
        s, k, n = self.settings, self.candidates, len(anchors)
        if self.num_classes is not None:
            labels = self._check_labels(labels, n)
        out = np.empty((n, k, *anchors.shape[1:]), dtype=np.uint8)
        border = padding_for(self.image_size, self.unet.config.sample_size)
        anchor_tensor = pad_to_model(images_to_model_range(torch.from_numpy(np.ascontiguousarray(anchors))), border)
        per_call = max(1, self.batch_size // k)
        embeddings, null = None, None
        if self.condition is not None:  # the anchors' own embeddings: no labels
            embeddings = torch.from_numpy(self.condition.embed(anchors))
            null = self.condition.null()
        for begin in range(0, n, per_call):
            end = min(n, begin + per_call)
            batch = anchor_tensor[begin:end].to(self.device)
            if self.channels_last and batch.shape[1] > 1:
                batch = batch.contiguous(memory_format=torch.channels_last)
            indices = range(first_index + begin, first_index + end)
            generators = [torch.Generator().manual_seed(derive_seed(self.seed, a, c)) for a in indices for c in range(k)]
            anchor_index = torch.arange(end - begin).repeat_interleave(k)
            shared = None
            if s.share_anchor_noise:
                shared = [torch.Generator().manual_seed(derive_seed(self.seed, a, SHARED_ANCHOR_NOISE)) for a in indices]
            conditions = self._conditions(labels, embeddings, begin, end, indices)
            if conditions is not None and len(conditions) == len(generators) != end - begin:
                # One condition per candidate (noised embeddings): each row follows its own copy of its anchor,
                # and a shared re-noising is replayed per row from the anchor's seed (the same draws).
                batch, anchor_index = batch[anchor_index], torch.arange(len(generators))
                if shared is not None:
                    shared = [torch.Generator().manual_seed(derive_seed(self.seed, a, SHARED_ANCHOR_NOISE))
                              for a in indices for _ in range(k)]
            samples = clsp_interpolation_sample(
                self.unet, self.scheduler, batch, generators,
                num_steps=s.num_steps, eta=s.eta, weight=s.interpolation_weight, precision=self.precision,
                class_labels=conditions, anchor_index=anchor_index,
                anchor_generators=shared, guidance_scale=s.guidance_scale, compiled=self.compile, strength=s.strength,
                null_condition=null,
            )
            out[begin:end] = model_range_to_images(crop_from_model(samples.cpu(), border)).numpy().reshape(end - begin, k, *anchors.shape[1:])
            if bar is not None:
                bar.update((end - begin) * k)
        return out

    # ------------------------------------------------------------------ helpers

    def _conditions(self, labels: np.ndarray | None, embeddings: torch.Tensor | None, begin: int, end: int,
                    indices: range) -> torch.Tensor | None:
        """What the UNet is conditioned on for anchors ``begin:end``: projected embeddings, labels, or nothing.

        With ``neighbour_blend`` b, candidate c of anchor a (its index in the split) is conditioned on
        ``normalise((1 - b) e_a + b e_n)``, n one of a's ``neighbours`` nearest anchors drawn from its own stream
        (``derive_seed(seed, a, NEIGHBOUR_CHOICE + c)``). With ``condition_noise`` that embedding gets Gaussian
        noise of that standard deviation (``derive_seed(seed, a, CONDITION_NOISE + c)``) and is L2-normalised
        again. Either gives one condition per candidate (K rows per anchor) instead of one per anchor.
        """
        if embeddings is not None:
            chosen = embeddings[begin:end]
            s, k = self.settings, self.candidates
            if s.neighbour_blend > 0 or s.condition_noise > 0:
                chosen = chosen.repeat_interleave(k, dim=0)
            if s.neighbour_blend > 0:
                if self._pool is None:
                    raise RuntimeError("neighbour_blend needs the anchors' neighbours: call prepare(images, labels, "
                                       "work_dir) first")
                pool, near = self._pool
                picks = [int(near[a, int(torch.randint(near.shape[1], (1,), generator=torch.Generator().manual_seed(
                    derive_seed(self.seed, a, NEIGHBOUR_CHOICE + c))))]) for a in indices for c in range(k)]
                chosen = F.normalize((1 - s.neighbour_blend) * chosen + s.neighbour_blend * torch.from_numpy(pool[picks]),
                                     dim=1)
            if s.condition_noise > 0:
                noise = torch.stack([
                    torch.randn(chosen.shape[1], generator=torch.Generator().manual_seed(
                        derive_seed(self.seed, a, CONDITION_NOISE + c)))
                    for a in indices for c in range(k)])
                chosen = F.normalize(chosen + s.condition_noise * noise, dim=1)
            return self.condition.project(chosen)
        if labels is None or self.num_classes is None:
            return None
        return torch.from_numpy(labels[begin:end])

    def _check_labels(self, labels: np.ndarray | None, n: int) -> np.ndarray:
        if labels is None:
            raise SynthposError(
                f"the generator {self.generator_dir} is class-conditional ({self.num_classes} classes) but the dataset "
                "has no class labels; use a labelled dataset or an unconditional generator"
            )
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise SynthposError(f"need one class label per anchor: got {labels.shape} for {n} anchors")
        if n and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise SynthposError(
                f"anchor labels run {labels.min()}..{labels.max()} but the generator knows classes 0..{self.num_classes - 1}; "
                "use a generator trained on this dataset's classes"
            )
        return labels
