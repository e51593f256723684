"""What every benchmark prints beside its figures: the machine differs from run to run, and so do they."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """The CPU model and whether it has BF16 (AVX-512) and AMX instructions, from /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown CPU", platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    bf16 = "yes" if "avx512_bf16" in flags else "no"
    amx = ", ".join(sorted(f for f in flags if f.startswith("amx"))) or "no"
    return f"{model}; BF16 (avx512_bf16): {bf16}; AMX: {amx}"


def machine_line() -> str:
    import torch

    return f"CPU: {cpu_description()}; {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
