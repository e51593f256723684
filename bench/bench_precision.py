"""float32 against bf16 inference for one trained model: the speed-up, and what bf16 costs in PSNR.

    python bench/bench_precision.py --run runs/demo [--data work/demo] [--full-frame] [--repeats 3]

On the test set (testset/ with testset_gt/), each frame goes through the model whole in both precisions,
told the same noise profile as predict tells it (its tag, else the estimate); the figures are the mean
PSNR of each, the cost (float32 minus bf16, in dB; the `auto` precision accepts at most 0.01), the largest
difference in DN, and the model time of each with their ratio, measured in this one run, alternating
the two precisions so that a machine's drift hits both alike. `--full-frame` adds the ratio on one
contest-size frame of the profile's size (noise of the middle level on a smooth synthetic scene).
Timings are the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.metrics import capped, psnr
from rawdenoise.models import PROBE_NOISE, is_noise_conditioned
from rawdenoise.noise_estimate import frame_noise_profile
from rawdenoise.precision import bf16_hardware
from rawdenoise.raw import read
from rawdenoise.run_folder import Run, run_model
from rawdenoise.tiling import infer

from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder with config.toml and model.pth")
    parser.add_argument("--data", default="work/demo", help="data folder with testset/ and testset_gt/ (default: %(default)s)")
    parser.add_argument("--full-frame", action="store_true", help="also time one contest-size frame")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many (default: %(default)s)")
    cli.add_contest_argument(parser)
    args = parser.parse_args()
    contest = load_contest(args.contest)
    model = run_model(Run.open(args.run), torch.device("cpu"))
    data, layout = Path(args.data), contest.layout
    noisy_files = layout.test_noisy.bare.find(data / layout.test_noisy.folder)
    gt_files = layout.test_gt.bare.find(data / layout.test_gt.folder)
    if not gt_files:
        sys.exit(f"{data / layout.test_gt.folder}: no ground truth to measure the cost on")
    print(machine_line())
    print(f"bf16 arithmetic on this CPU: {'yes' if bf16_hardware('cpu') else 'no (bf16 is emulated: expect it slower)'}")

    seconds = {"fp32": 0.0, "bf16": 0.0}
    scores = {"fp32": [], "bf16": []}
    worst_dn = 0
    for i, gt_path in sorted(gt_files.items()):
        frame, gt = read(noisy_files[i], contest), read(gt_path, contest)
        noise = frame_noise_profile(frame) if is_noise_conditioned(model) else None
        packed = frame.packed()
        outputs = {}
        for precision in ("fp32", "bf16"):
            infer(model, packed, noise=noise, precision=precision)  # warm the kernels for this shape
            seconds[precision] += best_time(lambda: outputs.__setitem__(precision, infer(model, packed, noise=noise, precision=precision)), args.repeats)  # noqa: B023
            outputs[precision] = frame.to_mosaic(outputs[precision])
            scores[precision].append(capped(psnr(gt.mosaic, outputs[precision], contest.metric.data_range), contest))
        worst_dn = max(worst_dn, int(np.abs(outputs["fp32"].astype(np.int32) - outputs["bf16"]).max()))

    fp32, bf16 = np.mean(scores["fp32"]), np.mean(scores["bf16"])
    per_frame = np.array(scores["fp32"]) - np.array(scores["bf16"])
    print(f"{args.run} on {len(gt_files)} test frames of {data}:")
    print(f"  mean PSNR fp32 {fp32:.4f} dB, bf16 {bf16:.4f} dB: bf16 costs {fp32 - bf16:+.4f} dB "
          f"(worst frame {per_frame.max():+.4f} dB; largest difference {worst_dn} DN)")
    print(f"  model time fp32 {seconds['fp32']:.2f} s, bf16 {seconds['bf16']:.2f} s: bf16 {seconds['fp32'] / seconds['bf16']:.2f}x as fast")

    if args.full_frame:
        h, w = contest.height // 2, contest.width // 2
        generator = np.random.default_rng(0)
        yy, xx = np.mgrid[0:h, 0:w]
        clean = 0.05 + 0.4 * (0.5 + 0.5 * np.sin(yy / 97.0) * np.cos(xx / 53.0))
        a, b = PROBE_NOISE
        packed = (clean + generator.normal(size=(4, h, w)) * np.sqrt(a * clean + b)).astype(np.float32)
        noise = PROBE_NOISE if is_noise_conditioned(model) else None
        times = {}
        for precision in ("fp32", "bf16"):
            infer(model, packed[:, :256, :256], noise=noise, precision=precision)
            times[precision] = best_time(lambda: infer(model, packed, noise=noise, precision=precision), max(1, args.repeats - 1))  # noqa: B023
        print(f"  one {contest.height}x{contest.width} frame whole: fp32 {times['fp32']:.2f} s, "
              f"bf16 {times['bf16']:.2f} s: {times['fp32'] / times['bf16']:.2f}x")


if __name__ == "__main__":
    main()
