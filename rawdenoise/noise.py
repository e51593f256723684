"""The noise model and the unprocessing that turns sRGB photographs into clean raw mosaics.

Noise is the organisers' heteroscedastic Gaussian approximation of Poisson-Gaussian sensor noise:
a normalised clean value x is observed as N(x, a*x + b), where a is the shot-noise gain and b the
read-noise variance. This is also exactly the DNG NoiseProfile tag's (S, O) model, so every noisy
DNG we write carries its own calibration.

Unprocessing follows Brooks et al., "Unprocessing Images for Learned Raw Denoising" (CVPR 2019):
undo the tone curve, the gamma, the colour correction and the white balance of an sRGB image, then
sample it through the CFA. The result has a real camera's colour statistics, which is what makes a
denoiser trained on it transfer to real raw frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rawdenoise.raw import CHANNELS, channel_positions, denormalise

# XYZ (D65) -> camera matrices of four real cameras, as published in Adobe's DNG colour tables (x 1e-4).
# A synthetic camera is a random convex mix of them, so its colour response is plausible but new.
REFERENCE_XYZ_TO_CAMERA = np.array(
    [
        [4716, 603, -830, -7798, 15474, 2480, -1496, 1937, 6651],  # Canon EOS 5D Mark II
        [6722, -635, -963, -4287, 12460, 2028, -908, 2162, 5668],  # Canon EOS 5D Mark III
        [7034, -804, -1014, -4420, 12564, 2058, -851, 1994, 5758],  # Canon EOS 6D
        [6844, -996, -856, -3876, 11761, 2396, -593, 1772, 6198],  # Canon EOS 7D
    ],
    dtype=np.float64,
).reshape(4, 3, 3) / 10000.0

# linear sRGB -> XYZ (D65), IEC 61966-2-1
SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)


@dataclass(frozen=True)
class NoiseLevel:
    """Variance a*x + b on normalised x (the DNG NoiseProfile's S and O)."""

    a: float
    b: float

    def variance(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        return np.maximum(self.a * np.asarray(x, dtype=dtype) + self.b, 0.0)

    def sample(self, clean: np.ndarray, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
        """clean + N(0, a*clean + b), unclipped, in `dtype` (float64 for the demo set's frames, float32
        for training's re-noised samples); clip and quantise with `quantise` or `quantise_normalised`."""
        clean = np.asarray(clean, dtype=dtype)
        return clean + np.sqrt(self.variance(clean, dtype)) * rng.standard_normal(clean.shape, dtype=dtype)


def noise_levels(a_range: tuple[float, float], b_range: tuple[float, float], types: int) -> list[NoiseLevel]:
    """`types` levels from lightest to heaviest, log-spaced in a and b together.

    a and b rise together as a sensor's gain (ISO) does: shot-noise gain grows with it and read
    noise, referred to the output, grows faster, which the wider b range expresses.
    """
    t = np.linspace(0.0, 1.0, types) if types > 1 else np.array([1.0])
    a = np.exp(np.log(a_range[0]) + t * (np.log(a_range[1]) - np.log(a_range[0])))
    b = np.exp(np.log(b_range[0]) + t * (np.log(b_range[1]) - np.log(b_range[0])))
    return [NoiseLevel(float(f"{x:.6g}"), float(f"{y:.6g}")) for x, y in zip(a, b)]  # tidy in CSVs and tags


def contest_noise_levels(contest) -> tuple[list[NoiseLevel], NoiseLevel]:
    """The profile's training noise types, and the heavier level that only the test set holds."""
    levels = noise_levels(contest.noise.a_range, contest.noise.b_range, contest.noise.types)
    k = contest.noise.test_heavier
    return levels, NoiseLevel(levels[-1].a * k, levels[-1].b * k)


def quantise(noisy: np.ndarray, black, white: int) -> np.ndarray:
    """Normalised noisy mosaic -> uint16 DN: clipped to [black, white] and rounded, as a sensor's ADC does."""
    return denormalise(np.clip(noisy, 0.0, 1.0), black, white)


def quantise_normalised(noisy: np.ndarray, channel_black: np.ndarray, white: float) -> np.ndarray:
    """The same for a packed (C, h, w) frame that stays normalised (float32), one black level per
    channel: values clipped to [0, 1] and rounded to the nearest DN step."""
    step = 1.0 / (white - np.asarray(channel_black, dtype=np.float32)[:, None, None])
    return (np.round(np.clip(noisy, 0, 1) / step) * step).astype(np.float32)


@dataclass(frozen=True)
class Camera:
    """What unprocessing needs to know about the synthetic camera of one frame."""

    xyz_to_camera: np.ndarray  # 3x3, rows normalised as in a DNG ColorMatrix
    red_gain: float  # white-balance gains the camera would have applied
    blue_gain: float
    exposure: float  # raw brightness relative to the rendered photo (1 / its digital gain)

    @property
    def srgb_to_camera(self) -> np.ndarray:
        m = self.xyz_to_camera @ SRGB_TO_XYZ
        return m / m.sum(axis=1, keepdims=True)  # white maps to white before white balance

    @property
    def as_shot_neutral(self) -> tuple[float, float, float]:
        return (1.0 / self.red_gain, 1.0, 1.0 / self.blue_gain)


def random_camera(rng: np.random.Generator) -> Camera:
    weights = rng.uniform(1e-8, 1.0, size=len(REFERENCE_XYZ_TO_CAMERA))
    xyz_to_camera = np.tensordot(weights / weights.sum(), REFERENCE_XYZ_TO_CAMERA, axes=1)
    return Camera(
        xyz_to_camera=xyz_to_camera,
        red_gain=float(rng.uniform(1.9, 2.4)),
        blue_gain=float(rng.uniform(1.5, 1.9)),
        exposure=float(np.clip(rng.normal(0.8, 0.1), 0.5, 1.1)),
    )


def unprocess(srgb: np.ndarray, camera: Camera) -> np.ndarray:
    """sRGB image in [0, 1], (H, W, 3) -> linear camera RGB in [0, 1], float32."""
    image = np.clip(np.asarray(srgb, dtype=np.float32), 0.0, 1.0)
    image = 0.5 - np.sin(np.arcsin(1.0 - 2.0 * image) / 3.0)  # invert the smoothstep tone curve
    image = np.maximum(image, 1e-8) ** 2.2  # invert the display gamma
    image = image @ camera.srgb_to_camera.T.astype(np.float32)  # invert the colour correction
    gains = np.array([1.0 / camera.red_gain, 1.0, 1.0 / camera.blue_gain], np.float32) * camera.exposure
    # Invert white balance, keeping highlights: near white, pull the inverse gains toward 1 so that
    # saturated pixels stay saturated instead of turning into a coloured cast.
    grey = image.mean(axis=-1, keepdims=True)
    highlight = (np.maximum(grey - 0.9, 0.0) / 0.1) ** 2
    safe_gains = np.maximum(highlight + (1.0 - highlight) * gains, gains)
    return np.clip(image * safe_gains, 0.0, 1.0).astype(np.float32)


def mosaic_from_rgb(rgb: np.ndarray, cfa: str) -> np.ndarray:
    """Sample a (H, W, 3) linear image through a 2x2 CFA: each site keeps its own colour."""
    h, w, _ = rgb.shape
    if h % 2 or w % 2:
        raise ValueError(f"image size {h}x{w} must be even for a 2x2 CFA")
    out = np.empty((h, w), dtype=rgb.dtype)
    colour_index = {"R": 0, "Gr": 1, "Gb": 1, "B": 2}
    for name, (r, c) in zip(CHANNELS, channel_positions(cfa)):
        out[r::2, c::2] = rgb[r::2, c::2, colour_index[name]]
    return out
