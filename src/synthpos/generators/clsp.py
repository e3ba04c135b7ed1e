"""CLSP's synthetic positives: sampling with bottleneck feature interpolation.

Zeng et al. (ECCV 2024). At every sampler step the anchor is re-noised to the same
timestep with fresh noise; the UNet's encoder and middle block run on both the
trajectory ``x_t`` and the noised anchor; the middle block's output becomes
``w * h + (1 - w) * h_anchor``; the decoder runs on that with the trajectory's
own skip connections; then the sampler's update is taken. ``w = 1`` is plain
sampling, ``w = 0`` feeds the anchor's bottleneck at every step.

The paper's sampler is DDIM on the official steps: diffusers' ``DDIMScheduler`` with
``timestep_spacing="trailing"`` and ``set_alpha_to_one=True`` visits 999, 989, ..., 9
and then jumps to x0 for 100 steps of a 1000-step model. DPM-Solver++ takes the same
interpolated prediction in far fewer steps (see :mod:`synthpos.generators.samplers`).

Class-conditional UNets (``num_class_embeds`` = classes + 1, the last id the null class)
use classifier-free guidance: ``eps = eps_null + s * (eps_cond - eps_null)``, each of the
two predictions interpolated at the bottleneck with the anchor under the same label.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # diffusers is imported where it is used: reading a config imports this module
    from diffusers import SchedulerMixin, UNet2DModel

from synthpos.generators.samplers import ddim_scheduler, noise_to_timestep, sampler_step
from synthpos.precision import autocast

__all__ = [
    "SHARED_ANCHOR_NOISE",
    "clsp_interpolation_sample",
    "ddim_scheduler",
    "derive_seed",
    "embedding_conditioned",
    "first_step",
    "guided_eps",
    "null_label",
    "num_classes",
    "unet_decode",
    "unet_encode",
]

#: The candidate index whose seed draws an anchor's shared re-noising (``share_anchor_noise``):
#: no real candidate has it, so the shared stream is independent of every candidate's.
SHARED_ANCHOR_NOISE = 2**32


def derive_seed(seed: int, anchor: int, candidate: int) -> int:
    """A 63-bit seed from (global seed, anchor index, candidate index).

    Every random draw of one candidate comes from a generator seeded with this, so a
    candidate does not depend on which batch, shard, process or machine made it.
    """
    state = np.random.SeedSequence([seed, anchor, candidate]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def num_classes(unet: UNet2DModel) -> int | None:
    """Classes of a class-conditional UNet (its class embeddings less the null class), else None."""
    embeds = unet.config.num_class_embeds
    return None if unet.class_embedding is None or embeds is None else int(embeds) - 1


def null_label(unet: UNet2DModel) -> int:
    """The null-class id of a class-conditional UNet: its last class embedding."""
    classes = num_classes(unet)
    if classes is None:
        raise ValueError("this UNet is not class-conditional (no num_class_embeds)")
    return classes


def guided_eps(eps_null: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``eps_null + scale * (eps_cond - eps_null)``.

    ``scale = 1`` is the conditional prediction, ``0`` the unconditional one. (The official
    CLSP code writes ``(1 + w) * eps_cond - w * eps_null``: ``scale = 1 + w``.)
    """
    return eps_null + scale * (eps_cond - eps_null)


def check_unet(unet: UNet2DModel) -> None:
    """Raise ValueError when bottleneck interpolation cannot split ``unet`` at its middle block."""
    if any(hasattr(block, "skip_conv") for block in (*unet.down_blocks, *unet.up_blocks)):
        raise ValueError("bottleneck interpolation needs a UNet without skip-sample blocks (no Skip*Block2D)")
    if unet.config.time_embedding_type != "positional" or unet.config.center_input_sample:
        raise ValueError("bottleneck interpolation supports positional time embeddings without center_input_sample")
    if unet.class_embedding is not None and unet.config.class_embed_type not in (None, "identity"):
        raise ValueError("conditional sampling supports num_class_embeds (class labels) or class_embed_type='identity' "
                         "(an embedding condition) only")


def embedding_conditioned(unet: UNet2DModel) -> bool:
    """Whether ``unet`` takes a condition vector added to its time embedding (``class_embed_type="identity"``)."""
    return unet.config.class_embed_type == "identity"


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


