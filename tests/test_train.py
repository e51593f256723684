from __future__ import annotations

import csv
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rawdenoise import InputError, precision
from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.measured import read_measured, write_measured
from rawdenoise.models import build_model
from rawdenoise.patch_store import PatchOptions, make_patch_store

ROOT = Path(__file__).resolve().parent.parent
ZTE = load_contest("zte2022")
TINY = ROOT / "configs" / "train" / "tiny.toml"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    demo = make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(128, 192), progress=False)
    return make_patch_store(demo, tmp_path_factory.mktemp("p") / "demo", ZTE, PatchOptions(patch_size=40, step=48), False)


def train(store, run: Path, *extra: str, launcher=(sys.executable,)) -> subprocess.CompletedProcess:
    command = [*launcher, str(ROOT / "train" / "train.py"), "--config", str(TINY), "--patches", str(store),
               "--run", str(run), "--quiet", "--set", "train.iterations=12", "--set", "train.val_every=6", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def weights(path: Path, key: str | None = None) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=key is None)
    return state[key] if key else state


# Runs that must reach the same weights (resumed, or split over processes) train in float64: in float32
# a different summation order (another batch split, another CPU's kernels, another memory alignment)
# changes the last bits, and Adam's normalised steps amplify that to ~1e-4 within a few steps on some
# CPUs. In float64 the same rounding noise stays ~1e-12, so a tight tolerance proves the property.
EXACT = ("--set", "train.dtype='float64'")
EXACT_ATOL = 1e-9


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max()}"


INTERRUPTER = """
import os, runpy, signal, sys
import torch
import rawdenoise.validation as validation
where, at, calls = os.environ["INTERRUPT_IN"], int(os.environ["INTERRUPT_AT"]), [0]
def interrupting(original):  # a real SIGINT, as a Ctrl-C, in the at-th call: inside a validation, or just after an update
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if where == "validate" and calls[0] == at:
            os.kill(os.getpid(), signal.SIGINT)
        out = original(*args, **kwargs)
        if where == "step" and calls[0] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    return wrapped
if where == "validate":
    validation.validate = interrupting(validation.validate)
else:
    torch.optim.AdamW.step = interrupting(torch.optim.AdamW.step)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("where, at", [("validate", 2), ("step", 4)])
def test_ctrl_c_inside_a_step_resumes_to_the_uninterrupted_weights(store, tmp_path, monkeypatch, where, at):
    """Interrupted inside step 6's validation, or between the 4th update and its count, the run stops at
    the step's end: the resumed run validates every step and ends on the uninterrupted run's weights."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train(store, whole, *EXACT).returncode == 0
    wrapper = tmp_path / "interrupt.py"
    wrapper.write_text(INTERRUPTER)
    monkeypatch.setenv("INTERRUPT_IN", where)
    monkeypatch.setenv("INTERRUPT_AT", str(at))
    stopped = train(store, cut, *EXACT, launcher=(sys.executable, str(wrapper)))
    assert stopped.returncode == 130 and "stopping after this step" in stopped.stderr, stopped.stderr
    monkeypatch.delenv("INTERRUPT_IN")
    assert train(store, cut, *EXACT, "--resume").returncode == 0
    assert_same(weights(cut / "model.pth"), weights(whole / "model.pth"), EXACT_ATOL)
    validated = lambda run: [row.split(",")[0] for row in (run / "log.csv").read_text().splitlines()[1:] if row.split(",")[3]]  # noqa: E731
    assert validated(cut) == validated(whole) == ["6", "12"]


