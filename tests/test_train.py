from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.models import build_model
from train.patch_store import PatchOptions, make_patch_store

ROOT = Path(__file__).resolve().parent.parent
ZTE = load_contest("zte2022")
TINY = ROOT / "configs" / "train" / "tiny.toml"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    demo = make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(128, 192), progress=False)
    return make_patch_store(demo, tmp_path_factory.mktemp("p") / "demo", ZTE, PatchOptions(crop=40, step=48), False)


def train(store, run: Path, *extra: str, launcher=(sys.executable,)) -> subprocess.CompletedProcess:
    command = [*launcher, str(ROOT / "train" / "train.py"), "--config", str(TINY), "--patches", str(store),
               "--run", str(run), "--quiet", "--set", "train.iterations=12", "--set", "train.val_every=6", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def weights(path: Path, key: str | None = None) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=key is None)
    return state[key] if key else state


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max()}"


def test_a_run_writes_its_folder_and_exports_loadable_ema_weights(store, tmp_path):
    run = tmp_path / "run"
    result = train(store, run)
    assert result.returncode == 0, result.stderr
    for name in ("config.toml", "last.pt", "best.pt", "log.csv", "curves.png", "model.pth"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    state = weights(run / "model.pth")
    assert all(v.dtype == torch.float32 for v in state.values())
    model = build_model("unet", widths=[8, 16, 32])
    model.load_state_dict(state)  # a plain state_dict of the recipe's model
    best = weights(run / "best.pt", "ema")
    assert_same(state, best, atol=0)  # model.pth is the EMA of the best validation step
    assert "iterations = 12" in (run / "config.toml").read_text()  # the resolved recipe, overrides included
    again = train(store, run)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_an_interrupted_run_resumed_reaches_the_same_weights(store, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train(store, whole).returncode == 0
    first = train(store, parts, "--stop-after", "5")
    assert first.returncode == 0, first.stderr
    assert not (parts / "model.pth").exists(), "an unfinished run must not look finished"
    second = train(store, parts, "--resume")
    assert second.returncode == 0, second.stderr
    assert_same(weights(whole / "last.pt", "model"), weights(parts / "last.pt", "model"), atol=1e-6)
    assert_same(weights(whole / "model.pth"), weights(parts / "model.pth"), atol=1e-6)


@pytest.mark.slow
def test_two_torchrun_processes_reach_the_weights_of_one(store, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(store, one).returncode == 0
    # "--" ends torchrun's own options: without it, torchrun reads our --run as an abbreviation of its --run-path
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--"]
    result = train(store, two, launcher=torchrun)
    assert result.returncode == 0, result.stderr
    assert_same(weights(one / "last.pt", "model"), weights(two / "last.pt", "model"), atol=1e-5)


def test_bad_recipes_and_overrides_are_clear(store, tmp_path):
    result = train(store, tmp_path / "r", "--set", "train.loss='huber'")
    assert result.returncode == 2 and "train.loss" in result.stderr
    result = train(store, tmp_path / "r2", "--set", "model.name='resnet'")
    assert result.returncode == 2 and "unknown model" in result.stderr and "Traceback" not in result.stderr
    shutil.rmtree(tmp_path / "r", ignore_errors=True)


def test_a_resumed_run_drops_log_rows_written_after_its_checkpoint(tmp_path):
    """A killed run may have logged steps past its last checkpoint; resuming redoes them, once."""
    from train.train import LOG_COLUMNS, drop_log_rows_after

    log = tmp_path / "log.csv"
    log.write_text(",".join(LOG_COLUMNS) + "\n" + "".join(f"{s},0.1,0.001,,,,{s}\n" for s in range(2, 12, 2)))
    drop_log_rows_after(log, 6)
    assert [line.split(",")[0] for line in log.read_text().splitlines()[1:]] == ["2", "4", "6"]
