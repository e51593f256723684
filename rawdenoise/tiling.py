"""The one way any stage runs a model on a frame: whole, or a part at a time with the same output.

A contest frame is 16 megapixels; a GPU runs out of memory on it and naive tiles leave seams. There are
two exact ways to run it a part at a time:
- streamed strips (the default, for every model whose operations stream: rawdenoise.streaming): the
  model runs down the frame in strips of rows, layer by layer, each layer keeping only the rows a later
  one still needs, so every pixel of every layer is computed once and nothing needs a margin;
- margin tiles (any other model, or stream=False): tile starts are multiples of 2**depth, so pooling
  and up-sampling grids line up with the frame's; each tile runs with a context margin of at least the
  model's receptive field (measured on the model itself) and only its centre is kept, so no output
  pixel sees the tile's edge; a tile touching the frame border stops at it, so the model pads exactly
  as it does for the whole frame. Equal-shaped tiles can run `batch` at a time.
Everything runs under inference mode, channels-last, in float32 or (precision "bf16") with the
network's body in bf16 (rawdenoise.precision).

A noise-conditioned model gets the frame's noise profile (a, b) with every strip or tile: it builds its
noise map or variance-stabilising transform pointwise inside forward, so both ways stay exact.

The frame is mirrored by BORDER pixels on every side before the model sees it, and the output cropped
back: a convolution pads its input with zeros, so at the frame's edge a network sees a black frame around
the picture, which no photograph has, and denoises its outermost rows worse than the rest. Mirrored
context fixes that at a cost of 2 * BORDER rows and columns.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import numpy as np
import torch

from rawdenoise import streaming
from rawdenoise.models import PROBE_NOISE, is_noise_conditioned
from rawdenoise.precision import autocast

# A conditioned model's reach may differ with the level it is told (k-sigma scales its input by k/a):
# it is probed at the middle and at both ends of every contest's range, heavier test noise included.
PROBE_LEVELS = (PROBE_NOISE, (1e-4, 1e-6), (5e-2, 5e-3))

# predict's --tile default, in packed pixels: about 384 x 384 pixels at a time, which for a streaming
# model is strips of 48 rows on a contest frame (2312 packed columns): the whole predict process about
# 0.8 GB at the whole frame's speed with the baseline U-Net (bench/bench_predict_frame.py).
DEFAULT_TILE = 384

# A tile must match whole-frame output within 1e-5. The probe that measures the receptive field moves
# one input pixel by 4 (four times full scale) and counts an output pixel as reached when it moves by
# more than TOLERANCE. What a tile leaves out is the sum of the influence of every pixel past its
# margin, not one pixel's, so the tolerance is far below the target: NAFNet's LayerNorm and pooled
# attention fade slowly, and at 1e-7 a
# random k-sigma U-Net told a read-noise-heavy level (1e-4, 1e-3) measured 13 pixels, after which
# 16-pixel tiles rounded 0.017 % of DN differently from the whole frame; at 2e-8 it measures 24 and
# none differ. Trained models cost little for it, as their influence falls off a cliff at the
# architecture's own reach: the demo U-Net measures 47 pixels at 1e-7 and 48 at 2e-8 (the same margin),
# the widths-64 quality U-Net 50 at both.
TOLERANCE = 2e-8

# Packed pixels of mirrored context around the frame (fewer where the frame is smaller). Measured on
# held-out split 2 (12 test frames of 192 x 256 packed pixels, bf16): the demo recipe's U-Net (1600
# steps) denoised the frame's outermost 4 rows and columns with 1.04 to 1.40x the squared error they
# have with a mirrored border (the most at heavy noise), and mirroring gained 0.053 dB in the mean PSNR,
# the inside untouched; mirrors of 4, 8, 16 and 32 gained the same. A network trained longer learns the
# zeros: quality_float32 (6000 steps) 0.97 to 1.04x there, +0.002 dB. The cost is 2 * BORDER rows and
# columns: 7 % more pixels on those frames, under 1 % on a contest frame.
BORDER = 4


def _alignment(model) -> int:
    return 2 ** int(getattr(model, "depth", 0))


def _run(model, batch: torch.Tensor, noise, rows: int | None = None) -> torch.Tensor:
    """`noise`: the frame's (a, b), or None for a blind model (a conditioned one refuses None). The
    output has the input's dtype, also under bf16 autocast. `rows`: streamed, that many rows a step."""
    profile = None if noise is None else torch.tensor([noise], dtype=batch.dtype, device=batch.device).expand(len(batch), 2)
    if rows is not None:  # streaming lays out each strip of the frame channels-last, not a copy of it all
        return streaming.stream(model, batch, profile, rows).to(batch.dtype)
    return model(batch.contiguous(memory_format=torch.channels_last), profile).to(batch.dtype)


