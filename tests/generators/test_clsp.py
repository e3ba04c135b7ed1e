"""CLSP sampling: the UNet split, DDIM equivalence at w=1, the anchor bottleneck at w<1.

Every reference here is written independently of ``synthpos.generators.clsp``'s
internals: plain ``unet(x, t).sample`` calls, diffusers' own DDIMScheduler, forward
hooks on ``unet.mid_block``, and a hand-written DDIM update from ``alphas_cumprod``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from synthpos.config import TrainGeneratorConfig, UNetConfig
from synthpos.generators.clsp import (
    clsp_interpolation_sample,
    ddim_scheduler,
    derive_seed,
    unet_decode,
    unet_encode,
)
from synthpos.generators.diffusion import build_noise_scheduler, build_unet

# ----------------------------------------------------------------------------- helpers


def _ref_ddim_scheduler(noise_scheduler) -> DDIMScheduler:
    return DDIMScheduler.from_config(
        noise_scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )


def _draw(generators, shape) -> torch.Tensor:
    # Row by row, in the per-row order the sampler documents.
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def _mid_hooked_eps(unet: UNet2DModel, x: torch.Tensor, noisy_anchor: torch.Tensor, t: torch.Tensor, w: float) -> torch.Tensor:
    """eps of ``x`` with the middle block's output replaced by ``w*h + (1-w)*h_anchor``.

    Uses only the public forward and hooks: the anchor's mid-block output is captured
    from a full forward of the noised anchor.
    """
    captured: dict[str, torch.Tensor] = {}

    def capture(module, args, output):
        captured["h"] = output.detach().clone()

    handle = unet.mid_block.register_forward_hook(capture)
    try:
        unet(noisy_anchor, t)
    finally:
        handle.remove()

    def replace(module, args, output):
        return w * output + (1.0 - w) * captured["h"]

    handle = unet.mid_block.register_forward_hook(replace)
    try:
        return unet(x, t).sample
    finally:
        handle.remove()


@torch.no_grad()
def _reference_sample(unet, noise_scheduler, anchors, generators, num_steps, eta, weight=None):
    """DDIM with diffusers' scheduler; ``weight=None``: plain ``unet(x, t)``, else the hooked bottleneck."""
    sched = _ref_ddim_scheduler(noise_scheduler)
    sched.set_timesteps(num_steps)
    shape = anchors.shape[1:]
    alphas = noise_scheduler.alphas_cumprod
    x = _draw(generators, shape)
    for t in sched.timesteps:
        anchor_noise = _draw(generators, shape)
        variance_noise = _draw(generators, shape)
        if weight is None:
            eps = unet(x, t).sample
        else:
            a = alphas[int(t)]
            noisy_anchor = a.sqrt() * anchors + (1 - a).sqrt() * anchor_noise
            eps = _mid_hooked_eps(unet, x, noisy_anchor, t, weight)
        x = sched.step(eps, t, x, eta=eta, variance_noise=variance_noise).prev_sample
    return x.clamp(-1.0, 1.0)


def _official_timesteps(num_train: int, num_steps: int) -> list[int]:
    """The official CLSP schedule: linspace(-1, T-1, n+1) cast to int, reversed; -1 means x0."""
    return np.linspace(-1, num_train - 1, num_steps + 1).astype(int)[::-1].tolist()


