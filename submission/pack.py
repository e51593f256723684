"""Pack a run's predictions into the contest's submission zip, validated before a byte is written.

    python submission/pack.py --run runs/demo [--input work/demo/testset] [--output runs/demo/result.zip]

Checks: a prediction for every test input; each re-reads with rawpy with its input's shape, CFA and
levels, values in [black, white]; the weights within the size limit and loadable into network.py's
class. network.py is the model's own source file plus MODEL_ARGS and build_network(). The zip is
written to a temporary name, re-read as the scorer reads submissions, then renamed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zipfile
from pathlib import Path

import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path
from rawdenoise.manifest import read_manifest
from rawdenoise.models import REGISTRY, source_file
from rawdenoise.raw import check_prediction, read
from rawdenoise.run_folder import Run
from rawdenoise.submission_zip import open_submission
from rawdenoise.tiling import BORDER


def network_source(name: str, model_args: dict) -> str:
    """The model's self-contained file, then the run's arguments and the contest's entry point."""
    class_name = REGISTRY[name][1]
    return (
        source_file(name).read_text()
        + f"\n\nMODEL_ARGS = {model_args!r}\n\n\n"  # a Python literal: JSON's true and false are not
        + f"def build_network():\n    return {class_name}(**MODEL_ARGS)\n"
    )


def check_network(source: str, weights: Path) -> int:
    """Run the generated network.py (our own code) and load the weights into it; the parameter count."""
    namespace: dict = {"__name__": "network"}
    exec(compile(source, "network.py", "exec"), namespace)
    model = namespace["build_network"]()
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as err:  # a mismatch shows up as one of several torch errors
        raise InputError(f"{weights}: does not load into network.py's model ({type(err).__name__}: {err})") from None
    return sum(p.numel() for p in model.parameters())


def check_predictions(inputs: dict[int, Path], data_dir: Path, contest) -> dict[int, Path]:
    output = contest.submission.output
    found = output.find(data_dir) if data_dir.is_dir() else {}
    output.check_matches(inputs, found, data_dir, "a test input")
    for i, path in found.items():  # with the profile, read refuses another CFA or other levels
        check_prediction(read(path, contest), read(inputs[i], contest), path)
    return found


