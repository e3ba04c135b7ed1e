"""``generate.strength``: start part-way from the noised anchor (diffusers' img2img meaning).

The references are written by hand from ``alphas_cumprod`` (no diffusers scheduler): DDIM
(Song et al., eq. 12) on the official CLSP timesteps and DPM-Solver++(2M) on trailing
timesteps, each started at step ``num_steps - int(num_steps * strength)`` from
``sqrt(a_t) anchor + sqrt(1 - a_t) x_T``; the bottleneck interpolation comes from forward
hooks on the plain ``unet(x, t)``, unconditional and class-conditional with guidance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthpos.config import GenerateConfig, UNetConfig, load_config
from synthpos.errors import SynthposError
from synthpos.generators.clsp import clsp_interpolation_sample, derive_seed, first_step, guided_eps
from synthpos.generators.diffusion import build_unet
from synthpos.generators.samplers import build_sampler


def _gens(keys) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(0, a, c)) for a, c in keys]


def _draw(generators, shape) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def _eps(unet, x, t, noisy_anchor, w, labels=None) -> torch.Tensor:
    """``unet(x, t)`` with its middle block's output mixed ``w h + (1 - w) h_anchor`` by hooks."""
    if w == 1.0:
        return unet(x, t, class_labels=labels).sample
    captured = {}
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: captured.setdefault("h", out.detach().clone()))
    try:
        unet(noisy_anchor, t, class_labels=labels)
    finally:
        handle.remove()
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: w * out + (1.0 - w) * captured["h"])
    try:
        return unet(x, t, class_labels=labels).sample
    finally:
        handle.remove()


def _guided(unet, x, t, noisy_anchor, w, labels, scale, null) -> torch.Tensor:
    if labels is None:
        return _eps(unet, x, t, noisy_anchor, w)
    cond = _eps(unet, x, t, noisy_anchor, w, labels)
    if scale == 1.0:
        return cond
    return guided_eps(_eps(unet, x, t, noisy_anchor, w, torch.full_like(labels, null)), cond, scale)


def _official_timesteps(num_train: int, num_steps: int) -> list[int]:
    return np.linspace(-1, num_train - 1, num_steps + 1).astype(int)[::-1].tolist()


def _trailing(num_train: int, n: int) -> list[int]:
    return (np.arange(num_train, 0, -num_train / n).round().astype(int) - 1).tolist()


@torch.no_grad()
def _handwritten_ddim(unet, alphas, anchors, keys, num_steps, eta, w, start, labels=None, scale=1.0, null=None):
    steps = _official_timesteps(len(alphas), num_steps)[start:]
    gens, shape, a = _gens(keys), anchors.shape[1:], alphas.double()
    x = _draw(gens, shape)
    if start:
        x = a[steps[0]].sqrt() * anchors + (1 - a[steps[0]]).sqrt() * x
    x = x.double()
    for t, prev in zip(steps[:-1], steps[1:]):
        noisy_anchor = (a[t].sqrt() * anchors + (1 - a[t]).sqrt() * _draw(gens, shape)).float()
        z = _draw(gens, shape).double()
        eps = _guided(unet, x.float(), torch.tensor(t), noisy_anchor, w, labels, scale, null).double()
        a_prev = a[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x - (1 - a[t]).sqrt() * eps) / a[t].sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a[t])).sqrt() * (1 - a[t] / a_prev).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
    return x.float().clamp(-1, 1)


@torch.no_grad()
def _handwritten_dpm(unet, alphas, anchors, keys, num_steps, w, start, labels=None, scale=1.0, null=None):
    """DPM-Solver++(2M), first order on the first visited step and on the last."""
    steps = _trailing(len(alphas), num_steps)[start:]
    gens, shape, a = _gens(keys), anchors.shape[1:], alphas.double()
    x = _draw(gens, shape)
    if start:
        x = a[steps[0]].sqrt() * anchors + (1 - a[steps[0]]).sqrt() * x
    x = x.double()
    prev_x0 = prev_h = None
    for i, t in enumerate(steps):
        noisy_anchor = (a[t].sqrt() * anchors + (1 - a[t]).sqrt() * _draw(gens, shape)).float()
        alpha_s, sigma_s = a[t].sqrt(), (1 - a[t]).sqrt()
        eps = _guided(unet, x.float(), torch.tensor(t), noisy_anchor, w, labels, scale, null).double()
        x0 = (x - sigma_s * eps) / alpha_s
        if i == len(steps) - 1:
            return x0.float().clamp(-1, 1)
        nxt = steps[i + 1]
        alpha_t, sigma_t = a[nxt].sqrt(), (1 - a[nxt]).sqrt()
        h = torch.log(alpha_t / sigma_t) - torch.log(alpha_s / sigma_s)
        if prev_x0 is None:
            d = x0
        else:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0
        x = (sigma_t / sigma_s) * x - alpha_t * (torch.exp(-h) - 1) * d
        prev_x0, prev_h = x0, h
    raise AssertionError("unreachable")


