"""noise.csv: each pair's noise profile (a, b), as a data folder may list it at its root.

make_demo_data writes one, and contest data may carry one too. Training takes a pair's profile from
it before any other source (patch_store) and the scorer groups test frames by its levels
(noise_levels), so both read it here: one parser, one set of checks, one message naming the file and
line of a bad row.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rawdenoise.errors import InputError

NOISE_CSV = "noise.csv"  # split, index, noisy, gt, ..., noise_type, a, b; files relative to the data folder


@dataclass(frozen=True)
class ListedProfile:
    noisy: str  # the noisy file, relative to the data folder ("" where the row names none)
    gt: str  # its ground truth, likewise
    noise_type: str  # the data's name for the level ("" where it has none)
    a: float
    b: float


def read_noise_csv(root: str | Path) -> Iterator[dict]:
    """The rows as written, every value a string (for tools and tests that want every column)."""
    with open(Path(root) / NOISE_CSV, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def listed_profiles(root: str | Path) -> list[ListedProfile]:
    """Every row's profile, checked: a and b finite, at least 0 and not both 0. [] without a noise.csv."""
    path = Path(root) / NOISE_CSV
    if not path.is_file():
        return []
    listed = []
    rows = read_noise_csv(root)
    for line in itertools.count(2):
        try:
            row = next(rows, None)
        except UnicodeDecodeError:
            raise InputError(f"{path}: line {_first_undecodable_line(path)} is not UTF-8 text; save the file as UTF-8") from None
        except (csv.Error, OSError) as err:
            raise InputError(f"{path}: cannot be read as CSV at line {line} ({err})") from None
        if row is None:
            break
        try:
            a, b = float(row["a"]), float(row["b"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: line {line} has no numeric a and b columns") from None
        if not (a >= 0 and b >= 0 and a + b > 0 and math.isfinite(a + b)):
            raise InputError(f"{path}: line {line}: a and b must be finite, at least 0 and not both 0, got {a}, {b}")
        listed.append(ListedProfile(row.get("noisy") or "", row.get("gt") or "", row.get("noise_type") or "", a, b))
    return listed


def _first_undecodable_line(path: Path) -> int:
    """The line a text decoder failed on (it decodes in chunks, so its own position says little)."""
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return 1
