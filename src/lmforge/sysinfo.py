"""What CPU this is, in words and in feature flags, without importing torch.

Why: the fastest kernel and precision depend on the CPU (bfloat16 is twice float32's speed with
AVX-512 BF16 or AMX and slower than float32 without), and a speed figure means little without
the CPU it was measured on, so benchmarks print `cpu_summary()` beside every figure.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

# AMD family 25 (0x19) covers Zen 3 and Zen 4; the model number tells them apart.
_AMD_FAMILY_25_ZEN4 = {*range(0x10, 0x20), *range(0x60, 0x80), *range(0xA0, 0xB0)}


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def native_bf16() -> bool:
    """bfloat16 dot products in hardware: AVX-512 BF16 (Cooper Lake, Zen 4 and later) or AMX."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _generation(info: dict[str, str]) -> str | None:
    if info.get("vendor_id") != "AuthenticAMD":
        return None
    try:
        family, model = int(info.get("cpu family", "")), int(info.get("model", ""))
    except ValueError:
        return None
    if family == 25:
        return "Zen 4" if model in _AMD_FAMILY_25_ZEN4 else "Zen 3"
    return {23: "Zen/Zen 2", 26: "Zen 5"}.get(family)


def cpu_summary() -> str:
    """e.g. "AMD EPYC (Zen 4), 2 cores, AVX-512 + AVX-512 BF16"."""
    info = _cpuinfo()
    name = " ".join(info.get("model name", "").split()) or platform.processor() or platform.machine()
    generation = _generation(info)
    if generation and generation not in name:
        name += f" ({generation})"
    flags = cpu_flags()
    vector = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"),
                                        ("amx_bf16", "AMX"), ("avx2", "AVX2")) if flag in flags]
    if "AVX-512" in vector and "AVX2" in vector:
        vector.remove("AVX2")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores" + (f", {' + '.join(vector)}" if vector else "")