def test_a_run_writes_its_folder_and_exports_loadable_ema_weights(store, tmp_path):
    run = tmp_path / "run"
    result = train(store, run)
    assert result.returncode == 0, result.stderr
    for name in ("config.toml", "last.pt", "best.pt", "log.csv", "curves.png", "model.pth"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    state = weights(run / "model.pth")
    assert all(v.dtype == torch.float32 for v in state.values())
    model = build_model("unet", widths=[8, 16, 32], noise="map")
    model.load_state_dict(state)  # a plain state_dict of the recipe's model
    best = weights(run / "best.pt", "ema")
    assert_same(state, best, atol=0)  # model.pth is the EMA of the best validation step
    assert "iterations = 12" in (run / "config.toml").read_text()  # the resolved recipe, overrides included
    # what bf16 costs these weights, for predict's --precision auto, measured where the CPU has bf16
    measured = read_measured(run, run / "model.pth")
    assert ("bf16" in measured) == precision.bf16_hardware("cpu")
    again = train(store, run)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_a_finished_runs_bf16_cost_can_be_measured_again_keeping_what_else_was_measured(store, tmp_path):
    run = tmp_path / "run"
    trained = train(store, run, "--set", "train.amp='auto'")  # bf16 autocast exactly where the CPU has bf16
    assert trained.returncode == 0, trained.stderr
    assert f"train.amp = auto: {'bf16 autocast' if precision.bf16_hardware('cpu') else 'float32'} on this CPU" in trained.stdout
    radius = {"tolerance": 2e-8, "radius": 12}
    write_measured(run, run / "model.pth", {"receptive_radius": radius})  # as predict keeps it; no bf16 cost
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "measure_bf16.py"), "--run", str(run)],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    measured = read_measured(run, run / "model.pth")
    if precision.bf16_hardware("cpu"):
        assert result.returncode == 0, result.stderr
        assert measured["bf16"]["scheme"] == precision.BF16_SCHEME and measured["receptive_radius"] == radius
        assert f"{measured['bf16']['cost_db']:+.4f} dB" in result.stdout
    else:  # nothing to measure: auto keeps float32 on this CPU
        assert result.returncode == 2 and "no bf16 arithmetic" in result.stderr and "Traceback" not in result.stderr
        assert measured == {"weights_sha256": measured["weights_sha256"], "receptive_radius": radius}


def test_an_interrupted_run_resumed_reaches_the_same_weights(store, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train(store, whole, *EXACT).returncode == 0
    first = train(store, parts, *EXACT, "--stop-after", "5")
    assert first.returncode == 0, first.stderr
    assert not (parts / "model.pth").exists(), "an unfinished run must not look finished"
    second = train(store, parts, *EXACT, "--resume")
    assert second.returncode == 0, second.stderr
    assert_same(weights(whole / "last.pt", "model"), weights(parts / "last.pt", "model"), atol=EXACT_ATOL)
    # model.pth ships in float32: the float64 weights agree to 1e-9, so their float32 roundings to one unit
    assert_same(weights(whole / "model.pth"), weights(parts / "model.pth"), atol=1e-6)
    # and the log too: the step-10 row averages steps 1-10 across the stop (log_every 10), time runs on
    logs = [list(csv.DictReader((run / "log.csv").open())) for run in (whole, parts)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] and len(logs[0]) >= 2
    for a, b in zip(*logs):  # rows of a validation step alone have no loss
        assert (a["loss"] == b["loss"] == "") or float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-9, abs=0), a["step"]
    seconds = [float(r["seconds"]) for r in logs[1]]
    assert seconds == sorted(seconds), "a resumed run's time starts where the checkpoint's stopped"


def test_a_resumed_run_takes_the_recipes_optimiser_settings_not_the_checkpoints(store, tmp_path):
    # torch's optimiser and schedule states carry their hyperparameters: without care a resumed run would
    # keep the old rate, beta2 and weight decay while its config.toml says otherwise
    run = tmp_path / "run"
    assert train(store, run, "--stop-after", "5").returncode == 0
    changes = ("train.beta2=0.95", "train.weight_decay=0.25", "train.lr=0.0025")
    resumed = train(store, run, "--resume", *(arg for change in changes for arg in ("--set", change)))
    assert resumed.returncode == 0, resumed.stderr
    assert "with a changed recipe: train.beta2: 0.999 -> 0.95; train.lr:" in resumed.stdout
    state = weights(run / "last.pt")
    for group in state["optimiser"]["param_groups"]:
        assert tuple(group["betas"]) == (0.9, 0.95) and group["weight_decay"] == 0.25 and group["initial_lr"] == 0.0025
    assert state["schedule"]["base_lrs"] == [0.0025] * len(state["optimiser"]["param_groups"])