@torch.no_grad()
def _handwritten_ddim(unet, alphas_cumprod, anchors, generators, num_steps, eta):
    """DDIM (Song et al., eq. 12) on the official timesteps without any diffusers scheduler."""
    steps = _official_timesteps(len(alphas_cumprod), num_steps)
    shape = anchors.shape[1:]
    x = _draw(generators, shape).double()
    for t, prev in zip(steps[:-1], steps[1:]):
        _draw(generators, shape)  # the anchor's re-noising noise: drawn, unused at w=1
        z = _draw(generators, shape).double()
        eps = unet(x.float(), torch.tensor(t)).sample.double()
        a_t = alphas_cumprod[t].double()
        a_prev = alphas_cumprod[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
    return x.float().clamp(-1.0, 1.0)


def _assert_informative(sample: torch.Tensor) -> None:
    # A comparison of fully saturated outputs would prove little.
    interior = (sample.abs() < 0.999).float().mean().item()
    assert interior > 0.2, f"only {interior:.0%} of the values are inside (-1, 1)"


# ----------------------------------------------------------------------------- 1. the UNet split


def _deeper_unet() -> UNet2DModel:
    torch.manual_seed(1)
    cfg = UNetConfig(block_out_channels=[8, 16, 16], attention_levels=[0, 2], layers_per_block=2, dropout=0.0, norm_num_groups=4)
    return build_unet(cfg, sample_size=16, channels=3).eval().requires_grad_(False)


@pytest.mark.parametrize("which", ["tiny", "deeper"])
@pytest.mark.parametrize("t", [0, 17, 49, "per-sample"])
@torch.no_grad()
def test_encode_decode_equals_forward(tiny_unet, which, t) -> None:
    unet = tiny_unet if which == "tiny" else _deeper_unet()
    size, channels = unet.config.sample_size, unet.config.in_channels
    x = torch.randn(4, channels, size, size, generator=torch.Generator().manual_seed(5))
    timestep = torch.tensor([0, 10, 25, 49]) if t == "per-sample" else torch.tensor(t)
    h, skips, emb = unet_encode(unet, x, timestep)
    ours = unet_decode(unet, h, skips, emb)
    ref = unet(x, timestep).sample
    assert ours.shape == ref.shape == x.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # The bottleneck really is the middle block's output.
    seen = {}
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: seen.setdefault("h", out))
    unet(x, timestep)
    handle.remove()
    torch.testing.assert_close(h, seen["h"], atol=1e-5, rtol=0)


@torch.no_grad()
def test_encode_decode_differs_with_t(tiny_unet) -> None:
    # Guards the test above against a time embedding that is silently ignored.
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = unet_decode(tiny_unet, *unet_encode(tiny_unet, x, torch.tensor(0)))
    b = unet_decode(tiny_unet, *unet_encode(tiny_unet, x, torch.tensor(40)))
    assert (a - b).abs().max() > 1e-3


# ----------------------------------------------------------------------------- 2. w = 1 is DDIM


@pytest.mark.parametrize("eta", [0.0, 0.1])
@pytest.mark.parametrize("num_steps", [1, 4, 10])
def test_weight_one_is_plain_ddim(tiny_unet, scheduler_factory, make_generators, anchors_model_range, eta, num_steps) -> None:
    noise_scheduler = scheduler_factory(100)
    rows = [(0, 0), (0, 1), (1, 0), (2, 3)]
    anchors = anchors_model_range[[a for a, _ in rows]]
    ours = clsp_interpolation_sample(
        tiny_unet, ddim_scheduler(noise_scheduler), anchors, make_generators(rows), num_steps=num_steps, eta=eta, weight=1.0
    )
    ref = _reference_sample(tiny_unet, noise_scheduler, anchors, make_generators(rows), num_steps, eta)
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("eta", "num_steps"), [(0.0, 20), (0.1, 20), (0.1, 100)])
def test_weight_one_is_official_ddim(tiny_unet, scheduler_factory, make_generators, anchors_model_range, eta, num_steps) -> None:
    """Against a DDIM written by hand on the official CLSP timesteps (no diffusers scheduler)."""
    # T=1000 as in the paper; beta_end 0.002 keeps an untrained UNet's samples informative.
    noise_scheduler = scheduler_factory(1000, beta_end=0.002)
    rows = [(0, 0), (3, 1)]
    anchors = anchors_model_range[[a for a, _ in rows]]
    ours = clsp_interpolation_sample(
        tiny_unet, ddim_scheduler(noise_scheduler), anchors, make_generators(rows), num_steps=num_steps, eta=eta, weight=1.0
    )
    ref = _handwritten_ddim(tiny_unet, noise_scheduler.alphas_cumprod, anchors, make_generators(rows), num_steps, eta)
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_official_timesteps(scheduler_factory) -> None:
    sched = ddim_scheduler(scheduler_factory(1000))
    sched.set_timesteps(100)
    official = np.linspace(-1, 999, 101).astype(int)[1:][::-1]
    assert official[0] == 999 and official[1] == 989 and official[-1] == 9 and len(official) == 100
    assert official.tolist() == list(range(999, 8, -10))
    assert sched.timesteps.tolist() == official.tolist()
    assert sched.final_alpha_cumprod.item() == 1.0


