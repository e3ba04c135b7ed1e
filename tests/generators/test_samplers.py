"""DPM-Solver++ with bottleneck interpolation; K candidates per anchor in one batch; shared anchor noise.

References are independent of ``clsp_interpolation_sample``'s internals: diffusers'
own DPMSolverMultistepScheduler driven by plain ``unet(x, t).sample`` calls, a
DPM-Solver++(2M) written by hand from ``alphas_cumprod``, and forward hooks on
``unet.mid_block`` for the interpolated bottleneck.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from synthpos.generators.clsp import SHARED_ANCHOR_NOISE, clsp_interpolation_sample, derive_seed
from synthpos.generators.samplers import build_sampler, ddim_scheduler, dpmsolver_scheduler, noise_to_timestep, sampler_step

# ----------------------------------------------------------------------------- helpers


def _draw(generators, shape) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def _gens(keys, seed=0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(seed, a, c)) for a, c in keys]


def _hooked_eps(unet, x, noisy_anchor, t, w) -> torch.Tensor:
    """eps of ``x`` with the mid-block output replaced by ``w*h + (1-w)*h_anchor`` (hooks only)."""
    captured = {}
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: captured.setdefault("h", out.detach().clone()))
    try:
        unet(noisy_anchor, t)
    finally:
        handle.remove()
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: w * out + (1.0 - w) * captured["h"])
    try:
        return unet(x, t).sample
    finally:
        handle.remove()


def _diffusers_dpm(noise_scheduler) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ configured here, by hand, not through synthpos's builder."""
    c = noise_scheduler.config
    return DPMSolverMultistepScheduler(
        num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end, beta_schedule="linear",
        algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
    )


def _assert_informative(sample: torch.Tensor) -> None:
    interior = (sample.abs() < 0.999).float().mean().item()
    assert interior > 0.2, f"only {interior:.0%} of the values are inside (-1, 1)"


@torch.no_grad()
def _reference_dpm(unet, noise_scheduler, anchors, keys, num_steps, weight=None, shared=False):
    """diffusers' DPM-Solver++ loop; ``weight=None``: plain UNet, else hooked interpolation.

    Row noise order as documented: x_T, then per step the anchor re-noising (drawn from the
    row's generator, or the anchor's shared one). Anchors are one row per output row.
    """
    sched = _diffusers_dpm(noise_scheduler)
    sched.set_timesteps(num_steps)
    gens = _gens(keys)
    anchor_gens = {a: torch.Generator().manual_seed(derive_seed(0, a, SHARED_ANCHOR_NOISE)) for a, _ in keys}
    shape = anchors.shape[1:]
    x = _draw(gens, shape)
    alphas = noise_scheduler.alphas_cumprod
    for t in sched.timesteps:
        if shared:
            per_anchor = {a: torch.randn(tuple(shape), generator=g) for a, g in anchor_gens.items()}
            anchor_noise = torch.stack([per_anchor[a] for a, _ in keys])
        else:
            anchor_noise = _draw(gens, shape)
        if weight is None:
            eps = unet(x, t).sample
        else:
            a_t = alphas[int(t)]
            eps = _hooked_eps(unet, x, a_t.sqrt() * anchors + (1 - a_t).sqrt() * anchor_noise, t, weight)
        x = sched.step(eps, t, x).prev_sample
    return x.clamp(-1.0, 1.0)


def _ours(unet, noise_scheduler, anchors_by_id, keys, num_steps, weight, sampler="dpmsolver++", shared=False, eta=0.0):
    """Our sampler on rows ``keys`` = (anchor id, candidate), the anchors given once each."""
    ids = sorted({a for a, _ in keys})
    anchors = anchors_by_id[ids]
    index = torch.tensor([ids.index(a) for a, _ in keys])
    anchor_gens = [torch.Generator().manual_seed(derive_seed(0, a, SHARED_ANCHOR_NOISE)) for a in ids] if shared else None
    return clsp_interpolation_sample(
        unet, build_sampler(sampler, noise_scheduler), anchors, _gens(keys), num_steps=num_steps, eta=eta, weight=weight,
        anchor_index=index, anchor_generators=anchor_gens,
    )


# ----------------------------------------------------------------------------- 1. DPM-Solver++ itself


