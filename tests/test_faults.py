"""Faults a user meets: folders that cannot be written, outputs that would replace inputs, failures
half-way. Each is an expected failure: exit 2, one line naming the path, no traceback, nothing lost."""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.errors import InputError
from rawdenoise.leaderboard import Entry, ranked, record
from rawdenoise.models import build_model
from rawdenoise.raw import read
from rawdenoise.recipe import write_toml

ROOT = Path(__file__).resolve().parent.parent
ZTE = load_contest("zte2022")
ARGS = {"widths": [8, 16]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(96, 128), progress=False)


@pytest.fixture(scope="module")
def run(demo, tmp_path_factory):
    """A finished run folder with its predictions (an untrained model: the identity)."""
    path = tmp_path_factory.mktemp("runs") / "run"
    path.mkdir()
    write_toml(path / "config.toml", {"model": {"name": "unet", "args": ARGS}})
    torch.save(build_model("unet", **ARGS).state_dict(), path / "model.pth")
    assert tool("submission/predict.py", "--run", str(path), "--input", str(demo / "testset")).returncode == 0
    return path


def tool(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def assert_clear_failure(result: subprocess.CompletedProcess, names: str) -> None:
    """Exit 2 with one line on stderr that names the path: what a user can act on."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert names in lines[0], f"{names!r} not in {lines[0]!r}"


@contextmanager
def read_only(path: Path):
    """Make a file or folder unwritable, as root too (root ignores permission bits, not the immutable flag)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        undo = lambda: path.chmod(mode)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)  # noqa: E731
    else:
        pytest.skip("cannot make a path read-only here (root, and no immutable flag on this filesystem)")
    try:
        yield path
    finally:
        undo()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_turns_os_and_database_errors_into_one_line_and_exit_2(capsys):
    def unwritable(argv):
        raise PermissionError(13, "Permission denied", "/data/out/denoise0.dng")

    def locked(argv):
        raise sqlite3.OperationalError("database is locked")

    assert cli.run(unwritable) == 2
    assert capsys.readouterr().err == "error: /data/out/denoise0.dng: Permission denied\n"
    assert cli.run(locked) == 2
    assert capsys.readouterr().err == "error: database error: database is locked\n"


