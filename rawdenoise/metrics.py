"""The contest's metrics on raw DN values: PSNR, SSIM in the contest's semantics, and the score.

The contest scored with scikit-image 0.17's `structural_similarity(gt, out, multichannel=True,
data_range=white)` on the 2-D mosaic. With `multichannel=True` the last axis (the 4624 columns) is
taken as channels, so the "SSIM" is the mean over columns of a 1-D SSIM down each column with a 7-tap
uniform window ("columns" mode, `channel_axis=-1` in current scikit-image). "2d" mode is ordinary
SSIM with a 7x7 window. Both use scikit-image's defaults: K1 = 0.01, K2 = 0.03, sample covariance,
and only windows that lie wholly inside the frame (scikit-image crops the 3-pixel border).

Our kernels slide every window's sums along the frame in one pass, in parallel over column bands.
DN values are integers below 2**16, so the sums (and n*sum(x^2) - sum(x)^2) stay below 2**53 and are
exact in float64: no cancellation in the variances. A 16-megapixel pair takes a tenth of a second
instead of scikit-image's seconds, and agrees with it to ~1e-15 (bench/bench_metrics.py).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np

WINDOW = 7
K1, K2 = 0.01, 0.03
WINDOWS = {"columns": (WINDOW, 1), "2d": (WINDOW, WINDOW)}
BAND_COLUMNS = 128  # columns per parallel work item


def _as_dn(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mosaic, got shape {image.shape}")
    if image.dtype.kind not in "ui":
        raise TypeError(f"{name} must hold integer DN values, got {image.dtype}")
    if image.size and (image.min() < 0 or image.max() > 65535):
        raise ValueError(f"{name} values must lie in [0, 65535]")
    return np.ascontiguousarray(image, dtype=np.uint16)


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = _as_dn(gt, "gt"), _as_dn(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"shapes differ: gt {gt.shape}, pred {pred.shape}")
    return gt, pred


@numba.njit(cache=True, parallel=True)
def _squared_error_sum(x, y):  # pragma: no cover - compiled
    h, w = x.shape
    rows = np.zeros(h, dtype=np.int64)
    for i in numba.prange(h):
        acc = 0
        for j in range(w):
            d = np.int64(x[i, j]) - np.int64(y[i, j])
            acc += d * d
        rows[i] = acc
    return rows.sum()


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """10 log10(data_range^2 / MSE), as skimage.metrics.peak_signal_noise_ratio; inf for identical frames."""
    gt, pred = _check_pair(gt, pred)
    sse = int(_squared_error_sum(gt, pred))
    if sse == 0:
        return math.inf
    return float(10.0 * np.log10(float(data_range) ** 2 / (sse / gt.size)))


@numba.njit(cache=True, fastmath=True, inline="always")
def _ssim_at(hx, hy, hxx, hyy, hxy, n, c1, c2):  # pragma: no cover - compiled
    """SSIM of one window of n samples from its sums of x, y, x^2, y^2 and xy."""
    scale = (n / (n - 1.0)) / (n * n)  # sample covariance, as scikit-image's default
    ux = hx / n
    uy = hy / n
    # n*sum(x^2) - sum(x)^2 of integer data is exact in float64: no cancellation in the variances
    vx = scale * (n * hxx - hx * hx)
    vy = scale * (n * hyy - hy * hy)
    vxy = scale * (n * hxy - hx * hy)
    return ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


@numba.njit(cache=True, fastmath=True, inline="always")
def _move(sx, sy, sxx, syy, sxy, j, a, v, sign):  # pragma: no cover - compiled
    """Add (sign 1) or remove (sign -1) one pair of samples from column j's window sums."""
    a = np.float64(a)
    v = np.float64(v)
    sx[j] += sign * a
    sy[j] += sign * v
    sxx[j] += sign * (a * a)
    syy[j] += sign * (v * v)
    sxy[j] += sign * (a * v)


