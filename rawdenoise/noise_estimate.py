"""Estimate a frame's noise profile (a, b) from the noisy frame alone.

The contest's noise (noise.py) is Gaussian with variance a*x + b on normalised x, then clipped to
[0, 1] and rounded to DN. Measuring it on a photograph has two enemies: texture, which any local
variance mistakes for noise, and clipping, which makes the dark pixels' noise look smaller than it is
(at b = 2e-3 the noise std exceeds the level of every dark pixel). The method follows Foi et al.,
"Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data" (IEEE TIP 2008):
a high-pass residual for the noise and a local mean for the level, only the smoothest blocks of each
level set, and a fit of (a, b) to the *clipped* Gaussian's mean and variance.

1. Each packed channel is cut into 3x3 cells, and each cell into the 9 coefficients of an orthonormal
   separable basis: discrete polynomials of degree 0, 1 and 2 along each axis ([1,1,1], [-1,0,1],
   [1,-2,1], normalised). On flat ground the noise makes the coefficients independent, each with the
   noise's variance. The (2,2) coefficient, [1,-2,1] x [1,-2,1] / 6, annihilates any signal that is
   linear along either axis, and so any horizontal or vertical edge: it measures the noise. The
   (1,1), (1,2), (2,1), (0,2) and (2,0) coefficients see texture sooner (between them they also see
   a speck at the cell's centre): they judge whether a block is flat. Under noise the two sets are
   independent, so keeping only blocks that *look* flat biases nothing: the variance measured on the
   kept blocks is exact for the flat ones, however strict the selection.
2. Cells are grouped into blocks of 4x4 cells (12x12 packed pixels): each block has a level (the
   mean of its pixels), a flatness score and a measured variance.
3. Per channel, blocks are put into level sets of about equal counts (24 blocks, at most 40 sets) by
   their level. The first round keeps the flattest tenth of each level set and fits; two more rounds
   keep the blocks whose flatness score is below 1.1 times the variance the fit predicts at their
   level (a self-consistent weak-texture selection, as in Liu, Tanaka and Okutomi 2013) and fit again.
4. The fit: for given (a, b), the mean and variance of clip(N(x, a*x + b), 0, 1) (plus the DN
   rounding's 1/12 DN^2) trace a curve as x runs over [0, 1]; each level set's (mean, variance)
   should lie on it. Residuals are in log variance (corrected for the log's bias on a chi-square),
   weighted by each set's sample count; a residual *above* the curve (texture that slipped through)
   counts only logarithmically beyond two sigmas, one below it counts in full. The four channels of
   the CFA have their own levels but share (a, b), so all their level sets enter one fit. Where the
   data leave a direction free (every level set at black says nothing about a), a negligible cost on
   a + b keeps the fit from wandering off along it.

What it cannot do: tell a photograph's own noise (carried into a synthetic "clean" frame by
unprocessing) from the added noise; see texture at the packed channel's Nyquist frequency (a one-site
checkerboard lives in the same coefficients as the noise); pin b down on a frame without flat ground
at dark levels, or a without it at bright ones (the fit extrapolates, and the error stays small only
where the frame has few pixels). Deterministic: the same frame gives the same (a, b) bit for bit; the
cell statistics are one compiled pass over the frame (about 0.1 s for a 3472x4624 frame on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rawdenoise.errors import InputError
from rawdenoise.raw import RawFrame, channel_positions

CELL = 3  # pixels per cell side: the 3-point polynomial basis
BLOCK_CELLS = 4  # cells per block side: blocks of 12x12 packed pixels
FIRST_ROUND_FRACTION = 0.1  # flattest share of each level set in the first round
FLAT_THRESHOLD = 1.1  # later rounds: flatness score at most this many times the fitted noise variance
ROUNDS = 3
BLOCKS_PER_LEVEL_SET = 24  # target blocks per level set (fewer level sets on small frames)
MAX_LEVEL_SETS = 40  # per channel
SYSTEMATIC = 0.03  # relative error floor of a level set's variance, beside its sampling error
ABOVE_SCALE = 2.0  # residuals above the curve beyond this many sigmas count only logarithmically
PULL = 1.0  # a and b each cost value / PULL: decides only what the data leave free


@dataclass(frozen=True)
class NoiseEstimate:
    """The fitted profile and the level sets it was fitted to (for plots and diagnostics)."""

    a: float
    b: float
    channel: np.ndarray  # per level set: packed channel index
    mean: np.ndarray  # mean normalised value of its kept blocks
    variance: np.ndarray  # noise variance measured on them
    samples: np.ndarray  # (2,2) coefficients behind that variance

    @property
    def profile(self) -> tuple[float, float]:
        return self.a, self.b


def clipped_moments(x, a: float, b: float):
    """Mean and variance of clip(N(x, a*x + b), 0, 1), elementwise over x in [0, 1]."""
    from scipy.special import ndtr  # here, as scipy.optimize in the fits: 0.3 s that a predict of tagged frames skips
    x = np.asarray(x, dtype=np.float64)
    sigma = np.sqrt(np.maximum(a * x + b, 0.0))
    safe = np.maximum(sigma, 1e-300)
    lo, hi = -x / safe, (1.0 - x) / safe  # the clip bounds in standard units
    cdf_lo, cdf_hi = ndtr(lo), ndtr(hi)
    pdf_lo, pdf_hi = np.exp(-0.5 * lo * lo) / np.sqrt(2 * np.pi), np.exp(-0.5 * hi * hi) / np.sqrt(2 * np.pi)
    inside = cdf_hi - cdf_lo
    tail_hi = 1.0 - cdf_hi
    # moments of y - x, which stay well conditioned when sigma << x
    m1 = sigma * (pdf_lo - pdf_hi) - x * cdf_lo + (1.0 - x) * tail_hi
    lo_pdf = np.where(np.isfinite(lo), lo * pdf_lo, 0.0)
    hi_pdf = np.where(np.isfinite(hi), hi * pdf_hi, 0.0)
    m2 = sigma**2 * (inside + lo_pdf - hi_pdf) + x * x * cdf_lo + (1.0 - x) ** 2 * tail_hi
    zero = sigma == 0
    mean = np.where(zero, x, x + m1)
    var = np.where(zero, 0.0, np.maximum(m2 - m1 * m1, 0.0))
    return mean, var


_GRID = (1.0 - np.cos(np.linspace(0.0, np.pi, 513))) / 2.0  # dense near black and white, where clipping bends


def model_variance(mean, a: float, b: float, rounding=0.0):
    """The variance the model predicts for pixels whose expected (clipped) value is `mean`, plus the
    DN rounding's variance `rounding`."""
    grid_mean, grid_var = clipped_moments(_GRID, a, b)
    grid_mean = np.maximum.accumulate(grid_mean)  # monotone already; guard np.interp
    return np.interp(mean, grid_mean, grid_var) + rounding


