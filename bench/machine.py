"""What every benchmark prints beside its figures: the machine differs from run to run, and so do they."""

from __future__ import annotations

import os

from rawdenoise.cpu import cpu_description

__all__ = ["cpu_description", "machine_line"]


def machine_line() -> str:
    """The CPU (model, BF16, AMX), its cores and the threads torch computes with (when torch is loaded)."""
    import sys

    threads = f", torch threads {sys.modules['torch'].get_num_threads()}" if "torch" in sys.modules else ""
    return f"CPU: {cpu_description()}; {os.cpu_count()} cores{threads}"