def test_the_first_step_after_a_resume_runs_at_the_changed_recipes_rate(store, tmp_path):
    # the loaded optimiser state carries the rate the old recipe set for the next step; at a rate of
    # 1e-30 the resumed step must leave the weights where the checkpoint left them
    run = tmp_path / "run"
    assert train(store, run, *EXACT, "--stop-after", "5").returncode == 0
    before = weights(run / "last.pt", "model")
    resumed = train(store, run, *EXACT, "--resume", "--set", "train.lr=1e-30", "--stop-after", "6")
    assert resumed.returncode == 0, resumed.stderr
    assert weights(run / "last.pt")["step"] == 6
    assert_same(before, weights(run / "last.pt", "model"), atol=1e-20)


@pytest.mark.slow
def test_two_torchrun_processes_reach_the_weights_of_one(store, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(store, one, *EXACT).returncode == 0
    # "--" ends torchrun's own options: without it, torchrun reads our --run as an abbreviation of its --run-path
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--"]
    result = train(store, two, *EXACT, launcher=torchrun)
    assert result.returncode == 0, result.stderr
    assert_same(weights(one / "last.pt", "model"), weights(two / "last.pt", "model"), atol=EXACT_ATOL)


@pytest.mark.slow
def test_torchrun_processes_share_rank_zeros_planned_length(store, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--"]
    run = tmp_path / "two"
    result = train(store, run, "--set", "train.iterations=200", "--set", "train.minutes=1e-5", launcher=torchrun)
    # Every process reaches the broadcast at the same step (one alone would hang there); this budget is spent
    # before the plan, so each process's own plan would be 32 too: what differs with a real budget is not timed here.
    assert result.returncode == 0, result.stderr
    assert "32 of the recipe's 200 steps fit" in result.stdout
    assert weights(run / "last.pt", "step") == 32 and (run / "model.pth").is_file()
    again = tmp_path / "again"  # every process plans again at the same steps (31, 61, 91), each a broadcast
    result = train(store, again, "--set", "train.iterations=100", "--set", "train.minutes=30", launcher=torchrun)
    assert result.returncode == 0, result.stderr
    plan = weights(again / "last.pt", "plan")
    assert plan["total"] == 100 and plan["next_plan"] == 121 and (again / "model.pth").is_file()


def test_bad_recipes_and_overrides_are_clear(store, tmp_path):
    result = train(store, tmp_path / "r", "--set", "train.loss='huber'")
    assert result.returncode == 2 and "train.loss" in result.stderr
    result = train(store, tmp_path / "r2", "--set", "model.name='resnet'")
    assert result.returncode == 2 and "unknown model" in result.stderr and "Traceback" not in result.stderr
    shutil.rmtree(tmp_path / "r", ignore_errors=True)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    for run in (a_file, a_file / "run"):
        result = train(store, run)
        assert result.returncode == 2 and f"{run}: cannot be the run folder ({a_file} is a file, not a folder)" in result.stderr
    assert a_file.read_text() == "mine"


def test_a_recipe_that_is_not_text_is_named_not_a_traceback(tmp_path):
    from rawdenoise.errors import InputError
    from rawdenoise.recipe import load_recipe

    weights = tmp_path / "model.pth"  # the easy mistake: --config pointed at the weights
    weights.write_bytes(bytes(range(256)))
    with pytest.raises(InputError, match=f"{weights}: not a recipe"):
        load_recipe(weights)
    with pytest.raises(InputError, match=f"{tmp_path}: cannot read the recipe"):
        load_recipe(tmp_path)


def test_a_resumed_run_drops_log_rows_written_after_its_checkpoint(tmp_path):
    """A killed run may have logged steps past its last checkpoint; resuming redoes them, once."""
    from train.train import LOG_COLUMNS, drop_log_rows_after

    log = tmp_path / "log.csv"
    log.write_text(",".join(LOG_COLUMNS) + "\n" + "".join(f"{s},0.1,0.001,,,,{s}\n" for s in range(2, 12, 2)))
    drop_log_rows_after(log, 6)
    assert [line.split(",")[0] for line in log.read_text().splitlines()[1:]] == ["2", "4", "6"]


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lr=abc", "train.lr must be a number"),
        ("train.lr=0", "train.lr must be above 0"),
        ("train.batch=0", "train.batch must be at least 1"),
        ("train.batch=2.5", "train.batch must be an integer"),
        ("data.crop=0", "data.crop must be at least 8"),
        ("train.val_every=0", "train.val_every must be at least 1"),
        ("train.log_every=-1", "train.log_every must be at least 1"),
        ("train.iterations=-5", "train.iterations must be at least 1"),
        ("train.ema=2", "train.ema must be at least 0 and below 1"),
        ("train.ema=1", "train.ema must be at least 0 and below 1"),
        ("train.beta2=1", "train.beta2 must be above 0 and below 1"),
        ("train.amp='fp8'", "train.amp must be one of"),
        ("train.device='tpu'", "train.device must be one of"),
        ("train.dtype='float16'", "train.dtype must be one of"),
        ("data.extra_noise=1.5", "data.extra_noise must be at least 0 and at most 1"),
        ("data.augment='yes'", "data.augment must be true or false"),
        ("data.workers=-1", "data.workers must be at least 0"),
        ("train.clip=nan", "train.clip must be finite"),
        ("train.itrations=5", "unknown key train.itrations (did you mean train.iterations?)"),
        ("optimiser.lr=1", "unknown section [optimiser]"),
        ("model.args=3", "model.args must be a table"),
        ("train=3", "train must be a table"),
    ],
)
def test_every_recipe_key_is_checked_with_its_name_in_the_message(override, named):
    from rawdenoise.recipe import load_recipe

    with pytest.raises(InputError) as caught:
        load_recipe(TINY, [override])
    assert named in str(caught.value) and "tiny.toml" in str(caught.value)