@pytest.mark.parametrize("num_steps", [1, 5, 10, 20])
def test_dpmsolver_weight_one_equals_diffusers_loop(tiny_unet, scheduler_factory, anchors_model_range, num_steps) -> None:
    noise_scheduler = scheduler_factory(1000, beta_end=0.002)
    keys = [(0, 0), (0, 1), (1, 0), (3, 2)]
    ours = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, num_steps, weight=1.0)
    ref = _reference_dpm(tiny_unet, noise_scheduler, anchors_model_range[[a for a, _ in keys]], keys, num_steps)
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def _trailing(num_train: int, n: int) -> list[int]:
    return (np.arange(num_train, 0, -num_train / n).round().astype(int) - 1).tolist()


@torch.no_grad()
def _handwritten_dpmsolver_2m(unet, alphas_cumprod, x, num_steps):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), first order on the first and the last step, in float64."""
    steps = _trailing(len(alphas_cumprod), num_steps)
    a = alphas_cumprod.double()
    x = x.double()
    prev_x0, prev_h = None, None
    for i, t in enumerate(steps):
        alpha_s, sigma_s = a[t].sqrt(), (1 - a[t]).sqrt()
        eps = unet(x.float(), torch.tensor(t)).sample.double()
        x0 = (x - sigma_s * eps) / alpha_s
        if i == len(steps) - 1:  # the last step lands on sigma = 0: x0 itself
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


@pytest.mark.parametrize("num_steps", [3, 10, 20])
def test_dpmsolver_is_the_2m_solver_written_by_hand(tiny_unet, scheduler_factory, anchors_model_range, num_steps) -> None:
    noise_scheduler = scheduler_factory(1000, beta_end=0.002)
    keys = [(0, 0), (2, 1)]
    ours = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, num_steps, weight=1.0)
    ref = _handwritten_dpmsolver_2m(tiny_unet, noise_scheduler.alphas_cumprod, _draw(_gens(keys), (1, 8, 8)), num_steps)
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


def test_dpmsolver_visits_trailing_timesteps_and_ends_at_x0(scheduler_factory) -> None:
    sched = dpmsolver_scheduler(scheduler_factory(1000))
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert sched.sigmas[-1].item() == 0.0
    assert sched.config.algorithm_type == "dpmsolver++" and sched.config.solver_order == 2


def test_dpmsolver_clip_x0_clips_the_predicted_x0(scheduler_factory) -> None:
    # eps = 0: x0 = x / sqrt(a_t). At x = 3 that is > 3 unclipped and exactly 1 clipped.
    # The first step is first order: x_next = (s_t/s_s) x - a_t (e^-h - 1) x0, so it shows x0.
    noise_scheduler = scheduler_factory(1000)
    a = noise_scheduler.alphas_cumprod.double()
    x = torch.full((2, 1, 2, 2), 3.0)
    out = {}
    for clip in (False, True):
        sched = dpmsolver_scheduler(noise_scheduler, clip_x0=clip)
        sched.set_timesteps(4)
        t, nxt = (int(v) for v in sched.timesteps[:2])
        out[clip] = sampler_step(sched, torch.zeros_like(x), sched.timesteps[0], x, eta=0.0, variance_noise=None).double()
        alpha_s, sigma_s, alpha_t, sigma_t = a[t].sqrt(), (1 - a[t]).sqrt(), a[nxt].sqrt(), (1 - a[nxt]).sqrt()
        h = torch.log(alpha_t / sigma_t) - torch.log(alpha_s / sigma_s)
        x0 = (x.double() / alpha_s).clamp(-1, 1) if clip else x.double() / alpha_s
        expected = (sigma_t / sigma_s) * x.double() - alpha_t * (torch.exp(-h) - 1) * x0
        torch.testing.assert_close(out[clip], expected, atol=1e-5, rtol=1e-5)
    assert (out[False] - out[True]).abs().min() > 0.1


@pytest.mark.parametrize("kind", ["ddim", "dpmsolver++"])
def test_anchor_is_noised_to_the_schedulers_current_timestep(scheduler_factory, kind) -> None:
    """noise_to_timestep equals the scheduler's own add_noise at every timestep it visits."""
    sched = build_sampler(kind, scheduler_factory(1000))
    sched.set_timesteps(15)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    for t in sched.timesteps:
        ours = noise_to_timestep(sched, x0, noise, t)
        theirs = sched.add_noise(x0, noise, t.repeat(3))
        torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=0)


def test_unknown_sampler_raises(scheduler_factory) -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("euler", scheduler_factory(100))
    assert isinstance(build_sampler("ddim", scheduler_factory(100)), DDIMScheduler)


