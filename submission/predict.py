"""Denoise a test set: every noisy{i}.dng in --input becomes denoise{i}.dng, written back into a copy of
its own DNG container (every byte but the pixels kept), values rounded and clipped to [black, white].
A noise-conditioned model is told each frame's noise profile: its NoiseProfile tag, else the estimate
from the frame itself (--noise estimate always estimates; --noise A,B sets one for every frame).

    python submission/predict.py --run runs/demo --input work/demo/testset [--tile 384] [--no-stream]
        [--tta | --no-tta] [--tta-views 2|8] [--noise auto] [--precision fp32|bf16|auto]
    python submission/predict.py --weights W --model unet --model-args '{"widths": [16, 32, 64, 128]}' \\
        --input DIR --output DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rawdenoise import cli, precision
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.files import replaced_folder, unwritable_reason
from rawdenoise.manifest import manifest_path, write_manifest
from rawdenoise.measured import read_measured, update_measured
from rawdenoise.models import is_noise_conditioned
from rawdenoise.noise_estimate import frame_noise_profile
from rawdenoise.raw import canonical_mosaic, check_writable, dihedral, pack_canonical, phase_offset, read, write_back
from rawdenoise.run_folder import Run, load_model
from rawdenoise.tiff import locate_raw
from rawdenoise.tiling import DEFAULT_TILE, adopt_radius, infer, known_radius, why_not_streamed


def _forward(packed: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 flips/transposes of a packed frame, done on its mosaic with the CFA phase kept:
    a mirrored axis is first padded by one site each side (mirror padding keeps each site's colour)."""
    py, px = phase_offset(op)
    mosaic = np.pad(dihedral(canonical_mosaic(packed), op), ((py, py), (px, px)), mode="reflect")
    return pack_canonical(mosaic)


def _backward(packed: np.ndarray, op: int) -> np.ndarray:
    py, px = phase_offset(op)
    mosaic = canonical_mosaic(packed)[py : packed.shape[1] * 2 - py, px : packed.shape[2] * 2 - px]
    return pack_canonical(np.ascontiguousarray(dihedral(mosaic, op, inverse=True)))


# Test-time augmentation's views (dihedral ops): all eight, or the two that keep the CFA's phase, the frame
# and its transpose. A mirrored axis shifts the phase by one site, and a model sees such a view worse: on
# held-out split 2 the quality model's single mirrored views scored 0.03 to 0.11 dB under the frame itself,
# its transpose 0.003 dB, so the pair gains 0.074 dB of the eight views' 0.105 (the narrow
# quality_float32 model 0.095 of 0.116) at a quarter of their time.
TTA_VIEWS = {8: tuple(range(8)), 2: tuple(op for op in range(8) if phase_offset(op) == (0, 0))}


def denoise(model: torch.nn.Module, packed: np.ndarray, tile: int | None, tta: bool = False, noise=None,
            precision: str = "fp32", stream: bool = True, views: int = 8) -> np.ndarray:  # fmt: skip
    """A normalised packed frame through the model, optionally averaged over Bayer-preserving flips and
    transposes (test-time augmentation; `views`: a key of TTA_VIEWS). `noise`: the frame's (a, b);
    `precision`: fp32 or bf16; `stream`: tiles as streamed strips where the model allows (rawdenoise.tiling.infer)."""
    if not tta:
        return infer(model, packed, tile, noise=noise, precision=precision, stream=stream)
    if views not in TTA_VIEWS:
        raise InputError(f"test-time augmentation takes {' or '.join(map(str, sorted(TTA_VIEWS)))} views, got {views}")
    total = np.zeros_like(packed, dtype=np.float64)
    for op in TTA_VIEWS[views]:
        total += _backward(infer(model, _forward(packed, op), tile, noise=noise, precision=precision, stream=stream), op)
    return (total / views).astype(np.float32)


def model_source(args) -> tuple[Run | None, str, dict, Path]:
    """(the run folder or None, model name, its arguments, weights file) from predict's arguments: a run
    folder (its model.pth unless --weights names another file), or --weights with --model."""
    if args.run:
        run = Run.open(args.run)
        return run, run.model_name, run.model_args, Path(args.weights) if args.weights else run.weights
    if not (args.weights and args.model):
        raise InputError("give --run runs/X, or --weights W with --model NAME")
    return None, args.model, cli.model_args(args.model_args), Path(args.weights)


