from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from rawdenoise import InputError
from rawdenoise.contest import load_contest
from rawdenoise.demo import PHOTO_SOURCES, bundled_photos, make_demo_dataset
from rawdenoise.noise_csv import NOISE_CSV, read_noise_csv
from rawdenoise.raw import read

ROOT = Path(__file__).resolve().parent.parent
SMALL = (128, 192)


@pytest.fixture(scope="module")
def zte_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "zte"
    return make_demo_dataset(out, load_contest("zte2022"), size=SMALL, seed=3, progress=False)


def test_demo_set_has_the_contest_layout_and_levels(contest, tmp_path):
    out = make_demo_dataset(tmp_path / "demo", contest, size=SMALL, seed=0, progress=False)
    layout = contest.layout
    train_noisy, train_gt = layout.train_noisy.find(out), layout.train_gt.find(out)
    test_noisy, test_gt = layout.test_noisy.find(out), layout.test_gt.find(out)
    assert list(train_noisy) == list(train_gt) == list(range(len(train_noisy)))
    assert list(test_noisy) == list(test_gt) and len(test_noisy) >= contest.noise.types + 1
    assert len(train_noisy) % contest.noise.types == 0 and len(train_noisy) >= 5 * contest.noise.types
    assert layout.test_gt.folder != layout.test_noisy.folder  # test ground truth lives apart
    for path in (train_noisy[0], train_gt[0], test_noisy[0], test_gt[0]):
        frame = read(path, contest)  # CFA and levels agree with the profile, or this raises
        assert frame.mosaic.shape == SMALL
        assert frame.mosaic.min() >= contest.black_array.min() and frame.mosaic.max() <= contest.white
    assert not list(tmp_path.glob(".*")), "staging folder left behind"


