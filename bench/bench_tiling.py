"""Tiled against whole-frame inference on one contest-size frame: seconds, peak RSS and GFLOP/s.

    python bench/bench_tiling.py [--model unet] [--tiles 256,512,1024] [--margin-tiles 512] [--margin 112]
        [--contest zte2022]

`--tiles` run as infer runs them by default (streamed strips for a model that streams), `--margin-tiles`
as square tiles with margins (stream=False). Each mode runs in its own process so its peak RSS is its
own. Achieved GFLOP/s is compared with a float32 matrix multiply measured in the same run (the
machine's practical ceiling; issue 11 asks the whole frame for >= 80 % of it). The model alone: the
whole predict process is bench_predict_frame's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.models import PROBE_NOISE, build_model
from rawdenoise.tiling import infer, margin_for

from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent


def model_for(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name)
    last = model.ending if hasattr(model, "ending") else model.head  # NAFNet's last layer is "ending"
    torch.nn.init.normal_(last.weight, std=0.01)
    return model.eval()


def child(args) -> None:
    """One measurement: print {seconds, peak_rss_mb} as JSON."""
    contest = load_contest(args.contest)
    model = model_for(args.model)
    margin_for(model)  # measured once per model, as predict does; not part of the frame's time
    frame = np.random.default_rng(0).random((4, contest.height // 2, contest.width // 2), dtype=np.float32) * 0.5
    start = time.perf_counter()
    tile = None if args.child == "whole" else int(args.child.removesuffix("m"))
    infer(model, frame, tile=tile, margin=args.margin, noise=PROBE_NOISE, stream=not args.child.endswith("m"))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def flops_per_pixel(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 4, 256, 256)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, torch.tensor([PROBE_NOISE]))
    return counter.get_total_flops() / (256 * 256)


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--tiles", default="256,512,1024")
    parser.add_argument("--margin-tiles", default="", help="tile sides to run as square tiles with margins")
    cli.add_contest_argument(parser)
    parser.add_argument(
        "--margin", type=int, default=None,
        help="context per tile side; default: measured on the (untrained) model. An untrained network's "
        "influence fades fast; a trained one approaches its theoretical receptive radius (about 107 for "
        "the default U-Net), so pass --margin 112 for a realistic cost",
    )  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    contest = load_contest(args.contest)
    model = model_for(args.model)
    pixels = (contest.height // 2) * (contest.width // 2)
    gflop = flops_per_pixel(model) * pixels / 1e9
    ceiling = matmul_gflops()
    print(machine_line())
    print(f"{args.model} on one {contest.height}x{contest.width} frame ({gflop:.0f} GFLOP), "
          f"{torch.get_num_threads()} threads; margin {args.margin or margin_for(model)} packed pixels; "
          f"float32 matmul ceiling {ceiling:.1f} GFLOP/s")  # fmt: skip
    results = {}
    for mode in ["whole"] + [t for t in args.tiles.split(",") if t] + [f"{t}m" for t in args.margin_tiles.split(",") if t]:
        command = [sys.executable, __file__, "--model", args.model, "--contest", args.contest, "--child", mode]
        if args.margin is not None:
            command += ["--margin", str(args.margin)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    whole = results["whole"]["seconds"]
    print(f"{'mode':>13} {'seconds':>8} {'x whole':>8} {'peak RSS':>10} {'GFLOP/s':>8} {'of matmul':>9}")
    for mode, r in results.items():
        rate = gflop / r["seconds"]
        label = mode if mode == "whole" else f"{mode[:-1]} margins" if mode.endswith("m") else f"{mode} streamed"
        print(f"{label:>13} {r['seconds']:8.1f} {r['seconds'] / whole:8.2f} {r['peak_rss_mb']:8.0f} MB {rate:8.1f} {rate / ceiling:8.0%}")


if __name__ == "__main__":
    main()
