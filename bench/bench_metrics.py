"""Metric speed and agreement: our PSNR/SSIM against scikit-image's on one contest-size pair, and
end-to-end scoring throughput (DNG reading included): one reader thread, one per core (what
score.py does), and worker processes.

    python bench/bench_metrics.py [--contest zte2022] [--frames 4] [--repeat 3]

Every figure is measured in this one run, and speed is reported as a ratio, because the machines
are shared and absolute times drift.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.cpu import default_workers
from rawdenoise.metrics import psnr, ssim
from rawdenoise.raw import write_dng
from rawdenoise.scoring import Pair, score_pairs, score_pairs_in_processes

from machine import machine_line


def frame_pair(contest, rng) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, textured ground truth and a prediction off by a few DN of noise, at full size."""
    h, w = contest.height, contest.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    black, white = int(contest.black_array.max()), contest.white
    base = 0.5 + 0.25 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + 0.1 * rng.standard_normal((h, w), dtype=np.float32)
    gt = np.clip(black + base * (white - black), black, white).astype(np.uint16)
    pred = np.clip(gt + rng.normal(0, 60, (h, w)), black, white).round().astype(np.uint16)
    return gt, pred


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_contest_argument(parser)
    parser.add_argument("--frames", type=int, default=4, help="frames for the end-to-end part")
    parser.add_argument("--repeat", type=int, default=3, help="best-of repeats for the kernel timings")
    args = parser.parse_args()
    contest = load_contest(args.contest)
    rng = np.random.default_rng(0)
    gt, pred = frame_pair(contest, rng)
    data_range, mode = contest.metric.data_range, contest.metric.ssim_mode
    ours_psnr, ours_ssim = psnr(gt, pred, data_range), ssim(gt, pred, data_range, mode)  # compile / load cache

    axis = {"channel_axis": -1} if mode == "columns" else {}
    t_ref_psnr, ref_psnr = best_of(1, lambda: peak_signal_noise_ratio(gt, pred, data_range=data_range))
    t_ref_ssim, ref_ssim = best_of(1, lambda: structural_similarity(gt, pred, data_range=data_range, **axis))
    t_psnr, _ = best_of(args.repeat, lambda: psnr(gt, pred, data_range))
    t_ssim, _ = best_of(args.repeat, lambda: ssim(gt, pred, data_range, mode))
    print(machine_line())
    print(f"one {gt.shape[0]}x{gt.shape[1]} pair, SSIM mode '{mode}', {os.cpu_count()} cores")
    print(f"{'':8} {'scikit-image':>13} {'ours':>9} {'speed-up':>9}  |difference|")
    print(f"{'PSNR':8} {t_ref_psnr:12.3f}s {t_psnr:8.3f}s {t_ref_psnr / t_psnr:8.1f}x  {abs(ours_psnr - ref_psnr):.2e} dB")
    print(f"{'SSIM':8} {t_ref_ssim:12.3f}s {t_ssim:8.3f}s {t_ref_ssim / t_ssim:8.1f}x  {abs(ours_ssim - ref_ssim):.2e}")
    both_ref, both = t_ref_psnr + t_ref_ssim, t_psnr + t_ssim
    print(f"{'both':8} {both_ref:12.3f}s {both:8.3f}s {both_ref / both:8.1f}x")

    with tempfile.TemporaryDirectory() as tmp:
        pairs = []
        for i in range(args.frames):
            g, p = frame_pair(contest, rng) if i else (gt, pred)
            gt_path, pred_path = Path(tmp) / f"gt{i}.dng", Path(tmp) / f"denoise{i}.dng"
            write_dng(gt_path, g, contest.cfa, contest.black_array, contest.white)
            write_dng(pred_path, p, contest.cfa, contest.black_array, contest.white)
            pairs.append(Pair(i, f"denoise{i}", gt_path, pred_path))
        workers = default_workers(len(pairs))
        t_one, _ = best_of(1, lambda: score_pairs(pairs, contest, workers=1))
        t_threads, _ = best_of(1, lambda: score_pairs(pairs, contest, workers=workers))
        t_procs, _ = best_of(1, lambda: score_pairs_in_processes(pairs, contest, workers=workers))
        print(f"\nscoring {args.frames} full-size DNG pairs end to end (read + check + metrics):")
        for label, t in (
            ("1 reader thread", t_one),
            (f"{workers} reader threads (score.py)", t_threads),
            (f"{workers} worker processes", t_procs),
        ):
            print(f"  {label:<30} {t:6.2f}s  {t / args.frames:.2f}s a frame  {t_one / t:.2f}x")


if __name__ == "__main__":
    main()
