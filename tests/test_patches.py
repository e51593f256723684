from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rawdenoise.contest import load_contest
from rawdenoise.dead_leaves import DeadLeaves, disc_radii, label_map
from rawdenoise.demo import make_demo_dataset
from rawdenoise.errors import InputError
from rawdenoise.noise_estimate import clipped_moments
from rawdenoise.patch_store import PatchOptions, load_meta, make_patch_store, positions
from rawdenoise.raw import pack
from rawdenoise.training_samples import PatchSamples, StepSampler, bayer_augment
from tests.conftest import copy_noise_csv_with

ZTE = load_contest("zte2022")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(128, 192), progress=False)


@pytest.fixture(scope="module")
def store(demo, tmp_path_factory):
    return make_patch_store(demo, tmp_path_factory.mktemp("p") / "demo", ZTE, PatchOptions(patch_size=40, step=32), False)


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
    assert meta["channel_black"] == [int(v) for v in pack(ZTE.black_array, ZTE.cfa)[:, 0, 0]]  # the profile's,
    assert meta["white"] == ZTE.white  # per packed channel
    # the first patch is the top-left corner of the first training frame, packed
    from rawdenoise.raw import read

    first = read(ZTE.layout.train_gt.path(demo, meta["train_frames"][0]), ZTE)
    assert np.array_equal(gt[0], pack(first.mosaic, ZTE.cfa)[:, :40, :40])
    assert meta["local_test"] is None  # the demo has its own test ground truth


def test_store_is_deterministic_and_a_rerun_keeps_it(demo, store, tmp_path):
    again = make_patch_store(demo, tmp_path / "again", ZTE, PatchOptions(patch_size=40, step=32), False)
    for name in ("train_noisy.npy", "train_gt.npy", "index.csv"):
        assert (store / name).read_bytes() == (again / name).read_bytes()
    before = (again / "train_gt.npy").stat().st_mtime_ns
    make_patch_store(demo, again, ZTE, PatchOptions(patch_size=40, step=32), False)
    assert (again / "train_gt.npy").stat().st_mtime_ns == before, "complete work was redone"


def test_data_without_test_ground_truth_keeps_validation_frames_as_a_local_test_set(demo, tmp_path):
    import shutil

    data = tmp_path / "contest"
    shutil.copytree(demo / "noisy", data / "noisy")
    shutil.copytree(demo / "ground truth", data / "ground truth")
    out = make_patch_store(data, tmp_path / "p", ZTE, PatchOptions(patch_size=40, step=64, val_frames=2), False)
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
    noisy, gt, profile = a[5]
    assert noisy.shape == gt.shape == (4, 24, 24) and gt.min() >= 0 and gt.max() <= 1
    assert profile.shape == (2,)


def test_the_index_carries_each_pairs_true_profile_from_the_best_source(demo, store, tmp_path):
    """noise.csv first, else the NoiseProfile tag, else a fit to the pair's residual."""
    import csv
    import shutil

    from rawdenoise.noise_csv import read_noise_csv
    from rawdenoise.raw import read, write_dng

    truth = {row["noisy"]: (float(row["a"]), float(row["b"])) for row in read_noise_csv(demo) if row["split"] == "train"}
    with open(store / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["noise_source"] for r in rows} == {"noise.csv"}
    assert all((float(r["a"]), float(r["b"])) == truth[r["noisy"]] for r in rows)

    data = tmp_path / "untagged"  # no noise.csv, and DNGs without the tag: the store fits each pair
    shutil.copytree(demo / "ground truth", data / "ground truth")
    for relative in truth:
        frame = read(demo / relative, ZTE)
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        write_dng(data / relative, frame.mosaic, frame.cfa, frame.black, frame.white)
    fitted = make_patch_store(data, tmp_path / "s", ZTE, PatchOptions(patch_size=40, step=32, seed=0), False)
    with open(fitted / "index.csv", newline="") as f:
        fitted_rows = {r["noisy"]: r for r in csv.DictReader(f)}
    assert {r["noise_source"] for r in fitted_rows.values()} == {"pair fit"}
    for relative, row in fitted_rows.items():
        a, b = truth[relative]
        x = read(data / row["gt"], ZTE).packed()  # compare the noise std the fit implies at the frame's own levels
        error = np.abs(np.sqrt(float(row["a"]) * x + float(row["b"])) / np.sqrt(a * x + b) - 1)
        assert error.mean() < 0.03 and error.max() < 0.15, (relative, row["a"], row["b"], a, b)


