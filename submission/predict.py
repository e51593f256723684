"""Denoise a test set: every noisy{i}.dng in --input becomes denoise{i}.dng, written back into a copy of
its own DNG container (every byte but the pixels kept), values rounded and clipped to [black, white].
A noise-conditioned model is told each frame's noise profile: its NoiseProfile tag, else the estimate
from the frame itself (--noise estimate always estimates; --noise A,B sets one for every frame).

    python submission/predict.py --run runs/demo --input work/demo/testset [--tile 512] [--tta | --no-tta] [--noise auto]
    python submission/predict.py --weights W --model unet --model-args '{"widths": [16, 32, 64, 128]}' \\
        --input DIR --output DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # as a script, make the repository's packages importable the same way as tests do
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import time
import tomllib

import numpy as np
import torch
from tqdm import tqdm

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.files import replaced_folder
from rawdenoise.models import build_model, is_noise_conditioned
from rawdenoise.noise_estimate import frame_noise_profile
from rawdenoise.raw import dihedral, pack, phase_offset, read, unpack, write_back
from rawdenoise.tiff import locate_raw
from rawdenoise.tiling import infer

CANONICAL = "RGGB"  # the packed order R, Gr, Gb, B as a mosaic, as training augmented it
DEFAULT_TILE = 384  # packed pixels: peak RSS under 1 GB on a contest frame with the baseline U-Net (bench_tiling)


def _forward(packed: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 flips/transposes of a packed frame, done on its mosaic with the CFA phase kept:
    a mirrored axis is first padded by one site each side (mirror padding keeps each site's colour)."""
    py, px = phase_offset(op)
    mosaic = np.pad(dihedral(unpack(packed, CANONICAL), op), ((py, py), (px, px)), mode="reflect")
    return pack(mosaic, CANONICAL)


def _backward(packed: np.ndarray, op: int) -> np.ndarray:
    py, px = phase_offset(op)
    mosaic = unpack(packed, CANONICAL)[py : packed.shape[1] * 2 - py, px : packed.shape[2] * 2 - px]
    return pack(np.ascontiguousarray(dihedral(mosaic, op, inverse=True)), CANONICAL)


def denoise(model: torch.nn.Module, packed: np.ndarray, tile: int | None, tta: bool = False, noise=None) -> np.ndarray:
    """A normalised packed frame through the model, optionally averaged over the 8 Bayer-preserving
    flips and transposes (test-time augmentation). `noise`: the frame's (a, b)."""
    if not tta:
        return infer(model, packed, tile, noise=noise)
    total = np.zeros_like(packed, dtype=np.float64)
    for op in range(8):
        total += _backward(infer(model, _forward(packed, op), tile, noise=noise), op)
    return (total / 8).astype(np.float32)


def run_recipe(run: Path) -> dict:
    """The resolved recipe a run folder was trained from (its config.toml)."""
    config_path = run / "config.toml"
    if not config_path.is_file():
        raise InputError(f"{run}: not a run folder (no config.toml)")
    return tomllib.loads(config_path.read_text())


def load_model(run: Path | None, weights: Path | None, name: str | None, model_args: str | None, device):
    if run is not None:
        recipe = run_recipe(run)
        name, kwargs = recipe["model"]["name"], recipe["model"].get("args", {})
        weights = weights or run / "model.pth"
    else:
        if not (weights and name):
            raise InputError("give --run runs/X, or --weights W with --model NAME")
        try:
            kwargs = json.loads(model_args or "{}")
        except json.JSONDecodeError as err:
            raise InputError(f"--model-args is not JSON: {err}") from None
    if not weights.is_file():
        raise InputError(f"{weights}: no weights file (has training finished?)")
    model = build_model(name, **kwargs)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # a foreign or damaged file: torch raises many types
        raise InputError(f"{weights}: cannot load into {name}({kwargs}): {type(err).__name__}: {err}") from None
    return model.to(device).eval()


def predict_folder(model, input_dir: Path, output_dir: Path, contest, tile: int | None, tta: bool, progress: bool,
                   noise="auto") -> list[Path]:  # fmt: skip
    """Every test input -> its prediction in output_dir. The set is written to a staging folder that
    replaces output_dir only once every frame is done: a failure leaves an earlier set untouched, never a mix."""
    inputs = contest.layout.test_noisy.bare.find(input_dir)
    if not inputs:
        raise InputError(f"{input_dir}: no test inputs named like {contest.layout.test_noisy.bare.pattern}")
    for path in inputs.values():  # refuse a container we cannot write back before spending any compute
        layout = locate_raw(path)
        if layout.compression != 1 or layout.bits_per_sample != 16:
            raise InputError(f"{path}: compressed or non-16-bit raw data; predictions cannot be written back into it")
    names = contest.submission.output
    with replaced_folder(output_dir, owned=names.matches) as staging:
        for i, path in tqdm(inputs.items(), desc="predict", unit="frame", disable=not progress):
            frame = read(path, contest)
            profile = frame_noise_profile(frame, noise) if is_noise_conditioned(model) else None
            prediction = frame.to_mosaic(denoise(model, frame.packed(), tile, tta, profile))
            write_back(path, names.path(staging, i), prediction)
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
                        help="tile side in packed pixels; 0 runs whole frames (default: %(default)s)")  # fmt: skip
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction,
                        help="average the 8 Bayer-preserving flips/transposes, 8x the model's time "
                             "(default: the run's recipe's [predict] tta, else off)")  # fmt: skip
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    cli.add_noise_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_contest_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    run = Path(args.run) if args.run else None
    model = load_model(run, Path(args.weights) if args.weights else None, args.model, args.model_args, device)
    if args.output:
        output = Path(args.output)
    elif run is not None:
        output = run / contest.submission.data_dir
    else:
        raise InputError("--output is needed without --run")
    if args.tile < 0:
        raise InputError(f"--tile must be 0 (whole frames) or positive, got {args.tile}")
    start = time.perf_counter()
    tta = args.tta if args.tta is not None else bool(run and run_recipe(run).get("predict", {}).get("tta", False))
    written = predict_folder(model, Path(args.input), output, contest, args.tile or None, tta, not args.quiet,
                             args.noise)  # fmt: skip
    print(f"wrote {len(written)} predictions{' (test-time augmentation)' if tta else ''} to {output} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
