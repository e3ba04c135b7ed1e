"""Stable unCLIP image variations as synthetic positives (Ayromlou et al.; GenView).

Ayromlou et al. ("Can Generative Models Improve Self-Supervised Representation
Learning?") make V variations of every training image offline with diffusers'
``StableUnCLIPImg2ImgPipeline`` (stable-diffusion-2-1-unclip-small): the image's CLIP
embedding conditions the UNet, the prompt is empty (GenView: a fixed text, ``unclip.prompt``), DDIM with 10 steps, eta 0,
trailing timesteps and betas rescaled to zero terminal SNR, the pipeline's default
guidance (10), noise level 0; the results are resized to the dataset's size. GenView
(Li et al.) sets the noise level of each image from its foreground ratio
(:mod:`synthpos.generators.adaptive_noise`).

Here the pipeline's own ``__call__`` makes every image. What this module adds:

- Each anchor is encoded once (feature extractor + image encoder, exactly as the
  pipeline encodes an image) and its embedding handed to the pipeline for all V
  variants; the patch tokens of the same pass give the foreground ratio.
- Every candidate has its own CPU ``torch.Generator`` seeded by
  ``derive_seed(seed, anchor, candidate)``; the pipeline draws the embedding noise,
  the initial latents and any DDIM noise of a row from that row's generator, so a
  candidate does not depend on the batch, shard or process that made it.
- The pipeline takes one noise level per call, so rows are grouped by level.
- Grey images go in as RGB and come out as ITU-R 601 luma (PIL's ``convert("L")``).

Weights are loaded from a local folder only (see docs/unclip.md for the layout).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from synthpos.distributed import default_device
from synthpos.errors import SynthposError
from synthpos.generators.adaptive_noise import (
    AdaptiveNoiseSettings,
    ForegroundFit,
    fit_foreground,
    load_fit,
    noise_levels,
    save_fit_once,
)
from synthpos.generators.clsp import derive_seed
from synthpos.generators.registry import CandidateGenerator, register_generator
from synthpos.precision import resolve_precision

__all__ = ["UnCLIPGenerator", "UnCLIPSettings", "check_unclip_layout", "unclip_weights_id", "variations_to_images"]

# Fail at import without transformers (the registry turns this into an install hint), but do
# not import it: every `generate` imports this module to register the generator.
if importlib.util.find_spec("transformers") is None:
    raise ModuleNotFoundError("Stable unCLIP needs transformers: pip install 'synthpos[unclip]'", name="transformers")

FIT_FILE = "adaptive_noise.json"

_MODEL_FOLDERS = ("image_encoder", "image_normalizer", "text_encoder", "unet", "vae")
_CONFIG_FILES = {
    "feature_extractor": "preprocessor_config.json",
    "image_noising_scheduler": "scheduler_config.json",
    "scheduler": "scheduler_config.json",
    **{name: "config.json" for name in _MODEL_FOLDERS},
}
COMPONENTS = ("feature_extractor", "image_encoder", "image_normalizer", "image_noising_scheduler",
              "tokenizer", "text_encoder", "unet", "scheduler", "vae")
LAYOUT_HINT = (
    "expected the folder that `huggingface-cli download stabilityai/stable-diffusion-2-1-unclip-small --local-dir DIR` "
    "makes: model_index.json and the folders " + ", ".join(COMPONENTS) + " (see docs/unclip.md)"
)
_MiB = 1 << 20
# ITU-R 601 luma, the weights of PIL's convert("L").
_LUMA = (0.299, 0.587, 0.114)


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))


def _is_fp16(name: str) -> bool:
    return ".fp16." in name or ".fp16-" in name


def check_unclip_layout(path: Path) -> str | None:
    """Check that ``path`` holds a complete StableUnCLIPImg2ImgPipeline before loading it.

    Returns:
        The weights variant to load: None, or "fp16" when some component has only
        ``*.fp16.*`` weights (a download of the half-precision files alone).

    Raises:
        SynthposError: the folder, a component, a config or a component's weights are missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise SynthposError(f"unCLIP generator folder {path} does not exist; set generate.generator to it; {LAYOUT_HINT}")
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    for name in COMPONENTS:
        folder = path / name
        if not folder.is_dir():
            missing.append(f"{name}/")
        elif name == "tokenizer":
            if not ((folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
                missing.append("tokenizer/vocab.json + merges.txt (or tokenizer.json)")
        elif not (folder / _CONFIG_FILES[name]).is_file():
            missing.append(f"{name}/{_CONFIG_FILES[name]}")
    if missing:
        raise SynthposError(f"unCLIP folder {path} is incomplete: missing {', '.join(missing)}; {LAYOUT_HINT}")
    no_weights, fp16_only = [], []
    for name in _MODEL_FOLDERS:
        files = _weight_files(path / name)
        if not files:
            no_weights.append(f"{name}/")
        elif all(_is_fp16(p.name) for p in files):
            fp16_only.append(name)
    if no_weights:
        raise SynthposError(
            f"unCLIP folder {path} has no weights in {', '.join(no_weights)} (expected model.safetensors or "
            "diffusion_pytorch_model.safetensors, .bin, or their .fp16 variants); the download is incomplete: "
            "download the model again (see docs/unclip.md)"
        )
    return "fp16" if fp16_only else None


def unclip_weights_id(path: Path) -> str:
    """Which unCLIP weights a store was made with: SHA-256 over every config file in full and,
    for every weight file, its name, size and first and last MiB.

    Not a hash of every byte: the weights are 5-10 GB and record() runs on every
    ``generate``; names, sizes, headers (safetensors put their tensor index first) and
    tails tell checkpoints apart.
    """
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if ".cache" in file.relative_to(path).parts or ".tmp-" in file.name:
            continue
        if file.suffix in (".safetensors", ".bin"):
            size = file.stat().st_size
            with file.open("rb") as handle:
                head = handle.read(_MiB)
                handle.seek(max(size - _MiB, 0))
                tail = handle.read(_MiB)
            digest.update(f"{rel}\0{size}\0".encode() + head + tail)
        elif file.suffix in (".json", ".txt"):
            digest.update(f"{rel}\0".encode() + file.read_bytes())
    return digest.hexdigest()[:16]


def variations_to_images(images: torch.Tensor, size: tuple[int, int], channels: int) -> np.ndarray:
    """Pipeline output in [0, 1] to dataset images: antialiased bilinear resize, grey if needed, uint8.

    Shape: (B, 3, h, w) -> (B, H, W, channels).
    """
    images = images.float()
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    if channels == 1:
        images = sum(w * images[:, i: i + 1] for i, w in enumerate(_LUMA))
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SynthposError(f"{path} is not valid JSON; the unCLIP download is damaged: download the model again") from err


def _to_pil(image: np.ndarray) -> Image.Image:
    # The pipeline's feature extractor takes RGB; grey anchors are replicated to three channels.
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")


@contextmanager
def _loading_bars_off() -> Iterator[None]:
    # diffusers and transformers draw tqdm bars per component while loading; stage 2 has its own bar.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    active = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in active:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in active:
            lib.enable_progress_bar()


def _chunks(items: list, size: int) -> Iterator[list]:
    for begin in range(0, len(items), size):
        yield items[begin: begin + size]


class UnCLIPSettings(BaseModel):
    """``generate.unclip``: Stable unCLIP image variations (Ayromlou et al.; GenView with adaptive noise)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_steps: int = Field(10, ge=1, description="DDIM steps.")
    eta: float = Field(0.0, ge=0.0)
    guidance_scale: float = Field(10.0, ge=0.0, description="Classifier-free guidance against a zero image embedding "
                                  "and the empty prompt (1 = off; 10 = the pipeline's default, which Ayromlou et al. ran; GenView: 10 too).")
    noise_level: int = Field(0, ge=0, description="Noise added to the image embedding when adaptive noise is off.")
    trailing_zero_snr: bool = Field(True, description="DDIM with trailing timesteps and betas rescaled to zero terminal SNR "
                                    "(Ayromlou et al.'s code); off: the model's own DDIM schedule (GenView).")
    prompt: str = Field("", description="Text prompt of every variation (Ayromlou et al.: empty; GenView: its fixed "
                        "\"Your custom text prompt here\", generate_image_variations_noiselevels.py:77).")
    image_size: int | None = Field(None, ge=8, multiple_of=8, description="Generate at this size (default: the model's, "
                                   "768 for stable-diffusion-2-1-unclip-small); results are resized to the dataset's size.")
    adaptive_noise: AdaptiveNoiseSettings = AdaptiveNoiseSettings()


@register_generator("unclip")
class UnCLIPGenerator(CandidateGenerator):
    """Stable unCLIP image variations, V per anchor, with a fixed or adaptive (GenView) noise level.

    Args:
        generator_dir: a local StableUnCLIPImg2ImgPipeline folder (checked before anything loads).
        settings: its own (``generate.unclip``: steps, eta, guidance, noise level, adaptive noise); None: the defaults.
        seed: the global seed; candidate v of anchor a is seeded by ``derive_seed(seed, a, v)``.
        device: where the pipeline runs (default: this process's GPU, else the CPU).
        candidates: V per anchor; batch_size: images per pipeline call; precision: fp32 or bf16 (``generate.*``).
            channels_last and compile are accepted and not used.

    The pipeline is loaded on first use, so ``record()`` is cheap.

    Example:
        >>> gen = UnCLIPGenerator(Path("weights/unclip-small"), UnCLIPSettings(), 0, "cuda", candidates=10)
        >>> gen.generate(images[:4], first_index=0).shape      # images: uint8 (N, 32, 32, 3)
        (4, 10, 32, 32, 3)
    """

    settings = UnCLIPSettings

    def __init__(self, generator_dir: Path, settings: UnCLIPSettings | None, seed: int,
                 device: str | torch.device | None = None, *, candidates: int, batch_size: int = 128,
                 precision: str = "auto", channels_last: bool = True, compile: bool = False) -> None:
        self.generator_dir = Path(generator_dir)
        self.variant = check_unclip_layout(self.generator_dir)
        self.options = settings if settings is not None else UnCLIPSettings()
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = resolve_precision(precision, self.device)
        self.candidates = candidates
        self.fit: ForegroundFit | None = None
        self._pipe: Any = None
        self._weights_id: str | None = None
        unet = _read_config(self.generator_dir / "unet" / "config.json")
        vae = _read_config(self.generator_dir / "vae" / "config.json")
        # The pipeline's default size: latent size x the VAE's downsampling (diffusers writes every key to config.json).
        native = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        self.image_size = self.options.image_size or native
        noising = _read_config(self.generator_dir / "image_noising_scheduler" / "scheduler_config.json")
        limit = int(noising.get("num_train_timesteps", 1000))
        adaptive = self.options.adaptive_noise
        used = adaptive.levels if adaptive.enabled else [self.options.noise_level]
        if max(used) >= limit:
            raise SynthposError(
                f"unCLIP noise levels must be below {limit} (this model's image-noising schedule); got {max(used)} in "
                "generate.unclip.noise_level / adaptive_noise.levels"
            )

    # ------------------------------------------------------------------ loading

    @property
    def pipeline(self) -> Any:
        """The StableUnCLIPImg2ImgPipeline, loaded on first use, with the configured DDIM scheduler."""
        if self._pipe is None:
            self._pipe = self._load()
        return self._pipe

    def _load(self) -> Any:
        from diffusers import DDIMScheduler, StableUnCLIPImg2ImgPipeline

        try:
            with _loading_bars_off():
                pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(self.generator_dir, local_files_only=True, variant=self.variant)
        except (OSError, ValueError, KeyError) as err:
            raise SynthposError(
                f"could not load the unCLIP pipeline from {self.generator_dir} ({type(err).__name__}: {err}); "
                f"{LAYOUT_HINT}"
            ) from err
        if self.options.trailing_zero_snr:
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
        else:
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        pipe = pipe.to(self.device, dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def weights_id(self) -> str:
        if self._weights_id is None:
            self._weights_id = unclip_weights_id(self.generator_dir)
        return self._weights_id

    # ------------------------------------------------------------------ the registry's interface

    def check_images(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise SynthposError(
                f"unCLIP makes variations of uint8 grey or RGB images (N, H, W, 1|3); got {images.dtype} {images.shape}"
            )

    def prepare(self, images: np.ndarray, labels: np.ndarray | None, work_dir: Path) -> None:
        """Fit GenView's foreground direction on a seeded sample (adaptive noise only), or reuse the saved fit.

        Raises:
            SynthposError: ``work_dir`` holds a fit made from other data, weights or settings,
                or a store without its fit.
        """
        if self._pipe is None and not (Path(work_dir) / "manifest.json").is_file():
            self._pipe = self._load()  # a new store: weights that fail to load fail before it is created
        adaptive = self.options.adaptive_noise
        if not adaptive.enabled:
            return
        count = min(adaptive.fit_images, len(images))
        # Sorted, so the sample is read in order; the same seed gives the same sample.
        sample = np.sort(np.random.default_rng(self.seed).choice(len(images), size=count, replace=False))
        sample_hash = hashlib.sha256()
        for i in sample:
            sample_hash.update(np.ascontiguousarray(images[i]).tobytes())
        made_with = {
            "weights_sha256": self.weights_id(),
            "fit_images": count,
            "foreground_share": adaptive.foreground_share,
            "seed": self.seed,
            "sample_sha256": sample_hash.hexdigest()[:16],
        }
        path = Path(work_dir) / FIT_FILE
        if not path.is_file() and (Path(work_dir) / "manifest.json").is_file():
            # Shards may exist that were made with the lost fit; a new fit could bin images differently.
            raise SynthposError(
                f"store {work_dir} exists but has no {FIT_FILE} (made without adaptive noise, or its fit was deleted); "
                "delete the store, or use another generate.store, to generate it again"
            )
        if not path.is_file():
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            batches = lambda: (self._encode(images[chunk])[1] for chunk in _chunks(list(sample), self.batch_size))  # noqa: E731
            save_fit_once(fit_foreground(batches, adaptive.foreground_share, made_with), path)
        fit = load_fit(path)
        if fit.made_with != made_with:
            raise SynthposError(
                f"{path} was fitted with other data, weights or adaptive_noise settings ({fit.made_with}); restore them, "
                "or use another generate.store (or delete that store) to start again"
            )
        self.fit = fit

    def record(self) -> dict[str, Any]:
        """Weights, sampler, noise settings, seed and precision.

        With adaptive noise the record holds the fit's settings, not the fit's hash:
        ``synthpos run`` compares records without calling ``prepare()`` first. The fit
        is still pinned: it is a function of the weights, the seed, these settings and
        the data (in the store's fingerprint), it lives in the store, and ``prepare()``
        refuses a fit made from anything else or a store whose fit is gone.
        """
        adaptive = self.options.adaptive_noise
        if adaptive.enabled:
            noise = {"adaptive": {"bins": adaptive.bins, "levels": adaptive.levels, "fit_images": adaptive.fit_images,
                                  "foreground_share": adaptive.foreground_share}}
        else:
            noise = {"noise_level": self.options.noise_level}
        return {
            "kind": "unclip",
            "weights_sha256": self.weights_id(),
            "variant": self.variant,
            "scheduler": "ddim_trailing_zero_snr" if self.options.trailing_zero_snr else "ddim",
            "num_steps": self.options.num_steps,
            "eta": self.options.eta,
            "guidance_scale": self.options.guidance_scale,
            "image_size": self.image_size,
            "noise": noise,
            "seed": self.seed,
            "precision": self.precision,
            # Recorded only when set, so that stores made before the setting existed keep their record.
            **({"prompt": self.options.prompt} if self.options.prompt else {}),
        }

    @torch.no_grad()
    def generate(self, anchors: np.ndarray, first_index: int, labels: np.ndarray | None = None, bar: Any = None) -> np.ndarray:
        """V variations of each anchor, resized to the anchors' size.

        Shape: uint8 (n, H, W, C) -> uint8 (n, V, H, W, C).
        """
        self.check_images(anchors)
        n, height, width, channels = anchors.shape
        embeds, levels = [], []
        for chunk in _chunks(list(range(n)), self.batch_size):
            e, tokens = self._encode(anchors[chunk])
            embeds.append(e)
            levels.append(self.levels_for(tokens) if tokens is not None else np.full(len(chunk), self.options.noise_level))
        image_embeds = torch.cat(embeds)
        level = np.concatenate(levels)
        out = np.empty((n, self.candidates, height, width, channels), dtype=np.uint8)
        rows = [(a, v) for a in range(n) for v in range(self.candidates)]
        for noise_level in sorted(set(level.tolist())):
            for chunk in _chunks([r for r in rows if level[r[0]] == noise_level], self.batch_size):
                generators = [torch.Generator().manual_seed(derive_seed(self.seed, first_index + a, v)) for a, v in chunk]
                images = self.pipeline(
                    prompt=[self.options.prompt] * len(chunk),
                    image_embeds=image_embeds[[a for a, _ in chunk]],
                    noise_level=int(noise_level),
                    num_inference_steps=self.options.num_steps,
                    guidance_scale=self.options.guidance_scale,
                    eta=self.options.eta,
                    generator=generators,
                    height=self.image_size,
                    width=self.image_size,
                    output_type="pt",
                ).images
                for (a, v), image in zip(chunk, variations_to_images(images, (height, width), channels)):
                    out[a, v] = image
                if bar is not None:
                    bar.update(len(chunk))
        return out

    # ------------------------------------------------------------------ helpers

    def levels_for(self, tokens: np.ndarray) -> np.ndarray:
        """GenView's noise level of each image from its patch tokens (N, P, D) -> (N,)."""
        if self.fit is None:
            raise RuntimeError("adaptive noise needs the fitted foreground direction: call prepare(images, labels, work_dir) first")
        adaptive = self.options.adaptive_noise
        return noise_levels(self.fit.foreground_ratio(tokens), adaptive.bins, adaptive.levels)

    @torch.no_grad()
    def _encode(self, images: np.ndarray) -> tuple[torch.Tensor, np.ndarray | None]:
        """CLIP image embeddings as the pipeline computes them, and (adaptive noise only) the patch tokens.

        Returns:
            embeddings (B, E) on the device, and patch tokens after the final LayerNorm as
            float32 numpy (B, P, D), or None when adaptive noise is off.
        """
        pipe = self.pipeline
        pixels = pipe.feature_extractor(images=[_to_pil(image) for image in images], return_tensors="pt").pixel_values
        encoder = pipe.image_encoder
        output = encoder(pixels.to(device=self.device, dtype=encoder.dtype))
        tokens = None
        if self.options.adaptive_noise.enabled:
            # GenView's tokens: the last layer's patch tokens through the final LayerNorm (CLS dropped).
            tokens = encoder.vision_model.post_layernorm(output.last_hidden_state[:, 1:]).float().cpu().numpy()
        return output.image_embeds, tokens
