from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.measured import read_measured, write_measured
from rawdenoise.metrics import psnr
from rawdenoise.models import build_model
from rawdenoise.raw import read
from rawdenoise.tiling import TOLERANCE, receptive_radius
from rawdenoise.tiling import DEFAULT_TILE
from rawdenoise.recipe import write_toml

ROOT = Path(__file__).resolve().parent.parent
ZTE = load_contest("zte2022")
ARGS = {"widths": [8, 16, 32]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(128, 192), progress=False)


def make_run(path: Path, head_std: float = 0.0, noise: str = "none", tta: bool | None = None, tta_views: int | None = None,
             clipped: bool = False) -> Path:  # fmt: skip
    """A finished run folder: config.toml and model.pth (the identity when head_std is 0); `tta` and
    `tta_views` set the recipe's [predict] keys (None: a recipe without them, as from before that section)."""
    torch.manual_seed(0)
    args = {**ARGS, "noise": noise} if noise != "none" else ARGS
    if clipped:
        args = {**args, "clipped": True}
    model = build_model("unet", **args)
    if head_std:
        torch.nn.init.normal_(model.head.weight, std=head_std)
    path.mkdir(parents=True)
    recipe = {"model": {"name": "unet", "args": args}, "data": {"crop": 32},
              "train": {"iterations": 1, "batch": 1, "lr": 1e-3, "seed": 0}}  # fmt: skip
    if tta is not None:
        recipe["predict"] = {"tta": tta}
    if tta_views is not None:
        recipe.setdefault("predict", {})["tta_views"] = tta_views
    write_toml(path / "config.toml", recipe)
    torch.save(model.state_dict(), path / "model.pth")
    return path


def tool(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args, "--quiet"] if script != "submission/pack.py"
                          else [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)  # fmt: skip


def test_predict_writes_denoised_frames_into_copies_of_their_containers(demo, tmp_path):
    run = make_run(tmp_path / "identity")
    result = tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--tile", "32")
    assert result.returncode == 0, result.stderr
    outputs = sorted((run / "result" / "data").iterdir())
    assert len(outputs) == len(list((demo / "testset").iterdir()))
    for out in outputs:  # the identity model changes nothing: every byte equals the input's
        source = demo / "testset" / out.name.replace("denoise", "noisy")
        assert out.read_bytes() == source.read_bytes()


def test_predict_with_a_real_model_stays_in_range_and_tiles_match_whole_frames(demo, tmp_path):
    run = make_run(tmp_path / "run", head_std=0.05)
    tiled, whole = tmp_path / "tiled", tmp_path / "whole"
    assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output", str(tiled),
                "--tile", "32").returncode == 0  # fmt: skip
    assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output", str(whole),
                "--tile", "0", "--tta").returncode == 0  # fmt: skip
    a, b = read(tiled / "denoise0.dng", ZTE).mosaic, read(whole / "denoise0.dng", ZTE).mosaic
    assert a.min() >= ZTE.black_array.min() and a.max() <= ZTE.white and not np.array_equal(a, b)  # TTA changes the result
    plain = tmp_path / "plain"
    assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output", str(plain),
                "--tile", "0").returncode == 0  # fmt: skip
    c = read(plain / "denoise0.dng", ZTE).mosaic
    assert np.mean(a == c) >= 0.9999  # tiled and whole-frame outputs agree after rounding


def test_the_tiles_margin_is_measured_once_per_weights_and_kept_in_the_run_folder(demo, tmp_path):
    """Square tiles (--no-stream; what a model that cannot stream gets) need the model's reach."""
    run = make_run(tmp_path / "run", head_std=0.05)
    inputs = str(demo / "testset")

    def predict(name: str) -> np.ndarray:
        result = tool("submission/predict.py", "--run", str(run), "--input", inputs, "--output", str(tmp_path / name), "--tile", "32",
                      "--no-stream")  # fmt: skip
        assert result.returncode == 0, result.stderr
        return read(tmp_path / name / "denoise0.dng", ZTE).mosaic

    first = predict("first")
    model = build_model("unet", **ARGS)
    model.load_state_dict(torch.load(run / "model.pth", weights_only=True))
    assert read_measured(run, run / "model.pth")["receptive_radius"] == {"tolerance": TOLERANCE, "radius": receptive_radius(model)}
    # the next run reads the kept radius instead of probing: a (wrong) radius of 0 shows through as seams
    write_measured(run, run / "model.pth", {"receptive_radius": {"tolerance": TOLERANCE, "radius": 0}})
    assert np.mean(predict("trusting") != first) > 0.001
    torch.save({k: v * 1.0001 for k, v in model.state_dict().items()}, run / "model.pth")  # retrained weights
    assert np.mean(predict("retrained") == first) >= 0.999  # measured again: no seams
    assert read_measured(run, run / "model.pth")["receptive_radius"]["radius"] > 0