def trained_steps(run: Run) -> int | None:
    """The steps the run trained (its log's last row), which a time-budgeted recipe plans below its
    `iterations`; None without a readable log."""
    try:
        with open(run.path / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return int(rows[-1]["step"]) if rows else None
    except (OSError, KeyError, ValueError, csv.Error):
        return None


def readme_text(run: Run, params: int, weights_bytes: int, contest, manifest: dict | None = None) -> str:
    """The submission's README.md: what the network is and how the predictions were made (`manifest`:
    predict's record of them, when it has one)."""
    model, train, data = run.recipe["model"], run.recipe.get("train", {}), run.recipe.get("data", {})
    steps, iterations = trained_steps(run), train.get("iterations")
    if steps and iterations and steps < iterations and train.get("minutes"):
        trained = f"{steps} steps (of the recipe's {iterations}: what its {train['minutes']}-minute budget held)"
    else:
        trained = f"{steps or iterations} steps"
    lines = [
        f"# {run.path.name}: {model['name']}",
        "",
        f"Raw Bayer denoiser for {contest.title}. The network predicts the noise residual (out = x + f(x)) on",
        "the mosaic packed into 4 channels (R, Gr, Gb, B), normalised by the black and white levels."
        + (" Since the sensor clips at black and white, x + f(x) stands for the clipped mean of the clean"
           " value, and the network returns the clean value whose clipped mean it is (`unclip`)."
           if model.get("args", {}).get("clipped") else ""),
        "",
        f"- model: `{model['name']}` with arguments `{json.dumps(model.get('args', {}))}`",
        f"- parameters: {params:,}; weights: {weights_bytes:,} bytes (fp32 state_dict, EMA of the best validation step)",
        f"- training: {trained}, batch {train.get('batch')}, crops of {data.get('crop')} packed "
        f"pixels, {train.get('loss', 'l1')} loss, AdamW lr {train.get('lr')}"
        + (f" (times {train['lr_fan_in']} / fan-in for layers summing more channels)" if train.get("lr_fan_in") else "")
        + f", EMA {train.get('ema')}",
        f"- inference: the packed frame mirrored by {BORDER} pixels on every side (reflected per channel), run in strips or",
        "  tiles that give exactly the whole mirrored frame's output (no seams), and cropped back",
    ]
    if manifest and manifest.get("tta"):
        views = manifest.get("tta_views") or 8
        lines.append(f"- test-time augmentation: each prediction is the mean of the model's outputs on {views} Bayer-preserving "
                     + ("views (the frame and its transpose)" if views == 2 else "flips and transposes of the frame (a mirrored axis shifted by one site to keep the CFA phase)")
                     + ", each mapped back; one call of `model(x)` gives the first of them")
    if manifest and manifest.get("precision") == "bf16":
        lines.append("- precision: the network's body ran in bf16 (input, first and last layers, residual add in float32)")
    lines += [
        "",
        "Load with `from network import build_network; model = build_network();`",
        "`model.load_state_dict(torch.load('model.pth'))`.",
    ]
    noise = model.get("args", {}).get("noise", "none")
    if noise != "none":
        lines += [
            "",
            f"The network is told each frame's noise profile ({noise} conditioning): call `model(x, noise)` with `noise`",
            "a (batch, 2) tensor of (a, b), the noise variance a*x + b on normalised x, taken from the frame's DNG",
            "NoiseProfile tag or, without one, estimated from the noisy frame itself (the toolkit that made this",
            "submission does it with rawdenoise.noise_estimate.frame_noise_profile; the estimate is not part of network.py).",
        ]
    return "\n".join(lines) + "\n"


def inputs_predicted(run: Run, manifest: dict | None) -> Path:
    """The test inputs the run's predictions were made from (their manifest says), when --input is not given."""
    if manifest is None:
        raise InputError(f"{run.path}: its predictions have no manifest naming their inputs (predicted by an "
                         "older predict.py?); pass --input DIR")  # fmt: skip
    return Path(manifest["inputs"])


def pack_run(run_path: Path, contest, input_dir: Path | None = None, output: Path | None = None) -> Path:
    run = Run.open(run_path)
    weights = run.finished_weights()
    size, limit = weights.stat().st_size, contest.submission.max_model_bytes
    if size > limit:
        raise InputError(f"{weights}: {size:,} bytes ({size / 1e6:.2f} MB) is over {contest.name}'s limit of {limit:,} bytes")
    try:
        manifest = read_manifest(run.path / contest.submission.data_dir)
    except InputError:
        if input_dir is None:
            raise
        manifest = None  # the inputs are given; the README then says less of how the predictions were made
    input_dir = input_dir or inputs_predicted(run, manifest)
    inputs = contest.layout.test_noisy.bare.find(input_dir)
    if not inputs:
        raise InputError(f"{input_dir}: no test inputs")
    predictions = check_predictions(inputs, run.path / contest.submission.data_dir, contest)
    source = network_source(run.model_name, run.model_args)
    params = check_network(source, weights)
    sub = contest.submission
    output = output or run.path / "result.zip"
    with atomic_path(output) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for i, path in predictions.items():
                zf.write(path, sub.member(i))
            zf.writestr(sub.network, source)
            zf.write(weights, sub.weights)
            zf.writestr(sub.readme, readme_text(run, params, size, contest, manifest))
        check = open_submission(tmp, contest)  # read back as the scorer will
        if set(check.images) != set(predictions) or None in (check.network, check.weights, check.readme):
            raise RuntimeError(f"{tmp}: the written zip does not hold the expected members")
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Validate a run's predictions and weights and write the submission zip.")
    parser.add_argument("--run", required=True, help="run folder: config.toml, model.pth and result/data/")
    parser.add_argument("--input", help="the test inputs to check against (default: those the predictions were "
                                        "made from, as their manifest says)")
    parser.add_argument("--output", help="zip to write (default: RUN/result.zip)")
    cli.add_contest_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    contest = load_contest(args.contest)
    out = pack_run(Path(args.run), contest, Path(args.input) if args.input else None,
                   Path(args.output) if args.output else None)  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
