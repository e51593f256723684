from __future__ import annotations

import io
import json
import math
import multiprocessing
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import rawdenoise.submission_zip as submission_module
from rawdenoise import InputError
from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.leaderboard import Entry, ranked, record, ground_truth_key
from rawdenoise.raw import read, write_back
from rawdenoise.scoring import resolve, score_pairs, score_pairs_in_processes, totals
from rawdenoise.submission_zip import open_submission
from tests.conftest import copy_noise_csv_with

ROOT = Path(__file__).resolve().parent.parent
ZTE = load_contest("zte2022")
NETWORK = """import torch

class TinyNet(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)

MODEL_ARGS = {"width": 4}

def build_network():
    return TinyNet(**MODEL_ARGS)
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(128, 192), progress=False)


def predictions(demo, out: Path, shift: int = 0) -> dict[int, Path]:
    """denoise{i}.dng written back into copies of the test inputs: ground truth plus a small offset."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, noisy in ZTE.layout.test_noisy.find(demo).items():
        gt = read(ZTE.layout.test_gt.path(demo, i), ZTE)
        mosaic = np.clip(gt.mosaic.astype(np.int32) + shift, ZTE.black_array.max(), ZTE.white).astype(np.uint16)
        files[i] = out / f"denoise{i}.dng"
        write_back(noisy, files[i], mosaic)
    return files


def weights_bytes() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(torch.nn.Conv2d(4, 4, 3, padding=1).state_dict(), buffer)
    return buffer.getvalue()


def make_zip(path: Path, files: dict[int, Path], extra: dict[str, bytes] | None = None, skip=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, f in files.items():
            if i not in skip:
                zf.write(f, f"result/data/denoise{i}.dng")
        zf.writestr("result/algorithm/models/network.py", NETWORK)
        zf.writestr("result/algorithm/models/model.pth", weights_bytes())
        zf.writestr("result/algorithm/README.md", "a test entry\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def run_score(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "score.py"), *args], capture_output=True, text=True, cwd=ROOT, **kw
    )


def test_zip_folder_and_run_folder_score_the_same(demo, tmp_path):
    files = predictions(demo, tmp_path / "pred", shift=3)
    zipped = make_zip(tmp_path / "run" / "result.zip", files)
    gt_dir = demo / "testset_gt"
    scores = []
    for pred in (tmp_path / "pred", zipped, tmp_path / "run"):
        p = resolve(pred, gt_dir, ZTE)
        scores.append(totals(score_pairs(p.pairs, ZTE, workers=1), ZTE))
    assert scores[0] == scores[1] == scores[2]
    # a constant +3 DN error: PSNR is exactly 10 log10(R^2 / 9) wherever no value clipped
    assert scores[0].psnr == pytest.approx(10 * math.log10(ZTE.metric.data_range**2 / 9), abs=0.05)


def test_a_run_folder_whose_zip_holds_other_predictions_or_weights_is_refused(demo, tmp_path):
    """A predict that failed half-way, or weights replaced, after the last pack: scoring the run must not
    rank the old zip as the run's. A copied run folder (new file times, same contents) still scores."""
    run = tmp_path / "run"
    files = predictions(demo, run / "result" / "data", shift=3)
    with zipfile.ZipFile(make_zip(run / "result.zip", files)) as zf:
        (run / "model.pth").write_bytes(zf.read("result/algorithm/models/model.pth"))  # what pack puts there
    copied = tmp_path / "copied"
    shutil.copytree(run, copied, copy_function=shutil.copy)  # contents, not times
    assert resolve(copied, demo / "testset_gt", ZTE).submission is not None

    write_back(demo / "testset" / "noisy1.dng", files[1], read(files[1], ZTE).mosaic + 1)  # predicted again, in part
    result = run_score(str(run), str(demo / "testset_gt"), "--json")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert f"{files[1]} is not the zip's result/data/denoise1.dng" in result.stderr
    assert "submission/pack.py --run" in result.stderr

    shutil.copy(copied / "result" / "data" / "denoise1.dng", files[1])
    assert resolve(run, demo / "testset_gt", ZTE).submission is not None
    (run / "model.pth").write_bytes(weights_bytes())  # trained again: new weights (torch.save of a new init)
    with pytest.raises(InputError, match="model.pth is not the zip's result/algorithm/models/model.pth"):
        resolve(run, demo / "testset_gt", ZTE)
    (run / "model.pth").unlink()
    (run / "result" / "data" / "denoise2.dng").unlink()
    with pytest.raises(InputError, match="result/data/denoise2.dng is in the zip only"):
        resolve(run, demo / "testset_gt", ZTE)


def test_parallel_workers_give_the_same_numbers(demo):
    p = resolve(demo / "testset", demo / "testset_gt", ZTE)
    one = score_pairs(p.pairs, ZTE, workers=1)
    two = score_pairs(p.pairs, ZTE, workers=2)
    processes = score_pairs_in_processes(p.pairs[:3], ZTE, workers=2)
    assert [(r.psnr, r.ssim) for r in one] == [(r.psnr, r.ssim) for r in two]
    assert [(r.psnr, r.ssim) for r in one[:3]] == [(r.psnr, r.ssim) for r in processes]


def test_cli_json_is_the_only_stdout_and_identical_frames_are_null_psnr(demo, tmp_path):
    result = run_score(str(demo / "testset_gt"), str(demo / "testset_gt"), "--json")
    assert result.returncode == 2 and "missing predictions" in result.stderr  # gt{i} names are not predictions
    pred = tmp_path / "perfect"
    shutil.copytree(demo / "testset_gt", pred)
    for f in pred.iterdir():
        f.rename(f.with_name(f.name.replace("gt", "denoise")))
    result = run_score(str(pred), str(demo / "testset_gt"), "--json", "--workers", "1")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"images", "psnr", "ssim", "score", "levels"}  # the demo's noise.csv gives levels
    assert all(img["psnr"] is None and img["ssim"] == 1.0 for img in doc["images"])
    assert all(level["psnr"] == ZTE.metric.psnr_cap and level["gain"] > 0 for level in doc["levels"])
    bare = run_score(str(pred), str(demo / "testset_gt"), "--json", "--no-levels")
    assert set(json.loads(bare.stdout)) == {"images", "psnr", "ssim", "score"}
    assert doc["psnr"] == ZTE.metric.psnr_cap and doc["score"] == pytest.approx(ZTE.score(100.0, 1.0))
    assert [img["name"] for img in doc["images"]][:2] == ["denoise0", "denoise1"]


