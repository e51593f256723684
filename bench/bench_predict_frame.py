"""The whole predict process on one contest-size frame, tiled against whole-frame: seconds, peak RSS, and
how many output DN differ from the whole frame's.

    python bench/bench_predict_frame.py [--model unet] [--margin 112] [--tiles 384,512] [--margin-tiles 512]
        [--repeats 3] [--precision fp32] [--contest zte2022]

Issue 11's figure: at predict's default settings, tiled / whole <= 1.10x with the process's peak RSS
<= 1 GB (decode, packed frame, output and write-back included, not the model alone as bench_tiling
measures) and >= 99.99 % of DN identical to the whole frame's (max 1 DN). `--tiles` run as predict runs
them by default (streamed strips for a model that streams), `--margin-tiles` as square tiles with a
margin (`predict --no-stream`). The frame is a collage of the demo's test photographs through the
contest's camera and noise model, with its NoiseProfile tag; the model is the architecture with a
small random last layer (so it changes every pixel), told a margin as a trained one measures
(`--margin`, default 112: the baseline U-Net's architectural reach, which a trained one's influence
fills) through the run folder's inference.json, as predict reads it (streamed strips need none). Every
setting runs `--repeats` times, interleaved, each in its own process (its peak RSS its own); the best
time and the largest peak are reported.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.demo import clean_mosaic, plan
from rawdenoise.measured import write_measured
from rawdenoise.noise import contest_noise_levels, quantise
from rawdenoise.raw import normalise, read, write_dng
from rawdenoise.recipe import write_toml
from rawdenoise.tiling import DEFAULT_TILE, TOLERANCE

from bench_tiling import model_for
from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent


def make_frame(folder: Path, contest) -> None:
    """noisy0.dng: a full-size test scene at the middle training noise level, tagged with it."""
    job = next(j for j in plan(contest, (contest.height, contest.width), full_size=True) if j.split == "test")
    clean, _ = clean_mosaic(job, contest, (contest.height, contest.width), seed=0)
    levels, _ = contest_noise_levels(contest)
    level = levels[len(levels) // 2]
    x = normalise(clean, contest.black_array, contest.white)
    noisy = quantise(level.sample(x, np.random.default_rng(0)), contest.black_array, contest.white)
    folder.mkdir(parents=True)
    write_dng(folder / contest.layout.test_noisy.bare.name(0), noisy, contest.cfa, contest.black_array, contest.white,
              noise_profile=(level.a, level.b))  # fmt: skip


def make_run(folder: Path, model_name: str, margin: int) -> None:
    model = model_for(model_name)
    folder.mkdir(parents=True)
    write_toml(folder / "config.toml", {"model": {"name": model_name, "args": {}}})
    torch.save(model.state_dict(), folder / "model.pth")
    write_measured(folder, folder / "model.pth", {"receptive_radius": {"tolerance": TOLERANCE, "radius": margin}})


# The child's peak is its own VmHWM, read as it exits: the rusage of a forked child starts from this
# process's resident pages (torch, the frame just made), which would count as the child's.
_MEASURED = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("peak_kib", peak.split()[1], file=sys.stderr)
"""


def predict(run: Path, frames: Path, output: Path, tile: int, stream: bool, precision: str) -> tuple[float, float]:
    """(seconds of the whole process, its peak RSS in MiB)."""
    command = [sys.executable, "-c", _MEASURED, str(ROOT / "submission" / "predict.py"), "--run", str(run),
               "--input", str(frames), "--output", str(output), "--tile", str(tile), "--precision", precision,
               "--no-tta", "--quiet", "--stream" if stream else "--no-stream"]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"predict failed with tile {tile}:\n{result.stderr}")
    peak = next(line for line in result.stderr.splitlines() if line.startswith("peak_kib"))
    return seconds, int(peak.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--margin", type=int, default=112, help="the margin the run declares (default: %(default)s)")
    parser.add_argument("--tiles", default=str(DEFAULT_TILE), help="tile sides to time against whole frames (default: %(default)s, predict's)")
    parser.add_argument("--margin-tiles", default="", help="tile sides to time as square tiles with margins (predict --no-stream)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    cli.add_contest_argument(parser)
    args = parser.parse_args()
    contest = load_contest(args.contest)
    print(machine_line())
    settings = [(0, True)] + [(int(t), True) for t in args.tiles.split(",") if t]
    settings += [(int(t), False) for t in args.margin_tiles.split(",") if t]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_frame(tmp / "testset", contest)
        make_run(tmp / "run", args.model, args.margin)
        times = {setting: [] for setting in settings}
        peaks = dict.fromkeys(settings, 0.0)
        for _ in range(args.repeats):
            for tile, stream in settings:
                seconds, peak = predict(tmp / "run", tmp / "testset", tmp / f"out{tile}{stream}", tile, stream, args.precision)
                times[tile, stream].append(seconds)
                peaks[tile, stream] = max(peaks[tile, stream], peak)
        name = contest.submission.output.name(0)
        whole = read(tmp / "out0True" / name).mosaic.astype(np.int32)
        print(f"{args.model}, margin {args.margin}, {args.precision}, one {contest.height}x{contest.width} frame, "
              f"whole predict process, best of {args.repeats} (interleaved):")  # fmt: skip
        print(f"{'tile':>13} {'seconds':>8} {'x whole':>8} {'peak RSS':>10} {'DN identical':>13} {'max |dDN|':>9}")
        for tile, stream in settings:
            diff = np.abs(read(tmp / f"out{tile}{stream}" / name).mosaic.astype(np.int32) - whole)
            label = "whole" if tile == 0 else f"{tile} {'streamed' if stream else 'margins'}"
            best = min(times[tile, stream])
            print(f"{label:>13} {best:8.1f} {best / min(times[0, True]):8.2f} {peaks[tile, stream]:7.0f} MiB "
                  f"{100 * np.mean(diff == 0):12.4f}% {int(diff.max()):9d}")  # fmt: skip


if __name__ == "__main__":
    main()