def test_outputs_in_a_read_only_folder_exit_2_and_write_nothing(demo, run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    gt, noisy = str(demo / "testset_gt"), str(demo / "testset")
    cases = {
        "score --csv": ("tools/score.py", noisy, gt, "--csv", str(locked / "s.csv")),
        "score --html": ("tools/score.py", noisy, gt, "--html", str(locked / "r.html")),
        "score --leaderboard": ("tools/score.py", noisy, gt, "--name", "x", "--leaderboard", str(locked / "b.sqlite")),
        "predict": ("submission/predict.py", "--run", str(run), "--input", noisy, "--output", str(locked / "out"), "--quiet"),
        "bilateral": ("tools/bilateral.py", "--input", noisy, "--output", str(locked / "out"), "--quiet"),
        "pack": ("submission/pack.py", "--run", str(run), "--input", noisy, "--output", str(locked / "r.zip")),
        "make_patches": ("train/make_patches.py", "--data", str(demo), "--out", str(locked / "p"), "--patch-size", "16", "--quiet"),
        "make_demo_data": ("tools/make_demo_data.py", "--out", str(locked / "demo"), "--size", "64x64", "--quiet"),
    }
    with read_only(locked):
        for label, (script, *args) in cases.items():
            assert_clear_failure(tool(script, *args), str(locked))
            assert list(locked.iterdir()) == [], label


def test_a_read_only_leaderboard_and_an_output_that_is_a_file_exit_2(demo, run, tmp_path):
    gt, noisy = str(demo / "testset_gt"), str(demo / "testset")
    board = tmp_path / "board.sqlite"
    assert tool("tools/score.py", noisy, gt, "--name", "noisy", "--leaderboard", str(board)).returncode == 0
    before = board.read_bytes()
    with read_only(board):
        assert_clear_failure(tool("tools/score.py", noisy, gt, "--name", "again", "--leaderboard", str(board)), str(board))
    assert board.read_bytes() == before
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert_clear_failure(tool("submission/predict.py", "--run", str(run), "--input", noisy, "--output", str(a_file)), str(a_file))
    under = {  # an output whose folder is that file: the path asked for and the reason, not "File exists"
        a_file / "s.csv": ("tools/score.py", noisy, gt, "--csv", str(a_file / "s.csv")),
        a_file / "b.sqlite": ("tools/score.py", noisy, gt, "--name", "x", "--leaderboard", str(a_file / "b.sqlite")),
        a_file / "out": ("submission/predict.py", "--run", str(run), "--input", noisy, "--output", str(a_file / "out"), "--quiet"),
        a_file / "bl": ("tools/bilateral.py", "--input", noisy, "--output", str(a_file / "bl"), "--quiet"),
        a_file / "r.zip": ("submission/pack.py", "--run", str(run), "--input", noisy, "--output", str(a_file / "r.zip")),
    }
    for target, (script, *args) in under.items():
        result = tool(script, *args)
        assert result.stderr.startswith(f"error: {target}: "), (script, result.stderr)
        assert_clear_failure(result, f"({a_file} is a file, not a folder)")
    assert a_file.read_text() == "mine"


def test_the_board_is_never_overwritten_by_its_own_export_or_by_an_output(demo, tmp_path):
    gt, noisy = str(demo / "testset_gt"), str(demo / "testset")
    board = tmp_path / "board.csv"  # a database named like its own CSV export
    result = tool("tools/score.py", noisy, gt, "--name", "noisy", "--leaderboard", str(board))
    assert_clear_failure(result, str(board))
    sqlite = tmp_path / "board.sqlite"
    assert tool("tools/score.py", noisy, gt, "--name", "noisy", "--leaderboard", str(sqlite)).returncode == 0
    before = sqlite.read_bytes()
    for flag in ("--csv", "--html"):
        assert_clear_failure(tool("tools/score.py", noisy, gt, "--leaderboard", str(sqlite), flag, str(sqlite)), str(sqlite))
    assert sqlite.read_bytes() == before
    assert [e.name for e in ranked(sqlite)] == ["noisy"]  # and it still works


def test_a_failed_write_never_leaves_the_csv_showing_an_uncommitted_row(tmp_path):
    db, csv = tmp_path / "board.sqlite", tmp_path / "board.csv"
    record(db, Entry("zte2022", "k", "kept", 10.0, 30.0, 0.9, 1), csv_path=csv)
    bad = Entry("zte2022", "k", "refused", None, 30.0, 0.9, 1)  # NOT NULL score: the insert fails and rolls back
    with pytest.raises(InputError, match=r"board\.sqlite: the leaderboard database cannot be used .*NOT NULL"):
        record(db, bad, csv_path=csv)
    assert [e.name for e in ranked(db)] == ["kept"]
    assert "refused" not in csv.read_text() and "kept" in csv.read_text()


def test_run_names_are_text_in_the_report_never_markup(demo, tmp_path):
    gt, noisy = str(demo / "testset_gt"), str(demo / "testset")
    board = tmp_path / "board.sqlite"
    for name in ("$\\frac{1$", "a$^2$b", "<b>bold</b>"):
        result = tool("tools/score.py", noisy, gt, "--name", name, "--leaderboard", str(board), "--html", str(tmp_path / "r.html"))
        assert result.returncode == 0, result.stderr
    page = (tmp_path / "r.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page and "a$^2$b" in page
    for name in ("", "  ", "two\nlines"):  # recorded nowhere, or a board row split in two: refused
        result = tool("tools/score.py", noisy, gt, "--name", name, "--leaderboard", str(tmp_path / "other.sqlite"))
        assert result.returncode == 2 and "--name must be printable text" in result.stderr, name
    assert not (tmp_path / "other.sqlite").exists()


def test_predict_failing_half_way_leaves_the_earlier_predictions_whole(demo, run, tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(demo / "testset", inputs)
    out = run / "result" / "data"
    before = snapshot(out)
    assert len(before) == len(list(inputs.iterdir()))
    # a frame late in the set whose white level the profile refuses: found only when that frame is read
    last = max(ZTE.layout.test_noisy.bare.find(inputs).items())[1]
    data = bytearray(last.read_bytes())
    at = data.index(struct.pack("<HHII", 50717, 4, 1, ZTE.white))  # the WhiteLevel entry (LONG, count 1)
    data[at + 8 : at + 12] = struct.pack("<I", ZTE.white - 1)
    last.write_bytes(bytes(data))
    result = tool("submission/predict.py", "--run", str(run), "--input", str(inputs), "--quiet")
    assert_clear_failure(result, last.name)
    assert snapshot(out) == before, "a failed prediction must leave the earlier set exactly as it was"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_predict_refuses_an_output_folder_holding_other_files_before_any_work(demo, run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output", str(out))
    assert_clear_failure(result, "notes.txt")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_rerun_replaces_the_whole_set(demo, run, tmp_path):
    """Predictions from another test set never survive beside the new ones."""
    out = tmp_path / "preds"
    out.mkdir()
    stale = out / "denoise999.dng"
    stale.write_bytes(b"old")
    assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output", str(out)).returncode == 0
    assert not stale.exists()
    assert len(list(out.iterdir())) == len(list((demo / "testset").iterdir()))
    frame = read(out / "denoise0.dng", ZTE)
    assert np.array_equal(frame.mosaic, read(demo / "testset" / "noisy0.dng", ZTE).mosaic)  # the identity model
