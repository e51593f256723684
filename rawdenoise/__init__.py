"""rawdenoise: the shared vocabulary of the contest pipeline (raw frames, contest profiles, noise, metrics).

Stages live in train/, submission/ and tools/; this package holds what they all speak, and no CLI.
"""

from rawdenoise.errors import InputError

__all__ = ["InputError"]
__version__ = "0.1.0"
