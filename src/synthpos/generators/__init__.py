"""Generators: DDPM training, CLSP sampling with bottleneck interpolation, store generation."""

from synthpos.generators.clsp import clsp_interpolation_sample, ddim_scheduler, derive_seed, guided_eps, unet_decode, unet_encode
from synthpos.generators.diffusion import build_unet, load_generator, train_generator
from synthpos.generators.generate import CLSPGenerator, generate_store
from synthpos.generators.samplers import build_sampler, dpmsolver_scheduler

__all__ = [
    "CLSPGenerator",
    "build_sampler",
    "build_unet",
    "clsp_interpolation_sample",
    "ddim_scheduler",
    "derive_seed",
    "dpmsolver_scheduler",
    "generate_store",
    "guided_eps",
    "load_generator",
    "train_generator",
    "unet_decode",
    "unet_encode",
]
