"""What every benchmark records about the machine it ran on (results differ across CPUs)."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The flags that decide which kernels run (vector width, bf16/int8 dot products, AMX, SHA).
_FLAG_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx", "sha", "vnni")


def cpu_flags() -> list[str]:
    """The CPU's kernel-relevant feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(_FLAG_PREFIXES))
    except OSError:
        pass
    return []


def cpu_identity(model: str | None = None, flags: list[str] | None = None) -> dict[str, Any]:
    """What results are paired by: the CPU model and whether it has avx512_bf16 (bf16 and fp32 kernels, and so the
    last digits of a result, differ between CPU types). ``key`` is a slug fit for a JSON key; default: this machine."""
    model = cpu_model() if model is None else model
    bf16 = "avx512_bf16" in (cpu_flags() if flags is None else flags)
    slug = "-".join(model.replace("/", " ").split()) + ("+bf16" if bf16 else "+nobf16")
    return {"model": model, "avx512_bf16": bf16, "key": slug}


def machine_info(*packages: str) -> dict[str, Any]:
    """CPU (model, flags, cores), torch's CPU capability and threads, GPU, versions of torch and
    ``packages``, load average now. Call it after ``torch.set_num_threads``."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
    for name in packages:
        info[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    info["python"] = platform.python_version()
    info["platform"] = platform.platform()
    info["load_average_at_start"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return info
