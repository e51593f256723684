from __future__ import annotations

import numpy as np
import pytest
import torch

from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from train.dataset import PatchSamples, StepSampler, bayer_augment
from train.patch_store import PatchOptions, load_meta, make_patch_store, positions

ZTE = load_contest("zte2022")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(128, 192), progress=False)


@pytest.fixture(scope="module")
def store(demo, tmp_path_factory):
    return make_patch_store(demo, tmp_path_factory.mktemp("p") / "demo", ZTE, PatchOptions(crop=40, step=32), False)


def test_positions_cover_the_frame_with_shift_and_not_with_drop():
    assert positions(100, 40, 32, "shift") == [0, 32, 60]
    assert positions(100, 40, 32, "drop") == [0, 32]
    assert positions(30, 40, 32, "shift") == []


def test_store_holds_packed_dn_patches_of_the_training_frames_only(demo, store):
    meta = load_meta(store)
    noisy = np.load(store / "train_noisy.npy", mmap_mode="r")
    gt = np.load(store / "train_gt.npy", mmap_mode="r")
    assert noisy.shape == gt.shape == (meta["patches"], 4, 40, 40) and noisy.dtype == np.uint16
    val = {v["index"] for v in meta["val_frames"]}
    assert val and not val & set(meta["train_frames"])  # split by whole frame
    assert meta["black"] == [1024] * 4 and meta["white"] == 16383
    # the first patch is the top-left corner of the first training frame, packed
    from rawdenoise.raw import pack, read

    first = read(ZTE.layout.train_gt.path(demo, meta["train_frames"][0]), ZTE)
    assert np.array_equal(gt[0], pack(first.mosaic, ZTE.cfa)[:, :40, :40])
    assert meta["local_test"] is None  # the demo has its own test ground truth


def test_store_is_deterministic_and_a_rerun_keeps_it(demo, store, tmp_path):
    again = make_patch_store(demo, tmp_path / "again", ZTE, PatchOptions(crop=40, step=32), False)
    for name in ("train_noisy.npy", "train_gt.npy", "index.csv"):
        assert (store / name).read_bytes() == (again / name).read_bytes()
    before = (again / "train_gt.npy").stat().st_mtime_ns
    make_patch_store(demo, again, ZTE, PatchOptions(crop=40, step=32), False)
    assert (again / "train_gt.npy").stat().st_mtime_ns == before, "complete work was redone"


def test_data_without_test_ground_truth_keeps_validation_frames_as_a_local_test_set(demo, tmp_path):
    import shutil

    data = tmp_path / "contest"
    shutil.copytree(demo / "noisy", data / "noisy")
    shutil.copytree(demo / "ground truth", data / "ground truth")
    out = make_patch_store(data, tmp_path / "p", ZTE, PatchOptions(crop=40, step=64, val_frames=2), False)
    local = load_meta(out)["local_test"]
    assert local and len(ZTE.layout.test_noisy.find(local)) == len(ZTE.layout.test_gt.find(local)) == 2


def test_bayer_augmentation_keeps_every_channels_colour():
    crop = 6
    window = np.zeros((8, crop + 1, crop + 1), np.float32)
    for k in range(8):
        window[k] = 100 * (k % 4) + np.arange((crop + 1) ** 2).reshape(crop + 1, crop + 1) / 100
    seen = set()
    for op in range(8):
        out = bayer_augment(window, op, crop)
        assert out.shape == (8, crop, crop)
        colour = np.floor(out / 100)
        for k in range(8):
            expected = {0: {0}, 1: {1, 2}, 2: {1, 2}, 3: {3}}[k % 4]  # transposes trade the two greens
            assert set(np.unique(colour[k]).tolist()) <= expected, (op, k)
            assert len(np.unique(colour[k])) == 1
        seen.add(out[0].tobytes())
    assert len(seen) == 8, "the 8 flips and transposes must give 8 different crops"


def test_samples_depend_only_on_seed_step_and_index(store):
    a = PatchSamples(store, 24, global_batch=4, seed=1)
    b = PatchSamples(store, 24, global_batch=4, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a[4 * 7 + 2], b[4 * 7 + 2]))
    assert not torch.equal(a[0][0], a[1][0])
    noisy, gt = a[5]
    assert noisy.shape == gt.shape == (4, 24, 24) and gt.min() >= 0 and gt.max() <= 1


def test_step_sampler_splits_each_global_batch_over_ranks():
    whole = list(StepSampler(3, 5, 4))
    parts = [list(StepSampler(3, 5, 4, rank, 2)) for rank in range(2)]
    assert whole == [12, 13, 14, 15, 16, 17, 18, 19]
    assert parts == [[12, 13, 16, 17], [14, 15, 18, 19]]


def test_cli_runs_as_a_script_and_refuses_bad_data(demo, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "train" / "make_patches.py"
    ok = subprocess.run([sys.executable, str(script), "--data", str(demo), "--out", str(tmp_path / "s"), "--quiet",
                         "--crop", "48"], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "patches of 48x48" in ok.stdout
    bad = subprocess.run([sys.executable, str(script), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "t")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
