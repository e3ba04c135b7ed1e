"""Stage 1: a DDPM on diffusers' UNet2DModel, trained from scratch.

The recipe is CLSP's (Ho et al.'s CIFAR DDPM): linear betas, Adam with a linear
warm-up, gradient clipping, an EMA of the weights, horizontal flips only, images in
[-1, 1]. The final model is written as a diffusers ``DDPMPipeline`` directory
(``model_index.json``, ``unet/``, ``scheduler/``), so ``DDPMPipeline.from_pretrained``
loads it as it is.

Unconditional by default. With ``class_conditional`` the UNet gets ``num_class_embeds =
classes + 1`` class embeddings (added to the time embedding); the last id is the null
class: each training label is replaced by it with probability ``label_dropout``, so one
model predicts both conditionally and unconditionally, as classifier-free guidance needs
(Ho & Salimans, 2022). The number of classes is in ``unet/config.json``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from synthpos.atomic import atomic_path
from synthpos.config import RunConfig, TrainGeneratorConfig, UNetConfig
from synthpos.errors import SynthposError
from synthpos.generators.embedding_condition import ConditionData, ConditionProjection, load_condition_data
from synthpos.loggers import MetricLoggers, check_loggers
from synthpos.precision import autocast
from synthpos.progress import progress_bar
from synthpos.provenance import provenance as make_provenance
from synthpos.signals import stop_requests

# diffusers (and the transformers it pulls in) is imported where a model is built or loaded, not here:
# reading a config imports every generator module, and that must stay light.
if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
#: Beside model_index.json when the UNet was trained on padded images: {"image_size", "sample_size"}.
PADDING_FILE = "synthpos_padding.json"


def build_unet(config: UNetConfig, sample_size: int, channels: int, num_classes: int | None = None,
               embedding_conditioned: bool = False) -> UNet2DModel:
    """A UNet2DModel shaped like the DDPM/CLSP UNet: ``len(block_out_channels)`` levels,
    attention at ``attention_levels`` (in the up blocks at ``up_attention_levels`` when given),
    a middle block with attention.

    ``num_classes``: make it class-conditional with ``num_classes + 1`` class embeddings
    (the last one is the null class of classifier-free guidance).
    ``embedding_conditioned``: the UNet adds a given vector to its time embedding
    (``class_embed_type="identity"``) and its resnets scale and shift by it (FiLM): the
    instance conditioning of :mod:`synthpos.generators.embedding_condition`.
    """
    levels = len(config.block_out_channels)
    bad = [lvl for lvl in config.attention_levels if not 0 <= lvl < levels]
    if bad:
        raise SynthposError(f"unet.attention_levels {bad} out of range: the UNet has levels 0..{levels - 1}")
    if any(ch % config.norm_num_groups for ch in config.block_out_channels):
        raise SynthposError(
            f"unet.block_out_channels {config.block_out_channels} must all be multiples of "
            f"unet.norm_num_groups={config.norm_num_groups}"
        )
    down = tuple("AttnDownBlock2D" if lvl in config.attention_levels else "DownBlock2D" for lvl in range(levels))
    up_levels = config.attention_levels if config.up_attention_levels is None else config.up_attention_levels
    up = tuple("AttnUpBlock2D" if lvl in up_levels else "UpBlock2D" for lvl in reversed(range(levels)))
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(config.block_out_channels),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=config.layers_per_block,
        dropout=config.dropout,
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
        resnet_time_scale_shift="scale_shift" if embedding_conditioned else "default",
        add_attention=True,
        num_class_embeds=None if num_classes is None else num_classes + 1,
        class_embed_type="identity" if embedding_conditioned else None,
    )


def build_noise_scheduler(config: TrainGeneratorConfig) -> DDPMScheduler:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


def resolve_generator_dir(path: Path) -> Path:
    """Map ``builtin:NAME`` to the checkpoint shipped in the package."""
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        return BUILTIN_DIR / text[len(BUILTIN_PREFIX):]
    return Path(path)


def load_generator(path: Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load a generator written by :func:`train_generator` (any DDPMPipeline directory).

    Raises:
        SynthposError: the directory or its weights are missing.
    """
    path = resolve_generator_dir(path)
    unet_dir, sched_dir = path / "unet", path / "scheduler"
    if not path.is_dir():
        raise SynthposError(
            f"generator directory {path} does not exist; train one with `synthpos train-generator --config FILE` "
            "or set generate.generator to a DDPMPipeline folder (or builtin:fashion_mnist)"
        )
    weights = list(unet_dir.glob("diffusion_pytorch_model.*")) if unet_dir.is_dir() else []
    if not (unet_dir / "config.json").is_file() or not weights or not (sched_dir / "scheduler_config.json").is_file():
        raise SynthposError(
            f"generator directory {path} is incomplete: expected unet/config.json, unet/diffusion_pytorch_model.safetensors "
            "and scheduler/scheduler_config.json (the layout DDPMPipeline.save_pretrained writes)"
        )
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    scheduler = DDPMScheduler.from_pretrained(sched_dir)
    unet.eval().requires_grad_(False)
    return unet, scheduler