def _assert_informative(sample: torch.Tensor) -> None:
    interior = (sample.abs() < 0.999).float().mean().item()
    assert interior > 0.2, f"only {interior:.0%} of the values are inside (-1, 1)"


KEYS = [(0, 0), (0, 1), (2, 0)]


def _ours(unet, noise_scheduler, anchors, sampler, num_steps, w, strength, eta=0.1, labels=None, scale=1.0):
    return clsp_interpolation_sample(
        unet, build_sampler(sampler, noise_scheduler), anchors, _gens(KEYS), num_steps=num_steps, eta=eta, weight=w,
        strength=strength, class_labels=labels, guidance_scale=scale,
    )


@pytest.mark.parametrize("strength", [1.0, 0.6, 0.3])
@pytest.mark.parametrize("w", [1.0, 0.1])
def test_ddim_strength_matches_handwritten_loop(tiny_unet, scheduler_factory, anchors_model_range, strength, w) -> None:
    noise_scheduler = scheduler_factory(1000, beta_end=0.002)
    anchors = anchors_model_range[[a for a, _ in KEYS]]
    ours = _ours(tiny_unet, noise_scheduler, anchors, "ddim", 10, w, strength)
    ref = _handwritten_ddim(tiny_unet, noise_scheduler.alphas_cumprod, anchors, KEYS, 10, 0.1, w, first_step(10, strength))
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("w", [1.0, 0.1])
def test_dpmsolver_strength_matches_handwritten_loop(tiny_unet, scheduler_factory, anchors_model_range, strength, w) -> None:
    noise_scheduler = scheduler_factory(1000, beta_end=0.002)
    anchors = anchors_model_range[[a for a, _ in KEYS]]
    ours = _ours(tiny_unet, noise_scheduler, anchors, "dpmsolver++", 10, w, strength)
    ref = _handwritten_dpm(tiny_unet, noise_scheduler.alphas_cumprod, anchors, KEYS, 10, w, first_step(10, strength))
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
@pytest.mark.parametrize("scale", [1.0, 2.8])
def test_strength_with_a_class_conditional_unet(scheduler_factory, anchors_model_range, sampler, scale) -> None:
    torch.manual_seed(0)
    cfg = UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0, norm_num_groups=4)
    unet = build_unet(cfg, sample_size=8, channels=1, num_classes=3).eval().requires_grad_(False)
    unet.class_embedding.weight.mul_(20.0)  # so that labels clearly matter
    noise_scheduler = scheduler_factory(1000, beta_end=0.002)
    anchors = anchors_model_range[[a for a, _ in KEYS]]
    labels = torch.tensor([2, 2, 0])
    ours = _ours(unet, noise_scheduler, anchors, sampler, 10, 0.1, 0.5, labels=labels, scale=scale)
    start = first_step(10, 0.5)
    if sampler == "ddim":
        ref = _handwritten_ddim(unet, noise_scheduler.alphas_cumprod, anchors, KEYS, 10, 0.1, 0.1, start, labels, scale, 3)
    else:
        ref = _handwritten_dpm(unet, noise_scheduler.alphas_cumprod, anchors, KEYS, 10, 0.1, start, labels, scale, 3)
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


@torch.no_grad()
def test_low_strength_stays_closer_to_the_anchor(tiny_unet, scheduler_factory, anchors_model_range) -> None:
    noise_scheduler = scheduler_factory(1000, beta_end=0.02)
    anchors = anchors_model_range[[a for a, _ in KEYS]]
    dist = {s: (_ours(tiny_unet, noise_scheduler, anchors, "ddim", 10, 1.0, s) - anchors).pow(2).mean().item()
            for s in (1.0, 0.1)}
    assert dist[0.1] < 0.25 * dist[1.0]


def test_first_step_follows_diffusers_img2img() -> None:
    # diffusers: init_timestep = min(int(n * strength), n); t_start = n - init_timestep.
    assert [first_step(10, s) for s in (1.0, 0.95, 0.5, 0.3, 0.1)] == [0, 1, 5, 7, 9]
    with pytest.raises(ValueError, match="no step"):
        first_step(10, 0.05)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        first_step(10, 1.5)


def test_strength_that_leaves_no_step_is_a_config_error() -> None:
    with pytest.raises(SynthposError, match="strength"):
        load_config(None, ["generate.num_steps=10", "generate.strength=0.05"])
    with pytest.raises(SynthposError, match="strength"):
        load_config(None, ["generate.strength=0"])
    assert GenerateConfig(num_steps=10, strength=0.1).strength == 0.1
