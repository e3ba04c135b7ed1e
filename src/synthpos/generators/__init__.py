"""Generators: DDPM training, CLSP sampling with bottleneck interpolation, store generation."""

from synthpos.generators.clsp import clsp_interpolation_sample, ddim_scheduler, derive_seed, unet_decode, unet_encode
from synthpos.generators.diffusion import build_unet, load_generator, train_generator
from synthpos.generators.generate import generate_store

__all__ = [
    "build_unet",
    "clsp_interpolation_sample",
    "ddim_scheduler",
    "derive_seed",
    "generate_store",
    "load_generator",
    "train_generator",
    "unet_decode",
    "unet_encode",
]
