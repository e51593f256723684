"""torch.compile (inductor) against eager inference, whole contest-size frames: does compiling pay?

    python bench/bench_compile.py [--models unet,convnext_unet] [--frames 10] [--precision fp32] [--side N]

For each architecture at its default size (the last layer given small random weights, so the output
depends on the input), on one frame of the contest's size (or an N x N packed window with `--side`: the
default ConvNeXt U-Net on a whole contest frame is a GPU's job; 608 was predict's margin-tile window
before streamed strips): the eager time, the compiled model's first
call (compilation included) and its steady time, each the best of `--repeats`, all in this one run; and
the verdict for a test set of `--frames` frames: compiling pays when frames x (eager - compiled) exceeds
the compile time. Also the largest difference between the two outputs, which should be float32
rounding only. Each model runs in its own process, so one's compile cache and memory do not touch the next.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.models import PROBE_NOISE, build_model
from rawdenoise.precision import autocast

from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent


def trained_like(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, noise="ksigma")
    last = model.ending if hasattr(model, "ending") else model.head
    torch.nn.init.normal_(last.weight, std=0.01)
    return model.eval()


def child(args) -> None:
    contest = load_contest(args.contest)
    model = trained_like(args.child)
    h, w = (args.side, args.side) if args.side else (contest.height // 2, contest.width // 2)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 4, h, w), dtype=np.float32) * 0.5)
    x = x.contiguous(memory_format=torch.channels_last)
    noise = torch.tensor([PROBE_NOISE])

    def timed(fn) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.inference_mode(), autocast(args.precision, "cpu", model):
            out = fn(x, noise)
        return time.perf_counter() - start, out

    eager_times, eager = zip(*(timed(model) for _ in range(args.repeats)))
    compiled = torch.compile(model)
    first, _ = timed(compiled)
    steady_times, out = zip(*(timed(compiled) for _ in range(args.repeats)))
    print(json.dumps({"eager": min(eager_times), "first": first, "compiled": min(steady_times),
                      "max_diff": float((out[0].float() - eager[0].float()).abs().max())}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="unet,convnext_unet")
    parser.add_argument("--frames", type=int, default=10, help="the test set the verdict is for (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--side", type=int, help="an N x N packed window instead of the whole contest frame")
    cli.add_contest_argument(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    contest = load_contest(args.contest)
    print(machine_line())
    where = f"one {args.side}x{args.side} packed window" if args.side else f"one {contest.height}x{contest.width} frame whole"
    print(f"{where}, {args.precision}, noise-conditioned (ksigma) default-size models")
    print(f"{'model':>14} {'eager':>8} {'compiled':>9} {'speed-up':>9} {'compile':>8} {'pays after':>11} {'max diff':>9}")
    for name in args.models.split(","):
        command = [sys.executable, __file__, "--child", name, "--precision", args.precision, "--repeats", str(args.repeats),
                   "--contest", args.contest] + (["--side", str(args.side)] if args.side else [])  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{name:>14} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        compile_cost = r["first"] - r["compiled"]
        gain = r["eager"] - r["compiled"]
        pays = f"{compile_cost / gain:.1f} frames" if gain > 0 else "never"
        verdict = "pays" if gain > 0 and args.frames * gain > compile_cost else "does not pay"
        print(f"{name:>14} {r['eager']:7.2f}s {r['compiled']:8.2f}s {r['eager'] / r['compiled']:8.2f}x {compile_cost:7.1f}s "
              f"{pays:>11} {r['max_diff']:9.1e}   on {args.frames} frames: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