def test_a_run_folder_that_cannot_keep_the_radius_still_gets_its_predictions(demo, tmp_path):
    """The radius is a cache: a run folder that refuses it (read-only elsewhere; here a folder where the record
    goes, which stops root too) must not turn a complete prediction set into a failed command."""
    run = make_run(tmp_path / "run", head_std=0.05)
    (run / "inference.json").mkdir()
    result = tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output", str(tmp_path / "out"),
                  "--tile", "32", "--no-stream")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "receptive radius is not kept" in result.stderr and "inference.json: is a folder" in result.stderr
    assert len(list((tmp_path / "out").glob("denoise*.dng"))) == len(list((demo / "testset").iterdir()))


def test_predict_augments_as_the_runs_recipe_says_unless_told_otherwise(demo, tmp_path):
    inputs = str(demo / "testset")

    def prediction(run: Path, *flags: str) -> np.ndarray:
        out = tmp_path / "predictions" / f"{run.name}{''.join(flags)}"
        result = tool("submission/predict.py", "--run", str(run), "--input", inputs, "--output", str(out), "--tile", "0", *flags)
        assert result.returncode == 0, result.stderr
        return read(out / "denoise0.dng", ZTE).mosaic

    augmented, plain = make_run(tmp_path / "tta", head_std=0.05, tta=True), make_run(tmp_path / "old", head_std=0.05)
    assert np.array_equal(prediction(augmented), prediction(plain, "--tta"))  # the recipe's choice is --tta's
    assert np.array_equal(prediction(augmented, "--no-tta"), prediction(plain))  # a run without [predict]: off
    assert not np.array_equal(prediction(augmented), prediction(plain))
    pair = make_run(tmp_path / "pair", head_std=0.05, tta=True, tta_views=2)  # the recipe's views are --tta-views'
    assert np.array_equal(prediction(pair), prediction(plain, "--tta", "--tta-views", "2"))
    assert np.array_equal(prediction(pair, "--tta-views", "8"), prediction(plain, "--tta"))
    assert np.array_equal(prediction(plain, "--tta-views", "2"), prediction(pair))  # alone, it asks for augmentation
    assert np.array_equal(prediction(pair, "--no-tta", "--tta-views", "2"), prediction(plain))
    assert not np.array_equal(prediction(pair), prediction(plain, "--tta"))
    manifest = json.loads((tmp_path / "predictions" / "pair.manifest.json").read_text())
    assert manifest["tta"] is True and manifest["tta_views"] == 2


def test_a_conditioned_model_is_told_each_frames_tag_else_its_estimate(demo, tmp_path):
    run = make_run(tmp_path / "map", head_std=0.05, noise="map")
    frame = read(demo / "testset" / "noisy0.dng", ZTE)
    tag = ",".join(str(v) for v in frame.noise_profile[:2])
    outputs = {}
    for label, noise in (("auto", "auto"), ("tag", tag), ("estimate", "estimate"), ("heavy", "0.05,0.005")):
        out = tmp_path / label
        result = tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output", str(out),
                      "--tile", "0", "--noise", noise)  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs[label] = read(out / "denoise0.dng", ZTE).mosaic.astype(np.int64)
    assert np.array_equal(outputs["auto"], outputs["tag"])  # the frame's own tag, as given by hand
    assert not np.array_equal(outputs["auto"], outputs["heavy"])
    # the estimate is near the tag, so the output is near the tagged one, nearer than a 25x heavier level's
    assert 0 < np.abs(outputs["estimate"] - outputs["auto"]).mean() < np.abs(outputs["heavy"] - outputs["auto"]).mean()
    bad = tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--output",
               str(tmp_path / "bad"), "--noise", "-1,0")  # fmt: skip
    assert bad.returncode == 2 and "--noise" in bad.stderr and "Traceback" not in bad.stderr


