"""Score predictions against ground truth exactly as the contest does, and keep a local leaderboard.

    python tools/score.py PRED GT [--contest NAME] [--json] [--csv OUT] [--name RUN] [--html OUT] [--noisy DIR]
                                  [--no-levels]

PRED: a submission zip, a runs/X folder (its result.zip), or a folder of denoise{i}.dng (or of the
test inputs noisy{i}.dng, the "do nothing" entry). GT: a folder of gt{i}.dng. Exit 0 when scored,
2 when an input is wrong (the message names the file or zip member and the problem).

When the test data say each frame's noise level (noise.csv at the data root, or the inputs'
NoiseProfile tags), the test inputs beside GT are measured too and the PSNR gain over the input is
shown per level, worst frame included: a model that harms light noise shows at a glance.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from rawdenoise import cli
from rawdenoise.checkpoint import parameter_count
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path
from rawdenoise.leaderboard import Entry, ranked, record, ground_truth_key
from rawdenoise.noise_levels import by_level
from rawdenoise.noise_levels import as_json as levels_as_json
from rawdenoise.scoring import as_json, resolve, score_pairs, totals

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LEADERBOARD = ROOT / "runs" / "leaderboard.sqlite"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score denoised DNGs with the contest's PSNR, SSIM and score, and rank runs on a local leaderboard.",
        epilog="Example: python tools/score.py runs/demo work/demo/testset_gt --name demo --html runs/demo/report.html",
    )
    parser.add_argument("pred", help="submission zip, runs/X folder, or folder of denoise{i}.dng / noisy{i}.dng")
    parser.add_argument("gt", help="folder of ground truth gt{i}.dng")
    cli.add_contest_argument(parser)
    parser.add_argument("--json", action="store_true", help="print only the result as JSON on stdout")
    parser.add_argument("--csv", metavar="OUT", help="write the per-image table and the means as CSV")
    parser.add_argument("--name", metavar="RUN", help="record this run on the leaderboard under RUN and print the board")
    parser.add_argument("--html", metavar="OUT", help="write a report page with crops and the leaderboard")
    parser.add_argument("--noisy", metavar="DIR",
                        help="test inputs, for the gain per noise level and the report's crops (default: the profile's test-input folder beside GT, e.g. testset/)")  # fmt: skip
    parser.add_argument("--no-levels", action="store_true",
                        help="skip the test inputs' PSNR and the table per noise level (one decode less per frame)")  # fmt: skip
    parser.add_argument(
        "--leaderboard", metavar="DB", default=str(DEFAULT_LEADERBOARD),
        help="leaderboard database; its CSV export goes beside it (default: runs/leaderboard.sqlite)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="threads reading frames ahead of the metrics (default: one per core)",
    )  # fmt: skip
    return parser


def _fmt(value: float, digits: int) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def print_table(results, summary, out) -> None:
    width = max([len(r.name) for r in results] + [5])
    print(f"{'image':<{width}}  {'PSNR (dB)':>10}  {'SSIM':>9}  {'score':>8}", file=out)
    for r in results:
        print(f"{r.name:<{width}}  {_fmt(r.psnr, 4):>10}  {r.ssim:>9.6f}  {r.score:>8.4f}", file=out)
    print(f"{'mean':<{width}}  {summary.psnr:>10.4f}  {summary.ssim:>9.6f}  {summary.score:>8.4f}", file=out)


def print_levels(rows, out) -> None:
    if not rows:
        return
    width = max([len(r.level.label) for r in rows] + [5])
    print(f"\nby noise level (PSNR gain over the input; worst: the level's worst frame)", file=out)
    print(f"{'level':<{width}}  {'frames':>6}  {'input':>8}  {'output':>8}  {'gain':>7}  {'worst':>7}", file=out)
    for r in rows:
        print(f"{r.level.label:<{width}}  {r.frames:>6}  {r.input_psnr:>8.3f}  {r.psnr:>8.3f}  {r.gain:>+7.3f}  "
              f"{r.worst_gain:>+7.3f}", file=out)  # fmt: skip


def print_leaderboard(entries, highlight: str | None, out) -> None:
    if not entries:
        return
    width = max(len(e.name) for e in entries)
    print(f"\nleaderboard ({entries[0].contest}, ground truth {entries[0].gt_folder}, test set {entries[0].testset})", file=out)
    print(f"{'rank':>4}  {'run':<{width}}  {'score':>8}  {'PSNR':>8}  {'SSIM':>8}  {'model':<16} {'params':>12}", file=out)
    for k, e in enumerate(entries, 1):
        mark = " <" if e.name == highlight else ""
        params = "" if e.params is None else f"{e.params:,}"
        print(
            f"{k:>4}  {e.name:<{width}}  {e.score:>8.4f}  {e.psnr:>8.4f}  {e.ssim:>8.5f}  {(e.model or ''):<16} {params:>12}{mark}",
            file=out,
        )


def write_csv(path: str, results, summary) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "psnr", "ssim", "score"])
            for r in results:
                writer.writerow([r.name, "inf" if math.isinf(r.psnr) else repr(r.psnr), repr(r.ssim), repr(r.score)])
            writer.writerow(["mean", repr(summary.psnr), repr(summary.ssim), repr(summary.score)])


def model_facts(predictions, contest) -> dict:
    """Model name, parameter count and weights size, when the zip carries them (never importing torch)."""
    sub = predictions.submission
    facts = {"model": None, "params": None, "weights_bytes": None}
    if sub is None:
        facts["model"] = "(input as is)" if predictions.source == "noisy" else None
        return facts
    facts["model"] = sub.model_name()
    if sub.weights is not None:
        data = sub.read(sub.weights, max(2 * contest.submission.max_model_bytes, 64 << 20))
        facts["weights_bytes"] = len(data)
        facts["params"] = parameter_count(data, sub.where(sub.weights))
    return facts


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    gt_dir = Path(args.gt)
    noisy_dir = Path(args.noisy) if args.noisy else gt_dir.parent / contest.layout.test_noisy.folder
    if args.noisy and not noisy_dir.is_dir():
        raise InputError(f"{noisy_dir}: --noisy folder not found")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.name is not None and (not args.name.strip() or not args.name.isprintable()):
        raise InputError(f"--name must be printable text that is not blank, got {args.name!r}")  # a board row per line
    db = Path(args.leaderboard)
    for flag, out in (("--csv", args.csv), ("--html", args.html)):
        if out and Path(out).resolve() in (db.resolve(), Path(args.pred).resolve()):
            raise InputError(f"{out}: {flag} would overwrite an input of this scoring (the leaderboard or the predictions)")
    predictions = resolve(args.pred, gt_dir, contest, noisy_dir if args.html or not args.no_levels else None,
                          levels=not args.no_levels)  # fmt: skip
    facts = model_facts(predictions, contest) if args.name else {}
    inputs = not args.no_levels and predictions.source != "noisy"  # the inputs themselves gain nothing
    bar = tqdm(total=len(predictions.pairs), desc="scoring", unit="frame", disable=args.json or not sys.stderr.isatty())
    results = score_pairs(predictions.pairs, contest, args.workers, crops=bool(args.html), progress=bar.update,
                          inputs=inputs)  # fmt: skip
    bar.close()
    summary = totals(results, contest)
    levels = by_level(results, contest.metric.psnr_cap) if inputs else []

    entries = []
    if args.name or args.html:
        testset = ground_truth_key(pair.gt for pair in predictions.pairs)  # the ground truth's content, not its folder
    if args.name:
        entry = Entry(
            contest=contest.name, testset=testset, name=args.name, score=summary.score, psnr=summary.psnr,
            ssim=summary.ssim, images=len(results), source=str(Path(args.pred)), gt_folder=str(gt_dir.resolve()), **facts,
        )  # fmt: skip
        record(db, entry, csv_path=db.with_suffix(".csv"))
        entries = ranked(db, contest.name, testset)
    elif args.html:
        entries = ranked(db, contest.name, testset)
    if args.csv:
        write_csv(args.csv, results, summary)
    if args.html:
        title = f"{args.name or Path(args.pred).name} on {contest.name}"
        from rawdenoise.report import write_html

        write_html(args.html, title, contest, results, summary, entries, args.name, levels)

    if args.json:
        document = as_json(results, summary)
        if levels:
            document["levels"] = levels_as_json(levels)
        print(json.dumps(document))
        return 0
    print_table(results, summary, sys.stdout)
    print_levels(levels, sys.stdout)
    if args.name:
        print_leaderboard(entries, args.name, sys.stdout)
    for label, path in (("csv", args.csv), ("report", args.html)):
        if path:
            print(f"{label}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
