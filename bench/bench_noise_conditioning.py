"""What a noise-conditioned model loses when told an estimated or a wrong noise profile, and whether it
ever makes a frame worse than its input.

    python bench/bench_noise_conditioning.py --run runs/demo [--data work/demo] [--tile 0]

For every test frame of the data folder (testset/ and testset_gt/), the model runs once per source of
(a, b): the truth (noise.csv, else the input's NoiseProfile tag), the estimate from the noisy frame
alone (what a contest test frame without a tag gets), and the truth scaled by 0.5, 0.8, 1.25 and 2 (how
much error the model tolerates). Each row gives the mean PSNR, its difference from the truth's, the
frames made worse than their input by more than 0.05 dB, and the worst frame's gain over its input;
then the gain per noise level with the true and the estimated profiles.
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
from rawdenoise.models import is_noise_conditioned
from rawdenoise.noise_estimate import estimate_noise_profile
from rawdenoise.noise_levels import listed_levels, tagged_level
from rawdenoise.raw import read
from rawdenoise.run_folder import Run, run_model
from rawdenoise.tiling import infer

from machine import machine_line


HARM = 0.05  # dB below the input that counts as harm
SCALES = (0.5, 0.8, 1.25, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder with config.toml and model.pth")
    parser.add_argument("--data", default="work/demo", help="data folder with testset/ and testset_gt/ (default: %(default)s)")
    parser.add_argument("--tile", type=int, default=0, help="tile side; 0 runs whole frames (default: %(default)s)")
    cli.add_contest_argument(parser)
    args = parser.parse_args()
    contest = load_contest(args.contest)
    model = run_model(Run.open(args.run), torch.device("cpu"))
    print(machine_line())
    if not is_noise_conditioned(model):
        print(f"{args.run}: a blind model; only the truth row is meaningful")
    data = Path(args.data)
    noisy_files = contest.layout.test_noisy.find(data)
    gt_files = contest.layout.test_gt.find(data)
    listed = listed_levels(data / contest.layout.test_gt.folder)
    sources = ["truth", "estimate"] + [f"truth x{s:g}" for s in SCALES]
    table = {name: [] for name in sources}
    inputs, levels, seconds = [], [], {"model": 0.0, "estimate": 0.0}
    for i in sorted(noisy_files):
        noisy, gt = read(noisy_files[i], contest), read(gt_files[i], contest)
        level = listed.get(gt_files[i].resolve()) or tagged_level(noisy)
        if level is None:
            raise SystemExit(f"{noisy_files[i]}: no true noise profile (no noise.csv row, no NoiseProfile tag)")
        start = time.perf_counter()
        estimate = estimate_noise_profile(noisy)
        seconds["estimate"] += time.perf_counter() - start
        profiles = {"truth": (level.a, level.b), "estimate": estimate}
        profiles.update({f"truth x{s:g}": (level.a * s, level.b * s) for s in SCALES})
        packed = noisy.packed()
        inputs.append(capped(psnr(gt.mosaic, noisy.mosaic, contest.metric.data_range), contest))
        levels.append(level.label)
        for name in sources:
            start = time.perf_counter()
            out = noisy.to_mosaic(infer(model, packed, args.tile or None, noise=profiles[name]))
            seconds["model"] += time.perf_counter() - start
            table[name].append(capped(psnr(gt.mosaic, out, contest.metric.data_range), contest))
    inputs = np.array(inputs)
    truth = np.mean(table["truth"])
    print(f"{args.run} on {data}: {len(inputs)} test frames, input mean PSNR {inputs.mean():.3f} dB; "
          f"model {seconds['model'] / len(inputs) / len(sources):.2f} s and estimate {seconds['estimate'] / len(inputs):.2f} s per frame")  # fmt: skip
    print(f"{'profile told':<14} {'mean PSNR':>10} {'vs truth':>9} {'harmed':>7} {'worst gain':>11}")
    for name in sources:
        values = np.array(table[name])
        gains = values - inputs
        print(f"{name:<14} {values.mean():>10.3f} {values.mean() - truth:>+9.3f} {int((gains < -HARM).sum()):>7d} "
              f"{gains.min():>+11.3f}")  # fmt: skip
    print(f"\n{'level':<10} {'frames':>6} {'input':>8} {'truth':>8} {'estimate':>9}")
    for label in dict.fromkeys(levels):
        mine = [k for k, l in enumerate(levels) if l == label]
        print(f"{label:<10} {len(mine):>6} {inputs[mine].mean():>8.3f} {np.mean([table['truth'][k] for k in mine]):>8.3f} "
              f"{np.mean([table['estimate'][k] for k in mine]):>9.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