def test_each_step_lands_on_the_next_official_timestep_and_the_last_on_x0(scheduler_factory) -> None:
    noise_scheduler = scheduler_factory(1000)
    alphas = noise_scheduler.alphas_cumprod.double()
    sched = ddim_scheduler(noise_scheduler)
    sched.set_timesteps(100)
    steps = _official_timesteps(1000, 100)
    g = torch.Generator().manual_seed(0)
    for t, prev in zip(steps[:-1], steps[1:]):
        x, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
        out = sched.step(eps, torch.tensor(t), x, eta=0.0)
        a_t = alphas[t]
        a_prev = alphas[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
        expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps.double()
        torch.testing.assert_close(out.prev_sample.double(), expected, atol=1e-5, rtol=1e-5)
    # The last step (t=9) jumps to x0 exactly, noise or not.
    x, eps, z = (torch.randn(2, 1, 8, 8, generator=g) for _ in range(3))
    out = sched.step(eps, torch.tensor(9), x, eta=0.1, variance_noise=z)
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- 3. w < 1: the anchor's bottleneck


@pytest.mark.parametrize("weight", [0.0, 0.3])
@pytest.mark.parametrize("eta", [0.0, 0.1])
def test_bottleneck_interpolation_matches_hooked_reference(
    tiny_unet, scheduler_factory, make_generators, anchors_model_range, weight, eta
) -> None:
    noise_scheduler = scheduler_factory(100)
    rows = [(0, 0), (1, 0), (1, 1), (3, 2)]
    anchors = anchors_model_range[[a for a, _ in rows]]
    ours = clsp_interpolation_sample(
        tiny_unet, ddim_scheduler(noise_scheduler), anchors, make_generators(rows), num_steps=5, eta=eta, weight=weight
    )
    ref = _reference_sample(tiny_unet, noise_scheduler, anchors, make_generators(rows), 5, eta, weight=weight)
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    # And the anchor really changes the sample (the hook is not a no-op).
    plain = _reference_sample(tiny_unet, noise_scheduler, anchors, make_generators(rows), 5, eta)
    assert (ours - plain).abs().max() > 1e-2


def test_anchor_bottleneck_uses_the_right_anchor(tiny_unet, scheduler_factory, make_generators, anchors_model_range) -> None:
    # Same noise, different anchors -> different samples at w=0 (rows are not mixed up).
    noise_scheduler = scheduler_factory(100)
    sched = ddim_scheduler(noise_scheduler)
    rows = [(0, 0), (0, 0)]
    anchors = anchors_model_range[[0, 1]]
    out = clsp_interpolation_sample(tiny_unet, sched, anchors, make_generators(rows), num_steps=5, eta=0.1, weight=0.0)
    assert (out[0] - out[1]).abs().max() > 1e-2
    swapped = clsp_interpolation_sample(tiny_unet, sched, anchors.flip(0), make_generators(rows), num_steps=5, eta=0.1, weight=0.0)
    torch.testing.assert_close(swapped.flip(0), out, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- 4. per-row determinism


def test_row_is_the_same_alone_or_in_a_batch(tiny_unet, scheduler_factory, make_generators, anchors_model_range) -> None:
    sched = ddim_scheduler(scheduler_factory(100))
    rows = [(0, 0), (1, 0), (2, 1), (3, 0), (1, 1)]
    anchors = anchors_model_range[[a for a, _ in rows]]
    big = clsp_interpolation_sample(tiny_unet, sched, anchors, make_generators(rows, seed=3), num_steps=6, eta=0.1, weight=0.1)
    for i in (0, 2, 4):
        alone = clsp_interpolation_sample(
            tiny_unet, sched, anchors[i: i + 1], make_generators(rows[i: i + 1], seed=3), num_steps=6, eta=0.1, weight=0.1
        )
        # Not bitwise in general: a different batch size may take different float kernels.
        torch.testing.assert_close(alone, big[i: i + 1], atol=1e-5, rtol=0)
    # Row order inside the batch does not matter either.
    perm = [4, 2, 0, 3, 1]
    shuffled = clsp_interpolation_sample(
        tiny_unet, sched, anchors[perm], make_generators([rows[p] for p in perm], seed=3), num_steps=6, eta=0.1, weight=0.1
    )
    torch.testing.assert_close(shuffled, big[perm], atol=1e-5, rtol=0)


def test_rows_with_other_seeds_differ(tiny_unet, scheduler_factory, make_generators, anchors_model_range) -> None:
    sched = ddim_scheduler(scheduler_factory(100))
    anchors = anchors_model_range[[0, 0, 0]]
    out = clsp_interpolation_sample(tiny_unet, sched, anchors, make_generators([(0, 0), (0, 1), (0, 2)]), num_steps=4, eta=0.1, weight=0.1)
    other_seed = clsp_interpolation_sample(tiny_unet, sched, anchors[:1], make_generators([(0, 0)], seed=1), num_steps=4, eta=0.1, weight=0.1)
    assert (out[0] - out[1]).abs().max() > 1e-2 and (out[1] - out[2]).abs().max() > 1e-2
    assert (out[0] - other_seed[0]).abs().max() > 1e-2


def test_derive_seed() -> None:
    seeds = {(s, a, c): derive_seed(s, a, c) for s in range(3) for a in range(20) for c in range(8)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())
    # Deterministic, and not symmetric in its arguments.
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, 1, 0), derive_seed(0, 0, 1), derive_seed(1, 0, 0)}) == 3
    assert derive_seed(0, 2**40, 7) != derive_seed(0, 2**40 + 1, 7)
    # Usable as a torch seed.
    torch.Generator().manual_seed(derive_seed(5, 10**6, 7))


