"""CLSP's synthetic positives: DDIM sampling with bottleneck feature interpolation.

Zeng et al. (ECCV 2024). At every DDIM step the anchor is re-noised to the same
timestep with fresh noise; the UNet's encoder and middle block run on both the
trajectory ``x_t`` and the noised anchor; the middle block's output becomes
``w * h + (1 - w) * h_anchor``; the decoder runs on that with the trajectory's
own skip connections; then the DDIM update is taken. ``w = 1`` is plain DDIM,
``w = 0`` feeds the anchor's bottleneck at every step.

The DDIM steps are the official ones: diffusers' ``DDIMScheduler`` with
``timestep_spacing="trailing"`` and ``set_alpha_to_one=True`` visits
999, 989, ..., 9 and then jumps to x0 for 100 steps of a 1000-step model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, SchedulerMixin, UNet2DModel

from synthpos.precision import autocast


def derive_seed(seed: int, anchor: int, candidate: int) -> int:
    """A 63-bit seed from (global seed, anchor index, candidate index).

    Every random draw of one candidate comes from a generator seeded with this, so a
    candidate does not depend on which batch, shard, process or machine made it.
    """
    state = np.random.SeedSequence([seed, anchor, candidate]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def ddim_scheduler(noise_scheduler: SchedulerMixin, clip_x0: bool = False) -> DDIMScheduler:
    """CLSP's DDIM from the generator's training schedule (same betas)."""
    return DDIMScheduler.from_config(
        noise_scheduler.config,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=clip_x0,
        clip_sample_range=1.0,
        prediction_type="epsilon",
    )


def _check_unet(unet: UNet2DModel) -> None:
    if any(hasattr(block, "skip_conv") for block in (*unet.down_blocks, *unet.up_blocks)):
        raise ValueError("bottleneck interpolation needs a UNet without skip-sample blocks (no Skip*Block2D)")
    if unet.config.time_embedding_type != "positional" or unet.config.center_input_sample:
        raise ValueError("bottleneck interpolation supports positional time embeddings without center_input_sample")


def unet_encode(
    unet: UNet2DModel, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """UNet2DModel's forward up to the middle block's output.

    Returns:
        (h, skips, emb): the bottleneck (B, C', H', W'), the skip activations in
        the order the decoder consumes them from the end, and the time embedding (B, E).
    """
    timesteps = timestep.expand(sample.shape[0]) if timestep.dim() else timestep.repeat(sample.shape[0])
    t_emb = unet.time_proj(timesteps).to(dtype=unet.dtype)
    emb = unet.time_embedding(t_emb)
    if unet.class_embedding is not None:
        if class_labels is None:
            raise ValueError("this UNet is class-conditional: pass class_labels")
        emb = emb + unet.class_embedding(class_labels).to(dtype=unet.dtype)
    h = unet.conv_in(sample)
    skips: tuple[torch.Tensor, ...] = (h,)
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += res
    if unet.mid_block is not None:
        h = unet.mid_block(h, emb)
    return h, skips, emb


def unet_decode(unet: UNet2DModel, h: torch.Tensor, skips: tuple[torch.Tensor, ...], emb: torch.Tensor) -> torch.Tensor:
    """UNet2DModel's forward from the middle block's output to the prediction."""
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
        h = block(h, res, emb)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def _randn_per_sample(shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    # One generator per sample: the draw for a sample is the same in any batch.
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


@torch.no_grad()
def clsp_interpolation_sample(
    unet: UNet2DModel,
    scheduler: DDIMScheduler,
    anchors: torch.Tensor,
    generators: Sequence[torch.Generator],
    num_steps: int = 100,
    eta: float = 0.1,
    weight: float = 0.1,
    precision: str = "fp32",
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Synthetic positives of ``anchors`` by DDIM with bottleneck interpolation.

    Args:
        unet: an epsilon-prediction UNet2DModel.
        scheduler: a DDIMScheduler (see :func:`ddim_scheduler`); ``clip_sample`` on it
            clips the predicted x0 at every step (the paper does not).
        anchors: the images to stay close to, in [-1, 1]. Shape: (B, C, H, W).
        generators: one CPU ``torch.Generator`` per row; all noise of a row (x_T,
            the anchor's re-noising, the DDIM variance) is drawn from its generator.
        num_steps: DDIM steps.
        eta: DDIM stochasticity (0 = deterministic).
        weight: w in ``w * h + (1 - w) * h_anchor``.

    Returns:
        Samples in [-1, 1] (clipped at the end only). Shape: (B, C, H, W).
    """
    _check_unet(unet)
    if len(generators) != anchors.shape[0]:
        raise ValueError(f"need one generator per anchor row: {len(generators)} for {anchors.shape[0]} rows")
    device = anchors.device
    shape = anchors.shape[1:]
    scheduler.set_timesteps(num_steps)
    memory_format = torch.channels_last if anchors.is_contiguous(memory_format=torch.channels_last) and anchors.shape[1] > 1 else torch.contiguous_format
    x = _randn_per_sample(shape, generators, device) * scheduler.init_noise_sigma
    batch = anchors.shape[0]
    for t in scheduler.timesteps:
        t_dev = t.to(device)
        anchor_noise = _randn_per_sample(shape, generators, device)
        noisy_anchor = scheduler.add_noise(anchors, anchor_noise, t_dev.expand(batch))
        both = torch.cat([x, noisy_anchor]).contiguous(memory_format=memory_format)
        labels = None if class_labels is None else torch.cat([class_labels, class_labels])
        with autocast(device, precision):
            h_both, skips, emb = unet_encode(unet, both, t_dev, labels)
            h = weight * h_both[:batch] + (1.0 - weight) * h_both[batch:]
            eps = unet_decode(unet, h, tuple(s[:batch] for s in skips), emb[:batch])
        variance_noise = _randn_per_sample(shape, generators, device)
        x = scheduler.step(eps.float(), t, x, eta=eta, variance_noise=variance_noise).prev_sample
    return x.clamp(-1.0, 1.0)