def test_noise_csv_matches_the_files_and_the_noise_in_them(zte_demo):
    contest = load_contest("zte2022")
    rows = list(read_noise_csv(zte_demo))
    assert {r["split"] for r in rows} == {"train", "test"}
    train_types = {r["noise_type"] for r in rows if r["split"] == "train"}
    assert train_types == {str(t) for t in range(contest.noise.types)}
    heavy = [r for r in rows if r["noise_type"] == "heavy"]
    assert heavy and all(r["split"] == "test" for r in heavy)
    assert max(float(r["a"]) for r in heavy) > max(float(r["a"]) for r in rows if r["split"] == "train")
    for row in rows[:: max(1, len(rows) // 8)]:
        noisy, gt = read(zte_demo / row["noisy"], contest), read(zte_demo / row["gt"], contest)
        a, b = float(row["a"]), float(row["b"])
        assert noisy.noise_profile == (a, b)
        x = gt.packed()
        residual = noisy.packed() - x
        mid = (x > 0.1) & (x < 0.9)  # away from clipping at black and white
        if mid.sum() < 2000:
            continue
        step = 1 / (contest.white - contest.black_array.max())  # one DN, normalised
        expected = a * x[mid] + b + step**2 / 12  # + rounding to DN
        assert residual[mid].var() == pytest.approx(expected.mean(), rel=0.1)


def test_test_frames_come_from_photographs_never_used_in_training(zte_demo):
    rows = list(read_noise_csv(zte_demo))
    photo = lambda source: source.split("@")[0]  # noqa: E731
    train = {photo(r["source"]) for r in rows if r["split"] == "train"}
    test = {photo(r["source"]) for r in rows if r["split"] == "test"}
    assert test and train and not train & test


def test_a_held_out_split_tests_on_the_named_photos_and_never_shows_the_demo_test_photos(zte_demo, tmp_path):
    photo = lambda row: row["source"].split("@")[0]  # noqa: E731
    demo_test = {photo(r) for r in read_noise_csv(zte_demo) if r["split"] == "test"}
    out = make_demo_dataset(
        tmp_path / "held", load_contest("zte2022"), size=SMALL, seed=3, hold_out=["astronaut", "brick"], progress=False
    )
    rows = list(read_noise_csv(out))
    assert {photo(r) for r in rows if r["split"] == "test"} == {"astronaut", "brick"}
    train = {photo(r) for r in rows if r["split"] == "train"}
    assert train and not train & ({"astronaut", "brick"} | demo_test)
    assert {r["noise_type"] for r in rows if r["split"] == "test"} >= {"0", "heavy"}  # every level, as the demo's


def test_every_listed_photograph_is_installed_and_loads_as_a_photograph():
    """A package that stopped shipping a photo would shrink the demo set silently (its loader skips what is
    missing, for other installs): with the pinned requirements every listed photo is there."""
    photos = bundled_photos()
    assert [p.name for p in photos] == [Path(relative).stem for _, relative, _ in PHOTO_SOURCES]
    for photo in photos:
        image = photo.load()
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256, photo.name
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.05, photo.name  # 8-bit pixels, not blank


def test_a_greyscale_photograph_trains_as_a_neutral_scene(zte_demo):
    """Its raw channels differ only by the synthetic camera's white-balance gains, as a grey scene's do."""
    contest = load_contest("zte2022")
    rows = [r for r in read_noise_csv(zte_demo) if r["source"].startswith("brick@")]
    assert rows and all(r["split"] == "train" for r in rows)
    red, green_r, green_b, blue = read(zte_demo / rows[0]["gt"], contest).packed().mean(axis=(1, 2))
    assert red / green_r == pytest.approx(1 / float(rows[0]["red_gain"]), rel=0.03)
    assert blue / green_b == pytest.approx(1 / float(rows[0]["blue_gain"]), rel=0.03)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(zte_demo, tmp_path):
    contest = load_contest("zte2022")
    again = make_demo_dataset(tmp_path / "again", contest, size=SMALL, seed=3, progress=False)
    other = make_demo_dataset(tmp_path / "other", contest, size=SMALL, seed=4, progress=False)
    files = sorted(p.relative_to(zte_demo) for p in zte_demo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (zte_demo / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (zte_demo / "noisy/0_noise.dng").read_bytes() != (other / "noisy/0_noise.dng").read_bytes()


def test_regenerating_replaces_a_demo_but_never_a_foreign_folder(tmp_path):
    contest = load_contest("zte2022")
    out = make_demo_dataset(tmp_path / "demo", contest, size=SMALL, progress=False)
    stale = out / "noisy" / "999_noise.dng"
    stale.write_bytes(b"left over")
    make_demo_dataset(out, contest, size=SMALL, progress=False)
    assert not stale.exists(), "a regenerated demo keeps files from the previous one"
    for mine in (out / "NOTES.txt", out / "noisy" / "real0.dng"):  # the user's files beside a demo: kept, refused
        mine.write_bytes(b"mine")
        with pytest.raises(InputError, match=f"not a demo dataset \\({mine.relative_to(out)} is not one of its files"):
            make_demo_dataset(out, contest, size=SMALL, progress=False)
        assert mine.read_bytes() == b"mine"
        mine.unlink()
    own_csv = tmp_path / "own"  # a data root of the user's own with a noise.csv of its own columns
    (own_csv / "noisy").mkdir(parents=True)
    (own_csv / "noise.csv").write_text("frame,a,b\n0,1e-3,1e-5\n")
    (own_csv / "noisy" / "0_noise.dng").write_bytes(b"precious")
    with pytest.raises(InputError, match="not a demo dataset \\(no noise.csv of a demo set's columns"):
        make_demo_dataset(own_csv, contest, size=SMALL, progress=False)
    assert (own_csv / "noisy" / "0_noise.dng").read_bytes() == b"precious"
    real = tmp_path / "contest_data"
    (real / "noisy").mkdir(parents=True)
    (real / "noisy" / "0_noise.dng").write_bytes(b"precious")
    with pytest.raises(InputError, match="contest_data.*not a demo dataset"):
        make_demo_dataset(real, contest, size=SMALL, progress=False)
    assert (real / "noisy" / "0_noise.dng").read_bytes() == b"precious"


def test_full_size_frames_are_collages_at_the_profiles_size(tmp_path, monkeypatch):
    import rawdenoise.demo as demo

    contest = load_contest("rggb12_example")
    monkeypatch.setattr(demo, "FULL_SIZE_TRAIN_SCENES", 1)
    monkeypatch.setattr(demo, "FULL_SIZE_TEST_SCENES", 1)
    small = dataclasses.replace(contest, height=640, width=960)  # the full-size code path, smaller
    out = make_demo_dataset(tmp_path / "full", small, full_size=True, progress=False)
    frame = read(small.layout.train_gt.path(out, 0), small)
    assert frame.mosaic.shape == (640, 960)
    rows = list(read_noise_csv(out))
    assert all(r["source"].startswith("collage:") for r in rows)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_demo_data.py"), *args],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip


def test_cli_writes_the_set_and_reports_it(tmp_path):
    out = tmp_path / "d"
    result = run_cli("--out", str(out), "--size", "128x192", "--quiet", "--contest", "rggb12_example")
    assert result.returncode == 0, result.stderr
    contest = load_contest("rggb12_example")
    train, test = contest.layout.train_noisy.find(out), contest.layout.test_noisy.find(out)
    assert train and test
    assert f"wrote {len(train)} training pairs and {len(test)} test pairs for rggb12_example" in result.stdout
    frame = read(contest.layout.train_gt.path(out, min(train)), contest)  # the profile's CFA and levels, checked
    assert frame.mosaic.shape == (128, 192)
    with open(out / NOISE_CSV) as f:
        assert len(list(csv.DictReader(f))) == len(train) + len(test)  # every noisy file's level is listed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "127x192"], "even"),
        (["--size", "4000x4000"], "larger than the bundled photographs"),
        (["--contest", "nope"], "unknown contest"),
        (["--size", "big"], "expected HxW"),
        (["--hold-out", "coffee"], "cannot hold out coffee: the training photographs are astronaut"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_message_and_no_traceback(tmp_path, args, message):
    result = run_cli("--out", str(tmp_path / "d"), "--quiet", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("size", [(4, 6), (20, 64), (64, 20), (63, 64)])
def test_sizes_that_would_write_unreadable_or_cfa_breaking_frames_are_refused(size, tmp_path):
    with pytest.raises(InputError, match="at least 32 pixels|two positive even numbers"):
        make_demo_dataset(tmp_path / "d", load_contest("zte2022"), size=size, progress=False)
    assert not (tmp_path / "d").exists()