def _levels_of(frame, black, white, contest) -> tuple[np.ndarray, np.ndarray]:
    """The packed normalised frame and each channel's DN rounding variance in normalised units."""
    if isinstance(frame, RawFrame):
        packed = frame.packed()
        black = [frame.black[r, c] for r, c in channel_positions(frame.cfa)]
        white = frame.white
    else:
        packed = np.asarray(frame)
        if packed.ndim != 3 or min(packed.shape) == 0:
            raise ValueError(f"expected a RawFrame or a packed (C, h, w) frame, got shape {packed.shape}")
        if contest is not None:
            grid = contest.black_array
            black = [grid[r, c] for r, c in channel_positions(contest.cfa)] if packed.shape[0] == 4 else grid.max()
            white = contest.white
    if black is None or white is None:
        rounding = np.zeros(packed.shape[0])
    else:
        black = np.asarray(black, dtype=np.float64)
        if black.size not in (1, packed.shape[0]):
            raise ValueError(f"black must be one level or one per channel ({packed.shape[0]}), got {black.tolist()}")
        black = np.broadcast_to(black.ravel(), (packed.shape[0],))
        if np.any(white <= black):
            raise ValueError(f"white level {white} must exceed the black levels {black.tolist()}")
        rounding = 1.0 / (12.0 * (white - black) ** 2)
    return packed, rounding


