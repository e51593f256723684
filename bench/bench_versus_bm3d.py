"""A trained model against BM3D on one test set: quality per noise level and the time each takes.

    python bench/bench_versus_bm3d.py --run runs/quality [--data work/demo] [--tta | --no-tta] [--tta-views 2|8]

Both entries run as a contestant runs them, as whole commands on the same inputs: submission/predict.py
(the model told each frame's noise profile, default tiles, test-time augmentation as its recipe says) and tools/bm3d_denoise.py (BM3D told the
same profile, one process per core). The figures are their wall-clock times and its ratio, measured in
this one run, and the mean PSNR of each with the gain over the input per noise level, so a model that
trails BM3D at some level shows where. Frames the model makes worse than its input by more than
0.05 dB are counted.

A second table says where in the frame: each frame's pixels split in thirds by how much the ground truth
varies around them (its local gradient), the model's lead over BM3D on the flattest third, the middle one
and the most textured one. Block matching averages a smooth sky over many repeats that a network trained
on small crops never sees together, so a model can lead on texture and trail on flat regions at once;
a mean over the frame hides which.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.metrics import capped, psnr
from rawdenoise.noise_levels import listed_levels, tagged_level
from rawdenoise.raw import read

from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent


HARM = 0.05  # dB below the input that counts as harm
REGIONS = ("flat", "middle", "textured")
GRADIENT_SIGMA = 1.5  # packed pixels: the scale at which "flat" is judged, a little over the noise's own


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *command, "--quiet"], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def texture_thirds(gt) -> np.ndarray:
    """Each mosaic pixel's third (0 flat, 1 middle, 2 textured) by the local gradient of the ground truth's
    colour-channel mean, taken on the packed frame so the CFA's own pattern does not count as texture."""
    gradient = ndimage.gaussian_gradient_magnitude(gt.packed().mean(axis=0), GRADIENT_SIGMA)
    thirds = np.digitize(gradient, np.quantile(gradient, [1 / 3, 2 / 3]))
    return thirds.repeat(2, axis=0).repeat(2, axis=1)  # a packed pixel is one 2x2 cell of the mosaic


def region_psnrs(gt: np.ndarray, prediction: np.ndarray, thirds: np.ndarray, data_range: float) -> list[float]:
    """PSNR on each third; NaN for a third that is empty (a frame whose gradient is one value throughout)."""
    error = (gt.astype(np.float64) - prediction) ** 2
    out = []
    for k in range(len(REGIONS)):
        selected = error[thirds == k]
        out.append(float(10 * np.log10(data_range**2 / max(selected.mean(), 1e-12))) if selected.size else math.nan)
    return out


def psnrs(folder: Path, names, gt_files: dict, contest) -> tuple[np.ndarray, np.ndarray]:
    """-> (whole-frame PSNR per frame, PSNR per frame and texture third)."""
    whole, regions = [], []
    for i, gt_path in sorted(gt_files.items()):
        gt, prediction = read(gt_path, contest), read(names.path(folder, i), contest).mosaic
        whole.append(capped(psnr(gt.mosaic, prediction, contest.metric.data_range), contest))
        regions.append(region_psnrs(gt.mosaic, prediction, texture_thirds(gt), contest.metric.data_range))
    return np.array(whole), np.array(regions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder with config.toml and model.pth")
    parser.add_argument("--data", default="work/demo", help="data folder with testset/ and testset_gt/ (default: %(default)s)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction,
                        help="force test-time augmentation on or off (default: the run's recipe)")  # fmt: skip
    parser.add_argument("--tta-views", type=int, choices=(2, 8), help="views test-time augmentation averages (default: the run's recipe)")
    cli.add_contest_argument(parser)
    args = parser.parse_args()
    contest = load_contest(args.contest)
    data, layout = Path(args.data), contest.layout
    inputs = data / layout.test_noisy.folder
    gt_files = layout.test_gt.find(data)
    noisy_files = layout.test_noisy.find(data)
    listed = listed_levels(data / layout.test_gt.folder)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        model_out, bm3d_out = Path(tmp) / "model", Path(tmp) / "bm3d"
        seconds_model = timed(["submission/predict.py", "--run", args.run, "--input", str(inputs), "--output", str(model_out),
                               "--contest", args.contest] + ({True: ["--tta"], False: ["--no-tta"]}.get(args.tta, []))
                              + (["--tta-views", str(args.tta_views)] if args.tta_views else []))  # fmt: skip
        seconds_bm3d = timed(["tools/bm3d_denoise.py", "--input", str(inputs), "--output", str(bm3d_out), "--contest", args.contest])
        names = contest.submission.output
        (model, model_regions), (bm3d, bm3d_regions) = (psnrs(out, names, gt_files, contest) for out in (model_out, bm3d_out))
    noisy = np.array([capped(psnr(read(gt_files[i], contest).mosaic, read(noisy_files[i], contest).mosaic,
                                  contest.metric.data_range), contest) for i in sorted(gt_files)])  # fmt: skip
    levels = []
    for i in sorted(gt_files):
        level = listed.get(gt_files[i].resolve()) or tagged_level(read(noisy_files[i], contest))
        levels.append(level.label if level else "?")
    n = len(model)
    tta = {True: " with --tta", False: " with --no-tta"}.get(args.tta, "") + (f" --tta-views {args.tta_views}" if args.tta_views else "")
    print(f"{args.run}{tta} against BM3D on {data}: {n} test frames")
    print(f"{'entry':<8} {'seconds':>8} {'per frame':>10} {'mean PSNR':>10} {'harmed':>7}")
    print(f"{'model':<8} {seconds_model:>8.1f} {seconds_model / n:>10.2f} {model.mean():>10.3f} "
          f"{int((model - noisy < -HARM).sum()):>7d}")  # fmt: skip
    print(f"{'bm3d':<8} {seconds_bm3d:>8.1f} {seconds_bm3d / n:>10.2f} {bm3d.mean():>10.3f} "
          f"{int((bm3d - noisy < -HARM).sum()):>7d}")  # fmt: skip
    print(f"model - BM3D: {model.mean() - bm3d.mean():+.3f} dB mean PSNR; model {seconds_bm3d / seconds_model:.1f}x faster "
          "(whole commands, start-up included)")
    print(f"\n{'level':<10} {'frames':>6} {'input':>8} {'model gain':>11} {'bm3d gain':>10} {'model - bm3d':>13}")
    for label in dict.fromkeys(levels):
        mine = [k for k, lv in enumerate(levels) if lv == label]
        gain_model, gain_bm3d = (model[mine] - noisy[mine]).mean(), (bm3d[mine] - noisy[mine]).mean()
        print(f"{label:<10} {len(mine):>6} {noisy[mine].mean():>8.3f} {gain_model:>+11.3f} {gain_bm3d:>+10.3f} "
              f"{gain_model - gain_bm3d:>+13.3f}")  # fmt: skip
    lead = model_regions - bm3d_regions
    print("\nmodel - BM3D (dB) on each frame's flattest, middle and most textured third of pixels (ground truth's gradient)")
    print(f"{'level':<10} " + " ".join(f"{region:>9}" for region in REGIONS))
    for label in dict.fromkeys(levels):
        mine = [k for k, lv in enumerate(levels) if lv == label]
        print(f"{label:<10} " + " ".join(f"{value:>+9.3f}" for value in np.nanmean(lead[mine], axis=0)))
    print(f"{'mean':<10} " + " ".join(f"{value:>+9.3f}" for value in np.nanmean(lead, axis=0)))


if __name__ == "__main__":
    main()