def test_every_shipped_recipe_is_valid_and_gets_its_defaults():
    from rawdenoise.recipe import SCHEMA, load_recipe

    for path in sorted((ROOT / "configs" / "train").glob("*.toml")):
        recipe = load_recipe(path)
        assert {s: set(t) for s, t in recipe.items()} == {s: set(t) for s, t in SCHEMA.items()}, path.name
        sized = recipe["train"]["float32_recipe"]  # a recipe the warning sends a user to must be there
        assert not sized or (path.parent / f"{sized}.toml").is_file(), f"{path.name}: no {sized}.toml"


def test_bad_values_from_the_command_line_exit_2_without_a_traceback(store, tmp_path):
    for override, named in (("train.iterations=-5", "train.iterations"), ("model.args.widths=[0, 8]", "model 'unet'")):
        result = train(store, tmp_path / "bad", "--set", override)
        assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "bad").exists(), "a refused run writes nothing"


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def test_a_run_that_cannot_start_changes_nothing_in_the_run_folder(store, tmp_path):
    run = tmp_path / "run"
    assert train(store, run, "--stop-after", "6").returncode == 0
    before = _files(run)
    missing = train(store, run, "--overwrite", "--init", str(tmp_path / "nowhere.pth"))
    assert missing.returncode == 2 and "nowhere.pth" in missing.stderr and "Traceback" not in missing.stderr
    pickled = tmp_path / "pickled.pth"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2]}))
    for weights, why in ((run / "last.pt", "a training checkpoint (last.pt or best.pt), not exported weights"),
                         (pickled, "not a torch weights file")):  # fmt: skip
        refused = train(store, run, "--overwrite", "--init", str(weights))
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, "one line: no torch warning, no key listing"
    other_model = train(store, run, "--resume", "--set", "model.args.widths=[4, 8, 16]")
    assert other_model.returncode == 2 and "--overwrite" in other_model.stderr
    bad_crop = train(store, run, "--overwrite", "--set", "data.crop=64")  # the store's patches are too small
    assert bad_crop.returncode == 2 and "data.crop 64" in bad_crop.stderr
    assert _files(run) == before, "a refused run must leave the earlier one as it was"
    assert train(store, run, "--resume").returncode == 0  # and the earlier run still continues
    assert (run / "model.pth").is_file()