def images_to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def model_range_to_images(x: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C)."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def padding_for(image_size: int, sample_size: int) -> int:
    """Border (pixels per side) that pads ``image_size`` images to the UNet's ``sample_size``.

    Raises:
        SynthposError: the UNet is smaller than the images or the difference is odd.
    """
    extra = sample_size - image_size
    if extra < 0 or extra % 2:
        raise SynthposError(
            f"the generator works at {sample_size} px but the images are {image_size} px: it can pad them by an even "
            f"number of pixels only; set train_generator.sample_size to {image_size} + an even number"
        )
    return extra // 2


def trained_image_size(generator_dir: Path, sample_size: int) -> int:
    """The data's side a generator was trained for: ``sample_size`` unless it padded the images."""
    padding = Path(generator_dir) / PADDING_FILE
    return int(json.loads(padding.read_text())["image_size"]) if padding.is_file() else sample_size


def fitting_sample_size(image_size: int, levels: int) -> int:
    """The smallest side >= ``image_size`` that ``levels - 1`` halvings divide and an even border pads to
    (28 px -> 28 for 3 levels, 32 for 4): the default ``train_generator.sample_size``."""
    step = 2 ** (levels - 1)
    size = -(-image_size // step) * step
    while (size - image_size) % 2:
        size += step
    return size


def pad_to_model(x: torch.Tensor, border: int) -> torch.Tensor:
    """Pad (B, C, H, W) images in [-1, 1] with ``border`` black (-1) pixels on each side."""
    return F.pad(x, (border,) * 4, value=-1.0) if border else x


def crop_from_model(x: torch.Tensor, border: int) -> torch.Tensor:
    """Undo :func:`pad_to_model`."""
    return x[..., border: x.shape[-2] - border, border: x.shape[-1] - border] if border else x


def loss_weights(alphas_cumprod: torch.Tensor, weighting: str, gamma: float) -> torch.Tensor:
    """Per-timestep weight of the epsilon MSE. Shape: (T,).

    ``min_snr``: ``min(SNR(t), gamma) / SNR(t)`` with ``SNR = a / (1 - a)`` (Hang et al.,
    2023, the epsilon-prediction form): the many nearly noise-free timesteps, whose
    small gradients fight the rest, count less; from t where SNR < gamma on it is 1.
    """
    if weighting == "none":
        return torch.ones_like(alphas_cumprod)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"


def _readable_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The training state in ``path``, or in the checkpoint before it if ``path`` cannot be read.

    Raises:
        SynthposError: checkpoints exist but none can be read.
    """
    errors = []
    for candidate in (path, path.with_name(PREVIOUS_CHECKPOINT)):
        if not candidate.is_file():
            continue
        try:
            state = torch.load(candidate, map_location=device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - a truncated file fails in pickle, zipfile or torch
            errors.append(f"{candidate.name}: {type(err).__name__}")
            continue
        if errors:
            print(f"{path} cannot be read ({errors[0]}); resuming from {candidate} instead", file=sys.stderr, flush=True)
        return {**state, "path": candidate}
    if errors:
        raise SynthposError(f"no readable generator checkpoint in {path.parent} ({'; '.join(errors)}); "
                            f"delete {path} and {PREVIOUS_CHECKPOINT} there to train from scratch")
    return None


def save_pipeline(unet: UNet2DModel, scheduler: DDPMScheduler, path: Path, image_size: int | None = None,
                  extra: Callable[[Path], None] | None = None) -> None:
    """Write a DDPMPipeline directory atomically (to a temporary name, then renamed).

    ``image_size``: the data's side when the UNet works on padded images
    (``train_generator.sample_size``); recorded in ``PADDING_FILE`` so sampling pads the same way.
    """
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    unet = copy.deepcopy(unet).float().to(memory_format=torch.contiguous_format).cpu()
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
    if image_size is not None and image_size != unet.config.sample_size:
        (tmp / PADDING_FILE).write_text(json.dumps({"image_size": image_size, "sample_size": unet.config.sample_size}))
    if extra is not None:
        extra(tmp)
    old = path.with_name(path.name + f".old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def train_generator(
    images: np.ndarray,
    config: TrainGeneratorConfig,
    output_dir: Path,
    seed: int = 0,
    device: str | torch.device | None = None,
    show_progress: bool = True,
    labels: np.ndarray | None = None,
    num_classes: int | None = None,
    on_check: Callable[[Path, int], str | None] | None = None,
    check_every_minutes: float | None = None,
    check_every_steps: int | None = None,
    condition: ConditionData | None = None,
    provenance: dict | None = None,
    hyperparameters: dict | None = None,
    stop_at: int | None = None,
) -> Path:
    """Train a DDPM on ``images`` and write it to ``output_dir/model``.

    Resumes from ``output_dir/checkpoint.pt`` when it exists (from ``checkpoint.previous.pt``,
    the one before, if it cannot be read). A checkpoint (model, EMA, optimiser, step, random
    states) is written atomically every ``checkpoint_every`` steps, every
    ``checkpoint_every_minutes``, on ``max_minutes``, and on Ctrl-C or SIGTERM (after the step
    in progress), so a killed run loses at most that cadence and a resumed one equals an
    uninterrupted one.

    Args:
        images: uint8 training images. Shape: (N, H, W, C), H == W.
        config: the stage's settings.
        output_dir: where ``checkpoint.pt``, ``model/`` and ``COMPLETE`` go.
        labels: class labels (N,) in ``[0, num_classes)``; needed when ``config.class_conditional``.
        stop_at: the step a finished training ended at, when only its ``model/`` is written again
            (damaged weights): nothing is trained past it (a time limit or a minutes-cadence stop
            would otherwise train on from the checkpoint), and ``COMPLETE`` is left as it was.
        num_classes: classes of a class-conditional model (default: ``labels.max() + 1``).
        on_check: called at steps ``check_every_steps``, 2x, 3x, ... or every
            ``check_every_minutes`` of training wall time (exactly one of the two), after a
            checkpoint, with the saved model's directory and the step; a returned reason stops
            training there. The step cadence survives a resume: a run resumed at a check's step
            (killed during the check, or before it ran) calls ``on_check`` for that step again
            first, so ``on_check`` should answer a step it has already judged from its record.
        condition: the images' embeddings and how to write the condition folder, when
            ``config.condition`` is set (see :mod:`synthpos.generators.embedding_condition`).
        provenance: recorded in ``COMPLETE`` (default: that of ``config``); never in
            ``train_config.json``, which is compared to adopt a generator.
        hyperparameters: what ``config.loggers`` log as hyper-parameters (default: ``config``); the
            mean loss goes to them every ``checkpoint_every`` steps, as to ``loss.log``.

    Returns:
        The path of the saved DDPMPipeline directory.

    Raises:
        SynthposError: non-square images; a class-conditional model without labels or
            with labels outside ``[0, num_classes)``.
    """
    check_loggers(config.loggers, "train_generator.loggers")  # before anything is written
    if on_check is not None and (check_every_minutes is None) == (check_every_steps is None):
        raise ValueError("on_check needs exactly one of check_every_minutes and check_every_steps")
    n, h, w, c = images.shape
    if h != w:
        raise SynthposError(f"the generator needs square images, got {h}x{w}; set data.image_size")
    size = config.sample_size or fitting_sample_size(h, len(config.unet.block_out_channels))
    border = padding_for(h, size)
    if config.class_conditional:
        labels, num_classes = _check_labels(labels, num_classes, n)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = output_dir / "checkpoint.pt"
    model_dir = output_dir / "model"

    if (config.condition is None) != (condition is None):
        raise SynthposError("train_generator.condition needs the images' embeddings (and only it takes them)")
    torch.manual_seed(seed)
    unet = build_unet(config.unet, size, c, num_classes if config.class_conditional else None,
                      embedding_conditioned=condition is not None).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    unet = unet.to(memory_format=memory_format)
    # The model that trains: the UNet alone, or the UNet and the condition's projection (one EMA, one optimiser).
    model = torch.nn.ModuleDict({"unet": unet})
    if condition is not None:
        model["projection"] = ConditionProjection(condition.embeddings.shape[1], unet.config.block_out_channels[0] * 4).to(device)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    ema = ema_model["unet"]
    scheduler = build_noise_scheduler(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    step = 0
    rng = np.random.default_rng(seed)
    state = _readable_checkpoint(ckpt_path, device)
    if state is not None:
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        if condition is not None:
            model["projection"].load_state_dict(state["projection"])
            ema_model["projection"].load_state_dict(state["projection_ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resuming generator training from {state['path']} (step {step})", file=sys.stderr, flush=True)
    (output_dir / "train_config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))

    loggers = MetricLoggers(config.loggers, output_dir / "logs", output_dir.name,
                            hyperparameters or {"train_generator": config.model_dump(mode="json")})
    data = torch.from_numpy(images)  # stays uint8 in memory; converted per batch
    targets = torch.from_numpy(labels) if config.class_conditional else None
    embeddings = None if condition is None else torch.from_numpy(condition.embeddings).float()
    alphas = scheduler.alphas_cumprod.to(device)
    timestep_weights = loss_weights(alphas, config.loss_weighting, config.min_snr_gamma)
    start = time.monotonic()

    def save_model() -> None:
        extra = None if condition is None else functools.partial(condition.write, ema_model["projection"])
        save_pipeline(ema, scheduler, model_dir, image_size=h, extra=extra)

    def checkpoint() -> None:
        nonlocal last_save, saved_step
        # The new state is written in full first; only then does the old one become the previous
        # checkpoint, so checkpoint.pt is missing for no more than the moment between two renames.
        with atomic_path(ckpt_path, fsync=True) as tmp:
            torch.save({
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "numpy_rng": rng,
                "torch_rng": torch.get_rng_state(),
                **({} if condition is None else {"projection": model["projection"].state_dict(),
                                                 "projection_ema": ema_model["projection"].state_dict()}),
            }, tmp)
            if ckpt_path.is_file():
                os.replace(ckpt_path, ckpt_path.with_name(PREVIOUS_CHECKPOINT))
        save_model()
        last_save, saved_step = time.monotonic(), step

    def run_check() -> str | None:
        # The check leaves torch's random state as it found it, so training after a check is the
        # same whether the check ran in this process or (answered from its record) before a resume.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return on_check(model_dir, step)

    def check_due() -> bool:
        if check_every_steps is not None:  # from the step alone, so a resume keeps the schedule
            return step % check_every_steps == 0
        return time.monotonic() - last_check > 60 * check_every_minutes

    unet.train()
    losses: list[float] = []
    last_check, stopped = time.monotonic(), None
    last_save, saved_step = time.monotonic(), None
    if on_check is not None and check_every_steps is not None and 0 < step <= config.max_steps and check_due():
        # Resumed at a check's step: the check may not have run (or its verdict not been acted on)
        # before the kill. The model folder is written again from the checkpoint's EMA, since a kill
        # between checkpoint.pt and the folder's rename leaves an older one.
        save_model()
        stopped = run_check() or None
        last_check = time.monotonic()
    every_s = None if config.checkpoint_every_minutes is None else 60 * config.checkpoint_every_minutes
    with (progress_bar("train generator", total=config.max_steps, completed=step, enabled=show_progress) as bar,
          stop_requests(sigint=True) as stop):
        try:
            last_step = config.max_steps if stop_at is None else min(config.max_steps, stop_at)
            while step < last_step and not stopped:
                idx = rng.integers(0, n, size=config.batch_size)
                target_idx = idx
                if condition is not None and config.condition.neighbour_prob > 0:
                    # IC-GAN's neighbourhood: the image to denoise is one of the anchor's nearest neighbours.
                    pick = condition.neighbours[idx, rng.integers(0, condition.neighbours.shape[1], size=len(idx))]
                    target_idx = np.where(rng.random(len(idx)) < config.condition.neighbour_prob, pick, idx)
                x0 = pad_to_model(images_to_model_range(data[target_idx]), border).to(device)
                if config.hflip:
                    flip = torch.rand(x0.shape[0], device=device) < 0.5
                    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
                x0 = x0.contiguous(memory_format=memory_format)
                noise = torch.randn_like(x0)
                t = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), device=device)
                a = alphas[t].view(-1, 1, 1, 1)
                xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
                lr = config.learning_rate * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.learning_rate
                for group in optimizer.param_groups:
                    group["lr"] = lr
                class_labels = None
                if targets is not None:
                    # The null class (the last id) with probability label_dropout: the
                    # unconditional prediction that classifier-free guidance needs.
                    class_labels = targets[idx].to(device)
                    drop = torch.rand(class_labels.shape[0], device=device) < config.label_dropout
                    class_labels = torch.where(drop, torch.full_like(class_labels, num_classes), class_labels)
                if embeddings is not None:
                    # The zero embedding with probability `dropout`: the unconditional prediction of guidance.
                    cond = embeddings[idx].to(device)
                    keep = (torch.rand(cond.shape[0], device=device) >= config.condition.dropout).float()
                    class_labels = model["projection"](cond * keep[:, None])
                with autocast(device, config.precision):
                    pred = unet(xt, t, class_labels=class_labels).sample
                per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
                loss = (per_sample * timestep_weights[t]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                # Short CPU runs cannot wait out a 0.9999 EMA; the warm-up (1+s)/(10+s)
                # lets the average follow the model early and reach `ema_decay` later.
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                _ema_update(ema_model, model, decay)
                step += 1
                losses.append(loss.item())
                bar.update(1, info=f"loss {np.mean(losses[-100:]):.4f}")
                out_of_time = config.max_minutes is not None and time.monotonic() - start > 60 * config.max_minutes
                if step % config.checkpoint_every == 0 or step == config.max_steps or out_of_time:
                    checkpoint()
                    with open(output_dir / "loss.log", "a") as fh:
                        fh.write(f"{step}\t{np.mean(losses[-config.checkpoint_every:]):.5f}\n")
                    loggers.log({"train/loss": float(np.mean(losses[-config.checkpoint_every:]))}, step)
                elif stop or (every_s is not None and time.monotonic() - last_save >= every_s):
                    checkpoint()
                if out_of_time:
                    break
                # A stop request skips the check: the resumed run makes it first (see above).
                if on_check is not None and not stop and check_due():
                    if saved_step != step:
                        checkpoint()
                    reason = run_check()
                    last_check = time.monotonic()  # the check's own time is not training time
                    if reason:
                        stopped = reason
                        break
                # Ctrl-C and SIGTERM stop here, between steps: the checkpoint holds a whole step.
                stop.raise_if_requested(f"generator checkpoint {ckpt_path} at step {step}")
        except KeyboardInterrupt:
            if not stop:  # raised outside the loop's own check (e.g. in the first step's set-up)
                checkpoint()
            loggers.finish("failed")
            raise
    loggers.finish()
    if not model_dir.exists() or (stop_at is not None and saved_step != step):  # a repair ends off a checkpoint step
        checkpoint()
    if stop_at is not None and step == stop_at and (output_dir / "COMPLETE").is_file():
        return model_dir  # its weights written again; the record of how training ended stays
    (output_dir / "COMPLETE").write_text(json.dumps({"step": step, "stopped_by_check": stopped,
                                                     "provenance": provenance or make_provenance(config)}))
    return model_dir


def _check_labels(labels: np.ndarray | None, num_classes: int | None, n: int) -> tuple[np.ndarray, int]:
    """Labels and class count of a class-conditional model, checked."""
    if labels is None:
        raise SynthposError(
            "train_generator.class_conditional is true but the dataset has no class labels; "
            "use a labelled dataset or set train_generator.class_conditional=false"
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise SynthposError(f"need one class label per image: {labels.shape[0] if labels.ndim else 0} labels for {n} images")
    if num_classes is None or num_classes < 1:
        num_classes = int(labels.max(initial=0)) + 1
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise SynthposError(
            f"class labels must lie in 0..{num_classes - 1} for a class-conditional generator, got "
            f"{labels.min()}..{labels.max()}; the dataset has unlabelled (-1) or out-of-range labels"
        )
    return labels, num_classes


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())



def train_generator_stage(config: RunConfig, show_progress: bool = True, stop_at: int | None = None) -> Path:
    """Stage 1 from a run config: the run's training split -> ``<run_dir>/generator``
    (``stop_at``: see :func:`train_generator`)."""
    from synthpos.data import load_dataset

    check_loggers(config.train_generator.loggers, "train_generator.loggers")
    dataset = load_dataset(config.data, "train")
    rule, on_check = config.train_generator.check, None
    if rule is not None:
        from synthpos.evaluation.generator_check import GeneratorCheck, should_stop

        check = GeneratorCheck(config, config.generator_dir / "checks.jsonl", show_progress)

        def on_check(model_dir: Path, step: int) -> str | None:
            history = check.history()
            done = [i for i, c in enumerate(history) if c["step"] == step]
            if done:  # a resume at a step already checked: the recorded check, not a second one
                return should_stop(history[:done[-1] + 1], rule)
            result = check(model_dir, step)
            print(f"check at step {step}: fidelity {100 * result['fidelity']:.1f}%, pixel RMS to anchor "
                  f"{result['diversity']['pixel']['candidate_to_anchor']:.3f} ({result['check_s']:.0f} s)", flush=True)
            return should_stop(check.history(), rule)

    condition = None
    spec = config.train_generator.condition
    if spec is not None:
        # Labels never reach the condition: it is the encoder's view of the image alone.
        condition = load_condition_data(
            config.condition_encoder, dataset.images, spec.crop_size or dataset.images.shape[1], dataset.mean, dataset.std,
            spec.neighbours if spec.neighbour_prob > 0 else None, config.generator_dir / "embeddings",
        )
    provenance = make_provenance(config)
    return train_generator(
        dataset.images, config.train_generator, config.generator_dir, config.generation_seed, show_progress=show_progress,
        labels=dataset.labels, num_classes=dataset.num_classes or None,
        on_check=on_check, check_every_minutes=None if rule is None else rule.every_minutes,
        check_every_steps=None if rule is None else rule.every_steps, condition=condition,
        provenance=provenance, hyperparameters={**config.model_dump(mode="json"), "provenance": provenance},
        stop_at=stop_at,
    )
