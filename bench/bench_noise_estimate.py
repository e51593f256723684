"""Noise-profile estimation from one frame: accuracy over synthetic frames, and speed on a contest-size one.

    python bench/bench_noise_estimate.py [--contest zte2022] [--frames 120] [--seed 0] [--repeat 3]

Frames are made the way the demo set is (rawdenoise/demo.py, rawdenoise/noise.py): a crop of a bundled
photograph, unprocessed to a clean raw mosaic by a random synthetic camera, scaled by an exposure gain
(0.15 and 0.05 make mostly-dark frames), then the contest's noise with a and b drawn independently and
log-uniformly over the profile's ranges, extended to `test_heavier` times the heaviest. The error of
a frame is the pixel-weighted relative error of the estimated noise std: the mean over its clean
pixels x of |sqrt(a^ x + b^) / sqrt(a x + b) - 1|.

The estimator's constants were tuned on demo training photographs only (those of the time: aero,
ascent, china and flower came later); the demo's test photographs (coffee, rocket) are held out and
reported apart. A photograph has noise of its own, which unprocessing carries into the "clean" frame
and no estimator can tell from the added noise: the same estimator run on the clean frame measures it,
and frames where it exceeds a tenth of the added variance are also reported apart ("photo noise").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.demo import DEFAULT_SIZE, bundled_photos, collage
from rawdenoise.noise import mosaic_from_rgb, NoiseLevel, quantise, random_camera, unprocess
from rawdenoise.noise_estimate import estimate_noise_profile
from rawdenoise.raw import denormalise, normalise, pack, RawFrame

from machine import cpu_description


GAINS = (1.0, 1.0, 0.5, 0.15, 0.05)  # exposure gains; the last two make mostly-dark frames
DARK_GAIN = 0.15
PHOTO_NOISE_SHARE = 0.1


@dataclass(eq=False)  # compared by identity
class Result:
    photo: str
    split: str
    shape: tuple[int, int]
    gain: float
    a: float
    b: float
    est: tuple[float, float]
    error: float  # pixel-weighted |std^ / std - 1|
    signed: float  # pixel-weighted std^ / std - 1
    photo_noise: float  # the clean frame's own measured variance over the added variance, pixel-weighted


def weighted_std_error(levels, counts, truth, est) -> tuple[float, float]:
    true_std = np.sqrt(truth[0] * levels + truth[1])
    est_std = np.sqrt(np.maximum(est[0] * levels + est[1], 0.0))
    ratio = est_std / true_std - 1.0
    return float(np.average(np.abs(ratio), weights=counts)), float(np.average(ratio, weights=counts))


def crop_of(image: np.ndarray, kind: int, rng) -> np.ndarray:
    """kind 0: the demo's frame size, 1: the largest even crop, 2: a 256x256 crop (each within the photo)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    size = [DEFAULT_SIZE, (h, w), (256, 256)][kind]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = rng.integers(0, image.shape[0] - ch + 1), rng.integers(0, image.shape[1] - cw + 1)
    return image[top : top + ch, left : left + cw]


def clean_frame(srgb: np.ndarray, gain: float, contest, rng) -> np.ndarray:
    """A clean DN mosaic from an sRGB crop: unprocessed by a random camera, as the demo set is."""
    linear = mosaic_from_rgb(unprocess(srgb, random_camera(rng)), contest.cfa) * np.float32(gain)
    return denormalise(linear, contest.black_array, contest.white)