def test_one_generator_per_row_is_required(tiny_unet, scheduler_factory, make_generators, anchors_model_range) -> None:
    with pytest.raises(ValueError, match="one generator per anchor"):
        clsp_interpolation_sample(
            tiny_unet, ddim_scheduler(scheduler_factory(100)), anchors_model_range[:3], make_generators([(0, 0), (1, 0)]), num_steps=2
        )


@torch.no_grad()
def test_channels_last_anchors_give_the_same_samples(make_generators) -> None:
    torch.manual_seed(2)
    cfg = UNetConfig(block_out_channels=[8, 16], attention_levels=[1], layers_per_block=1, dropout=0.0, norm_num_groups=4)
    unet = build_unet(cfg, sample_size=8, channels=3).eval()
    sched = ddim_scheduler(build_noise_scheduler(TrainGeneratorConfig(num_train_timesteps=100)))
    anchors = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows = [(0, 0), (1, 0), (2, 0)]
    plain = clsp_interpolation_sample(unet, sched, anchors, make_generators(rows), num_steps=3, eta=0.1, weight=0.1)
    cl_unet = unet.to(memory_format=torch.channels_last)
    cl = clsp_interpolation_sample(
        cl_unet, sched, anchors.contiguous(memory_format=torch.channels_last), make_generators(rows), num_steps=3, eta=0.1, weight=0.1
    )
    torch.testing.assert_close(cl, plain, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- 5. clip_x0


def test_clip_x0_clips_the_predicted_x0(tiny_unet, scheduler_factory, make_generators, anchors_model_range) -> None:
    noise_scheduler = scheduler_factory(100)
    results, predicted = {}, {}
    for clip in (False, True):
        sched = ddim_scheduler(noise_scheduler, clip_x0=clip)
        assert sched.config.clip_sample is clip and sched.config.clip_sample_range == 1.0
        seen: list[torch.Tensor] = []
        step = sched.step

        def recording_step(*args, _step=step, _seen=seen, **kwargs):
            out = _step(*args, **kwargs)
            _seen.append(out.pred_original_sample.clone())
            return out

        sched.step = recording_step
        results[clip] = clsp_interpolation_sample(
            tiny_unet, sched, anchors_model_range, make_generators([(i, 0) for i in range(4)]), num_steps=5, eta=0.1, weight=0.1
        )
        predicted[clip] = torch.stack(seen)
        assert len(seen) == 5
    assert predicted[False].abs().max() > 1.0, "the untrained model should predict x0 outside [-1, 1]"
    assert predicted[True].abs().max() <= 1.0
    assert (results[True] - results[False]).abs().max() > 1e-2


def test_clip_x0_on_one_step(scheduler_factory) -> None:
    x = torch.full((1, 1, 2, 2), 3.0)
    eps = torch.zeros_like(x)
    predicted = {}
    for clip in (False, True):
        sched = ddim_scheduler(scheduler_factory(100), clip_x0=clip)
        sched.set_timesteps(4)
        predicted[clip] = sched.step(eps, sched.timesteps[0], x, eta=0.0).pred_original_sample
    # eps = 0: x0 = x / sqrt(alpha_bar_t) > 3 unclipped, exactly 1 clipped.
    assert predicted[False].min().item() > 3.0
    assert torch.equal(predicted[True], torch.ones_like(x))
