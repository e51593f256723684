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