class _InPlace:
    """An executor that runs each task at once, in the calling thread."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # raised again by .result(), where the threaded executor raises it
            future.set_exception(err)
        return future


def _io_executor(model):
    """Where decoding (with the noise estimate) of the next frame and writing back of the previous one
    run: in one I/O thread beside the model's work where a core is free for it (a GPU model, or torch
    using fewer threads than the CPU has), else in turn with it. On 2 cores with torch on both, a thread
    beside the model is a wash at best (the demo test set in bf16: 0.39 s threaded, 0.31 s in turn; in
    float32 0.50 s and 0.56 s), since every kernel waits for the core the thread holds. At most one
    frame waits each side: memory grows by two frames, not the set."""
    spare_core = next(model.parameters()).device.type == "cuda" or torch.get_num_threads() < (os.cpu_count() or 1)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-io") if spare_core else _InPlace()


def predict_folder(model, input_dir: Path, output_dir: Path, contest, tile: int | None, tta: bool, progress: bool,
                   noise="auto", precision: str = "fp32", stream: bool = True, views: int = 8) -> list[Path]:  # fmt: skip
    """Every test input -> its prediction in output_dir. The set is written to a staging folder that
    replaces output_dir only once every frame is done: a failure leaves an earlier set untouched, never a mix."""
    inputs = contest.layout.test_noisy.bare.find(input_dir)
    if not inputs:
        raise InputError(f"{input_dir}: no test inputs named like {contest.layout.test_noisy.bare.pattern}")
    for path in inputs.values():  # refuse a container we cannot write back before spending any compute
        check_writable(locate_raw(path))
    names = contest.submission.output
    conditioned = is_noise_conditioned(model)

    def load(path: Path):
        frame = read(path, contest)
        return frame, frame.packed(), frame_noise_profile(frame, noise) if conditioned else None

    def store(i: int, path: Path, frame, output: np.ndarray) -> None:
        write_back(path, names.path(staging, i), frame.to_mosaic(output))

    items = list(inputs.items())
    with replaced_folder(output_dir, owned=names.matches) as staging, _io_executor(model) as io:
        loading, writing = io.submit(load, items[0][1]), None
        for k, (i, path) in enumerate(tqdm(items, desc="predict", unit="frame", disable=not progress)):
            frame, packed, profile = loading.result()
            if k + 1 < len(items):
                loading = io.submit(load, items[k + 1][1])
            output = denoise(model, packed, tile, tta, profile, precision, stream, views)
            del packed
            if writing is not None:
                writing.result()
            writing = io.submit(store, i, path, frame, output)
        writing.result()
    return [names.path(output_dir, i) for i in inputs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Denoise every test input DNG with a trained model.")
    source = parser.add_argument_group("model (a run folder, or weights with a model name)")
    source.add_argument("--run", help="runs/X: its config.toml and model.pth; output defaults to runs/X/result/data")
    source.add_argument("--weights", help="a state_dict .pth (overrides the run's model.pth)")
    source.add_argument("--model", help="registered model name, with --weights")
    source.add_argument("--model-args", metavar="JSON", help="the model's arguments, with --model")
    parser.add_argument("--input", required=True, help="folder of test inputs (noisy{i}.dng)")
    parser.add_argument("--output", help="folder for denoise{i}.dng (default: RUN/result/data)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help="work on about N x N packed pixels at a time, exactly as on the whole frame; "
                             "0 runs whole frames (default: %(default)s)")  # fmt: skip
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                        help="run the tiles as strips streamed down the frame layer by layer, every pixel "
                             "computed once, where the model's operations allow (every registered model's do); "
                             "--no-stream: square tiles, each with a margin of the model's measured reach "
                             "(default: stream)")  # fmt: skip
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction,
                        help="average Bayer-preserving flips/transposes, --tta-views times the model's time "
                             "(default: the run's recipe's [predict] tta, else off)")  # fmt: skip
    parser.add_argument("--tta-views", type=int, choices=sorted(TTA_VIEWS),
                        help="views --tta averages (given alone, it turns --tta on): 8, every flip and transpose; "
                             "2, the frame and its transpose (the views that keep the CFA's phase: most of the gain "
                             "at a quarter of the time) (default: the run's recipe's [predict] tta_views, else 8)")  # fmt: skip
    cli.add_device_argument(parser)
    parser.add_argument("--precision", default="auto", choices=precision.PRECISIONS,
                        help="fp32; bf16 for the network's body (input, residual add and output stay float32); "
                             "auto: bf16 where the CPU or GPU has bf16 arithmetic and training measured it to cost "
                             f"this model at most {precision.MAX_COST_DB} dB, else fp32 (default: %(default)s)")  # fmt: skip
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    cli.add_noise_argument(parser)
    cli.add_quiet_argument(parser)
    cli.add_contest_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = cli.device_from(args.device)
    run, name, kwargs, weights = model_source(args)
    model = load_model(name, kwargs, weights, device)
    measured = read_measured(run.path if run else None, weights)  # facts measured on these very weights: bf16's cost, the tiles' margin
    chosen, why = precision.resolve(args.precision, device, measured)
    adopt_radius(model, measured.get("receptive_radius"))
    if args.output:
        output = Path(args.output)
    elif run is not None:
        output = run.path / contest.submission.data_dir
    else:
        raise InputError("--output is needed without --run")
    if args.tile < 0:
        raise InputError(f"--tile must be 0 (whole frames) or positive, got {args.tile}")
    refusal = why_not_streamed(model) if args.tile and args.stream else None
    if refusal:
        print(f"note: {name} runs in square tiles with margins, not streamed strips: {refusal}", file=sys.stderr)
    start = time.perf_counter()
    try:
        manifest_path(output).unlink(missing_ok=True)  # a failure below leaves no manifest of another set
    except OSError as err:  # e.g. --output under a file: name the folder asked for, not the manifest beside it
        raise InputError(f"{output}: cannot write ({unwritable_reason(output, err)})") from None
    # --tta-views alone asks for augmentation; --no-tta still turns it off
    tta = args.tta if args.tta is not None else bool(args.tta_views or (run and run.tta))
    views = args.tta_views or (run.tta_views if run else 8)
    written = predict_folder(model, Path(args.input), output, contest, args.tile or None, tta, not args.quiet,
                             args.noise, chosen, args.stream, views)  # fmt: skip
    try:  # a record for the later stages (pack's default inputs); the predictions are complete without it
        write_manifest(output, {
            "inputs": str(Path(args.input).resolve()), "frames": len(written), "contest": contest.name,
            "model": {"name": name, "args": kwargs, "weights": str(weights.resolve())},
            "tile": args.tile or None, "stream": args.stream, "tta": tta, "tta_views": views if tta else None,
            "precision": chosen, "noise": args.noise,
        })  # fmt: skip
    except (OSError, InputError) as err:  # atomic writes report an unwritable folder as an InputError naming the file
        print(f"note: {_unwritable(manifest_path(output), err)}; pack will need --input", file=sys.stderr)
    radius = known_radius(model)
    if radius and run is not None and weights.resolve() == run.weights.resolve() and measured.get("receptive_radius") != radius:
        try:  # measured here (seconds a model): kept beside the weights so the next run reads it instead
            update_measured(run.path, weights, {"receptive_radius": radius})
        except (OSError, InputError) as err:  # a cache, not a result: a read-only run folder only means measuring again next time
            print(f"note: the measured receptive radius is not kept: {_unwritable(run.path, err)}", file=sys.stderr)
    stale = run.path / "result.zip" if run is not None else None  # pack's default zip of this very folder
    if stale is not None and stale.is_file() and output.resolve() == (run.path / contest.submission.data_dir).resolve():
        try:  # it holds the set just replaced, and score.py would take it for the run's
            stale.unlink()
        except OSError as err:
            raise InputError(f"{stale}: holds the predictions just replaced and cannot be removed "
                             f"({unwritable_reason(stale, err)}); delete it and pack again") from None  # fmt: skip
        print(f"note: removed {stale}, packed from the earlier predictions; pack again", file=sys.stderr)
    print(f"wrote {len(written)} predictions{f' (test-time augmentation, {views} views)' if tta else ''} to {output} "
          f"in {time.perf_counter() - start:.1f} s; precision {chosen}: {why}")
    return 0


def _unwritable(path: Path, err: Exception) -> str:
    """What went wrong writing `path`, named once (an InputError from an atomic write names it already)."""
    return str(err) if isinstance(err, InputError) else f"{path}: cannot write ({unwritable_reason(path, err)})"


if __name__ == "__main__":
    sys.exit(cli.run(main))