def test_cli_records_runs_ranks_them_and_writes_csv_and_html(demo, tmp_path):
    db = tmp_path / "board.sqlite"
    files = predictions(demo, tmp_path / "pred", shift=2)
    zipped = make_zip(tmp_path / "good.zip", files)
    noisy = run_score(str(demo / "testset"), str(demo / "testset_gt"), "--name", "noisy", "--leaderboard", str(db))
    assert noisy.returncode == 0, noisy.stderr
    good = run_score(
        str(zipped), str(demo / "testset_gt"), "--name", "good", "--leaderboard", str(db),
        "--csv", str(tmp_path / "scores.csv"), "--html", str(tmp_path / "report.html"),
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    testset = ground_truth_key(ZTE.layout.test_gt.bare.find(demo / "testset_gt").values())
    board = ranked(db, "zte2022", testset)
    assert [e.name for e in board] == ["good", "noisy"]
    assert board[0].gt_folder == str((demo / "testset_gt").resolve())
    # A test set is its content: the same frames elsewhere share the board, other frames get their own
    moved_gt = tmp_path / "moved_gt"
    shutil.copytree(demo / "testset_gt", moved_gt)
    assert run_score(str(demo / "testset"), str(moved_gt), "--name", "noisy", "--leaderboard", str(db)).returncode == 0
    assert [e.name for e in ranked(db, "zte2022", testset)] == ["good", "noisy"]
    gt0 = moved_gt / "gt0.dng"
    frame = read(gt0)
    write_back(gt0, gt0, np.maximum(frame.mosaic, frame.black.max() + 1) - 1)  # one DN darker: another test set
    assert run_score(str(demo / "testset"), str(moved_gt), "--name", "noisy", "--leaderboard", str(db)).returncode == 0
    other = ground_truth_key(ZTE.layout.test_gt.bare.find(moved_gt).values())
    assert other != testset and len(ranked(db, "zte2022")) == 3
    assert [e.name for e in ranked(db, "zte2022", other)] == ["noisy"]
    assert [e.name for e in ranked(db, "zte2022", testset)] == ["good", "noisy"]
    assert board[0].model == "TinyNet" and board[0].params == 4 * 4 * 9 + 4 and board[0].weights_bytes > 0
    assert "leaderboard" in good.stdout and good.stdout.index(" good ") < good.stdout.index(" noisy ")
    assert (tmp_path / "board.csv").read_text().count("\n") == 4
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "name,psnr,ssim,score" and rows[-1].startswith("mean,")
    page = (tmp_path / "report.html").read_text()
    assert page.count("<figure>") == 3 * len(files)  # noisy, denoised and ground truth crops per image
    assert "leaderboard plot" in page


def test_the_gain_over_the_input_is_shown_per_noise_level(demo, tmp_path):
    """Inputs kept as they are at every level but the heaviest, which is replaced by its ground truth,
    and one frame of the lightest level made worse: each shows in its own row."""
    import csv

    with open(demo / "noise.csv", newline="") as f:
        tests = [r for r in csv.DictReader(f) if r["split"] == "test"]
    heaviest = max(float(r["a"]) for r in tests)
    lightest = min(float(r["a"]) for r in tests)
    pred = tmp_path / "pred"
    pred.mkdir()
    harmed = None
    for row in tests:
        i = int(row["index"])
        source = demo / (row["gt"] if float(row["a"]) == heaviest else row["noisy"])
        mosaic = read(source, ZTE).mosaic
        if float(row["a"]) == lightest and harmed is None:
            harmed = i
            mosaic = np.clip(mosaic.astype(np.int32) + 40 * (np.arange(mosaic.size).reshape(mosaic.shape) % 3 - 1),
                             ZTE.black_array.max(), ZTE.white).astype(np.uint16)  # fmt: skip
        write_back(demo / row["noisy"], pred / f"denoise{i}.dng", mosaic)
    result = run_score(str(pred), str(demo / "testset_gt"), "--json")
    assert result.returncode == 0, result.stderr
    levels = {level["a"]: level for level in json.loads(result.stdout)["levels"]}
    assert len(levels) == len({r["noise_type"] for r in tests}) and sorted(levels) == list(levels)
    assert levels[heaviest]["psnr"] == ZTE.metric.psnr_cap and levels[heaviest]["worst_gain"] > 10
    assert levels[lightest]["worst_gain"] < -0.1 and levels[lightest]["gain"] > levels[lightest]["worst_gain"]
    assert all(level["gain"] == 0 for a, level in levels.items() if a not in (heaviest, lightest))
    table = run_score(str(pred), str(demo / "testset_gt"), "--html", str(tmp_path / "r.html"))
    assert "by noise level" in table.stdout and "heavy" in table.stdout
    assert "gain per noise level" in (tmp_path / "r.html").read_text()

    # data without noise.csv: the inputs' NoiseProfile tags name the levels
    bare = tmp_path / "bare"
    shutil.copytree(demo / "testset", bare / "testset")
    shutil.copytree(demo / "testset_gt", bare / "testset_gt")
    tagged = run_score(str(pred), str(bare / "testset_gt"), "--json")
    labels = [level["level"] for level in json.loads(tagged.stdout)["levels"]]
    assert labels and all(label.startswith("a=") for label in labels)

    # a noise.csv with a bad level is named, line and all, rather than grouping frames under it
    line = copy_noise_csv_with(demo, bare, 2, "a", "-0.5")
    refused = run_score(str(pred), str(bare / "testset_gt"), "--json")
    assert refused.returncode == 2 and refused.stdout == "" and "Traceback" not in refused.stderr
    assert f"{bare / 'noise.csv'}: line {line}: a and b must be finite, at least 0" in refused.stderr
    metric_only = run_score(str(pred), str(bare / "testset_gt"), "--json", "--no-levels")  # no level shown: not read
    assert metric_only.returncode == 0 and json.loads(metric_only.stdout)["score"] == json.loads(tagged.stdout)["score"]


def _record_many(db: str, prefix: str, n: int) -> None:
    for k in range(n):
        record(db, Entry("zte2022", "/gt", f"{prefix}{k}", float(k), 30.0, 0.9, 10), csv_path=Path(db).with_suffix(".csv"))


def test_two_concurrent_scorers_lose_no_row(tmp_path):
    db = str(tmp_path / "board.sqlite")
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_record_many, args=(db, p, 25)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(ranked(db)) == 50
    assert (tmp_path / "board.csv").read_text().count("\n") == 51  # the last export saw every row


def _bad_zip_cases(tmp_path: Path, files: dict[int, Path]):
    good_dng = files[0].read_bytes()
    cases = {
        "traversal": ({"result/algorithm/../../evil.txt": b"x"}, "climbs out"),
        "absolute": ({"/etc/evil": b"x"}, "absolute path"),
        "outside the layout": ({"notes.txt": b"x"}, "unexpected member"),
        "stray file in data": ({"result/data/readme.txt": b"x"}, "unexpected file"),
        "duplicate": ({"result/data/denoise0.dng": good_dng}, "appears twice"),
        "not a DNG": ({"result/data/denoise99.dng": b"just text"}, "without ground truth"),
    }
    for label, (extra, message) in cases.items():
        yield label, make_zip(tmp_path / f"{label}.zip", files, extra), message
    yield "missing image", make_zip(tmp_path / "missing.zip", files, skip=(1,)), "missing predictions denoise1.dng"
    garbled = make_zip(tmp_path / "garbled.zip", files, skip=(0,), extra={"result/data/denoise0.dng": b"II*\0junk"})
    yield "non-DNG member", garbled, r"denoise0\.dng: (not a DNG|truncated)"
    symlink = tmp_path / "symlink.zip"
    make_zip(symlink, files)
    with zipfile.ZipFile(symlink, "a") as zf:
        info = zipfile.ZipInfo("result/algorithm/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    yield "symlink", symlink, "symbolic link"
    encrypted = tmp_path / "encrypted.zip"
    data = bytearray(make_zip(encrypted, files).read_bytes())
    at = data.index(b"PK\x01\x02")  # the first central-directory entry: set its 'encrypted' flag
    data[at + 8] |= 0x1
    encrypted.write_bytes(bytes(data))
    yield "encrypted", encrypted, "encryption"
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"PK\x03\x04 but nothing else")
    yield "not a zip", not_zip, "not a readable zip"


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_hostile_zips_exit_2_naming_the_member_and_writing_nothing(demo, tmp_path):
    files = predictions(demo, tmp_path / "pred")
    for label, path, message in _bad_zip_cases(tmp_path, files):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        result = run_score(str(path), str(demo / "testset_gt"), "--workers", "1")
        assert result.returncode == 2, (label, result.stderr)
        assert "Traceback" not in result.stderr, label
        assert re.search(message, result.stderr), (label, result.stderr)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, f"{label}: something was written"


def test_wrong_shape_cfa_and_out_of_range_predictions_are_named(demo, tmp_path):
    files = predictions(demo, tmp_path / "pred")
    gt_dir = demo / "testset_gt"
    other = load_contest("rggb12_example")
    from rawdenoise.raw import write_dng

    shape, black, white = read(files[2], ZTE).mosaic.shape, ZTE.black, ZTE.white
    mid = (ZTE.black_array.max() + white) // 2
    cases = {
        "shape": (lambda: write_dng(files[2], np.full((64, 64), mid, np.uint16), ZTE.cfa, black, white), "shape"),
        "cfa": (lambda: write_dng(files[2], np.full(shape, mid, np.uint16), other.cfa, black, white), f"CFA {other.cfa}"),
        "range": (lambda: write_dng(files[2], np.full(shape, ZTE.black_array.min() - 1, np.uint16), ZTE.cfa, black, white),
                  "below the black"),
    }
    original = files[2].read_bytes()
    for label, (damage, message) in cases.items():
        damage()
        p = resolve(tmp_path / "pred", gt_dir, ZTE)
        with pytest.raises(InputError, match=rf"denoise2\.dng.*{message}"):
            score_pairs(p.pairs, ZTE, workers=1)
            pytest.fail(f"{label}: accepted")
        files[2].write_bytes(original)


def test_zip_bombs_are_refused_by_declared_and_actual_size(demo, tmp_path, monkeypatch):
    files = predictions(demo, tmp_path / "pred")
    zipped = make_zip(tmp_path / "bomb.zip", files, extra={"result/algorithm/zeros.bin": bytes(10_000_000)})
    monkeypatch.setattr(submission_module, "MAX_TOTAL_BYTES", 5_000_000)
    with pytest.raises(InputError, match="zip bomb"):
        open_submission(zipped, ZTE)
    monkeypatch.setattr(submission_module, "MAX_TOTAL_BYTES", 1 << 40)
    monkeypatch.setattr(submission_module, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(InputError, match=r"denoise0\.dng.*zip bomb"):
        open_submission(zipped, ZTE)
    monkeypatch.undo()
    sub = open_submission(make_zip(tmp_path / "ok.zip", files), ZTE)
    with pytest.raises(InputError, match=r"denoise0\.dng.*bound"):
        sub.read(sub.images[0], 1000)


def test_scoring_never_imports_torch(demo):
    code = (
        "import sys; from tools.score import main;"
        "main([sys.argv[1], sys.argv[2], '--json', '--workers', '1']);"
        "assert 'torch' not in sys.modules, 'scoring imported torch'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(demo / "testset"), str(demo / "testset_gt")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
