"""Training throughput, as ratios measured in one run:

1. our loop's steps per second (train/train.py: loader, augmentation, clipping, schedule, EMA, logs)
   against a bare PyTorch loop on the same model and batch with tensors already in memory;
2. the data-loading share of a step (drawing a batch from the loader against the bare step);
3. patch-store reads against decoding the DNG pair for every sample.

    python bench/bench_training.py [--recipe configs/train/demo.toml] [--steps 60]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.models import PROBE_NOISE, build_model
from rawdenoise.patch_store import load_meta, make_patch_store, PatchOptions
from rawdenoise.raw import read
from rawdenoise.recipe import load_recipe
from rawdenoise.training_samples import PatchSamples, StepSampler

from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent


def our_loop(recipe_path: Path, store: Path, steps: int, warm: int) -> float:
    """Steps per second of train/train.py itself, from its own log, after `warm` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run(
            [sys.executable, str(ROOT / "train" / "train.py"), "--config", str(recipe_path), "--patches", str(store),
             "--run", str(run), "--quiet", "--set", f"train.iterations={steps}", "--set", "train.log_every=10",
             "--set", f"train.val_every={10 * steps}", "--set", "train.warmup=1"],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
        rows = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(open(run / "log.csv")) if r["loss"]}
    return (steps - warm) / (rows[steps] - rows[warm])


def bare_loop(recipe: dict, steps: int, warm: int) -> float:
    """Steps per second of the plainest loop on the same model and batch: forward, L1, backward, AdamW,
    channels-last as train.py runs (the layout alone is worth a fifth of a step on CPU)."""
    torch.manual_seed(0)
    model = build_model(recipe["model"]["name"], **recipe["model"]["args"]).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    crop, batch = recipe["data"]["crop"], recipe["train"]["batch"]
    x, y = torch.rand(batch, 4, crop, crop).contiguous(memory_format=torch.channels_last), torch.rand(batch, 4, crop, crop)
    noise = torch.tensor([PROBE_NOISE]).expand(batch, 2)  # each sample's (a, b), as the loop feeds it
    for step in range(steps):
        if step == warm:
            start = time.perf_counter()
        loss = torch.nn.functional.l1_loss(model(x, noise), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return (steps - warm) / (time.perf_counter() - start)


def loader_batches_per_second(recipe: dict, store: Path, batches: int) -> float:
    data, cfg = recipe["data"], recipe["train"]
    samples = PatchSamples(store, data["crop"], cfg["batch"], cfg["seed"], data.get("augment", True))
    loader = torch.utils.data.DataLoader(samples, batch_size=cfg["batch"], sampler=StepSampler(0, batches, cfg["batch"]))
    start = time.perf_counter()
    for _ in loader:
        pass
    return batches / (time.perf_counter() - start)


def decode_per_sample(meta: dict, store: Path, crop: int, samples: int) -> float:
    """Samples per second when every sample decodes its noisy and clean DNGs and crops them."""
    contest = load_contest(meta["contest"])
    frames = list(csv.DictReader(open(store / "index.csv")))
    data = Path(meta["key"]["data"])
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(samples):
        row = frames[rng.integers(len(frames))]
        noisy, gt = read(data / row["noisy"], contest), read(data / row["gt"], contest)
        top, left = 2 * int(row["top"]), 2 * int(row["left"])
        _ = noisy.packed()[:, top // 2 : top // 2 + crop, left // 2 : left // 2 + crop], gt.packed()
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "train" / "demo.toml"))
    parser.add_argument("--steps", type=int, default=60, help="a multiple of 10")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    contest = load_contest("zte2022")
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_dataset(Path(tmp) / "demo", contest, progress=False)
        crop = recipe["data"]["crop"]
        store = make_patch_store(demo, Path(tmp) / "patches", contest, PatchOptions(patch_size=2 * crop, step=2 * crop), False)
        meta = load_meta(store)
        warm = 10  # steps before timing starts; the log has a row every 10 steps
        ours = our_loop(Path(args.recipe), store, args.steps, warm)
        bare = bare_loop(recipe, args.steps, warm)
        loads = loader_batches_per_second(recipe, store, args.steps)
        batch = recipe["train"]["batch"]
        store_rate = loads * batch
        decode_rate = decode_per_sample(meta, store, crop, 2 * batch)
    print(machine_line())
    print(f"recipe {Path(args.recipe).stem}: {recipe['model']['name']} {recipe['model']['args']}, "
          f"batch {batch}, crop {crop}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"  bare PyTorch loop        {bare:7.2f} steps/s")
    print(f"  train/train.py           {ours:7.2f} steps/s   {ours / bare:.2f}x the bare loop ({100 * (1 - ours / bare):+.0f}% overhead)")
    data_time, step_time = 1 / loads, 1 / bare
    print(f"  loader alone             {loads:7.2f} batches/s: {100 * data_time / (data_time + step_time):.0f}% of a step if not overlapped")
    print(f"  patch store              {store_rate:7.1f} samples/s")
    print(f"  decode DNGs per sample   {decode_rate:7.1f} samples/s   store is {store_rate / decode_rate:.0f}x faster")


if __name__ == "__main__":
    main()
