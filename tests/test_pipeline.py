"""tools/pipeline.py: what run_all.sh's stamps hold for a stage's code, and its queries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.pipeline import code_files, files_hash

ROOT = Path(__file__).resolve().parent.parent


def test_a_stage_depends_on_every_module_its_script_imports_and_on_no_other():
    files = {p.relative_to(ROOT).as_posix() for p in code_files([ROOT / "submission" / "predict.py"])}
    assert {"submission/predict.py", "rawdenoise/tiling.py", "rawdenoise/raw.py", "rawdenoise/tiff.py"} <= files
    assert "rawdenoise/noise_cells.py" in files, "imported inside a function, and still run"
    assert {"rawdenoise/models/unet.py", "rawdenoise/models/nafnet.py"} <= files, "loaded by name by the model registry"
    assert not {"tools/score.py", "rawdenoise/leaderboard.py", "submission/pack.py"} & files


def test_changing_an_imported_file_changes_the_stamp_and_an_unrelated_one_does_not(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "used.py").write_text("VALUE = 1\n")
    (package / "deeper.py").write_text("def f():\n    from pkg.used import VALUE\n    return VALUE\n")
    (package / "unrelated.py").write_text("OTHER = 1\n")
    script = tmp_path / "stage.py"
    script.write_text("import json\nfrom pkg import deeper\n")
    before = files_hash(code_files([script], root=tmp_path))
    (package / "unrelated.py").write_text("OTHER = 2\n")
    assert files_hash(code_files([script], root=tmp_path)) == before
    (package / "used.py").write_text("VALUE = 2\n")
    assert files_hash(code_files([script], root=tmp_path)) != before


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "pipeline.py"), *args], capture_output=True, text=True, cwd=ROOT)


def test_predict_reruns_when_the_bf16_cost_its_precision_reads_changes(tmp_path):
    """`--precision auto` decides from inference.json's bf16 record: a new measurement must show in
    predict's stamp (the receptive radius predict keeps there must not)."""
    from rawdenoise.measured import update_measured, write_measured

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pth").write_bytes(b"weights")
    assert pipeline("bf16-cost", str(run)).stdout.strip() == "none"
    record = {"psnr_fp32": 40.0, "psnr_bf16": 39.99, "cost_db": 0.01, "frames": 3, "device": "cpu", "scheme": "s"}
    write_measured(run, run / "model.pth", {"bf16": record})
    first = pipeline("bf16-cost", str(run)).stdout
    update_measured(run, run / "model.pth", {"receptive_radius": {"tolerance": 2e-8, "radius": 48}})
    assert pipeline("bf16-cost", str(run)).stdout == first
    update_measured(run, run / "model.pth", {"bf16": {**record, "cost_db": 0.002}})
    assert pipeline("bf16-cost", str(run)).stdout != first


def test_queries_answer_from_the_profile_and_the_recipe(tmp_path):
    assert pipeline("layout", "zte2022").stdout.split() == ["testset", "testset_gt"]
    recipe = tmp_path / "r.toml"
    recipe.write_text("[data]\ncrop = 48\n")
    assert pipeline("patch-size", str(recipe)).stdout.strip() == "96"
    bad = pipeline("check-contest", "no-such-contest")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no-such-contest" in bad.stderr
    recipe.write_text("[data]\n")
    missing = pipeline("patch-size", str(recipe))
    assert missing.returncode == 2 and "r.toml" in missing.stderr and "Traceback" not in missing.stderr
