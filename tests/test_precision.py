"""precision: auto picks bf16 only where the CPU computes it natively."""

from __future__ import annotations

import pytest
import torch

from synthpos import precision

SAPPHIRE_RAPIDS = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n"
ICE_LAKE = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
EPYC_ZEN2 = "flags\t\t: fpu sse2 avx2 fma\n"


def test_cpu_flags_reads_the_flags_line(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n" + SAPPHIRE_RAPIDS)
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= precision.cpu_flags(info)
    assert precision.cpu_flags(tmp_path / "missing") == set()


def _pretend_cpu(tmp_path, monkeypatch, capability: str, flags: str) -> None:
    """torch's kernel set says ``capability`` and /proc/cpuinfo's flags line is ``flags``."""
    info = tmp_path / "cpuinfo"
    info.write_text(flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    read_flags = precision.cpu_flags
    monkeypatch.setattr(precision, "cpu_flags", lambda: read_flags(info))


@pytest.mark.parametrize(
    ("capability", "flags", "expected"),
    [
        ("AVX512", SAPPHIRE_RAPIDS, "bf16"),  # torch says only AVX512 on these: the flags decide
        ("AVX512", ICE_LAKE, "fp32"),
        ("AVX2", EPYC_ZEN2, "fp32"),
        ("AVX2", SAPPHIRE_RAPIDS, "fp32"),  # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: torch's bf16 attention fails
        ("DEFAULT", SAPPHIRE_RAPIDS, "fp32"),
        ("AVX512_BF16", "", "bf16"),
        ("AMX", "", "bf16"),
    ],
)
def test_auto_precision_on_cpus(tmp_path, monkeypatch, capability, flags, expected) -> None:
    _pretend_cpu(tmp_path, monkeypatch, capability, flags)
    assert precision.resolve_precision("auto", torch.device("cpu")) == expected
    assert precision.resolve_precision("fp32", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize(
    ("capability", "flags", "blocked"),
    [("AVX2", SAPPHIRE_RAPIDS, True), ("DEFAULT", SAPPHIRE_RAPIDS, True), ("AVX512", SAPPHIRE_RAPIDS, False),
     ("AVX2", EPYC_ZEN2, False), ("AMX", SAPPHIRE_RAPIDS, False)],
)
def test_bf16_is_named_blocked_only_on_a_bf16_cpu_with_held_back_kernels(tmp_path, monkeypatch, capability, flags,
                                                                         blocked) -> None:
    _pretend_cpu(tmp_path, monkeypatch, capability, flags)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability.lower())
    why = precision.bf16_blocked(torch.device("cpu"))
    assert (why is not None) == blocked
    if blocked:
        assert "\n" not in why and f"ATEN_CPU_CAPABILITY={capability.lower()}" in why and "fp32" in why
    assert precision.bf16_blocked(torch.device("cuda")) is None  # the CPU's kernels do not matter there
    assert precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # explicit: left to run
