"""How much of a whole test set's prediction is the model's own time: what predict adds around it
(DNG decode, noise estimation, write-back into the container) and how much of that its I/O thread hides.

    python bench/bench_predict.py --run runs/demo [--data work/demo] [--precision fp32] [--repeats 3]

Three figures from this one run, each the best of `--repeats`: the sum over the test frames of the
model's time alone (frames decoded beforehand, as predict runs it: its tiles, its recipe's TTA, the
chosen precision), the same frames' I/O alone (decode, noise profile, write-back), and
submission/predict.py's predict_folder end to end. The ratio of the last to the first is the target
(<= 1.2: I/O hidden behind the model).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.measured import read_measured
from rawdenoise.models import is_noise_conditioned
from rawdenoise.noise_estimate import frame_noise_profile
from rawdenoise.raw import read, write_back
from rawdenoise.run_folder import Run, run_model
from rawdenoise.tiling import DEFAULT_TILE, adopt_radius

from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent


def predict_command():
    """submission/predict.py as a module: its predict_folder is what the command runs, timed here."""
    spec = importlib.util.spec_from_file_location("predict_command", ROOT / "submission" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder with config.toml and model.pth")
    parser.add_argument("--data", default="work/demo", help="data folder with testset/ (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, help="default: the run's recipe")
    parser.add_argument("--repeats", type=int, default=3)
    cli.add_contest_argument(parser)
    args = parser.parse_args()
    contest = load_contest(args.contest)
    run = Path(args.run)
    recipe_run = Run.open(run)
    model = run_model(recipe_run, torch.device("cpu"))
    adopt_radius(model, read_measured(run, run / "model.pth").get("receptive_radius"))
    tta = args.tta if args.tta is not None else recipe_run.tta
    views = recipe_run.tta_views
    inputs = contest.layout.test_noisy.bare.find(Path(args.data) / contest.layout.test_noisy.folder)
    conditioned = is_noise_conditioned(model)
    tile = args.tile or None
    predict = predict_command()
    print(machine_line())

    frames = {i: read(p, contest) for i, p in inputs.items()}
    profiles = {i: frame_noise_profile(f) if conditioned else None for i, f in frames.items()}
    packed = {i: f.packed() for i, f in frames.items()}
    outputs = {}

    def model_only():
        for i in frames:
            outputs[i] = predict.denoise(model, packed[i], tile, tta, profiles[i], args.precision, views=views)

    model_only()  # warm-up: kernels, and the receptive-field probe if tiles need one
    model_time = best(model_only, args.repeats)
    names = contest.submission.output
    with tempfile.TemporaryDirectory() as tmp:

        def io_only():
            for i, path in inputs.items():
                frame = read(path, contest)
                frame_noise_profile(frame) if conditioned else None
                frame.packed()
                write_back(path, names.path(Path(tmp), i), frame.to_mosaic(outputs[i]))

        io_time = best(io_only, args.repeats)
        whole = best(lambda: predict.predict_folder(model, Path(args.data) / contest.layout.test_noisy.folder, Path(tmp) / "out",
                                                    contest, tile, tta, False, "auto", args.precision, views=views), args.repeats)  # fmt: skip
    print(f"{run} on {len(inputs)} frames of {args.data}, {args.precision}, tile {tile}, TTA {f'{views} views' if tta else 'off'}:")
    print(f"  model alone {model_time:.2f} s; I/O alone (decode, noise profile, write-back) {io_time:.2f} s; "
          f"sequential would be {model_time + io_time:.2f} s ({(model_time + io_time) / model_time:.2f}x)")
    print(f"  predict_folder {whole:.2f} s: {whole / model_time:.2f}x the model's time "
          f"({100 * min(1.0, max(0.0, (model_time + io_time - whole) / io_time)):.0f}% of the I/O hidden)")


if __name__ == "__main__":
    main()
