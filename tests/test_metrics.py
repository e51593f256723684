from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rawdenoise.contest import load_contest
from rawdenoise.metrics import frame_metrics, psnr, ssim, summarise

R = 16383


def reference(gt, pred, mode):
    """scikit-image as the contest ran it: 0.17's multichannel=True is channel_axis=-1 on the 2-D mosaic."""
    if mode == "columns":
        return structural_similarity(gt, pred, channel_axis=-1, data_range=R)
    return structural_similarity(gt, pred, data_range=R)


def pairs(rng):
    shape = (90, 124)
    gt = rng.integers(1024, R + 1, size=shape).astype(np.uint16)
    yield "random", gt, np.clip(gt + rng.normal(0, 300, shape), 1024, R).round().astype(np.uint16)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = (1024 + 6000 * (1 + np.sin(xx / 9.0) * np.cos(yy / 13.0))).astype(np.uint16)
    yield "structured", smooth, np.clip(smooth + rng.normal(0, 40, shape), 1024, R).round().astype(np.uint16)
    edges = np.where((xx // 8 + yy // 8) % 2, 15000, 1100).astype(np.uint16)
    yield "edges, shifted", edges, np.roll(edges, 1, axis=1)
    flat = np.full(shape, 3000, np.uint16)
    yield "flat vs flat", flat, flat + 7
    yield "saturated vs black", np.full(shape, R, np.uint16), np.full(shape, 1024, np.uint16)
    yield "narrow (7 rows)", gt[:7], np.clip(gt[:7].astype(int) + 5, 0, R).astype(np.uint16)


@pytest.mark.parametrize("mode", ["columns", "2d"])
def test_ssim_and_psnr_agree_with_scikit_image(mode, rng):
    for label, gt, pred in pairs(rng):
        assert ssim(gt, pred, R, mode) == pytest.approx(reference(gt, pred, mode), abs=1e-7), label
        assert psnr(gt, pred, R) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=R), abs=1e-9), label


def test_identical_frames_give_infinite_psnr_ssim_one_and_a_defined_score(rng):
    contest = load_contest("zte2022")
    gt = rng.integers(1024, R + 1, size=(32, 40)).astype(np.uint16)
    p, s = frame_metrics(gt, gt.copy(), contest)
    assert math.isinf(p) and s == 1.0
    mean_psnr, mean_ssim, score = summarise([p, 40.0], [s, 0.9], contest)
    assert mean_psnr == (contest.metric.psnr_cap + 40.0) / 2
    assert math.isfinite(score) and score == pytest.approx(contest.score(mean_psnr, mean_ssim))


def test_columns_mode_is_not_ordinary_ssim(rng):
    """The contest's 7x1 windows and ordinary 7x7 windows give different numbers: the mode matters."""
    gt = rng.integers(1024, R + 1, size=(64, 64)).astype(np.uint16)
    pred = np.clip(gt.astype(np.int32) + rng.integers(-900, 901, size=gt.shape), 0, R).astype(np.uint16)
    assert ssim(gt, pred, R, "columns") != pytest.approx(ssim(gt, pred, R, "2d"), abs=1e-3)


def test_bad_inputs_are_refused():
    a = np.zeros((10, 10), np.uint16)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, np.zeros((10, 12), np.uint16), R)
    with pytest.raises(TypeError, match="integer"):
        ssim(a, a.astype(np.float32), R)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(np.zeros((6, 10), np.uint16), np.zeros((6, 10), np.uint16), R)
    with pytest.raises(ValueError, match="mode"):
        ssim(a, a, R, "3d")


@pytest.mark.slow
def test_agreement_on_a_contest_size_frame(rng):
    shape = (3472, 4624)
    gt = rng.integers(1024, R + 1, size=shape).astype(np.uint16)
    pred = np.clip(gt.astype(np.int32) + rng.integers(-400, 401, size=shape), 1024, R).astype(np.uint16)
    assert psnr(gt, pred, R) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=R), abs=1e-9)
    assert ssim(gt, pred, R) == pytest.approx(reference(gt, pred, "columns"), abs=1e-7)