def why_not_streamed(model) -> str | None:
    """Why tiles of this model run with margins instead of streamed strips, or None if it streams."""
    return None if _streams(model) else model._not_streamable


def _streams(model) -> bool:
    """Whether the model's operations all stream (traced once, cached on the model)."""
    cached = getattr(model, "_streams", None)
    if cached is None:
        try:
            streaming.check(model)
            cached = True
        except streaming.NotStreamable as err:
            cached = False
            model._not_streamable = str(err)
        model._streams = cached
    return cached


def receptive_radius(model: torch.nn.Module, tolerance: float = TOLERANCE) -> int:
    """How far (in packed pixels) a change of input reaches the output, measured on the model's own
    weights: a strong impulse at several positions of the pooling grid, on a random frame, the
    largest distance at which any output moves by more than `tolerance` (at several noise levels for
    a noise-conditioned model). Cached on the model.

    The probe runs on a float64 copy: in float32 the rounding of a k-sigma model's scaled values
    alone passes the tolerance, and a random copy of the unet measured a reach of 33 to 48 pixels
    where float64 measures 13 at every level (margins, and so tile cost, grew for nothing)."""
    cached = getattr(model, "_receptive_radius", None)
    if cached is not None and cached[0] == tolerance:
        return cached[1]
    device = next(model.parameters()).device
    m = _alignment(model)
    size = max(8 * m, 96)
    generator = torch.Generator().manual_seed(0)
    levels = PROBE_LEVELS if is_noise_conditioned(model) else (None,)
    probe = copy.deepcopy(model).to(dtype=torch.float64).eval()
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):  # exact in any caller's context
        while True:
            x = torch.rand(1, 4, size, size, generator=generator, dtype=torch.float64).to(device=device)
            radius = 0
            centre = size // 2 - size // 2 % m
            for level in levels:
                base = _run(probe, x, level)
                for offset in sorted({0, 1, m // 2, m - 1}):
                    c = centre + offset
                    poked = x.clone()
                    poked[..., c, c] += 4.0
                    moved = (_run(probe, poked, level) - base).abs().amax(dim=(0, 1)) > tolerance
                    ys, xs = torch.nonzero(moved, as_tuple=True)
                    if len(ys):
                        radius = max(radius, int((ys - c).abs().max()), int((xs - c).abs().max()))
            if radius < size // 2 - m - 1 or size >= 2048:
                break
            size *= 2  # the influence reached the probe's edge: measure on a larger frame
    model._receptive_radius = (tolerance, radius)
    return radius


def known_radius(model: torch.nn.Module) -> dict | None:
    """The receptive radius measured on this model so far, as a fact to keep beside its weights
    (rawdenoise.measured), or None if nothing has probed it."""
    cached = getattr(model, "_receptive_radius", None)
    return {"tolerance": cached[0], "radius": cached[1]} if cached else None


def adopt_radius(model: torch.nn.Module, fact: dict | None) -> bool:
    """Take a radius measured earlier on the same weights (known_radius's record) instead of probing
    again; one measured at another tolerance is not the same fact and is ignored."""
    if not fact or float(fact["tolerance"]) != TOLERANCE:
        return False
    model._receptive_radius = (TOLERANCE, int(fact["radius"]))
    return True


def margin_for(model: torch.nn.Module) -> int:
    """Context on each side of a tile: the receptive radius rounded up to the alignment."""
    m = _alignment(model)
    return int(math.ceil(receptive_radius(model) / m) * m)


def infer(model: torch.nn.Module, packed, tile: int | None = None, batch: int = 1, margin: int | None = None,
          noise: tuple[float, float] | None = None, precision: str = "fp32", stream: bool = True) -> np.ndarray:  # fmt: skip
    """(4, h, w) normalised packed frame -> the model's (4, h, w) float32 output.

    `noise` is the frame's (a, b), variance a*x + b on normalised x; a noise-conditioned model needs it.
    tile=None runs the whole frame at once. tile=N works on about N x N packed pixels at a time, equal
    to whole-frame inference within 1e-5: a model that streams (rawdenoise.streaming; every model here
    does) runs down the frame in strips of N*N/w rows, layer by layer, computing each pixel once; any
    other (or stream=False) runs tiles of at most N x N (N rounded up to 2**depth), as equal as the
    alignment allows, each with a receptive-field margin; `margin` (packed pixels, rounded up to
    2**depth) overrides the measured one. `precision` "bf16" runs the network's body in bf16 (input,
    conditioning, residual add and output stay float32); strips and tiles then match the whole frame
    only as closely as bf16 kernels of different shapes round alike. The frame runs with a mirrored
    border of BORDER pixels (module docstring), so its output is not the model's plain forward.
    """
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(packed, dtype=np.float32) if not torch.is_tensor(packed) else packed)
    if x.ndim != 3:
        raise ValueError(f"packed frame must be (C, h, w), got shape {tuple(x.shape)}")
    x = x.to(device=device, dtype=next(model.parameters()).dtype)  # float32, or float64 to check exactness
    h, w = x.shape[1:]
    bh, bw = min(BORDER, h - 1), min(BORDER, w - 1)  # a reflection needs a pixel beyond the edge one
    if bh or bw:
        x = torch.nn.functional.pad(x[None], (bw, bw, bh, bh), mode="reflect")[0]
    return _infer(model, x, tile, batch, margin, noise, precision, stream)[:, bh : bh + h, bw : bw + w]  # a view: no copy


def _infer(model, x: torch.Tensor, tile, batch, margin, noise, precision, stream) -> np.ndarray:
    """infer's work on the frame with its mirrored border: whole, streamed strips or margin tiles."""
    device = x.device
    was_training = model.training
    if was_training:  # eval() walks every module: a measurable part of a small frame's time
        model.eval()
    try:
        m = _alignment(model)
        tile = None if tile is None else max(m, int(math.ceil(tile / m) * m))
        if tile is None or (x.shape[1] <= tile and x.shape[2] <= tile):  # one tile holds the frame: that is
            tile = None  # whole-frame inference, and needs no margin (whose probe costs seconds a model)
        elif stream and _streams(model):
            rows = max(m, tile * tile // x.shape[2] // m * m)  # whole rows of every level: the same shapes each step
            try:
                with torch.inference_mode(), autocast(precision, device, model):
                    return _run(model, x[None], noise, rows)[0].cpu().numpy()
            except streaming.NotStreamable as err:  # refused on this frame (before any work): margin tiles
                model._streams, model._not_streamable = False, str(err)
        if tile is not None:  # probed (on a deep copy) before autocast wraps the model's layers
            margin = margin_for(model) if margin is None else int(math.ceil(margin / m) * m)
        with torch.inference_mode(), autocast(precision, device, model):  # bf16 wraps the model's signal layers
            if tile is None:
                return _run(model, x[None], noise)[0].cpu().numpy()
            return _tiled(model, x, tile, batch, margin, noise)
    finally:
        if was_training:
            model.train()


def _even_side(length: int, tile: int, alignment: int) -> int:
    """The side of the tiles along an axis: as many as tiles of `tile` need, but as equal as the
    alignment allows. A contest frame's 2312 packed columns in tiles of 512 are then 5 of 464, not four
    of 512 and one of 264: the same compute, and the largest window (the memory a tile needs) 15 %
    smaller."""
    count = math.ceil(length / tile)
    return int(math.ceil(length / count / alignment) * alignment)


def _tiled(model, x: torch.Tensor, tile: int, batch: int, margin: int, noise) -> np.ndarray:
    """`tile` and `margin` already rounded to the alignment."""
    _, h, w = x.shape
    out = np.empty(tuple(x.shape), dtype=np.float64 if x.dtype == torch.float64 else np.float32)
    m = _alignment(model)
    rows, cols = _even_side(h, tile, m), _even_side(w, tile, m)
    groups = defaultdict(list)  # window shape -> [(window, keep)], so equal shapes share a batch
    for y0 in range(0, h, rows):
        for x0 in range(0, w, cols):
            y1, x1 = min(y0 + rows, h), min(x0 + cols, w)
            wy0, wx0 = max(0, y0 - margin), max(0, x0 - margin)
            wy1, wx1 = min(h, y1 + margin), min(w, x1 + margin)
            keep = (slice(y0, y1), slice(x0, x1), slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0))
            groups[(wy1 - wy0, wx1 - wx0)].append(((wy0, wy1, wx0, wx1), keep))
    # Largest windows first: the allocator's heap grows to the largest tile's pattern once, and the
    # smaller ones fit in what it leaves (smallest first, each new size grew the heap again).
    for shape in sorted(groups, key=lambda shape: -shape[0] * shape[1]):
        items = groups[shape]
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            windows = torch.stack([x[:, a:b, c:d] for (a, b, c, d), _ in chunk])
            result = _run(model, windows, noise).cpu().numpy()
            for k, (_, (oy, ox, ky, kx)) in enumerate(chunk):
                out[:, oy, ox] = result[k][:, ky, kx]
    return out
