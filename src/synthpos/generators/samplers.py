"""The samplers that step a CLSP trajectory: DDIM (the paper's) and DPM-Solver++ (fewer steps).

Both are diffusers schedulers built from the generator's own training schedule (same
betas, epsilon prediction), and both are driven by the same loop in
:func:`synthpos.generators.clsp.clsp_interpolation_sample`: at each of the scheduler's
timesteps ``t`` the anchor is re-noised to ``t`` (:func:`noise_to_timestep`), the UNet's
prediction is interpolated at the bottleneck, and :func:`sampler_step` takes the update.

DPM-Solver++ settings (Lu et al., 2022) and why:

- ``solver_order=2`` (multistep "2M", midpoint): the bottleneck interpolation changes the
  model output at every step much as guidance does, and it re-noises the anchor with fresh
  noise each step, so the prediction is not a smooth function of t; the DPM-Solver++
  authors recommend order 2 for guided sampling, and order 3's longer extrapolation
  amplifies such noise.
- ``lower_order_final=True``: first order on the last step (and second order instead of
  third where it applies) below 15 steps: the step to x0 is large and the second-order
  correction there is unstable at 10-15 steps.
- ``final_sigmas_type="zero"``: the last step lands on x0 (sigma 0), as CLSP's DDIM does.
- ``timestep_spacing="trailing"``: the first step is at t = T-1, as for the DDIM sampler
  (pure noise where the model was trained on it); the last visited t is T/n - 1.
- ``clip_x0`` maps to ``thresholding=True`` with ``sample_max_value=1.0``: the dynamic
  threshold ``s`` is clamped to [1, 1], so it is exactly a clip of the predicted x0 to [-1, 1].

DPM-Solver++ here is the ODE solver: it draws no noise, so ``eta`` applies to DDIM only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

# diffusers (and the transformers it pulls in) is imported where a scheduler is built, not here:
# reading a config imports every generator module, and that must stay light.
if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

__all__ = ["SAMPLERS", "build_sampler", "ddim_scheduler", "dpmsolver_scheduler", "noise_to_timestep", "sampler_step"]

SAMPLERS = ("ddim", "dpmsolver++")
DPMSOLVER_ORDER = 2


def ddim_scheduler(noise_scheduler: SchedulerMixin, clip_x0: bool = False) -> DDIMScheduler:
    """CLSP's DDIM from the generator's training schedule (same betas).

    ``trailing`` spacing with ``set_alpha_to_one`` visits 999, 989, ..., 9 and then jumps
    to x0 for 100 steps of a 1000-step model: the official CLSP timesteps.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(
        noise_scheduler.config,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=clip_x0,
        clip_sample_range=1.0,
        prediction_type="epsilon",
    )


def dpmsolver_scheduler(noise_scheduler: SchedulerMixin, clip_x0: bool = False, order: int = DPMSOLVER_ORDER) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (multistep, ``order``) from the generator's training schedule (see the module docstring)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        noise_scheduler.config,
        algorithm_type="dpmsolver++",
        solver_order=order,
        solver_type="midpoint",
        lower_order_final=True,
        euler_at_final=False,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=clip_x0,
        sample_max_value=1.0,
        variance_type=None,
        use_karras_sigmas=False,
        use_lu_lambdas=False,
    )


def build_sampler(name: str, noise_scheduler: SchedulerMixin, clip_x0: bool = False) -> SchedulerMixin:
    """The scheduler for ``generate.sampler`` (``ddim`` or ``dpmsolver++``)."""
    if name == "ddim":
        return ddim_scheduler(noise_scheduler, clip_x0)
    if name == "dpmsolver++":
        return dpmsolver_scheduler(noise_scheduler, clip_x0)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def noise_to_timestep(scheduler: SchedulerMixin, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sqrt(a_t) * x0 + sqrt(1 - a_t) * noise`` with ``a_t = alphas_cumprod[t]`` (one t for the batch).

    This is the forward process q(x_t | x0) at the scheduler's current integer timestep,
    the noise level the trajectory has there. It is what ``DDIMScheduler.add_noise``
    computes; DPM-Solver's ``add_noise`` gives the same values (from its sigmas), but
    looks every row's timestep up in its schedule in Python, which costs more than the
    UNet at small sizes.

    Shape: x0, noise (B, C, H, W) -> (B, C, H, W).
    """
    alphas = scheduler.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
    a = alphas[t.to(x0.device).long()]
    return a**0.5 * x0 + (1 - a) ** 0.5 * noise


def sampler_step(
    scheduler: SchedulerMixin, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor, eta: float, variance_noise: torch.Tensor | None
) -> torch.Tensor:
    """One update of ``x`` at timestep ``t`` from the noise prediction ``eps`` (DDIM or DPM-Solver++)."""
    from diffusers import DDIMScheduler

    if isinstance(scheduler, DDIMScheduler):
        return scheduler.step(eps, t, x, eta=eta, variance_noise=variance_noise).prev_sample
    return scheduler.step(eps, t, x).prev_sample
