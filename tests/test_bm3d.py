"""The BM3D reference entry and the variance-stabilising transform it stands on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.metrics import psnr
from rawdenoise.raw import read, write_dng
from rawdenoise.vst import anscombe, expected_anscombe, inverse_anscombe

ROOT = Path(__file__).resolve().parent.parent
ZTE = load_contest("zte2022")
LEVELS = [(1e-4, 1e-6), (1e-3, 3e-5), (1e-2, 1e-3), (3e-2, 3e-3)]  # the contest's range, and heavier


@pytest.mark.parametrize("a, b", LEVELS)
def test_the_transform_gives_unit_noise_and_its_inverse_is_unbiased_under_clipping(a, b):
    rng = np.random.default_rng(0)
    for x in (0.0, 0.002, 0.02, 0.2, 0.6, 0.95):
        noisy = np.clip(x + np.sqrt(a * x + b) * rng.standard_normal(200_000), 0, 1)  # the contest clips
        stabilised = anscombe(noisy, a, b)
        if 0.05 <= x <= 0.6 and a < 2e-2:  # away from clipping, at the contest's levels: unit variance
            assert abs(stabilised.std() - 1) < 0.03, (x, stabilised.std())
        # a perfect denoiser returns E[f(y)]; the inverse must give x back, dark pixels included
        assert inverse_anscombe(expected_anscombe(np.array(x), a, b), a, b) == pytest.approx(x, abs=1e-6)
        standard_error = np.sqrt(a * x + b) / np.sqrt(noisy.size) * 4
        assert inverse_anscombe(stabilised.mean(), a, b) == pytest.approx(x, abs=standard_error + 1e-6)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(64, 96), progress=False)


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "bm3d_denoise.py"), *args, "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_bm3d_told_each_frames_noise_improves_every_test_frame(demo, tmp_path):
    out = tmp_path / "bm3d"
    result = tool("--input", str(demo / "testset"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    for i, noisy_path in ZTE.layout.test_noisy.find(demo).items():
        gt = read(ZTE.layout.test_gt.path(demo, i), ZTE).mosaic
        before = psnr(gt, read(noisy_path, ZTE).mosaic, ZTE.metric.data_range)
        after = psnr(gt, read(out / f"denoise{i}.dng", ZTE).mosaic, ZTE.metric.data_range)
        assert after > before, f"frame {i}: {before:.2f} dB in, {after:.2f} dB out"


def test_a_frame_without_a_noise_profile_is_denoised_at_its_estimated_level(tmp_path):
    demo = make_demo_dataset(tmp_path / "demo", ZTE, size=(256, 384), progress=False)  # room for an estimate
    inputs = tmp_path / "in"
    inputs.mkdir()
    frame = read(demo / "testset" / "noisy5.dng", ZTE)
    write_dng(inputs / "noisy5.dng", frame.mosaic, frame.cfa, frame.black, frame.white)  # no NoiseProfile tag
    outputs = {}
    for label, extra in (("estimated", ()), ("tagged", ("--noise", ",".join(map(str, frame.noise_profile))))):
        result = tool("--input", str(inputs), "--output", str(tmp_path / label), *extra)
        assert result.returncode == 0, result.stderr
        outputs[label] = read(tmp_path / label / "denoise5.dng", ZTE).mosaic
    gt = read(ZTE.layout.test_gt.path(demo, 5), ZTE).mosaic
    scores = {k: psnr(gt, v, ZTE.metric.data_range) for k, v in outputs.items()}
    assert abs(scores["estimated"] - scores["tagged"]) < 0.3, scores
    assert scores["estimated"] > psnr(gt, frame.mosaic, ZTE.metric.data_range) + 3, scores
    bad = tool("--input", str(inputs), "--noise", "-1,0")  # a negative variance
    assert bad.returncode == 2 and "--noise" in bad.stderr and "Traceback" not in bad.stderr