@numba.njit(cache=True, parallel=True, fastmath=True)
def _ssim_sum(x, y, wh, ww, c1, c2, bands):  # pragma: no cover - compiled
    """Sum of the SSIM map over every wh x ww window wholly inside the frame.

    Each band of output columns keeps per-column sums over the current wh rows, updated by one row in
    and one row out per step, and slides a ww-wide window along them. fastmath only lets the compiler
    reorder the float sums into SIMD lanes; the window sums themselves are exact."""
    h, w = x.shape
    n = wh * ww
    totals = np.zeros(len(bands) - 1)
    for b in numba.prange(len(bands) - 1):
        c0, c1_ = bands[b], bands[b + 1]
        width = c1_ - c0 + ww - 1
        sx = np.zeros(width)
        sy = np.zeros(width)
        sxx = np.zeros(width)
        syy = np.zeros(width)
        sxy = np.zeros(width)
        for r in range(wh - 1):
            for j in range(width):
                _move(sx, sy, sxx, syy, sxy, j, x[r, c0 + j], y[r, c0 + j], 1.0)
        band_total = 0.0
        for r in range(wh - 1, h):
            row_total = 0.0
            for j in range(width):  # the row entering the window, and the one leaving it
                _move(sx, sy, sxx, syy, sxy, j, x[r, c0 + j], y[r, c0 + j], 1.0)
                if ww == 1:  # the contest's columns mode: the window is the column sum itself
                    row_total += _ssim_at(sx[j], sy[j], sxx[j], syy[j], sxy[j], n, c1, c2)
                    _move(sx, sy, sxx, syy, sxy, j, x[r - wh + 1, c0 + j], y[r - wh + 1, c0 + j], -1.0)
            if ww > 1:
                hx = hy = hxx = hyy = hxy = 0.0
                for j in range(ww - 1):
                    hx += sx[j]
                    hy += sy[j]
                    hxx += sxx[j]
                    hyy += syy[j]
                    hxy += sxy[j]
                for j in range(c1_ - c0):
                    k = j + ww - 1
                    hx += sx[k]
                    hy += sy[k]
                    hxx += sxx[k]
                    hyy += syy[k]
                    hxy += sxy[k]
                    row_total += _ssim_at(hx, hy, hxx, hyy, hxy, n, c1, c2)
                    hx -= sx[j]
                    hy -= sy[j]
                    hxx -= sxx[j]
                    hyy -= syy[j]
                    hxy -= sxy[j]
                for j in range(width):
                    _move(sx, sy, sxx, syy, sxy, j, x[r - wh + 1, c0 + j], y[r - wh + 1, c0 + j], -1.0)
            band_total += row_total
        totals[b] = band_total
    return totals.sum()


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float, mode: str = "columns") -> float:
    """Mean SSIM in the contest's semantics ("columns") or ordinary 2-D SSIM ("2d"); see the module doc."""
    if mode not in WINDOWS:
        raise ValueError(f"unknown SSIM mode {mode!r}; expected one of {', '.join(WINDOWS)}")
    gt, pred = _check_pair(gt, pred)
    wh, ww = WINDOWS[mode]
    h, w = gt.shape
    if h < wh or w < ww:
        raise ValueError(f"frame {h}x{w} is smaller than the {wh}x{ww} SSIM window")
    out_w = w - ww + 1
    # fixed-width bands, summed in a fixed order: the result does not depend on the thread count
    bands = np.append(np.arange(0, out_w, BAND_COLUMNS), out_w).astype(np.int64)
    c1 = (K1 * float(data_range)) ** 2
    c2 = (K2 * float(data_range)) ** 2
    total = _ssim_sum(gt, pred, wh, ww, c1, c2, bands)
    return float(total / ((h - wh + 1) * out_w))


def frame_metrics(gt: np.ndarray, pred: np.ndarray, contest) -> tuple[float, float]:
    """(PSNR, SSIM) of one frame pair under a contest profile's metric settings."""
    return (
        psnr(gt, pred, contest.metric.data_range),
        ssim(gt, pred, contest.metric.data_range, contest.metric.ssim_mode),
    )


def capped(psnr_value: float, contest) -> float:
    """An infinite PSNR (identical frames) counts as the profile's cap in means and scores."""
    return min(psnr_value, contest.metric.psnr_cap)


def summarise(psnrs: list[float], ssims: list[float], contest) -> tuple[float, float, float]:
    """(mean PSNR, mean SSIM, score) of a test set: the score is taken on the two means."""
    mean_psnr = float(np.mean([capped(p, contest) for p in psnrs]))
    mean_ssim = float(np.mean(ssims))
    return mean_psnr, mean_ssim, contest.score(mean_psnr, mean_ssim)


def limit_threads_for_workers(workers: int) -> None:
    """Inside one of several worker processes, share the cores instead of oversubscribing them."""
    numba.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))
