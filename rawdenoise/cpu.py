"""What the CPU can do, read from the CPU itself (never inferred from its model name): which
instructions decide whether bf16 pays, and the line every benchmark prints beside its figures, since the
machines that run them differ from session to session. Imports no torch, so the scorer's benchmarks
can use it too."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _field(name: str) -> str | None:
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_flags() -> set[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty without /proc/cpuinfo)."""
    return set((_field("flags") or "").split())


def cpu_description() -> str:
    """The CPU model and whether it has BF16 (AVX-512) and AMX instructions."""
    model = _field("model name") or platform.processor() or "unknown CPU"
    flags = cpu_flags()
    bf16 = "yes" if "avx512_bf16" in flags else "no"
    amx = ", ".join(sorted(f for f in flags if f.startswith("amx"))) or "no"
    return f"{model}; BF16 (avx512_bf16): {bf16}; AMX: {amx}"


def default_workers(tasks: int) -> int:
    """One worker per core this process may use, and no more than there is work for (the scorer's
    reader threads, BM3D's processes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(tasks, cores))
