"""Synthesise the demo dataset in the contest's layout from photographs bundled with installed packages.

    python tools/make_demo_data.py --out work/demo [--full-size] [--seed N] [--size HxW] [--contest NAME]
    python tools/make_demo_data.py --out work/heldout --hold-out astronaut,ihc --seed 1   # to choose a recipe on
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.demo import DEFAULT_SIZE, make_demo_dataset
from rawdenoise.noise_csv import NOISE_CSV, read_noise_csv
from rawdenoise.errors import InputError


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 384x512, got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Write a demo dataset (noisy/ground-truth DNG pairs, a test set with its ground truth kept "
            "apart, and noise.csv) in the contest's layout, made by unprocessing the photographs that "
            "scikit-image and matplotlib ship. Nothing is downloaded. An existing demo set in --out is "
            "replaced; any other non-empty folder is refused."
        )
    )
    parser.add_argument("--out", required=True, help="destination folder, e.g. work/demo")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULT_SIZE,
        metavar="HxW",
        help="mosaic size of each frame (default: %(default)s, fast on a laptop)",
    )
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="frames at the contest's full size (collages of native-resolution crops; large and slow)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files byte for byte (default: 0)")
    parser.add_argument(
        "--hold-out",
        type=lambda text: [name for name in text.split(",") if name],
        default=[],
        metavar="PHOTO[,PHOTO]",
        help=(
            "test on these training photographs instead (e.g. astronaut,ihc) and leave the demo's own test "
            "photographs out entirely: a split for choosing a recipe without ever seeing the demo test set"
        ),
    )
    cli.add_quiet_argument(parser)
    cli.add_contest_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    if args.full_size and args.size != DEFAULT_SIZE:
        raise InputError("--size and --full-size contradict each other; give one")
    start = time.perf_counter()
    out = make_demo_dataset(
        args.out, contest, size=args.size, full_size=args.full_size, seed=args.seed, hold_out=args.hold_out,
        progress=not args.quiet,
    )
    rows = list(read_noise_csv(out))
    counts = Counter(row["split"] for row in rows)
    print(
        f"wrote {counts['train']} training pairs and {counts['test']} test pairs for {contest.name} to {out} "
        f"in {time.perf_counter() - start:.1f} s; noise parameters in {out / NOISE_CSV}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
