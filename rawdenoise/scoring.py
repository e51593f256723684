"""Score a set of predictions against ground truth, as the contest does: pair, check, measure, average.

Predictions come from a submission zip (read in memory, never extracted), a run folder holding
result.zip, or a plain folder of DNGs (the submission's output names, or the test inputs themselves
for the "do nothing" entry). Reader threads load pairs ahead while the metric kernels measure.
"""

from __future__ import annotations

import math
import multiprocessing
import zlib
from collections import deque
from itertools import islice
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rawdenoise.contest import load_contest
from rawdenoise.cpu import default_workers
from rawdenoise.errors import InputError
from rawdenoise.metrics import capped, frame_metrics, limit_threads_for_workers, psnr, summarise
from rawdenoise.noise_levels import Level, listed_levels, tagged_level
from rawdenoise.raw import check_prediction, decode, read
from rawdenoise.submission_zip import SubmissionZip, open_submission

CROP = 256  # mosaic pixels per side of the report's crops
PREDICTION_SLACK = 1 << 20  # bytes a prediction may hold beyond its ground truth's size (and a quarter more)
RUN_WEIGHTS = "model.pth"  # a run folder's exported weights, what pack puts in the zip


@dataclass(frozen=True)
class Pair:
    index: int
    name: str  # the prediction's file stem, e.g. "denoise3"
    gt: Path
    pred_path: Path  # a DNG on disk, or the zip
    member: str | None = None  # the DNG inside the zip
    noisy: Path | None = None  # the test input: the report's crops, and the gain per noise level
    level: Level | None = None  # from the data's noise.csv (else the input's tag, once read)

    @property
    def where(self) -> str:
        return f"{self.pred_path}:{self.member}" if self.member else str(self.pred_path)


@dataclass
class ImageResult:
    index: int
    name: str
    psnr: float
    ssim: float
    score: float
    crops: dict | None = None  # "gt", "pred", optional "noisy": (4, h, w) normalised
    input_psnr: float | None = None  # the test input's own PSNR, when it was read
    level: Level | None = None  # the input's noise level, when the data say it


@dataclass
class Predictions:
    pairs: list[Pair]
    source: str  # "zip", "folder" or "noisy"
    submission: SubmissionZip | None


def resolve(pred: str | Path, gt_dir: str | Path, contest, noisy_dir: str | Path | None = None,
            levels: bool = True) -> Predictions:  # fmt: skip
    """Pair every ground-truth frame in gt_dir with its prediction; missing or extra images are errors.
    `levels`: read each frame's noise level from the data's noise.csv (a bad one is an InputError); a
    caller that shows no level leaves it off, so the metric alone never depends on that file."""
    pred, gt_dir = Path(pred), Path(gt_dir)
    if not gt_dir.is_dir():
        raise InputError(f"{gt_dir}: ground-truth folder not found")
    gts = contest.layout.test_gt.bare.find(gt_dir)
    if not gts:
        raise InputError(f"{gt_dir}: no ground truth named like {contest.layout.test_gt.bare.pattern}")
    noisy = contest.layout.test_noisy.bare.find(noisy_dir) if noisy_dir and Path(noisy_dir).is_dir() else {}
    submission = None
    run_dir = None
    if pred.is_dir() and (pred / "result.zip").is_file():
        run_dir, pred = pred, pred / "result.zip"  # a run folder
    if pred.is_file():
        submission = open_submission(pred, contest)
        if run_dir is not None:
            check_packed_current(run_dir, submission, contest)
        found = {i: (pred, member) for i, member in submission.images.items()}
        source, label = "zip", f"{pred} ({contest.submission.data_dir}/)"
    elif pred.is_dir():
        found, source = {}, "folder"
        for source_name, pattern in (("folder", contest.submission.output), ("noisy", contest.layout.test_noisy)):
            files = pattern.bare.find(pred)
            if files:
                found, source = {i: (p, None) for i, p in files.items()}, source_name
                break
        label = str(pred)
    else:
        raise InputError(f"{pred}: no such zip, run folder or folder of predictions")
    names = contest.submission.output.bare if source != "noisy" else contest.layout.test_noisy.bare
    names.check_matches(gts, found, label, "ground truth")
    listed = listed_levels(gt_dir) if levels else {}
    pairs = [
        Pair(i, Path(names.name(i)).stem, gts[i], found[i][0], found[i][1], noisy.get(i), listed.get(gts[i].resolve()))
        for i in sorted(gts)
    ]
    for pair in pairs:  # every size, before any frame is read or decompressed
        size = submission.declared[pair.member][0] if submission else pair.pred_path.stat().st_size
        _check_size(pair, size)
    return Predictions(pairs, source, submission)


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def check_packed_current(run_dir: Path, submission: SubmissionZip, contest) -> None:
    """Refuse a run folder whose result.zip no longer holds the run's predictions or weights.

    Predict removes the zip once it has replaced the whole set, and a new training removes it too; a
    predict that stops half-way (a bad input at frame 5), or files replaced by hand, leave the previous
    zip behind, and scoring the run would rank predictions that are no longer its own."""
    data_dir = run_dir / contest.submission.data_dir
    problem = packed_difference(run_dir, submission, contest)
    if problem:
        raise InputError(
            f"{submission.path}: no longer the run's submission ({problem}: predicted or trained again since "
            f"it was packed, and no pack has succeeded since); run python submission/pack.py --run {run_dir}, "
            f"or score {data_dir} itself"
        )


