"""Cut a data folder's training pairs into a patch store (its layout: rawdenoise/patch_store.py).

    python train/make_patches.py --data work/demo [--out work/patches/demo] [--patch-size 128] [--step 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.patch_store import PatchOptions, load_meta, make_patch_store


def build_parser() -> argparse.ArgumentParser:
    defaults = PatchOptions()
    parser = argparse.ArgumentParser(
        description="Cut training pairs into memory-mappable packed patches and keep validation frames whole.",
        epilog="Re-running with the same data and options keeps the existing store.",
    )
    parser.add_argument("--data", required=True, help="data folder in the contest's layout (e.g. work/demo)")
    parser.add_argument("--out", help="store folder (default: work/patches/<data folder name>)")
    parser.add_argument("--patch-size", type=int, default=defaults.patch_size,
                        help="patch side in packed pixels; training crops inside it (default: %(default)s)")  # fmt: skip
    parser.add_argument("--step", type=int, default=defaults.step, help="stride between patches (default: %(default)s)")
    parser.add_argument(
        "--edge", choices=("shift", "drop"), default=defaults.edge,
        help="shift: add a patch flush with each far edge; drop: leave the remainder (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--val-frames", type=int, default=None, help="whole frames kept for validation (default: 10%%)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="chooses the validation frames (default: 0)")
    cli.add_quiet_argument(parser)
    cli.add_contest_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    out = Path(args.out) if args.out else Path("work/patches") / Path(args.data).resolve().name
    options = PatchOptions(args.patch_size, args.step, args.edge, args.val_frames, args.seed)
    start = time.perf_counter()
    make_patch_store(args.data, out, contest, options, progress=not args.quiet)
    meta = load_meta(out)
    print(
        f"{out}: {meta['patches']} patches of {meta['patch_size']}x{meta['patch_size']} packed pixels from "
        f"{len(meta['train_frames'])} frames, {len(meta['val_frames'])} validation frames kept whole "
        f"({time.perf_counter() - start:.1f} s)"
        + (f"; local test set in {meta['local_test']}" if meta["local_test"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
