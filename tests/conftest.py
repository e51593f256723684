from __future__ import annotations

import numpy as np
import pytest

from rawdenoise.contest import available_contests, load_contest


@pytest.fixture(params=available_contests())
def contest(request):
    """Every profile in configs/contests: tests that take it prove nothing is hard-wired to one contest."""
    return load_contest(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_mosaic(rng, contest, shape=(64, 96)) -> np.ndarray:
    """A uint16 mosaic with values anywhere in the profile's [black, white]."""
    return rng.integers(contest.black_array.max(), contest.white + 1, size=shape).astype(np.uint16)


def copy_noise_csv_with(source_root, target_root, row: int, column: str, value: str) -> int:
    """Copy a data folder's noise.csv with one row's column set to `value`; -> that row's line number."""
    import csv

    from rawdenoise.noise_csv import NOISE_CSV, read_noise_csv

    rows = list(read_noise_csv(source_root))
    rows[row][column] = value
    with open(f"{target_root}/{NOISE_CSV}", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return row + 2  # after the header, counted from 1