def first_step(num_steps: int, strength: float) -> int:
    """Index of the first scheduler timestep a trajectory of ``strength`` visits (diffusers' img2img rule).

    Raises:
        ValueError: ``strength`` outside (0, 1], or so small that no step is left.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    steps = min(int(num_steps * strength), num_steps)
    if steps < 1:
        raise ValueError(f"strength {strength} leaves no step of {num_steps}: needs strength >= 1/{num_steps}")
    return num_steps - steps


def _randn_per_sample(shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    # One generator per sample: the draw for a sample is the same in any batch.
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


Encode = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]]
Decode = Callable[..., torch.Tensor]


@functools.cache
def _compiled_split() -> tuple[Encode, Decode]:
    # Compiled once per process; dynamo guards on the UNet passed in, so one compiled
    # function serves every UNet (and recompiles only for a new one or a new shape class).
    return torch.compile(unet_encode, dynamic=True), torch.compile(unet_decode, dynamic=True)


def _unet_split(compiled: bool) -> tuple[Encode, Decode]:
    return _compiled_split() if compiled else (unet_encode, unet_decode)


def _interpolated_eps(
    unet: UNet2DModel,
    encode: Encode,
    decode: Decode,
    x: torch.Tensor,
    noisy_anchor: torch.Tensor,
    anchor_of_row: torch.Tensor,
    t: torch.Tensor,
    weight: float,
    label_passes: list[tuple[torch.Tensor, torch.Tensor] | None],
    memory_format: torch.memory_format,
) -> list[torch.Tensor]:
    """The bottleneck-interpolated noise prediction of ``x``, once per label pass.

    One encoder call over every pass's trajectory rows and noised-anchor rows, one
    decoder call over every pass's trajectory rows.

    Args:
        x: the trajectories. Shape: (B, C, H, W).
        noisy_anchor: the noised anchors. Shape: (Na, C, H, W); row ``anchor_of_row[i]``
            is trajectory i's.
        label_passes: per pass, ``(trajectory labels (B,), anchor labels (Na,))``, or
            ``[None]`` for an unconditional UNet.

    Returns:
        One float32 prediction (B, C, H, W) per pass.
    """
    b, passes = x.shape[0], len(label_passes)
    use_anchor = weight != 1.0  # w = 1 ignores the anchor: skip its encoder rows
    rows = [x] * passes + ([noisy_anchor] * passes if use_anchor else [])
    inputs = torch.cat(rows).contiguous(memory_format=memory_format)
    labels = None
    if label_passes[0] is not None:
        labels = torch.cat([p[0] for p in label_passes] + ([p[1] for p in label_passes] if use_anchor else []))
    h_all, skips, emb = encode(unet, inputs, t, labels)
    n_traj = passes * b
    h = h_all[:n_traj]
    if use_anchor:
        na = noisy_anchor.shape[0]
        h_anchor = torch.cat([h_all[n_traj + p * na: n_traj + (p + 1) * na][anchor_of_row] for p in range(passes)])
        h = weight * h + (1.0 - weight) * h_anchor
    eps = decode(unet, h, tuple(s[:n_traj] for s in skips), emb[:n_traj]).float()
    return list(eps.split(b))


@torch.no_grad()
def clsp_interpolation_sample(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    anchors: torch.Tensor,
    generators: Sequence[torch.Generator],
    num_steps: int = 100,
    eta: float = 0.1,
    weight: float = 0.1,
    precision: str = "fp32",
    class_labels: torch.Tensor | None = None,
    *,
    anchor_index: torch.Tensor | None = None,
    anchor_generators: Sequence[torch.Generator] | None = None,
    guidance_scale: float = 1.0,
    compiled: bool = False,
    strength: float = 1.0,
    null_condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Synthetic positives of ``anchors`` by DDIM or DPM-Solver++ with bottleneck interpolation.

    Row ``i`` of the output is a trajectory toward anchor ``anchor_index[i]`` (default:
    row i of ``anchors``), so the K candidates of one anchor share one anchor row.

    Args:
        unet: an epsilon-prediction UNet2DModel, unconditional or with ``num_class_embeds``.
        scheduler: a DDIMScheduler (:func:`ddim_scheduler`) or a DPMSolverMultistepScheduler
            (:func:`synthpos.generators.samplers.dpmsolver_scheduler`); clipping of the
            predicted x0 at every step is the scheduler's setting (the paper does not clip).
        anchors: the images to stay close to, in [-1, 1]. Shape: (A, C, H, W).
        generators: one CPU ``torch.Generator`` per output row. A row draws, in order: x_T;
            then per step its anchor re-noising (unless ``anchor_generators``) and, for DDIM,
            the variance noise.
        num_steps: sampler steps.
        eta: DDIM stochasticity (0 = deterministic); DPM-Solver++ ignores it.
        weight: w in ``w * h + (1 - w) * h_anchor``.
        class_labels: the anchors' labels (A,), required by a class-conditional UNet; a
            trajectory and its anchor are both predicted under the anchor's label. For an
            embedding-conditioned UNet (:func:`embedding_conditioned`), the anchors' projected
            embeddings (A, E) instead, and ``null_condition`` (1, E) the unconditional one.
        anchor_index: which anchor each output row follows. Shape: (B,); default ``arange(A)``.
        anchor_generators: one generator per anchor (A): each step re-noises an anchor once
            from it and all rows of that anchor share it (encoder rows B + A instead of 2B).
            Default None: fresh noise per row (the paper).
        guidance_scale: classifier-free guidance s (class-conditional UNets): 1 uses the
            conditional prediction alone, 0 the null-class one; otherwise both are computed.
        compiled: run the UNet's encoder and decoder through ``torch.compile``.
        strength: diffusers' img2img meaning: ``1`` starts from pure noise (the paper);
            below 1 the trajectory starts from its anchor noised (with the row's x_T draw)
            to the scheduler's timestep ``num_steps - int(num_steps * strength)`` and takes
            the remaining ``int(num_steps * strength)`` steps (:func:`first_step`).

    Returns:
        Samples in [-1, 1] (clipped at the end only). Shape: (B, C, H, W).
    """
    check_unet(unet)
    device = anchors.device
    index = torch.arange(anchors.shape[0]) if anchor_index is None else anchor_index.long().cpu()
    batch = len(index)
    if len(generators) != batch:
        raise ValueError(f"need one generator per anchor row: {len(generators)} for {batch} rows")
    if anchor_generators is not None and len(anchor_generators) != anchors.shape[0]:
        raise ValueError(f"need one anchor generator per anchor: {len(anchor_generators)} for {anchors.shape[0]} anchors")
    index_dev = index.to(device)
    shared = anchor_generators is not None
    # Rows of the noised anchors: one per anchor when shared, else one per trajectory.
    anchor_of_row = index_dev if shared else torch.arange(batch, device=device)
    row_anchors = anchors if shared else anchors[index_dev]
    label_passes: list[tuple[torch.Tensor, torch.Tensor] | None] = [None]
    if num_classes(unet) is not None or embedding_conditioned(unet):
        if class_labels is None:
            raise ValueError("this UNet is embedding-conditioned: pass the projected embeddings as class_labels"
                             if embedding_conditioned(unet) else "this UNet is class-conditional: pass class_labels")
        if embedding_conditioned(unet):
            if null_condition is None:
                raise ValueError("an embedding-conditioned UNet needs null_condition for guidance")
            labels = class_labels.to(device).float()
            null = null_condition.to(device).float().expand_as(labels)
        else:
            labels = class_labels.to(device).long()
            null = torch.full_like(labels, null_label(unet))
        # s = 1 and s = 0 need one prediction only; otherwise the null pass comes first.
        label_sets = {1.0: [labels], 0.0: [null]}.get(float(guidance_scale), [null, labels])
        label_passes = [(y[index_dev], y if shared else y[index_dev]) for y in label_sets]
    encode, decode = _unet_split(compiled)
    from diffusers import DDIMScheduler

    is_ddim = isinstance(scheduler, DDIMScheduler)
    shape = anchors.shape[1:]
    channels_last = anchors.shape[1] > 1 and anchors.is_contiguous(memory_format=torch.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    scheduler.set_timesteps(num_steps)
    start = first_step(num_steps, strength)
    timesteps = scheduler.timesteps[start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)  # multistep solvers count their steps from here
    x = _randn_per_sample(shape, generators, device)
    if start == 0:
        x = x * scheduler.init_noise_sigma
    else:
        # img2img: the anchor itself, noised to the first visited timestep with this row's x_T draw.
        x = noise_to_timestep(scheduler, anchors[index_dev], x, timesteps[0].to(device))
    for t in timesteps:
        t_dev = t.to(device)
        anchor_noise = _randn_per_sample(shape, anchor_generators if shared else generators, device)
        noisy_anchor = noise_to_timestep(scheduler, row_anchors, anchor_noise, t_dev)
        with autocast(device, precision):
            eps_passes = _interpolated_eps(
                unet, encode, decode, x, noisy_anchor, anchor_of_row, t_dev, weight, label_passes, memory_format
            )
        eps = guided_eps(eps_passes[0], eps_passes[1], guidance_scale) if len(eps_passes) == 2 else eps_passes[0]
        variance_noise = _randn_per_sample(shape, generators, device) if is_ddim else None
        x = sampler_step(scheduler, eps, t, x, eta, variance_noise)
    return x.clamp(-1.0, 1.0)