def test_predict_refuses_what_it_cannot_do_before_computing(demo, tmp_path):
    result = tool("submission/predict.py", "--run", str(tmp_path / "none"), "--input", str(demo / "testset"))
    assert result.returncode == 2 and "config.toml" in result.stderr
    run = make_run(tmp_path / "run")
    (run / "model.pth").unlink()
    result = tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"))
    assert result.returncode == 2 and "model.pth" in result.stderr and "Traceback" not in result.stderr
    (run / "config.toml").write_text("[train]\niterations = 3\n")  # a recipe that names no model
    for script, extra in (("submission/predict.py", ("--input", str(demo / "testset"))), ("submission/pack.py", ())):
        result = tool(script, "--run", str(run), *extra)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "config.toml: not a trained recipe (KeyError: 'model')" in result.stderr
    run = make_run(tmp_path / "identity")
    testset = tmp_path / "testset"
    shutil.copytree(demo / "testset", testset)
    last = sorted(testset.iterdir())[-1]  # a compressed container: nothing can be written back into it
    tifffile.imwrite(last, read(last).mosaic, photometric=32803, compression="zlib", subfiletype=0,
                     extratags=[(50706, "B", 4, (1, 4, 0, 0), True), (33421, "H", 2, (2, 2), True),
                                (33422, "B", 4, (2, 1, 1, 0), True)])  # fmt: skip
    result = tool("submission/predict.py", "--run", str(run), "--input", str(testset))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{last.name}: raw data is compressed" in result.stderr
    assert not (run / "result").exists(), "refused before any frame was predicted or written"