def packed_difference(run_dir: Path, submission: SubmissionZip, contest) -> str | None:
    """The first way the run's predictions and weights differ from what its zip holds, or None.
    Contents are compared (size, then CRC-32 against the zip's directory), not file times, so a copied
    run folder still matches."""
    sub = contest.submission
    data_dir = run_dir / sub.data_dir
    mine = {sub.member(i): path for i, path in sub.output.find(data_dir).items()} if data_dir.is_dir() else {}
    packed = set(submission.images.values())
    if mine and set(mine) != packed:
        member = min(set(mine) ^ packed)
        return f"{member} is in {'the run' if member in mine else 'the zip'} only"
    if (run_dir / RUN_WEIGHTS).is_file() and submission.weights is not None:
        mine[submission.weights] = run_dir / RUN_WEIGHTS
    for member, path in sorted(mine.items()):
        size, crc = submission.declared[member]
        if path.stat().st_size != size or file_crc(path) != crc:
            return f"{path} is not the zip's {member}"
    return None


def prediction_limit(gt: Path) -> int:
    """The most bytes a prediction paired with `gt` may hold.

    A prediction is a copy of its input's container with the pixels replaced, so it is about as large
    as its ground truth: a quarter more and PREDICTION_SLACK leave room for other metadata, and a
    member or file of hundreds of megabytes beside a frame of a few is refused unread.
    """
    size = gt.stat().st_size
    return size + size // 4 + PREDICTION_SLACK


def _check_size(pair: Pair, size: int) -> None:
    limit = prediction_limit(pair.gt)
    if size > limit:
        what = f"declares {size} bytes uncompressed" if pair.member else f"{size} bytes"
        raise InputError(
            f"{pair.where}: {what}, more than the {limit} its ground truth {pair.gt.name} allows: "
            "not a plausible prediction"
        )


def _read_prediction(pair: Pair, contest):
    if pair.member is None:
        _check_size(pair, pair.pred_path.stat().st_size)
        return read(pair.pred_path, contest)
    zipped = SubmissionZip(pair.pred_path, {})
    return decode(zipped.read(pair.member, prediction_limit(pair.gt)), pair.where, contest)