def test_overwrite_killed_before_its_first_checkpoint_leaves_nothing_of_the_old_run(store, tmp_path):
    """The old run's weights must never pass for the new recipe's: --overwrite clears them as it starts."""
    run = tmp_path / "run"
    assert train(store, run).returncode == 0
    old_log = (run / "log.csv").read_bytes()
    (run / "result" / "data").mkdir(parents=True)  # what predict, pack and score made of the old model
    for made in ("result/data/denoise0.dng", "result/data.manifest.json", "result.zip", "scores.csv", "report.html"):
        (run / made).write_bytes(b"old")
    command = [sys.executable, str(ROOT / "train" / "train.py"), "--config", str(TINY), "--patches", str(store),
               "--run", str(run), "--quiet", "--overwrite", "--set", "train.iterations=100000",
               "--set", "train.val_every=100000"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while "iterations = 100000" not in (run / "config.toml").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the new run never started"
            time.sleep(0.05)
    finally:
        proc.kill()  # as a user's Ctrl-\ or the machine would: no handler runs
        proc.wait()
    assert not any((run / name).exists() for name in ("last.pt", "best.pt", "model.pth", "result", "result.zip", "scores.csv", "report.html"))
    # the new run may already have opened its own log when it is killed; nothing of the old one may
    # remain, not even as the start of a log the new run appended to
    log = run / "log.csv"
    assert not (log.is_file() and log.read_bytes().startswith(old_log)), "the old run's log survived --overwrite"
    resumed = train(store, run, "--resume")
    assert resumed.returncode == 2 and "nothing to resume" in resumed.stderr


def test_the_level_weighted_loss_weighs_every_noise_level_alike():
    from train.train import LEVEL_REFERENCE_STD, level_weighted_l1

    target = torch.full((2, 4, 8, 8), 0.25)
    error = torch.full((2, 4, 8, 8), 0.01)
    light_heavy = torch.tensor([[1e-4, 1e-6], [1e-2, 1e-3]])
    sigma = torch.sqrt(light_heavy[:, 0] * 0.25 + light_heavy[:, 1])
    # an error of one noise std costs the reference std at every level
    assert level_weighted_l1(target + sigma[:, None, None, None], target, light_heavy) == pytest.approx(LEVEL_REFERENCE_STD)
    light_wrong = torch.stack([target[0] + error[0], target[1]])
    heavy_wrong = torch.stack([target[0], target[1] + error[1]])
    # the same error costs more on the light sample, by the ratio of the two noise stds
    ratio = level_weighted_l1(light_wrong, target, light_heavy) / level_weighted_l1(heavy_wrong, target, light_heavy)
    assert ratio == pytest.approx(float(sigma[1] / sigma[0]), rel=1e-5)
    # a sample's loss does not depend on the rest of its batch (torchrun splits batches)
    whole = level_weighted_l1(light_wrong, target, light_heavy)
    halves = (level_weighted_l1(light_wrong[:1], target[:1], light_heavy[:1])
              + level_weighted_l1(light_wrong[1:], target[1:], light_heavy[1:])) / 2  # fmt: skip
    assert whole == pytest.approx(float(halves), rel=1e-6)


def test_the_ema_forgets_the_untrained_network_in_a_short_run_and_keeps_the_recipes_decay_in_a_long_one():
    from train.train import ema_decay

    def untrained_share(steps: int, decay: float) -> float:  # what the starting weights still weigh in the EMA
        return math.prod(ema_decay(t, decay) for t in range(steps))

    assert untrained_share(970, 0.998) < 1e-6  # 14 % at a fixed 0.998: the quality recipe cut to 970 steps
    assert ema_decay(5999, 0.998) == 0.998 and ema_decay(1599, 0.995) > 0.994  # full-length runs: the recipe's


def test_a_short_runs_exported_weights_are_its_training_not_the_untrained_network(store, tmp_path):
    result = train(store, tmp_path / "run", "--set", "train.ema=0.999")  # 12 steps: 1 % of a fixed EMA's horizon
    assert result.returncode == 0, result.stderr
    state = weights(tmp_path / "run" / "last.pt")
    trained, averaged = state["model"]["head.weight"], state["ema"]["head.weight"]  # the head starts at zero
    assert float(averaged.norm() / trained.norm()) > 0.5


def test_a_budget_that_fits_under_half_the_recipes_steps_warns_and_says_why_on_a_cpu_without_bf16():
    from train.train import short_budget_warning

    assert short_budget_warning(3000, 6000, float32_cpu=True) is None  # half still trains what was measured
    warning = short_budget_warning(970, 6000, float32_cpu=True)
    assert "only 16% of the recipe's steps fit" in warning and "no AVX512-BF16 or AMX" in warning
    assert "AMX" not in short_budget_warning(970, 6000, float32_cpu=False)  # a GPU or a bf16 CPU: no such reason
    sized = short_budget_warning(970, 6000, float32_cpu=True, float32_recipe="quality_float32")
    assert sized.startswith(warning) and "./run_all.sh --recipe quality_float32" in sized
    assert "run_all" not in short_budget_warning(970, 6000, float32_cpu=False, float32_recipe="quality_float32")


def test_a_run_with_a_spent_time_budget_stops_early_finished_and_a_resumed_one_keeps_its_plan(store, tmp_path):
    budget = ("--set", "train.iterations=200", "--set", "train.minutes=1e-5")  # spent before the plan is made
    whole = train(store, tmp_path / "whole", *budget)
    assert whole.returncode == 0, whole.stderr
    assert "train.minutes = 1e-05: 32 of the recipe's 200 steps fit" in whole.stdout
    assert "warning: only 16% of the recipe's steps fit" in whole.stdout
    assert (tmp_path / "whole" / "model.pth").is_file()  # a finished run, exported
    assert weights(tmp_path / "whole" / "last.pt", "step") == 32
    parts = tmp_path / "parts"
    first = train(store, parts, *budget, "--stop-after", "31")  # stopped right after the plan
    assert first.returncode == 0, first.stderr
    assert "stopped at step 31 of 32" in first.stdout and not (parts / "model.pth").exists()
    second = train(store, parts, *budget, "--resume")  # its plan goes on: ends at 32, before any plan could come
    assert second.returncode == 0, second.stderr
    assert "steps fit" not in second.stdout
    assert weights(parts / "last.pt", "step") == 32 and (parts / "model.pth").is_file()


def test_a_planned_run_plans_again_as_it_goes_and_its_checkpoint_keeps_the_plan(store, tmp_path):
    budget = ("--set", "train.iterations=100", "--set", "train.minutes=30", "--set", "train.warmup=10")  # all fit
    result = train(store, tmp_path / "run", *budget)
    assert result.returncode == 0, result.stderr
    assert "100 of the recipe's 100 steps fit" in result.stdout and "re-planned" not in result.stdout  # no change to tell
    plan = weights(tmp_path / "run" / "last.pt", "plan")
    # planned at step 31 (30 steps timed after the first), again at 61 and 91, each 30 steps on
    assert plan["planned"] and plan["total"] == 100 and plan["anchor"][0] == 91 and plan["next_plan"] == 121
    assert weights(tmp_path / "run" / "last.pt", "step") == 100


def test_train_lr_fan_in_gives_each_layer_a_rate_inversely_proportional_to_the_channels_it_sums():
    from train.train import parameter_groups

    model = build_model("unet", widths=[8, 16, 32, 64], noise="ksigma")
    groups = parameter_groups(model, 1e-3, 8)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert sorted(id(p) for group in groups for p in group["params"]) == sorted(id(p) for p in model.parameters())
    assert [group["lr"] for group in groups] == sorted({group["lr"] for group in groups})  # one group per rate
    expected = {
        "down.0.body.0": 1e-3,  # reads the 4 packed channels: fewer than the reference, so the recipe's rate
        "down.0.body.2": 1e-3,  # sums 8 channels: the reference
        "down.3.body.2": 1e-3 * 8 / 64,  # the bottleneck's second convolution sums 64
        "up.2": 1e-3 * 8 / 64,  # the transposed convolution reads the bottleneck's 64 channels
        "merge.0.body.0": 1e-3 * 8 / 16,  # the skip and the upsampled path: 2 x 8 channels
        "head": 1e-3,
    }
    layers = dict(model.named_modules())
    for name, lr in expected.items():
        for parameter in layers[name].parameters(recurse=False):  # weight and bias alike
            assert math.isclose(rate[id(parameter)], lr), name
    assert [group["lr"] for group in parameter_groups(model, 1e-3, 0)] == [1e-3]  # 0: one rate for all
    # NAFNet's norms and residual scales sum nothing: the recipe's rate; its depthwise convolutions sum one
    # channel per group: the recipe's rate too; its 1x1 convolutions over the block's width: scaled
    nafnet = build_model("nafnet", noise="ksigma")
    naf_rate = {name: group["lr"] for group in parameter_groups(nafnet, 1e-3, 8)
                for name, p in nafnet.named_parameters() for q in group["params"] if p is q}  # fmt: skip
    scaled = {name: lr for name, lr in naf_rate.items() if lr < 1e-3}
    assert scaled and all(not name.endswith(("beta", "gamma")) and ".norm" not in name for name in scaled)
    depthwise = [name for name, m in nafnet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise and all(naf_rate[f"{name}.weight"] == 1e-3 for name in depthwise)
    convnext = build_model("convnext_unet", widths=[16, 32], kernels=[3, 3], noise="ksigma")  # its pointwise layers are nn.Linear
    linear = {id(p): group["lr"] for group in parameter_groups(convnext, 1e-3, 8) for p in group["params"]}
    expand = next(m for m in convnext.modules() if isinstance(m, torch.nn.Linear) and m.in_features == 32)
    assert math.isclose(linear[id(expand.weight)], 1e-3 * 8 / 32)


def test_a_run_with_rates_per_layer_keeps_them_through_a_resume_and_refuses_a_changed_reference(store, tmp_path):
    run = tmp_path / "run"
    first = train(store, run, "--set", "train.lr_fan_in=8", "--stop-after", "5")  # tiny: widths [8, 16, 32]
    assert first.returncode == 0, first.stderr
    resumed = train(store, run, "--resume", "--set", "train.lr_fan_in=8", "--set", "train.lr=0.002")
    assert resumed.returncode == 0, resumed.stderr
    state = weights(run / "last.pt")
    rates = pytest.approx([0.002 * 8 / 32, 0.002 * 8 / 16, 0.002])  # the tiny U-Net sums 8, 16 or 32 channels
    assert [group["initial_lr"] for group in state["optimiser"]["param_groups"]] == rates
    assert state["schedule"]["base_lrs"] == rates
    live = [group["lr"] for group in state["optimiser"]["param_groups"]]  # the rates of the step it stopped at
    assert live == pytest.approx([live[-1] * 8 / 32, live[-1] * 8 / 16, live[-1]])
    logged = (run / "log.csv").read_text().splitlines()[-1].split(",")
    assert float(logged[2]) == pytest.approx(live[-1])  # the log's lr is the recipe's rate, not a scaled group's
    other = tmp_path / "other"
    assert train(store, other, "--set", "train.lr_fan_in=8", "--stop-after", "5").returncode == 0
    refused = train(store, other, "--resume")
    assert refused.returncode == 2 and "train.lr_fan_in = 8, the recipe says 0" in refused.stderr
    assert "Traceback" not in refused.stderr
