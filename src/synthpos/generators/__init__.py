"""Generators: DDPM training, CLSP sampling with bottleneck interpolation, store generation.

Importing the package imports none of its modules: reading a config looks generators up in the
registry, and that must not pull in diffusers. The names below are imported on first access.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: re-exported name -> the module of this package that defines it
_EXPORTS = {
    "CLSPGenerator": "clsp_generator",
    "build_sampler": "samplers",
    "build_unet": "diffusion",
    "clsp_interpolation_sample": "clsp",
    "ddim_scheduler": "samplers",
    "derive_seed": "clsp",
    "dpmsolver_scheduler": "samplers",
    "generate_store": "generate",
    "guided_eps": "clsp",
    "load_generator": "diffusion",
    "train_generator": "diffusion",
    "unet_decode": "clsp",
    "unet_encode": "clsp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``synthpos.generators.NAME`` for a re-exported name: imports its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