# ----------------------------------------------------------------------------- 2. interpolation under DPM-Solver++


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_dpmsolver_interpolation_matches_hooked_reference(tiny_unet, scheduler_factory, anchors_model_range, weight, shared) -> None:
    noise_scheduler = scheduler_factory(100)
    keys = [(0, 0), (0, 1), (1, 0), (3, 2), (3, 0)]
    ours = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, 6, weight=weight, shared=shared)
    ref = _reference_dpm(tiny_unet, noise_scheduler, anchors_model_range[[a for a, _ in keys]], keys, 6, weight=weight, shared=shared)
    _assert_informative(ref)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    plain = _reference_dpm(tiny_unet, noise_scheduler, anchors_model_range[[a for a, _ in keys]], keys, 6)
    assert (ours - plain).abs().max() > 1e-2, "the anchor's bottleneck should change the samples"


# ----------------------------------------------------------------------------- 3. batching and shared noise


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
@pytest.mark.parametrize("shared", [False, True])
def test_k_candidates_in_one_batch_equal_one_by_one(tiny_unet, scheduler_factory, anchors_model_range, sampler, shared) -> None:
    noise_scheduler = scheduler_factory(100)
    keys = [(a, c) for a in (0, 2, 3) for c in range(3)]
    together = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, 5, 0.1, sampler, shared, eta=0.1)
    for i, key in enumerate(keys):
        alone = _ours(tiny_unet, noise_scheduler, anchors_model_range, [key], 5, 0.1, sampler, shared, eta=0.1)
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)
    # Shared or not, the candidates of one anchor differ from each other.
    assert (together[0] - together[1]).abs().max() > 1e-2


def test_shared_anchor_noise_is_another_draw_than_per_candidate_noise(tiny_unet, scheduler_factory, anchors_model_range) -> None:
    noise_scheduler = scheduler_factory(100)
    keys = [(0, 0), (0, 1)]
    fresh = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, 5, 0.1, "dpmsolver++", shared=False)
    shared = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, 5, 0.1, "dpmsolver++", shared=True)
    assert (fresh - shared).abs().max() > 1e-3
    # x_T is the candidate's own in both: at w = 1 the anchor's noise does not matter at all.
    a = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, 5, 1.0, "dpmsolver++", shared=False)
    b = _ours(tiny_unet, noise_scheduler, anchors_model_range, keys, 5, 1.0, "dpmsolver++", shared=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("shared", "expected_rows"), [(False, 2 * 6), (True, 6 + 2)])
def test_shared_anchor_noise_saves_encoder_rows(tiny_unet, scheduler_factory, anchors_model_range, shared, expected_rows) -> None:
    """2 anchors x 3 candidates: the encoder sees 2*6 rows per step, or 6 + 2 with shared noise."""
    seen: list[int] = []
    handle = tiny_unet.conv_in.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        _ours(tiny_unet, scheduler_factory(100), anchors_model_range, [(a, c) for a in (0, 1) for c in range(3)], 4, 0.1,
              "dpmsolver++", shared)
    finally:
        handle.remove()
    assert seen == [expected_rows] * 4


def test_one_anchor_generator_per_anchor_is_required(tiny_unet, scheduler_factory, anchors_model_range) -> None:
    with pytest.raises(ValueError, match="one anchor generator per anchor"):
        clsp_interpolation_sample(
            tiny_unet, ddim_scheduler(scheduler_factory(100)), anchors_model_range[:2], _gens([(0, 0), (1, 0)]), num_steps=2,
            anchor_generators=_gens([(0, 0)]),
        )


def test_compiled_runs_the_encoder_and_decoder_through_torch_compile(tiny_unet, scheduler_factory, anchors_model_range, monkeypatch) -> None:
    """The wiring only: torch.compile is replaced by a recorder (inductor needs minutes on a CPU)."""
    import synthpos.generators.clsp as clsp

    compiled, calls = [], []

    def fake_compile(fn, **kwargs):
        compiled.append((fn, kwargs))

        def run(*args, **kw):
            calls.append(fn.__name__)
            return fn(*args, **kw)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    clsp._compiled_split.cache_clear()
    try:
        keys = [(0, 0), (1, 1)]
        eager = _ours(tiny_unet, scheduler_factory(100), anchors_model_range, keys, 3, 0.1)
        out = clsp_interpolation_sample(
            tiny_unet, build_sampler("dpmsolver++", scheduler_factory(100)), anchors_model_range[:2], _gens(keys),
            num_steps=3, weight=0.1, compiled=True,
        )
    finally:
        clsp._compiled_split.cache_clear()
    assert [fn.__name__ for fn, _ in compiled] == ["unet_encode", "unet_decode"]
    assert calls == ["unet_encode", "unet_decode"] * 3
    torch.testing.assert_close(out, eager, atol=1e-6, rtol=0)
