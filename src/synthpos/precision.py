"""Numeric precision: where bf16 autocast helps and where it hurts.

bf16 autocast is a large win on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX).
On an AVX2-only CPU oneDNN has no bf16 convolution and PyTorch falls back to a slow
reference kernel: measured here, a 1.1M-parameter UNet ran 122 images/s in fp32 and
10-28 in bf16. ``auto`` therefore picks bf16 only where the hardware has it.

Where the hardware has it but torch's kernels are held below AVX-512 (``ATEN_CPU_CAPABILITY=avx2``
or ``default``, as when the suite is checked under each kernel set), torch's bf16 attention kernel
still takes the AVX512-BF16 path and fails ("pack_vnni2 is only supported when avx512 is
supported", measured with torch 2.14.1 on a Sapphire Rapids Xeon for a (2, 4, 64, 32) attention):
there ``auto`` picks fp32. An explicit ``bf16`` is left to run: convolutions and the DDPM UNets
do run under those kernels; only attention at some shapes fails.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch


_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo cannot be read."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic: AVX512-BF16 or AMX.

    torch's capability string says only "AVX512" on CPUs that also have AVX512-BF16 and
    AMX (Sapphire Rapids), so the flags are read too.
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "BF16" in capability or "AMX" in capability:
        return True
    return capability.startswith("AVX512") and bool(_BF16_FLAGS & cpu_flags())


def bf16_blocked(device: torch.device) -> str | None:
    """Why bf16 cannot run on ``device``, or None: a CPU with AVX512-BF16 whose torch kernels are held
    below AVX-512 by ``ATEN_CPU_CAPABILITY`` (torch's bf16 attention then fails; see the module)."""
    if device.type != "cpu":
        return None
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if capability.startswith("AVX512") or "AMX" in capability or not (_BF16_FLAGS & cpu_flags()):
        return None
    held = os.environ.get("ATEN_CPU_CAPABILITY", capability.lower())
    return (f"precision bf16 cannot run here: torch's CPU kernels are held at {capability} "
            f"(ATEN_CPU_CAPABILITY={held}) on a CPU with AVX512-BF16, where torch's bf16 attention fails; "
            "unset ATEN_CPU_CAPABILITY or use precision fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on CUDA and bf16-capable CPUs (not where :func:`bf16_blocked`), else 'fp32'. An explicit
    'bf16' stays: most ops run under held-back kernels (convolutions, the DDPM UNet); attention at some shapes does not."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
