from __future__ import annotations

import numpy as np
import pytest

from rawdenoise import InputError
from rawdenoise.contest import FilePattern, available_contests, load_contest
from rawdenoise.raw import RawFrame

ZTE = load_contest("zte2022")


def test_reference_contest_facts_come_from_its_profile():
    assert ZTE.cfa == "BGGR"
    assert ZTE.black_array.tolist() == [[1024, 1024], [1024, 1024]]
    assert ZTE.white == 16383
    assert (ZTE.height, ZTE.width) == (3472, 4624)
    assert ZTE.layout.train_gt.path("/data", 7).as_posix() == "/data/ground truth/7_gt.dng"
    assert ZTE.layout.test_noisy.name(3) == "noisy3.dng"
    assert ZTE.submission.member(9) == "result/data/denoise9.dng"
    assert ZTE.submission.max_model_bytes == 50_000_000
    assert ZTE.metric.data_range == 16383 and ZTE.metric.ssim_mode == "columns"


@pytest.mark.parametrize(
    "psnr, ssim, expected",
    [
        (30.0, 0.8, 0.0),
        (25.0, 0.5, 0.0),  # below both floors: clamped, never negative
        (45.0, 0.9, 100 * (0.8 * 15 / 30 + 0.2 * 0.1 / 0.2)),
        (60.0, 1.0, 100.0),
    ],
)
def test_zte_score_formula(psnr, ssim, expected):
    assert ZTE.score(psnr, ssim) == pytest.approx(expected, abs=1e-12)


def test_a_second_profile_differs_in_every_fact():
    other = load_contest("rggb12_example")
    assert len(available_contests()) >= 2
    assert other.cfa != ZTE.cfa and other.white != ZTE.white
    assert (other.height, other.width) != (ZTE.height, ZTE.width)
    assert len(np.unique(other.black_array)) > 1  # per-position black levels
    assert other.score(40, 0.9) != ZTE.score(40, 0.9)


def test_profile_by_path_and_unknown_name(tmp_path):
    assert load_contest(ZTE.path).name == "zte2022"
    with pytest.raises(InputError, match="unknown contest 'nope'.*zte2022"):
        load_contest("nope")
    with pytest.raises(InputError, match="missing.toml"):
        load_contest(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (('cfa = "BGGR"', 'cfa = "BGRG"'), "raw.cfa"),
        (("white = 16383", "white = 70000"), "raw.white"),
        (("black = 1024", "black = 20000"), "raw.black"),
        (("height = 3472", "height = 3471"), "even"),
        (('test_noisy = "testset/noisy{i}.dng"', 'test_noisy = "testset/noisy.dng"'), "layout.test_noisy"),
        (('ssim_mode = "columns"', 'ssim_mode = "3d"'), "metric.ssim_mode"),
        (("psnr_span = 30.0", "psnr_span = 0"), "score.psnr_span"),
        (("a_range = [1e-4, 1e-2]", "a_range = [1e-2]"), "noise.a_range"),
        (('data_dir = "result/data"', 'data_dir = "../result"'), "submission.data_dir"),
        (("max_model_bytes = 50_000_000", "# removed"), "missing key submission.max_model_bytes"),
        (("[metric]", "[metric"), "not a readable TOML"),
    ],
)
def test_a_broken_profile_names_the_file_and_the_key(tmp_path, edit, complaint):
    text = ZTE.path.read_text()
    assert edit[0] in text
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(InputError, match=rf"broken\.toml: .*{complaint}"):
        load_contest(path)


def test_file_patterns_find_the_indices_present(tmp_path):
    pattern = FilePattern("ground truth/{i}_gt.dng")
    folder = tmp_path / "ground truth"
    folder.mkdir()
    for name in ["0_gt.dng", "2_gt.dng", "10_gt.dng", "x_gt.dng", "3_gt.dng.partial", "4_noise.dng"]:
        (folder / name).write_bytes(b"")
    assert list(pattern.find(tmp_path)) == [0, 2, 10]
    (folder / "02_gt.dng").write_bytes(b"")
    with pytest.raises(InputError, match="index 2"):
        pattern.find(tmp_path)
    with pytest.raises(InputError, match="folder not found"):
        FilePattern("testset/noisy{i}.dng").find(tmp_path)
    with pytest.raises(ValueError):
        FilePattern("{i}/frame.dng")


def test_check_frame_names_every_disagreement():
    frame = RawFrame(np.zeros((4, 4), np.uint16), "RGGB", np.full((2, 2), 1000), 16383, "x.dng")
    with pytest.raises(InputError, match=r"x\.dng: CFA RGGB.*BGGR; black level"):
        ZTE.check_frame(frame)
