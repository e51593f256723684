"""Estimate each DNG's noise profile (a, b), variance a*x + b on normalised x, from the noisy frame alone.

    python tools/estimate_noise.py DNG... [--contest NAME] [--json]

Prints a table of the estimates; where a file carries a DNG NoiseProfile tag (the demo set's frames
do), the tag's values and the estimate's relative errors are shown beside it: of a, of b, and of the
noise std sqrt(a*x + b) averaged over the frame's own pixel levels. `--json` prints only
`[{"file": ..., "a": ..., "b": ...}, ...]` on stdout. Exit 0 when every file was estimated, 2 when a
file is not a readable Bayer DNG of the contest (the message names it). The method:
rawdenoise/noise_estimate.py.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.noise_estimate import estimate_noise_profile
from rawdenoise.raw import RawFrame, read


def tag_profile(frame: RawFrame) -> tuple[float, float] | None:
    """The NoiseProfile tag's (S, O) when it gives one pair for the whole frame (or the same pair per plane)."""
    tag = frame.noise_profile
    if not tag or len(tag) % 2:
        return None
    pairs = {(float(tag[i]), float(tag[i + 1])) for i in range(0, len(tag), 2)}
    return pairs.pop() if len(pairs) == 1 else None


def std_error(frame: RawFrame, estimate: tuple[float, float], truth: tuple[float, float]) -> float:
    """Mean over the frame's pixels of |sqrt(a^ x + b^) / sqrt(a x + b) - 1|, x the (noisy) pixel level."""
    levels, counts = np.unique(np.clip(frame.packed(), 0.0, 1.0), return_counts=True)
    true_std = np.sqrt(np.maximum(truth[0] * levels + truth[1], 0.0))
    est_std = np.sqrt(np.maximum(estimate[0] * levels + estimate[1], 0.0))
    valid = true_std > 0
    if not valid.any():
        return float("nan")
    return float(np.average(np.abs(est_std[valid] / true_std[valid] - 1.0), weights=counts[valid]))


def _relative(estimate: float, truth: float) -> str:
    return f"{(estimate - truth) / truth:+.1%}" if truth else "n/a"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Estimate each DNG's noise profile (a, b), variance a*x + b on normalised x, from the frame alone.",
        epilog="Example: python tools/estimate_noise.py work/demo/testset/noisy*.dng",
    )
    parser.add_argument("files", nargs="+", metavar="DNG", help="noisy Bayer DNG files")
    cli.add_contest_argument(parser)
    parser.add_argument("--json", action="store_true", help='print only [{"file", "a", "b"}, ...] as JSON on stdout')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    results = []
    width = max(len(name) for name in args.files)
    header = f"{'file':<{width}}  {'a':>10}  {'b':>10}  {'tag a':>10}  {'tag b':>10}"
    header += f"  {'a err':>7}  {'b err':>7}  {'std err':>7}"
    for name in args.files:
        frame = read(name, contest)  # not a DNG, truncated, another CFA or levels: InputError naming it
        try:
            a, b = estimate_noise_profile(frame)
        except ValueError as err:  # too small to hold one block
            raise InputError(f"{name}: {err}") from None
        if a + b <= 0:  # an all-black or saturated frame: nothing to measure, not a noiseless one
            raise InputError(f"{name}: no measurable noise in the frame (no flat region between black and saturation)")
        results.append({"file": name, "a": a, "b": b})
        if args.json:
            continue
        if len(results) == 1:
            print(header)
        row = f"{name:<{width}}  {a:>10.4g}  {b:>10.4g}"
        truth = tag_profile(frame)
        if truth is not None:
            err = std_error(frame, (a, b), truth)
            row += f"  {truth[0]:>10.4g}  {truth[1]:>10.4g}  {_relative(a, truth[0]):>7}  {_relative(b, truth[1]):>7}"
            row += f"  {err:>7.1%}"
        print(row, flush=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
