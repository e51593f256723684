"""Measure what bf16 inference costs a finished run's weights, for predict's `--precision auto`.

    python tools/measure_bf16.py --run runs/X [--contest NAME]

Training measures this itself when it ends on bf16 hardware; this is for a run trained elsewhere (on a
machine without bf16, or before the measurement existed) or measured under an earlier bf16 scheme. It
runs the run's model.pth on the validation frames of the patch store the run trained from, in float32
and in bf16, exactly as training does, and writes the difference of their mean PSNR into the run folder's
inference.json (beside whatever else was measured on those weights). Exit 2, changing nothing, when the
run folder, its weights or its validation frames are missing, or when this machine has no bf16
arithmetic (bf16 emulated would take many times the float32 time and decide nothing here).
"""

from __future__ import annotations

import argparse
import sys

from rawdenoise import cli, precision
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.measured import update_measured
from rawdenoise.patch_store import validation_frames
from rawdenoise.run_folder import Run, run_model
from rawdenoise.validation import measure_bf16


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="runs/X: its config.toml, model.pth and patch store")
    cli.add_device_argument(parser)
    cli.add_contest_argument(parser)
    args = parser.parse_args(argv)
    contest = load_contest(args.contest)
    run = Run.open(args.run)
    store = run.patch_store
    if not store:
        raise InputError(f"{run.path}/config.toml: names no patch store (data.patches), so no validation frames")
    frames = validation_frames(store)
    if not frames:
        raise InputError(f"{store}: no validation frames to measure on")
    device = cli.device_from(args.device)
    if not precision.bf16_hardware(device):
        raise InputError(f"this {device.type.upper()} has no bf16 arithmetic: --precision auto keeps float32 here, nothing to measure")
    model = run_model(run, device)
    record = measure_bf16(model, frames, contest, device)
    update_measured(run.path, run.weights, {"bf16": record})
    verdict = "bf16" if record["cost_db"] <= precision.MAX_COST_DB else "fp32"
    print(f"{run.path}: bf16 costs {record['cost_db']:+.4f} dB on {record['frames']} validation frames "
          f"(fp32 {record['psnr_fp32']:.4f} dB, bf16 {record['psnr_bf16']:.4f} dB); --precision auto will run {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
