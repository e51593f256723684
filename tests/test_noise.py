from __future__ import annotations

import numpy as np
import pytest

from rawdenoise.noise import (
    NoiseLevel,
    contest_noise_levels,
    mosaic_from_rgb,
    quantise,
    random_camera,
    unprocess,
)
from rawdenoise.raw import pack


@pytest.mark.parametrize("a, b", [(1e-4, 1e-6), (1e-3, 3e-5), (1e-2, 1e-3)])
def test_sampled_noise_has_variance_a_x_plus_b(a, b, rng):
    level = NoiseLevel(a, b)
    for x in (0.05, 0.3, 0.7):
        clean = np.full(200_000, x)
        residual = level.sample(clean, rng) - clean
        expected = a * x + b
        assert abs(residual.mean()) < 5 * np.sqrt(expected / clean.size)
        # the sample variance of 200k normals lies within 1.5 % of the truth with overwhelming odds
        assert residual.var() == pytest.approx(expected, rel=0.015)


def test_quantised_noisy_frames_keep_the_model_in_dn(rng, contest):
    black, white = int(contest.black_array.max()), contest.white
    level = NoiseLevel(2e-3, 1e-4)
    x = 0.4
    noisy = quantise(level.sample(np.full((400, 500), x), rng), black, white)
    assert noisy.dtype == np.uint16 and noisy.min() >= black and noisy.max() <= white
    normalised = (noisy.astype(np.float64) - black) / (white - black)
    # rounding to DN adds 1/12 DN^2 of variance, negligible here
    assert normalised.var() == pytest.approx(level.a * x + level.b, rel=0.02)


def test_contest_noise_types_span_the_profiles_ranges_and_the_test_level_is_heavier(contest):
    levels, heavy = contest_noise_levels(contest)
    assert len(levels) == contest.noise.types
    a = [lv.a for lv in levels]
    b = [lv.b for lv in levels]
    assert a == sorted(a) and b == sorted(b)
    assert a[0] == pytest.approx(contest.noise.a_range[0]) and a[-1] == pytest.approx(contest.noise.a_range[1])
    assert b[0] == pytest.approx(contest.noise.b_range[0]) and b[-1] == pytest.approx(contest.noise.b_range[1])
    assert heavy.a > a[-1] and heavy.b > b[-1]


def test_unprocess_gives_linear_camera_raw_in_range(rng):
    srgb = rng.random((32, 48, 3), dtype=np.float32)
    camera = random_camera(rng)
    linear = unprocess(srgb, camera)
    assert linear.dtype == np.float32 and linear.shape == srgb.shape
    assert linear.min() >= 0 and linear.max() <= 1
    # inverse gamma makes mid-grey dark: raw data is linear, and its mean sits well below sRGB's
    assert linear.mean() < 0.6 * srgb.mean()
    grey = unprocess(np.full((2, 2, 3), 0.5, np.float32), camera)[0, 0]
    # a neutral grey in camera space is tinted by the inverse white balance: green strongest
    assert grey[1] > grey[0] and grey[1] > grey[2]
    assert grey[0] / grey[1] == pytest.approx(1 / camera.red_gain, rel=1e-4)


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_mosaic_samples_each_site_with_its_own_colour(cfa):
    rgb = np.zeros((4, 6, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0.1, 0.5, 0.9
    packed = pack(mosaic_from_rgb(rgb, cfa), cfa)
    assert np.allclose(packed[0], 0.1) and np.allclose(packed[1:3], 0.5) and np.allclose(packed[3], 0.9)