def test_pack_writes_exactly_the_contest_layout_and_the_network_loads(demo, tmp_path):
    """A noise-aware, clipped model (a boolean among its arguments, which network.py must spell as Python)."""
    run = make_run(tmp_path / "run", head_std=0.05, noise="ksigma", clipped=True)
    assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset")).returncode == 0
    manifest = json.loads((run / "result" / "data.manifest.json").read_text())  # what the set was made from
    assert manifest["inputs"] == str((demo / "testset").resolve()) and manifest["frames"] == len(list((demo / "testset").iterdir()))
    assert manifest["model"]["name"] == "unet" and manifest["tile"] == DEFAULT_TILE and manifest["stream"] is True
    assert manifest["tta"] is False and manifest["tta_views"] is None
    result = tool("submission/pack.py", "--run", str(run))  # the inputs to check against: the manifest's
    assert result.returncode == 0, result.stderr
    (run / "result" / "data.manifest.json").unlink()
    result = tool("submission/pack.py", "--run", str(run))
    assert result.returncode == 2 and "pass --input" in result.stderr
    with zipfile.ZipFile(run / "result.zip") as zf:
        names = set(zf.namelist())
        n = len(list((demo / "testset").iterdir()))
        assert names == {f"result/data/denoise{i}.dng" for i in range(n)} | {
            "result/algorithm/models/network.py", "result/algorithm/models/model.pth", "result/algorithm/README.md"}
        source = zf.read("result/algorithm/models/network.py").decode()
        weights = zf.read("result/algorithm/models/model.pth")
    assert "import torch" in source and "rawdenoise" not in source
    namespace = {}
    exec(source, namespace)  # what the organisers do: build_network() and load the weights
    model = namespace["build_network"]()
    (tmp_path / "w.pth").write_bytes(weights)
    model.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True))
    ours = build_model("unet", **ARGS, noise="ksigma", clipped=True)
    ours.load_state_dict(torch.load(run / "model.pth", weights_only=True))
    x, profile = torch.rand(1, 4, 16, 16) * 0.1, torch.tensor([[1e-2, 1e-3]])
    with torch.no_grad():
        assert torch.equal(model(x, profile), ours(x, profile))  # the organisers' network is ours, clipping included
    scores = {}
    for what in (run, run / "result" / "data"):  # the zip scores exactly as the predictions it packed
        score = subprocess.run([sys.executable, str(ROOT / "tools/score.py"), str(what), str(demo / "testset_gt"), "--json",
                                "--no-levels"], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        assert score.returncode == 0, score.stderr
        scores[what] = json.loads(score.stdout)
    assert scores[run] == scores[run / "result" / "data"] and len(scores[run]["images"]) == n


def test_the_submissions_readme_says_how_its_predictions_were_made(demo, tmp_path):
    """Organisers who rerun the network must learn of the averaged views and of a time budget's fewer steps."""
    run = make_run(tmp_path / "run", head_std=0.05)
    recipe = tomllib.loads((run / "config.toml").read_text())
    recipe["train"].update(iterations=6000, minutes=58)
    write_toml(run / "config.toml", recipe)
    (run / "log.csv").write_text("step,loss\n10,0.1\n20,0.1\n")  # the 20 steps train.minutes planned on a slow machine
    readmes = {}
    for views in ("2", "8"):
        assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--tta-views", views).returncode == 0
        assert tool("submission/pack.py", "--run", str(run)).returncode == 0
        with zipfile.ZipFile(run / "result.zip") as zf:
            readmes[views] = zf.read("result/algorithm/README.md").decode()
    assert "training: 20 steps (of the recipe's 6000: what its 58-minute budget held)" in readmes["2"]
    assert "mean of the model's outputs on 2 Bayer-preserving views (the frame and its transpose)" in readmes["2"]
    assert "on 8 Bayer-preserving flips and transposes" in readmes["8"]
    again = tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset"), "--no-tta")
    assert again.returncode == 0 and "pack again" in again.stderr
    assert not (run / "result.zip").exists(), "the zip of the replaced predictions would be scored as the run's"
    assert tool("submission/pack.py", "--run", str(run)).returncode == 0
    with zipfile.ZipFile(run / "result.zip") as zf:
        assert "test-time augmentation" not in zf.read("result/algorithm/README.md").decode()


def test_pack_refuses_a_manifest_whose_inputs_are_not_a_path(demo, tmp_path):
    run = make_run(tmp_path / "run")
    assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset")).returncode == 0
    (run / "result" / "data.manifest.json").write_text('{"inputs": 5, "frames": "x"}')
    result = tool("submission/pack.py", "--run", str(run))
    assert result.returncode == 2 and "not a prediction manifest (TypeError: inputs is 5, not a path)" in result.stderr
    assert "Traceback" not in result.stderr and not (run / "result.zip").exists()


def test_pack_refuses_missing_predictions_and_over_limit_weights_and_writes_nothing(demo, tmp_path):
    run = make_run(tmp_path / "run")
    assert tool("submission/predict.py", "--run", str(run), "--input", str(demo / "testset")).returncode == 0
    (run / "result" / "data" / "denoise3.dng").unlink()
    result = tool("submission/pack.py", "--run", str(run), "--input", str(demo / "testset"))
    assert result.returncode == 2 and "denoise3.dng" in result.stderr
    assert not (run / "result.zip").exists()
    shutil.copy(demo / "testset" / "noisy3.dng", run / "result" / "data" / "denoise3.dng")
    small = tmp_path / "small.toml"
    small.write_text(ZTE.path.read_text().replace("max_model_bytes = 50_000_000", "max_model_bytes = 1000"))
    result = tool("submission/pack.py", "--run", str(run), "--input", str(demo / "testset"), "--contest", str(small))
    assert result.returncode == 2 and "over" in result.stderr and not (run / "result.zip").exists()
    assert tool("submission/pack.py", "--run", str(run), "--input", str(demo / "testset")).returncode == 0
    with zipfile.ZipFile(run / "result.zip") as zf:  # once whole again, the set is packed, the restored frame too
        assert ZTE.submission.member(3) in zf.namelist()


def test_bilateral_entry_denoises_and_writes_the_submission_names(demo, tmp_path):
    out = tmp_path / "bilateral"
    result = tool("tools/bilateral.py", "--input", str(demo / "testset"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    inputs = ZTE.layout.test_noisy.bare.find(demo / "testset")
    assert {p.name for p in out.iterdir()} == {ZTE.submission.output.name(i) for i in inputs}
    assert f"wrote {len(inputs)} bilateral predictions" in result.stdout
    gt, noisy, filtered = (read(p, ZTE).mosaic for p in
                           (demo / "testset_gt/gt4.dng", demo / "testset/noisy4.dng", out / "denoise4.dng"))  # fmt: skip
    data_range = ZTE.metric.data_range
    assert psnr(gt, filtered, data_range) > psnr(gt, noisy, data_range) + 1  # the heaviest training noise type


def test_bilateral_refuses_settings_that_would_blank_its_frames(demo, tmp_path):
    for option, value in (("--sigma-space", "nan"), ("--sigma-color", "nan"), ("--sigma-color", "inf"), ("--radius", "0")):
        out = tmp_path / f"b{option}{value}"
        result = tool("tools/bilateral.py", "--input", str(demo / "testset"), "--output", str(out), option, value)
        assert result.returncode == 2 and "positive and finite" in result.stderr and not out.exists(), (option, value)
