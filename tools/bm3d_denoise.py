"""The strongest classical reference entry: BM3D told each frame's noise, written as a submission.

    python tools/bm3d_denoise.py --input work/demo/testset [--output runs/bm3d/result/data] [--noise auto|estimate|A,B]

BM3D (Dabov et al. 2007; the authors' PyPI package `bm3d`, free for non-commercial use) removes
white Gaussian noise of a known level. The contest's noise is signal-dependent (variance a*x + b), so
each frame goes through the generalised Anscombe transform of its own (a, b) (rawdenoise.vst), where
the noise has unit variance, is denoised there with sigma 1, and comes back through the exact
unbiased inverse. The four packed channels are filtered together, block matching on Gr (the greens
carry the most signal). (a, b) is the frame's DNG NoiseProfile tag, else the estimate from the frame
itself (rawdenoise.noise_estimate); --noise estimate ignores tags, --noise A,B sets one for every frame.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.cpu import default_workers
from rawdenoise.errors import InputError
from rawdenoise.files import replaced_folder
from rawdenoise.noise_estimate import frame_noise_profile
from rawdenoise.raw import read, write_back
from rawdenoise.vst import anscombe, inverse_anscombe

ROOT = Path(__file__).resolve().parent.parent
MATCH_FIRST = (1, 0, 2, 3)  # Gr, R, Gb, B: bm3d matches blocks on its first channel


def bm3d_packed(packed: np.ndarray, a: float, b: float, profile: str = "np") -> np.ndarray:
    """(4, h, w) normalised noisy frame with noise variance a*x + b -> the denoised (4, h, w) float32."""
    import bm3d  # imported here: only this entry needs it, and it loads a compiled library

    stabilised = np.moveaxis(anscombe(packed, a, b)[list(MATCH_FIRST)], 0, -1)
    estimate = bm3d.bm3d(stabilised, sigma_psd=[1.0] * len(MATCH_FIRST), profile=profile)
    restored = np.moveaxis(np.asarray(estimate), -1, 0)[np.argsort(MATCH_FIRST)]
    return inverse_anscombe(restored, a, b).astype(np.float32)


def denoise_file(source: Path, dest: Path, contest, noise, profile: str) -> None:
    frame = read(source, contest)
    a, b = frame_noise_profile(frame, noise)
    write_back(source, dest, frame.to_mosaic(bm3d_packed(frame.packed(), a, b, profile)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="BM3D with each frame's noise profile: the classical entry to beat.")
    parser.add_argument("--input", required=True, help="folder of test inputs (noisy{i}.dng)")
    parser.add_argument("--output", default=str(ROOT / "runs" / "bm3d" / "result" / "data"),
                        help="folder for denoise{i}.dng (default: runs/bm3d/result/data)")  # fmt: skip
    cli.add_noise_argument(parser)
    parser.add_argument("--profile", default="np", choices=("np", "refilter", "high"),
                        help="bm3d's parameter set (default: %(default)s)")  # fmt: skip
    parser.add_argument("--workers", type=int, metavar="N",
                        help="frames denoised at once, one process each (bm3d runs on one core; default: one per core)")  # fmt: skip
    cli.add_quiet_argument(parser)
    cli.add_contest_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    inputs = contest.layout.test_noisy.bare.find(args.input)
    if not inputs:
        raise InputError(f"{args.input}: no test inputs")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    output, names = Path(args.output), contest.submission.output
    start = time.perf_counter()
    # the set replaces an earlier one only once complete: a failure half-way never leaves a mix
    with replaced_folder(output, owned=names.matches) as staging:
        # workers start from a clean server process, never forked from one whose OpenMP (rawpy) may run
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(args.workers or default_workers(len(inputs)), context) as pool:
            futures = [pool.submit(denoise_file, path, names.path(staging, i), contest, args.noise, args.profile)
                       for i, path in inputs.items()]  # fmt: skip
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="bm3d", unit="frame", disable=args.quiet):
                    future.result()  # the first failure stops the set
            finally:
                for future in futures:
                    future.cancel()
    print(f"wrote {len(inputs)} BM3D predictions to {output} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