def test_re_noised_samples_carry_their_own_level_across_the_whole_range(store):
    noise_range = ((1e-4, 5e-2), (1e-6, 5e-3))
    samples = PatchSamples(store, 24, global_batch=4, seed=3, extra_noise=1.0, noise_range=noise_range)
    levels = []
    for key in range(64):
        noisy, gt, (a, b) = samples[key]
        levels.append((float(a), float(b)))
        assert noise_range[0][0] <= a <= noise_range[0][1] and noise_range[1][0] <= b <= noise_range[1][1]
        if key < 8:  # the residual's power is the one the sample's level gives, clipped at 0 and 1
            mean, variance = clipped_moments(gt.numpy(), float(a), float(b))
            expected = variance + (mean - gt.numpy()) ** 2
            measured = (noisy - gt).numpy() ** 2
            assert measured.mean() / expected.mean() == pytest.approx(1.0, abs=0.1)
    a_values = np.log10([a for a, _ in levels])
    assert a_values.min() < -3.3 and a_values.max() > -1.8, "levels must span the range, heavy test noise included"
    told = PatchSamples(store, 24, global_batch=4, seed=3, noise_jitter=0.2)
    plain = PatchSamples(store, 24, global_batch=4, seed=3)
    assert torch.equal(told[0][0], plain[0][0]) and not torch.equal(told[0][2], plain[0][2])