def _worst_block(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Top-left of the CROP x CROP block with the largest squared error: where a report should look."""
    h, w = gt.shape
    size = min(CROP, h - h % 2, w - w % 2)
    bh, bw = h // size, w // size
    diff = gt[: bh * size, : bw * size].astype(np.float64) - pred[: bh * size, : bw * size]
    sse = (diff * diff).reshape(bh, size, bw, size).sum(axis=(1, 3))
    r, c = np.unravel_index(int(np.argmax(sse)), sse.shape)
    return int(r * size), int(c * size)


@dataclass
class LoadedPair:
    pair: Pair
    gt: object  # RawFrame
    pred: object
    noisy: object | None


def load_pair(pair: Pair, contest, with_noisy: bool = False) -> LoadedPair:
    """Read and check one pair: the prediction must match its ground truth's shape and lie in [black, white]."""
    gt = read(pair.gt, contest)
    pred = _read_prediction(pair, contest)
    check_prediction(pred, gt, pair.where)
    noisy = read(pair.noisy, contest) if with_noisy and pair.noisy is not None else None
    return LoadedPair(pair, gt, pred, noisy)


def measure(loaded: LoadedPair, contest, crops: bool = False) -> ImageResult:
    pair, gt, pred, noisy = loaded.pair, loaded.gt, loaded.pred, loaded.noisy
    p, ssim = frame_metrics(gt.mosaic, pred.mosaic, contest)
    result = ImageResult(pair.index, pair.name, p, ssim, contest.score(capped(p, contest), ssim))
    if noisy is not None and noisy.mosaic.shape == gt.mosaic.shape:
        result.input_psnr = psnr(gt.mosaic, noisy.mosaic, contest.metric.data_range)
        result.level = pair.level or tagged_level(noisy)
    if crops:
        top, left = _worst_block(gt.mosaic, pred.mosaic)
        size = min(CROP, gt.mosaic.shape[0], gt.mosaic.shape[1])
        rows, cols = slice(top // 2, (top + size) // 2), slice(left // 2, (left + size) // 2)
        result.crops = {"gt": gt.packed()[:, rows, cols], "pred": pred.packed()[:, rows, cols]}
        if noisy is not None and noisy.mosaic.shape == gt.mosaic.shape:
            result.crops["noisy"] = noisy.packed()[:, rows, cols]
    return result


def score_pair(pair: Pair, contest, crops: bool = False, inputs: bool = False) -> ImageResult:
    return measure(load_pair(pair, contest, crops or inputs), contest, crops)


def score_pairs(pairs: list[Pair], contest, workers: int | None = None, crops: bool = False, progress=None,
                inputs: bool = False):  # fmt: skip
    """ImageResults in index order; `inputs` also reads each pair's test input (its PSNR and level).

    Reading dominates (two 16-megapixel DNG decodes per frame), and rawpy decodes without holding
    the GIL, so `workers` reader threads (default: one per core) load pairs ahead while the metric
    kernels, themselves parallel over all cores, measure the pair before. At most `workers` pairs
    wait in memory. Threads beat worker processes here: no start-up, no re-import, and the kernels
    keep every core (bench/bench_metrics.py measures both paths).
    """
    workers = workers or default_workers(len(pairs))
    results = []
    with ThreadPoolExecutor(workers) as pool:
        upcoming = iter(pairs)
        pending = deque(pool.submit(load_pair, pair, contest, crops or inputs) for pair in islice(upcoming, workers))
        try:
            while pending:
                loaded = pending.popleft().result()  # the first failure, in index order, stops the run
                pending.extend(pool.submit(load_pair, pair, contest, crops or inputs) for pair in islice(upcoming, 1))
                results.append(measure(loaded, contest, crops))
                if progress:
                    progress(1)
        finally:
            for future in pending:
                future.cancel()
    return results


def score_pairs_in_processes(pairs: list[Pair], contest, workers: int, crops: bool = False) -> list[ImageResult]:
    """The same results from worker processes (one pair each in memory): kept to measure against."""
    # Workers fork from a clean server process that has imported this module once: never from a
    # parent whose OpenMP (rawpy) or numba threads are already running, which can deadlock.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(workers, context, _init_worker, (str(contest.path), workers)) as pool:
        return list(pool.map(_score_in_worker, pairs, [crops] * len(pairs)))


_worker_contest = None


def _init_worker(contest_path: str, workers: int) -> None:
    global _worker_contest
    _worker_contest = load_contest(contest_path)
    limit_threads_for_workers(workers)


def _score_in_worker(pair: Pair, crops: bool) -> ImageResult:
    return score_pair(pair, _worker_contest, crops)


@dataclass
class Totals:
    psnr: float
    ssim: float
    score: float


def totals(results: list[ImageResult], contest) -> Totals:
    return Totals(*summarise([r.psnr for r in results], [r.ssim for r in results], contest))


def as_json(results: list[ImageResult], summary: Totals) -> dict:
    """The --json document: infinite PSNR is null; means and score already cap it."""
    finite = lambda v: None if math.isinf(v) else v  # noqa: E731
    return {
        "images": [{"name": r.name, "psnr": finite(r.psnr), "ssim": r.ssim, "score": r.score} for r in results],
        "psnr": summary.psnr,
        "ssim": summary.ssim,
        "score": summary.score,
    }