def one_frame(i: int, photo, image, contest, seed: int) -> Result:
    rng = np.random.default_rng([seed, i])
    gain = float(rng.choice(GAINS))
    gt = clean_frame(crop_of(image, i // 10 % 3, rng), gain, contest, rng)
    k = contest.noise.test_heavier
    (a_lo, a_hi), (b_lo, b_hi) = contest.noise.a_range, contest.noise.b_range
    a = float(np.exp(rng.uniform(np.log(a_lo), np.log(a_hi * k))))
    b = float(np.exp(rng.uniform(np.log(b_lo), np.log(b_hi * k))))
    black, white = contest.black_array, contest.white
    x = normalise(gt, black, white)
    noisy = quantise(NoiseLevel(a, b).sample(x, rng), black, white)
    est = estimate_noise_profile(pack(normalise(noisy, black, white), contest.cfa), contest=contest)
    levels, counts = np.unique(x.astype(np.float64), return_counts=True)
    error, signed = weighted_std_error(levels, counts, (a, b), est)
    fa, fb = estimate_noise_profile(pack(x, contest.cfa), contest=contest)  # the photo's own noise
    share = float(np.average((fa * levels + fb) / (a * levels + b), weights=counts))
    return Result(photo.name, photo.split, gt.shape, gain, a, b, est, error, signed, share)


def summary_row(label: str, results: list[Result]) -> str:
    if not results:
        return f"{label:<34} {0:>6}"
    e = np.array([r.error for r in results]) * 100
    s = np.array([r.signed for r in results]) * 100
    return (
        f"{label:<34} {len(e):>6} {np.median(e):>7.2f}% {np.percentile(e, 90):>7.2f}% {e.max():>7.2f}%"
        f" {np.median(s):>+8.2f}%"
    )


def time_contest_frame(contest, photos, repeat: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 10**6])
    h, w = contest.height, contest.width
    test_photos = [p for p in photos if p.split == "test"] or photos
    start = time.perf_counter()
    gt = clean_frame(collage(test_photos, (h, w), rng), 1.0, contest, rng)
    level = NoiseLevel(2e-3, 1e-4)
    black, white = contest.black_array, contest.white
    x = normalise(gt, black, white)
    noisy = quantise(level.sample(x, rng), black, white)
    del x
    frame = RawFrame(noisy, contest.cfa, np.asarray(black, dtype=np.int64), white, Path("synthetic.dng"))
    packed = frame.packed()
    made = time.perf_counter() - start
    estimate_noise_profile(packed, contest=contest)  # load the compiled kernel
    times, frame_times = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        est = estimate_noise_profile(packed, contest=contest)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        estimate_noise_profile(frame)
        frame_times.append(time.perf_counter() - t0)
    levels, counts = np.unique(normalise(gt, black, white).astype(np.float64), return_counts=True)
    error, _ = weighted_std_error(levels, counts, (level.a, level.b), est)
    print(f"\none {h}x{w} frame (collage of {', '.join(p.name for p in test_photos)}; made in {made:.1f} s), "
          f"a={level.a:g} b={level.b:g}: estimate a={est[0]:.4g} b={est[1]:.4g}, std error {error:.2%}")  # fmt: skip
    print(f"  from the packed normalised frame: {min(times):.3f} s (best of {repeat})")
    print(f"  from a RawFrame (normalising and packing included): {min(frame_times):.3f} s (best of {repeat})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_contest_argument(parser)
    parser.add_argument("--frames", type=int, default=120, help="synthetic frames for the accuracy figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="best-of repeats for the contest-size timing")
    args = parser.parse_args()
    contest = load_contest(args.contest)
    photos = bundled_photos()
    images = {p.name: p.load() for p in photos}
    print(f"CPU: {cpu_description()}")
    print(f"{os.cpu_count()} cores, {numba.get_num_threads()} numba threads; contest {contest.name}")
    training = [p.name for p in photos if p.split == "train"]
    held = [p.name for p in photos if p.split == "test"]
    print(f"demo training photos: {', '.join(training)}\nheld out (demo test photos): {', '.join(held)}")
    k = contest.noise.test_heavier
    print(f"a log-uniform in [{contest.noise.a_range[0]:g}, {contest.noise.a_range[1] * k:g}], "
          f"b log-uniform in [{contest.noise.b_range[0]:g}, {contest.noise.b_range[1] * k:g}], independently; "
          f"exposure gains {GAINS}")  # fmt: skip

    start = time.perf_counter()
    results = []
    for i in range(args.frames):
        photo = photos[i % len(photos)]
        results.append(one_frame(i, photo, images[photo.name], contest, args.seed))
    elapsed = time.perf_counter() - start

    print(f"\n{args.frames} frames ({elapsed:.0f} s): error of the estimated noise std, pixel-weighted over each frame")
    print(f"{'frames':<34} {'count':>6} {'median':>8} {'p90':>8} {'worst':>8} {'bias':>9}")
    print(summary_row("all", results))
    print(summary_row("training photos", [r for r in results if r.split == "train"]))
    print(summary_row("held-out photos", [r for r in results if r.split == "test"]))
    print(summary_row(f"mostly dark (gain <= {DARK_GAIN})", [r for r in results if r.gain <= DARK_GAIN]))
    small = [r for r in results if r.shape[0] * r.shape[1] <= 256 * 256]
    print(summary_row("256x256 crops", small))
    print(summary_row("larger crops (384x512 to 872x1000)", [r for r in results if r not in small]))
    quiet = [r for r in results if r.photo_noise <= PHOTO_NOISE_SHARE]
    print(summary_row(f"photo noise <= {PHOTO_NOISE_SHARE:.0%} of the added", quiet))
    print(summary_row(f"photo noise > {PHOTO_NOISE_SHARE:.0%} of the added", [r for r in results if r not in quiet]))
    print("\nworst frames:")
    for r in sorted(results, key=lambda r: -r.error)[:6]:
        print(f"  {r.photo:<18} {r.shape[0]}x{r.shape[1]} gain {r.gain:<4} a={r.a:.3g} b={r.b:.3g} -> "
              f"a^={r.est[0]:.3g} b^={r.est[1]:.3g}: error {r.error:.1%} (bias {r.signed:+.1%}); "
              f"photo noise {r.photo_noise:.0%} of the added")  # fmt: skip

    time_contest_frame(contest, photos, args.repeat, args.seed)


if __name__ == "__main__":
    main()