def test_gain_jitter_re_exposes_re_noised_samples_and_leaves_stored_pairs_alone(store):
    noise_range = ((1e-4, 5e-2), (1e-6, 5e-3))
    plain = PatchSamples(store, 24, global_batch=4, seed=3, extra_noise=1.0, noise_range=noise_range)
    jittered = PatchSamples(store, 24, global_batch=4, seed=3, extra_noise=1.0, noise_range=noise_range, gain_jitter=0.3)
    exposures = []
    for key in range(8):
        before, (noisy, gt, (a, b)) = plain[key][1].numpy(), jittered[key]
        gt = gt.numpy()
        assert gt.max() <= 1.0  # saturated at white, as a sensor is
        gains = []
        for c in range(4):  # one gain per channel, the same for every pixel it did not saturate
            kept = (gt[c] < 1.0) & (before[c] > 0.01)
            ratio = gt[c][kept] / before[c][kept]
            assert np.allclose(ratio, ratio[0], rtol=1e-5)
            gains.append(ratio[0])
        assert gains[1] == pytest.approx(gains[2], rel=1e-5)  # the greens move together: a white balance
        exposures.append(gains[1])
        mean, variance = clipped_moments(gt, float(a), float(b))  # the fresh noise is the told level's
        assert ((noisy.numpy() - gt) ** 2).mean() / (variance + (mean - gt) ** 2).mean() == pytest.approx(1.0, abs=0.1)
    assert np.std(np.log(exposures)) > 0.1  # exposures differ from sample to sample
    stored = PatchSamples(store, 24, global_batch=4, seed=3, gain_jitter=0.3)  # no re-noising: pairs as stored
    assert all(torch.equal(x, y) for x, y in zip(stored[0], PatchSamples(store, 24, global_batch=4, seed=3)[0]))


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
                         "--patch-size", "48"], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "patches of 48x48" in ok.stdout
    bad = subprocess.run([sys.executable, str(script), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "t")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    # the same data with a noise.csv whose level is not a number: named by file and line, no store left
    broken = tmp_path / "broken"
    broken.mkdir()
    for entry in demo.iterdir():
        if entry.name != "noise.csv":
            (broken / entry.name).symlink_to(entry)
    line = copy_noise_csv_with(demo, broken, 1, "b", "n/a")
    refused = subprocess.run([sys.executable, str(script), "--data", str(broken), "--out", str(tmp_path / "u"),
                              "--patch-size", "48"], capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{broken / 'noise.csv'}: line {line} has no numeric a and b columns" in refused.stderr
    assert not (tmp_path / "u" / "meta.json").exists()


def linked_copy(source, target, replaced: dict):
    """`source`'s files linked into `target`, except those `replaced` names (relative path -> bytes)."""
    for path in source.rglob("*"):
        if path.is_file():
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            relative = str(path.relative_to(source))
            dest.write_bytes(replaced[relative]) if relative in replaced else dest.symlink_to(path)
    return target


def test_bad_files_the_store_would_only_copy_or_read_later_are_refused_now(demo, store, tmp_path):
    options = PatchOptions(patch_size=40, step=32)
    val = load_meta(store)["val_frames"][0]["noisy"]  # the same split: the same frames and seed
    relative = str(Path(val).relative_to(demo))
    cut = linked_copy(demo, tmp_path / "cut", {relative: Path(val).read_bytes()[:1000]})
    with pytest.raises(InputError, match=relative.split("/")[-1]):
        make_patch_store(cut, tmp_path / "s1", ZTE, options, False)
    assert not (tmp_path / "s1" / "meta.json").exists()
    latin = (demo / "noise.csv").read_bytes().replace(b"\n", b"\xe9\n", 3).replace(b"\xe9\n", b"\n", 2)  # line 3
    not_utf8 = linked_copy(demo, tmp_path / "latin", {"noise.csv": latin})
    with pytest.raises(InputError, match="noise.csv: line 3 is not UTF-8 text"):
        make_patch_store(not_utf8, tmp_path / "s2", ZTE, options, False)
    broken = tmp_path / "broken_store"
    shutil.copytree(store, broken)
    (broken / "meta.json").write_text((store / "meta.json").read_text()[:100])
    with pytest.raises(InputError, match="not a complete patch store"):
        load_meta(broken)


def test_dead_leaves_discs_follow_r_to_the_minus_3_and_cover_every_pixel():
    radii = disc_radii(np.random.default_rng(0), 200_000, 1.0, 1e6)
    for r in (2, 4, 10):  # r**-3 density: P(radius > r) = r**-2 from a minimum of 1
        assert np.mean(radii > r) == pytest.approx(r**-2, rel=0.05)
    labels = label_map(96, np.random.default_rng(0), 2.0, 96.0)
    assert labels.min() >= 1, "every pixel belongs to a disc"
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() > 96 * 96 / 20 and np.median(sizes[sizes > 0]) < 20, "large flat regions and fine detail both"


def test_dead_leaves_crops_take_their_colours_from_the_real_crop(store):
    """Each disc is one real pixel's (R, Gr, Gb, B); edges mix neighbours (2x2 supersampling), nothing else."""
    leaves = DeadLeaves(24, seed=0, maps=4)
    rng = np.random.default_rng(0)
    two = np.zeros((4, 24, 24), dtype=np.float32)
    two[:, :, 12:] = [[[0.1]], [[0.4]], [[0.5]], [[0.2]]]  # two colours, R Gr Gb B of the second not grey
    crop = leaves.sample(two, rng)
    assert crop.shape == (4, 24, 24) and crop.dtype == np.float32
    share = crop / np.array([0.1, 0.4, 0.5, 0.2], dtype=np.float32)[:, None, None]
    # every mosaic site is the second colour times the share of its 2x2 label block that took it
    assert np.all(np.isin(np.round(share * 4), [0, 1, 2, 3, 4])) and np.allclose(share * 4, np.round(share * 4), atol=1e-5)
    assert 0.05 < np.isclose(share, 1).mean() and 0.05 < np.isclose(share, 0).mean(), "both colours show"
    flat = np.full((4, 24, 24), 0.3, dtype=np.float32)
    assert np.array_equal(leaves.sample(flat, rng), flat), "a flat crop gives a flat scene: brightness is the data's"
    again = DeadLeaves(24, seed=0, maps=4)
    assert np.array_equal(again.sample(two, np.random.default_rng(5)), leaves.sample(two, np.random.default_rng(5)))


def test_dead_leaves_samples_are_re_noised_at_their_own_level(store):
    noise_range = ((1e-4, 5e-2), (1e-6, 5e-3))
    samples = PatchSamples(store, 24, global_batch=4, seed=3, noise_range=noise_range, dead_leaves=1.0)
    plain = PatchSamples(store, 24, global_batch=4, seed=3, noise_range=noise_range)
    for key in range(8):
        noisy, gt, (a, b) = samples[key]
        assert not torch.equal(gt, plain[key][1]), "the clean crop is a synthetic scene"
        assert noise_range[0][0] <= a <= noise_range[0][1] and noise_range[1][0] <= b <= noise_range[1][1]
        mean, variance = clipped_moments(gt.numpy(), float(a), float(b))
        measured = ((noisy - gt).numpy() ** 2).mean()
        assert measured / (variance + (mean - gt.numpy()) ** 2).mean() == pytest.approx(1.0, abs=0.1)
    assert all(torch.equal(x, y) for x, y in zip(samples[5], PatchSamples(store, 24, 4, 3, noise_range=noise_range, dead_leaves=1.0)[5]))