def _level_sets(levels: np.ndarray) -> np.ndarray:
    """Edges splitting one channel's block levels into level sets of about equal counts."""
    sets = int(np.clip(len(levels) // BLOCKS_PER_LEVEL_SET, 1, MAX_LEVEL_SETS))
    if len(levels) == 0:
        return np.array([-np.inf, np.inf])
    edges = np.sort(levels)[np.linspace(0, len(levels) - 1, sets + 1).round().astype(int)]
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def _aggregate(level, estimate, keep, key, rounding):
    """Per level set (key = channel * (MAX_LEVEL_SETS + 1) + set): the mean level, the measured variance
    and its count of (2,2) coefficients over the kept blocks."""
    if not keep.any():
        return None
    uniq, inverse = np.unique(key[keep], return_inverse=True)
    blocks = np.bincount(inverse)
    mean = np.bincount(inverse, weights=level[keep]) / blocks
    variance = np.bincount(inverse, weights=estimate[keep]) / blocks
    chan = uniq // (MAX_LEVEL_SETS + 1)
    return chan, mean, variance, blocks * float(BLOCK_CELLS**2), rounding[chan]


def _fit(chan, mean, variance, samples, rounding, start=None) -> tuple[float, float]:
    """(a, b) whose clipped-Gaussian curve passes through the level sets (robust to texture above it)."""
    from scipy.optimize import least_squares
    floor = np.maximum(rounding, 1e-20) * 0.5
    log_obs = np.log(np.maximum(variance, floor)) + 1.0 / samples  # E[log(chi2_n / n)] = -1/n + O(1/n^2)
    scale = 1.0 / np.sqrt(2.0 / samples + SYSTEMATIC**2)

    def residuals(p):
        a, b = p[0] ** 2, p[1] ** 2
        model = model_variance(mean, a, b, rounding)
        z = (log_obs - np.log(np.maximum(model, floor))) * scale
        above = ABOVE_SCALE * np.sqrt(np.log1p((z / ABOVE_SCALE) ** 2))  # Cauchy's loss above the curve
        # A whisper of a pull towards zero decides a direction the data leave free (a frame whose every
        # level set sits at black cannot tell a from b): a and b cost a / PULL and b / PULL.
        return np.r_[np.where(z > 0, above, z), p / np.sqrt(PULL)]

    if start is None:
        # a straight line through the unclipped level sets, weighted by their precision
        unclipped = mean > 3.0 * np.sqrt(variance)
        if unclipped.sum() >= 2 and np.ptp(mean[unclipped]) > 0:
            w = samples[unclipped] / np.maximum(variance[unclipped], floor[unclipped]) ** 2
            design = np.stack([mean[unclipped], np.ones(unclipped.sum())], axis=1) * np.sqrt(w)[:, None]
            a0, b0 = np.linalg.lstsq(design, variance[unclipped] * np.sqrt(w), rcond=None)[0]
        else:
            a0, b0 = 0.0, float(np.median(variance))
        start = (max(a0, 0.0), max(b0, 0.0))
        if start[0] == 0 and start[1] == 0:
            start = (0.0, float(np.median(variance)))
        lowest = float(np.min(np.maximum(variance, floor)))
        starts = [start, (0.0, lowest), (start[0] * 0.5, start[1] * 0.5)]
    else:
        starts = [start]
    best = None
    for a0, b0 in starts:
        p0 = np.sqrt([max(a0, 1e-14), max(b0, 1e-14)])
        result = least_squares(residuals, p0, bounds=([0.0, 0.0], [np.inf, np.inf]), x_scale="jac", method="trf")
        if best is None or result.cost < best.cost:
            best = result
    return float(best.x[0] ** 2), float(best.x[1] ** 2)


def estimate_noise(frame, *, black=None, white=None, contest=None) -> NoiseEstimate:
    """Fit (a, b), variance a*x + b on normalised x, to a noisy frame alone; with its level sets.

    `frame` is a RawFrame, or a packed normalised (C, h, w) array (R, Gr, Gb, B for a Bayer frame)
    with its levels: `black` (one value, or one per channel) and `white` in DN, or a `contest` profile
    whose levels and CFA apply. The levels only give the DN rounding's variance; without them it is
    taken as zero.
    """
    packed, rounding = _levels_of(frame, black, white, contest)
    packed = np.ascontiguousarray(packed, dtype=np.float32)
    channels, h, w = packed.shape
    side = CELL * BLOCK_CELLS
    bh, bw = h // side, w // side
    if bh == 0 or bw == 0:
        raise ValueError(f"a frame of {h}x{w} packed pixels is smaller than one {side}x{side} block")
    if not np.isfinite(packed).all():
        raise ValueError("the frame holds values that are not finite")
    from rawdenoise.noise_cells import cell_statistics  # here: loading numba costs 56 MB and 0.3 s, which
    # a predict that never estimates (tagged frames, a blind model) should not pay

    cells = cell_statistics(packed[:, : bh * side, : bw * side])  # (C, bh*K, bw*K, 3)
    k = BLOCK_CELLS
    cells = cells.reshape(channels, bh, k, bw, k, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, k * k, 3)
    level = cells[:, :, 0].mean(axis=1)
    flat = cells[:, :, 1].mean(axis=1)
    estimate = cells[:, :, 2].mean(axis=1)
    channel = np.repeat(np.arange(channels), bh * bw)
    # a block whose every pixel sits at a clip bound carries no measurable noise (a saturated highlight)
    informative = ((level > 0.0) & (level < 1.0)) | (estimate > 0)
    key = np.zeros(len(cells), dtype=np.int64)
    for c in range(channels):
        mine = channel == c
        edges = _level_sets(level[mine & informative])
        sets = np.clip(np.searchsorted(edges, level[mine], side="right") - 1, 0, len(edges) - 2)
        key[mine] = c * (MAX_LEVEL_SETS + 1) + sets

    # round 0: the flattest share of every level set
    keep = np.zeros(len(cells), dtype=bool)
    order = np.lexsort((flat, key))
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends):
        take = max(2, int(np.ceil(FIRST_ROUND_FRACTION * (e - s))))
        keep[order[s : s + take]] = True
    keep &= informative
    sets = _aggregate(level, estimate, keep, key, rounding)
    if sets is None:
        return NoiseEstimate(0.0, 0.0, *(np.zeros(0) for _ in range(4)))
    a, b = _fit(*sets)
    for _ in range(ROUNDS - 1):
        expected = model_variance(level, a, b, rounding[channel])
        next_sets = _aggregate(level, estimate, informative & (flat <= FLAT_THRESHOLD * expected), key, rounding)
        if next_sets is None or len(next_sets[0]) < 2:
            break
        sets = next_sets
        a, b = _fit(*sets, start=(a, b))
    chan, mean, variance, count, _ = sets
    return NoiseEstimate(a, b, chan, mean, variance, count)


def estimate_noise_profile(frame, *, black=None, white=None, contest=None) -> tuple[float, float]:
    """(a, b) of the noise variance a*x + b on normalised x, estimated from the noisy frame alone.

    `frame`: a RawFrame, or a packed normalised (C, h, w) array with `black` and `white` (DN) or a
    `contest` profile for its levels. See `estimate_noise` for the level sets behind the fit.
    """
    return estimate_noise(frame, black=black, white=white, contest=contest).profile


PAIR_LEVEL_SETS = 64  # per pair fit: level sets of equal pixel counts over the clean frame's levels


def fit_pair_profile(noisy, clean, *, rounding: float = 0.0) -> tuple[float, float]:
    """(a, b) of a training pair, fitted to the residual noisy - clean against the clean level.

    Far more exact than any single-frame estimate (every pixel is a noise sample, texture and all),
    and what real pairs without a NoiseProfile tag need. Both are normalised arrays of one shape;
    the noisy one clipped to [0, 1] as a sensor does, which the fit models (clipped_moments).
    `rounding` is the DN rounding's variance in normalised units.
    """
    from scipy.optimize import least_squares

    noisy, clean = np.asarray(noisy, dtype=np.float64).ravel(), np.asarray(clean, dtype=np.float64).ravel()
    if noisy.shape != clean.shape:
        raise ValueError(f"a pair needs two frames of one shape, got {noisy.shape} and {clean.shape}")
    inside = (clean > 0) & (clean < 1)  # a crushed black or a saturated highlight is not the model's clip
    noisy, clean = noisy[inside], clean[inside]
    if noisy.size < 2 * PAIR_LEVEL_SETS:
        raise ValueError(f"a pair needs at least {2 * PAIR_LEVEL_SETS} pixels between black and white")
    order = np.argsort(clean, kind="stable")
    sets = np.array_split(order, PAIR_LEVEL_SETS)
    level = np.array([clean[s].mean() for s in sets])
    residual = noisy - clean
    variance = np.array([residual[s].var() for s in sets])
    count = np.array([len(s) for s in sets], dtype=np.float64)
    usable = (variance > 0) & (level > 0) & (level < 1)
    if usable.sum() < 2:
        return 0.0, float(max(variance.mean() - rounding, 0.0))
    level, variance, count = level[usable], variance[usable], count[usable]
    weight = np.sqrt(count / 2.0)  # log variance of n samples has std sqrt(2/n)

    def residuals(p):
        a, b = p[0] ** 2, p[1] ** 2
        return weight * (np.log(clipped_moments(level, a, b)[1] + rounding + 1e-30) - np.log(variance))

    # start from a straight line through the sets, then fit the clipped model in log variance
    slope, intercept = np.polyfit(level, variance, 1, w=1.0 / variance)
    p0 = np.sqrt([max(slope, 1e-8), max(intercept, 1e-10)])
    result = least_squares(residuals, p0, x_scale="jac", method="trf")
    return float(result.x[0] ** 2), float(result.x[1] ** 2)


def tag_profile(frame) -> tuple[float, float] | None:
    """(a, b) from a frame's DNG NoiseProfile tag (S, O per the DNG specification: variance S*x + O), or
    None without a usable one. A tag with one (S, O) pair per colour plane gives their mean."""
    tag = frame.noise_profile
    if not tag or len(tag) < 2 or len(tag) % 2:
        return None
    a, b = float(np.mean(tag[0::2])), float(np.mean(tag[1::2]))
    if not (np.isfinite(a) and np.isfinite(b) and a >= 0 and b >= 0 and a + b > 0):
        return None
    return a, b


def frame_noise_profile(frame, source="auto") -> tuple[float, float]:
    """A frame's (a, b), where the project takes it from: its DNG NoiseProfile tag, else the estimate
    from the frame itself. `source` "estimate" skips the tag; an (a, b) pair is returned as given (a
    command line's --noise A,B)."""
    if not isinstance(source, str):
        return float(source[0]), float(source[1])
    if source not in ("auto", "estimate"):
        raise ValueError(f"noise source must be auto, estimate or (a, b), got {source!r}")
    tagged = tag_profile(frame) if source == "auto" else None
    if tagged is not None:
        return tagged
    try:
        a, b = estimate_noise_profile(frame)
    except ValueError as err:
        raise InputError(f"{frame.path}: cannot estimate its noise profile ({err}); give the frame a NoiseProfile tag "
                         "or, where the command takes it, --noise A,B") from None  # fmt: skip
    if a + b <= 0:
        raise InputError(f"{frame.path}: no measurable noise in the frame (no flat region below saturation); give "
                         "the frame a NoiseProfile tag or, where the command takes it, --noise A,B")  # fmt: skip
    return a, b
