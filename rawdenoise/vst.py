"""Variance stabilisation: make the contest's signal-dependent noise look like unit white noise.

A normalised value observed as N(x, a*x + b) (shot noise of gain a, read noise of variance b) is
what a Poisson-Gaussian sensor gives: z = x/a is Poisson-like with Gaussian noise of std s = sqrt(b)/a.
The generalised Anscombe transform (Starck, Murtagh & Bijaoui 1998) f(z) = 2*sqrt(z + 3/8 + s^2)
(here less its value at zero, see `anscombe`) turns that into noise of variance ~1 at every level, so a denoiser built for white Gaussian noise
(BM3D) can be told "sigma = 1".

Going back, the algebraic inverse is badly biased where the noise is large against the signal, and
more so here than in the textbook case because the contest clips every noisy value to [black, white]:
at x = 0.001 with a = 1e-2, b = 1e-3 it overestimates 15-fold. So the inverse is Makitalo & Foi's
exact unbiased inverse ("Optimal inversion of the Anscombe transformation in low-count Poisson image
denoising", IEEE TIP 2011), computed for our model itself: tabulate E[f(clip(y))] for y ~ N(x, a*x + b)
over x in [0, 1] and invert that monotone curve by interpolation. The expectation is the clipped
tails' mass at f(0) and f(1) plus Gauss-Legendre quadrature inside [0, 1], where the integrand is
smooth (quadrature across the clip's kink would be off by several 1e-4 near black).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(96)
_SPAN = 9.0  # standard deviations either side of the mean: beyond, the Gaussian holds < 1e-18
_GRID = np.linspace(0.0, 1.0, 4097) ** 2  # normalised means, dense near black where the bias lives


def anscombe(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Noisy normalised values -> values whose noise has variance ~1.

    (2/a)*sqrt(a*x + c) with c = 3/8*a^2 + b, less its value at x = 0, written as
    2x / (sqrt(a*x + c) + sqrt(c)): the same noise, but exact as a -> 0 (read noise alone, where it
    tends to x / sqrt(b)) instead of a difference of numbers near 2*sqrt(b)/a that float32 code
    (BM3D's) cannot resolve."""
    x = np.asarray(x, dtype=np.float64)
    c = max(0.375 * a * a + b, 1e-30)
    return 2.0 * x / (np.sqrt(np.maximum(a * x + c, 0.0)) + np.sqrt(c))


def expected_anscombe(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """E[anscombe(clip(y, 0, 1))] for y ~ N(x, a*x + b): what a perfect denoiser of the transformed
    frame returns at a pixel whose clean value is x."""
    x = np.asarray(x, dtype=np.float64)
    sigma = np.sqrt(a * x + b)
    lo, hi = np.clip(x - _SPAN * sigma, 0.0, 1.0), np.clip(x + _SPAN * sigma, 0.0, 1.0)
    half = (hi - lo) / 2
    y = ((hi + lo) / 2)[..., None] + half[..., None] * _NODES
    density = np.exp(-0.5 * ((y - x[..., None]) / sigma[..., None]) ** 2) / (sigma[..., None] * np.sqrt(2 * np.pi))
    inside = (anscombe(y, a, b) * density) @ _WEIGHTS * half
    below, above = ndtr(-x / sigma), ndtr((x - 1.0) / sigma)  # the mass the contest clips to black and white
    return inside + below * anscombe(0.0, a, b) + above * anscombe(1.0, a, b)


def inverse_anscombe(d: np.ndarray, a: float, b: float) -> np.ndarray:
    """A denoised transformed value -> the normalised clean value whose expected transform it is
    (the exact unbiased inverse under the contest's clipped model)."""
    expected = np.maximum.accumulate(expected_anscombe(_GRID, a, b))  # monotone, as interp needs
    return np.interp(np.asarray(d, dtype=np.float64), expected, _GRID)
