"""Train a denoiser from a recipe: one loop, top to bottom, alone or under torchrun.

    python train/train.py --config configs/train/demo.toml --patches work/patches/demo/p64 [--run NAME]
        [--set train.lr=3e-4] [--resume]
    torchrun --nproc_per_node=2 -- train/train.py --config configs/train/convnext_unet.toml --patches DIR

Writes runs/NAME/: config.toml (the resolved recipe), last.pt and best.pt (model, EMA, optimiser,
scheduler, step, the time plan), log.csv, tb/ (TensorBoard), curves.png and, only once training
has finished, model.pth: the EMA weights of the best validation step as a plain state_dict, and
inference.json with what bf16 inference costs those weights (where the device has bf16).

A recipe with train.minutes is a time budget, not a step count: after its first steps the run times
itself and a validation, and plans the most steps (up to train.iterations) that finish inside the
budget on this machine; it plans again as it goes, from its pace since the last plan, so a machine
that speeds up or slows down still ends on time, and the cosine schedule bends to each new length
without a jump (rawdenoise.time_plan). A resumed run goes on with its plan.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from rawdenoise import cli, precision
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path
from rawdenoise.measured import RECORD_NAME, write_measured
from rawdenoise.models import build_model
from rawdenoise.patch_store import validation_frames
from rawdenoise.recipe import describe as describe_recipe_keys
from rawdenoise.recipe import load_recipe, write_toml
from rawdenoise.run_folder import load_state_into
from rawdenoise.time_plan import TimePlan
from rawdenoise.training_samples import PatchSamples, StepSampler
from rawdenoise.validation import measure_bf16, validate

LOG_COLUMNS = ["step", "loss", "lr", "val_psnr", "val_ssim", "val_score", "seconds"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a raw denoiser from a recipe in configs/train/.",
        epilog="recipe keys (in the TOML file, or --set KEY=VALUE):\n" + describe_recipe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="recipe TOML, e.g. configs/train/demo.toml")
    parser.add_argument("--run", help="run name or folder (default: runs/<recipe file stem>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one recipe key, value parsed as TOML (repeatable): --set train.lr=3e-4")  # fmt: skip
    parser.add_argument("--patches", help="patch store folder (overrides data.patches)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    parser.add_argument("--init", metavar="WEIGHTS", help="start from these weights (a state_dict .pth): fine-tuning")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder's checkpoints")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop once this step is done (last.pt saved); continue later with --resume")  # fmt: skip
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="default: the recipe's, else auto")
    cli.add_quiet_argument(parser)
    cli.add_contest_argument(parser)
    return parser


def short_budget_warning(total: int, iterations: int, float32_cpu: bool, float32_recipe: str = "") -> str | None:
    """What a user should know when the budget fits under half of the recipe's steps: its figures were
    measured at its full length, so this machine trains a weaker model (the quality recipe, sized for
    bf16 on an AVX512-BF16 CPU, fits 970 of its 6000 steps on an AVX2-only one), and, on a CPU without
    bf16, the recipe sized for it if the recipe names one (train.float32_recipe). None otherwise."""
    if 2 * total >= iterations:
        return None
    why = "; this CPU trains in float32 (no AVX512-BF16 or AMX for bf16 autocast)" if float32_cpu else ""
    instead = ""
    if float32_cpu and float32_recipe:
        instead = (f"; configs/train/{float32_recipe}.toml is sized for such a CPU and trains a better model "
                   f"in the same time (./run_all.sh --recipe {float32_recipe})")
    return (f"warning: only {total / iterations:.0%} of the recipe's steps fit its time budget here{why}: "
            f"expect a model short of the figures the recipe was measured at{instead}")


def fan_in(layer: torch.nn.Module) -> int | None:
    """Input channels each output of a convolution or linear layer sums (per group); None for any other
    layer (norms, scales), which keeps the recipe's rate."""
    if isinstance(layer, torch.nn.modules.conv._ConvTransposeNd):
        return layer.in_channels // layer.groups
    if isinstance(layer, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
        return layer.weight.shape[1]
    return None


def parameter_groups(model: torch.nn.Module, lr: float, reference_fan_in: int) -> list[dict]:
    """The optimiser's parameter groups: with `train.lr_fan_in` (the reference), each layer that reads
    more input channels than the reference trains at lr * reference / its fan-in, its bias too; all
    else (the first layers, norms, scales) at lr. AdamW's decay is rate times weight_decay, so it
    scales with the rate.

    Adam moves every weight by about the rate whatever its gradient's scale, so one rate changes the
    output of a layer summing 640 channels several times as fast as one summing 80: the widest layers
    set the rate's ceiling (the quality U-Net's loss rose from 0.0074 to 0.011-0.02 once a warm-up
    took its rate past about 1.3e-3) while the narrow ones, where the compute is, could take more. A
    rate per layer inversely proportional to its fan-in, after muP (Yang et al. 2021, "Tensor Programs
    V"), evens that out. One group per distinct rate, in ascending order, so a run resumes into the
    same groups; 0 keeps one group at lr."""
    if not reference_fan_in:
        return [{"params": list(model.parameters()), "lr": lr}]
    scales = {}
    for layer in model.modules():
        inputs = fan_in(layer)
        for parameter in layer.parameters(recurse=False):
            scales[parameter] = min(1.0, reference_fan_in / inputs) if inputs else 1.0
    groups = {}
    for parameter in model.parameters():  # the model's own order, so the groups are the same every run
        groups.setdefault(scales[parameter], []).append(parameter)
    return [{"params": params, "lr": lr * scale} for scale, params in sorted(groups.items())]


def ema_decay(step: int, decay: float) -> float:
    """The EMA's decay at a step: the recipe's, warmed up as TensorFlow's ExponentialMovingAverage does
    (min(decay, (1 + step) / (10 + step))), so the average never reaches back further than about a
    tenth of the steps taken. At a fixed 0.998 from step 0 the untrained network keeps 0.998**970 = 14 %
    of the average after 970 steps: a budget that cut the quality recipe to 970 steps (float32 on an
    AVX2 CPU) exported EMA weights 2.2 dB worse on the demo test set than the run's own last weights.
    Runs long against the EMA's horizon reach the recipe's decay and barely change."""
    return min(decay, (1 + step) / (10 + step))


def loss_fn(name: str):
    """criterion(prediction, target, noise) for the recipe's train.loss; `noise` is each sample's (a, b)."""
    if name == "l1":
        return lambda y, t, noise: torch.nn.functional.l1_loss(y, t)
    if name == "l2":
        return lambda y, t, noise: torch.nn.functional.mse_loss(y, t)
    if name == "psnr":  # -PSNR on normalised values: L2 in log space
        return lambda y, t, noise: 10 * torch.log10(torch.nn.functional.mse_loss(y, t) + 1e-10)
    if name == "l1_level":
        return level_weighted_l1
    raise InputError(f"train.loss must be l1, l2, psnr or l1_level, got {name!r}")


LEVEL_REFERENCE_STD = 0.015  # a mid-range noise std (a = 1e-3 at x = 0.2, b = 2e-5): l1_level's unit


def level_weighted_l1(y, t, noise):
    """L1 with each sample's error in units of its own noise std at its mean level.

    The contest averages PSNR over frames, so a light-noise frame's dB count as much as a heavy one's;
    plain L1 over a 100x range of noise is ruled by the heavy samples, whose errors are largest. In
    units of each sample's noise std every level weighs alike. The unit is a fixed reference std, not
    the batch's mean, so the loss of a sample never depends on the others in its batch (a torchrun
    process sees only its slice) and stays on plain L1's scale for gradient clipping."""
    a, b = noise[:, 0].clamp(min=0), noise[:, 1].clamp(min=0)
    sigma = torch.sqrt(a * t.mean(dim=(1, 2, 3)).clamp(min=0) + b).clamp(min=1e-4)
    return ((y - t).abs().mean(dim=(1, 2, 3)) * (LEVEL_REFERENCE_STD / sigma)).mean()


def drop_log_rows_after(log_path: Path, step: int) -> None:
    if not log_path.exists():
        return
    with open(log_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with atomic_path(log_path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


class StepBoundaryInterrupt:
    """Ctrl-C acted on between whole training steps: a step interrupted after its optimiser update, or
    during its validation, would checkpoint a state no uninterrupted run passes through (the update
    applied but not counted; the step counted but never validated), and the resumed run would end on
    other weights. The first SIGINT asks to stop after the current step; a second stops at once, without
    a checkpoint (the last one stays)."""

    def __init__(self):
        self.requested = self.forced = False
        in_main_thread = threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(signal.SIGINT, self._handle) if in_main_thread else None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def ignore_interrupts(worker_id: int) -> None:
    """A loader worker's start: a terminal's Ctrl-C reaches the whole process group, and a worker it killed
    would fail the main process's next batch before the step could end; the main process alone acts on it
    (StepBoundaryInterrupt) and shuts the workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def load_weights(model: torch.nn.Module, path: str | Path, device) -> None:
    """--init: a plain state_dict of the recipe's model, or a clear error (before anything is written)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: --init weights not found")
    try:
        load_state_into(model, Path(path), device)
    except ValueError as err:
        raise InputError(f"{path}: --init weights do not load into the recipe's model ({err})") from None


def resume_from(path: Path, recipe: dict, model, ema, optimiser, schedule, device) -> dict:
    """Restore a run from its last.pt; the recipe may change anything but the model it trains and
    train.lr_fan_in (the optimiser's groups).
    -> the checkpoint's step, best, plan (rawdenoise.time_plan's state) and seconds."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise InputError(f"{path}: cannot be read ({type(err).__name__}: {err}); start again with --overwrite") from None
    saved = state.get("recipe", {}).get("model")
    if saved != recipe["model"]:
        raise InputError(
            f"{path}: this run trains {saved}, the recipe asks for {recipe['model']}; "
            "resume with the run's own recipe (its config.toml), or start again with --overwrite"
        )
    saved_fan_in, fan_in_now = state.get("recipe", {}).get("train", {}).get("lr_fan_in", 0), recipe["train"]["lr_fan_in"]
    if saved_fan_in != fan_in_now:
        raise InputError(
            f"{path}: this run trained with train.lr_fan_in = {saved_fan_in}, the recipe says {fan_in_now}; it sets "
            "the optimiser's parameter groups, which a run keeps from start to end (start again with --overwrite)"
        )
    # The optimiser's and schedule's states bring back the hyperparameters they were built with; the
    # recipe's own win, as the recipe may change (--set train.lr=... on resuming must not be ignored).
    # Kept from the groups as built, so every hyperparameter is covered; the next step's rate is set by
    # rates_at_current_step once the run's plan is restored.
    built = [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimiser.param_groups]
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        for group, hyperparameters in zip(optimiser.param_groups, built):
            group.update(hyperparameters)
        schedule.load_state_dict(state["schedule"])
        schedule.base_lrs = [group["initial_lr"] for group in optimiser.param_groups]
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location may have moved it to the GPU
    except Exception as err:
        raise InputError(f"{path}: does not restore this run ({type(err).__name__}: {err})") from None
    return state


def rates_at_current_step(schedule) -> None:
    """Give each group the rate the schedule assigns to the step a resumed run takes next. A loaded
    optimiser state holds the rate the checkpoint's recipe computed for it, so without this the first
    step after `--resume --set train.lr=...` would run at the old rate (and a changed warm-up or
    planned length would also show only from the second step)."""
    for group, base, factor in zip(schedule.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas):
        group["lr"] = base * factor(schedule.last_epoch)


def changed_keys(saved: dict, recipe: dict) -> list[str]:
    """The [data] and [train] keys a resumed run changes from its checkpoint's recipe, as 'key: old -> new'."""
    changes = []
    for section in ("data", "train"):
        before, after = saved.get(section, {}), recipe[section]
        for key in sorted(after):
            if key in before and before[key] != after[key]:
                changes.append(f"{section}.{key}: {before[key]!r} -> {after[key]!r}")
    return changes


def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def plot_curves(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r["loss"]]
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    val = [(int(r["step"]), float(r["val_psnr"])) for r in rows if r["val_psnr"]]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    ax[0].plot(steps, losses)
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    if val:
        ax[1].plot(*zip(*val), marker="o")
    ax[1].set(xlabel="step", ylabel="PSNR (dB)", title="validation PSNR (EMA weights)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    recipe = load_recipe(args.config, args.set)
    if args.patches:
        recipe["data"]["patches"] = args.patches
    if args.device:
        recipe["train"]["device"] = args.device
    cfg_model, cfg_data, cfg = recipe["model"], recipe["data"], recipe["train"]
    contest = load_contest(args.contest)

    # --- distributed set-up: only when torchrun's variables are present --------------------------
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    use_cuda = cli.device_from(cfg["device"]).type == "cuda"
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    master = rank == 0

    # --- run folder: checked now, touched only once the run is known to be able to start -----------
    run = Path(args.run) if args.run and "/" in args.run else Path("runs") / (args.run or Path(args.config).stem)
    blocker = next((p for p in (run, *run.parents) if os.path.exists(p)), None)  # found now, not after the set-up
    if blocker is not None and not os.path.isdir(blocker):
        raise InputError(f"{run}: cannot be the run folder ({blocker} is a file, not a folder)")
    if (run / "last.pt").exists() and not (args.resume or args.overwrite):
        raise InputError(f"{run}: already holds a run; pass --resume to continue it or --overwrite to start again")
    if args.resume and not (run / "last.pt").exists():
        raise InputError(f"{run}: nothing to resume (no last.pt)")
    if args.stop_after is not None and args.stop_after < 0:
        raise InputError(f"--stop-after must be a step number (0 or more), got {args.stop_after}")
    store = cfg_data["patches"]
    if not store:
        raise InputError("no patch store: set data.patches in the recipe or pass --patches DIR")
    val_frames = validation_frames(store)

    # --- model, optimiser, schedule, EMA ---------------------------------------------------------
    torch.manual_seed(cfg["seed"])
    dtype = getattr(torch, cfg["dtype"])
    # channels-last, as inference runs: PyTorch's CPU convolutions are about a fifth faster on it
    # (measured on the demo's U-Net, forward and backward), and it changes no result beyond rounding
    model = build_model(cfg_model["name"], **cfg_model["args"]).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    if args.init:
        load_weights(model, args.init, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # fused: one kernel over every tensor instead of foreach's chain of passes through memory; on 2 CPU
    # cores the quality U-Net's update took 11 ms instead of 41 (of a 0.33 s step), the same update
    optimiser = torch.optim.AdamW(parameter_groups(model, cfg["lr"], cfg["lr_fan_in"]), lr=cfg["lr"],
                                  betas=(0.9, cfg["beta2"]), weight_decay=cfg["weight_decay"],
                                  fused=device.type in ("cpu", "cuda"))
    iterations = cfg["iterations"]
    # The run's length: the recipe's iterations, or what fits train.minutes, planned and planned again
    # as the run goes; the schedule reads it at every step.
    plan = TimePlan(iterations, cfg["warmup"], cfg["min_lr_ratio"], 60 * cfg["minutes"], cfg["val_every"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: plan.rate_factor(s))
    step, best, spent_before = 0, {"score": -math.inf, "psnr": -math.inf, "step": -1}, 0.0
    if args.resume:
        state = resume_from(run / "last.pt", recipe, model, ema, optimiser, schedule, device)
        step, best, spent_before = state["step"], state["best"], state.get("seconds", 0.0)
        changes = changed_keys(state.get("recipe", {}), recipe)
        if master and changes:
            print(f"resuming {run / 'last.pt'} at step {step} with a changed recipe: {'; '.join(changes)}")
        plan.load_state_dict(state.get("plan") or {"total": state.get("total", iterations), "planned": state.get("planned")})
        rates_at_current_step(schedule)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    # --- data ------------------------------------------------------------------------------------
    batch = cfg["batch"]
    heavier = contest.noise.test_heavier  # synthetic noise reaches the test set's heavier level too
    samples = PatchSamples(
        store, cfg_data["crop"], batch, cfg["seed"], cfg_data["augment"], cfg_data["extra_noise"],
        ((contest.noise.a_range[0], contest.noise.a_range[1] * heavier),
         (contest.noise.b_range[0], contest.noise.b_range[1] * heavier)), cfg_data["noise_jitter"],
        cfg_data["gain_jitter"], cfg_data["dead_leaves"],
    )  # fmt: skip
    workers = cfg_data["workers"]
    loader = torch.utils.data.DataLoader(
        samples, batch_size=batch // world, sampler=StepSampler(step, iterations, batch, rank, world),
        num_workers=workers, pin_memory=use_cuda, persistent_workers=workers > 0, worker_init_fn=ignore_interrupts,
    )  # fmt: skip

    # --- the run can start: now its folder may change ----------------------------------------------
    if master:
        run.mkdir(parents=True, exist_ok=True)
        if not args.resume:  # --overwrite, or a new folder: nothing of an earlier run may survive,
            # its predictions, zip and scores included (they would pass for the new model's)
            for stale in ("last.pt", "best.pt", "model.pth", "log.csv", "curves.png", RECORD_NAME, "result.zip",
                          "scores.csv", "report.html"):  # fmt: skip
                (run / stale).unlink(missing_ok=True)
            for stale in ("tb", "result", "localtest"):
                shutil.rmtree(run / stale, ignore_errors=True)
        write_toml(run / "config.toml", {**recipe, "data": {**cfg_data, "patches": str(store)}})

    # --- logging (rank 0 only) -------------------------------------------------------------------
    writer, log = None, None
    if master:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"), purge_step=step if args.resume else None)
        if args.resume:
            drop_log_rows_after(run / "log.csv", step)  # rows logged after the checkpoint are redone
        new_log = not (run / "log.csv").exists()
        log = open(run / "log.csv", "a", newline="")
        log_rows = csv.DictWriter(log, fieldnames=LOG_COLUMNS)
        if new_log:
            log_rows.writeheader()
        if step == 0 and val_frames:
            psnr, ssim, score = validate(None, val_frames, contest)
            tqdm.write(f"validation frames as they come (noisy): PSNR {psnr:.3f} dB, SSIM {ssim:.5f}, score {score:.3f}")
            writer.add_scalar("val/noisy_psnr", psnr, 0)
    criterion = loss_fn(cfg["loss"])
    bf16 = cfg["amp"] == "bf16" or (cfg["amp"] == "auto" and cfg["dtype"] == "float32" and precision.bf16_hardware(device))
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if master and cfg["amp"] == "auto":
        tqdm.write(f"train.amp = auto: {'bf16 autocast' if bf16 else 'float32'} on this {device.type.upper()}")
    val_every, log_every, clip, decay = cfg["val_every"], cfg["log_every"], cfg["clip"], cfg["ema"]
    bar = tqdm(total=plan.total, initial=step, desc=run.name, unit="step", disable=not master or args.quiet)
    start_time, running = time.time(), list(state.get("running", [])) if args.resume else []
    first_step = step
    validating = {"seconds": 0.0, "count": 0, "timed": None}  # the loop's validations, which a plan's pace leaves out

    def spent() -> float:  # training seconds of the whole run, earlier sessions of a resumed one included
        return spent_before + time.time() - start_time

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            path, model=model.state_dict(), ema=ema.state_dict(), optimiser=optimiser.state_dict(),
            schedule=schedule.state_dict(), step=step, best=best, torch_rng=torch.get_rng_state(),
            recipe=recipe, plan=plan.state_dict(), seconds=spent(),
            running=list(running),  # the losses of the log row in progress, so a resumed run logs the same mean
        )  # fmt: skip

    def replan() -> None:
        """train.minutes: the most steps that fit, at the pace of the steps since the last plan. The first
        plan of a session also times a validation (rank 0's; the loop's own time the later ones)."""
        now = time.monotonic()  # the pace's clock: one that never steps back (spent() is the budget's)
        val_s = 0.0
        if master and val_frames:
            if validating["count"]:
                val_s = validating["seconds"] / validating["count"]
            else:
                if validating["timed"] is None:
                    started = time.monotonic()
                    validate(ema, val_frames, contest)
                    validating["timed"] = time.monotonic() - started
                val_s = validating["timed"]
        total, step_s = plan.propose(step, now, spent(), validating["seconds"], val_s)
        if distributed:  # rank 0's plan, so that every process stops at the same step
            shared = torch.tensor([total], device=device)
            dist.broadcast(shared, 0)
            total = int(shared.item())
        said = plan.adopt(step, total, time.monotonic(), validating["seconds"])  # "planned", "re-planned" or None
        bar.total = plan.total
        bar.refresh()
        if not master or said is None:
            return
        if said == "planned":
            tqdm.write(f"train.minutes = {cfg['minutes']:g}: {plan.total} of the recipe's {iterations} steps fit "
                       f"({step_s:.3f} s a step, validation {val_s:.1f} s every {val_every} steps)")
            float32_cpu = device.type == "cpu" and not precision.bf16_hardware(device)
            warning = short_budget_warning(plan.total, iterations, float32_cpu, cfg["float32_recipe"])
            if warning:
                tqdm.write(warning)
        else:
            tqdm.write(f"train.minutes = {cfg['minutes']:g}: re-planned at step {step}, {plan.total} steps fit "
                       f"({step_s:.3f} s a step)")

    # --- the loop --------------------------------------------------------------------------------
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    interrupt = StepBoundaryInterrupt()
    try:
        for noisy, gt, noise in loader:
            if step >= plan.total or (args.stop_after is not None and step >= args.stop_after):
                break
            interrupt.check()  # every rank, before a step begins (rank 0 also checks as one ends)
            noisy = noisy.to(device, dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
            gt = gt.to(device, dtype, non_blocking=True)
            noise = noise.to(device, dtype, non_blocking=True)
            with amp:
                loss = criterion(net(noisy, noise).to(dtype), gt, noise)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimiser.step()
            schedule.step()
            with torch.no_grad():  # one fused update of every EMA tensor, not a Python loop of small ops
                torch._foreach_lerp_(ema_params, model_params, 1 - ema_decay(step, decay))
            step += 1
            running.append(loss.item())
            if step == first_step + 1:  # the first step of a session pays for start-up: the pace is timed after it
                plan.start_timing(step, time.monotonic(), validating["seconds"])
            elif plan.due(step):
                replan()
            if not master:
                continue
            bar.update(1)
            row = None
            if step % log_every == 0 or step == plan.total:
                mean_loss = float(np.mean(running))
                running.clear()
                rate = cfg["lr"] * schedule.lr_lambdas[0](schedule.last_epoch)  # the recipe's; a group may be scaled
                bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{rate:.2e}")
                writer.add_scalar("train/loss", mean_loss, step)
                writer.add_scalar("train/lr", rate, step)
                row = {"step": step, "loss": mean_loss, "lr": rate}
            if val_frames and (step % val_every == 0 or step == plan.total):
                started = time.monotonic()
                psnr, ssim, score = validate(ema, val_frames, contest)
                writer.add_scalar("val/psnr", psnr, step)
                writer.add_scalar("val/ssim", ssim, step)
                writer.add_scalar("val/score", score, step)
                row = {**(row or {"step": step}), "val_psnr": psnr, "val_ssim": ssim, "val_score": score}
                tqdm.write(f"step {step}: validation PSNR {psnr:.3f} dB, SSIM {ssim:.5f}, score {score:.3f}")
                if (score, psnr) > (best["score"], best["psnr"]):
                    best = {"score": score, "psnr": psnr, "step": step}
                    checkpoint(run / "best.pt")
                checkpoint(run / "last.pt")
                validating["seconds"] += time.monotonic() - started  # its checkpoints too: not the steps' pace
                validating["count"] += 1
            if row:
                log_rows.writerow({**row, "seconds": round(spent(), 2)})  # the whole run's, resumed sessions included
                log.flush()
            interrupt.check()
    except KeyboardInterrupt:
        if master and not interrupt.forced:  # a whole step: the checkpoint resumes exactly
            checkpoint(run / "last.pt")
            print(f"\ninterrupted at step {step}; continue with --resume", file=sys.stderr)
        elif master:
            print("\nstopped mid-step; --resume continues from the last checkpoint", file=sys.stderr)
        raise KeyboardInterrupt from None
    finally:
        interrupt.restore()
        bar.close()

    # --- export ----------------------------------------------------------------------------------
    if master and step < plan.total:
        checkpoint(run / "last.pt")
        log.close()
        writer.close()
        print(f"{run}: stopped at step {step} of {plan.total}; continue with --resume")
    elif master:
        checkpoint(run / "last.pt")
        final = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["ema"] if (run / "best.pt").exists() \
            else ema.state_dict()
        final = {k: v.float().cpu().contiguous() for k, v in final.items()}
        with atomic_path(run / "model.pth") as tmp:
            torch.save(final, tmp)
        exported = build_model(cfg_model["name"], **cfg_model["args"])
        exported.load_state_dict(final)
        bf16 = measure_bf16(exported.to(device), val_frames, contest, device)
        write_measured(run, run / "model.pth", {"bf16": bf16} if bf16 else {})
        if bf16:
            verdict = "within" if bf16["cost_db"] <= precision.MAX_COST_DB else "over"
            print(f"bf16 inference costs {bf16['cost_db']:+.4f} dB on the validation frames ({verdict} the "
                  f"{precision.MAX_COST_DB} dB that predict's --precision auto allows)")
        log.close()
        writer.close()
        plot_curves(run / "log.csv", run / "curves.png")
        print(f"{run}/model.pth: EMA weights of step {best['step'] if best['step'] > 0 else step}"
              + (f", validation PSNR {best['psnr']:.3f} dB, score {best['score']:.3f}" if best["step"] > 0 else ""))
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
