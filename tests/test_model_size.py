from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from rawdenoise.contest import DEFAULT_CONTEST, load_contest

ROOT = Path(__file__).resolve().parent.parent


def gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "check_model_size.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip


def test_every_recipe_passes_the_reference_contests_gate():
    result = gate("--recipes", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)
    assert {r["source"] for r in rows} >= {"recipe demo", "recipe tiny", "recipe unet_baseline", "recipe convnext_unet"}
    convnext = next(r for r in rows if r["source"] == "recipe convnext_unet")
    assert convnext["params"] == 10_368_483 and 41.4e6 < convnext["bytes"] < 41.6e6
    limit = load_contest(DEFAULT_CONTEST).submission.max_model_bytes
    assert all(r["within"] and r["limit_bytes"] == limit for r in rows)


def test_model_arguments_that_are_not_an_object_are_refused_in_words():
    for args in ("[1]", "null"):
        result = gate("--model", "unet", "--model-args", args)
        assert result.returncode == 2 and "--model-args must be a JSON object" in result.stderr and "Traceback" not in result.stderr


def test_over_the_limit_is_a_verdict_exit_1_not_an_error(tmp_path):
    result = gate("--model", "convnext_unet", "--model-args", '{"widths": [256, 512, 1024, 2048]}')
    assert result.returncode == 1 and "OVER THE LIMIT" in result.stdout
    result = gate("--recipes", "--contest", "rggb12_example", "--json")  # a 20 MB contest: the contest-scale nets fail
    assert result.returncode == 1
    rows = {r["source"]: r for r in json.loads(result.stdout)}
    limit = load_contest("rggb12_example").submission.max_model_bytes
    assert all(r["limit_bytes"] == limit for r in rows.values())
    over = rows["recipe unet_baseline"]
    assert not over["within"] and over["bytes"] > limit
    assert rows["recipe tiny"]["within"] and rows["recipe tiny"]["bytes"] <= limit  # the verdict is per model


def test_weights_files_are_measured_as_they_ship(tmp_path):
    weights = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1000, 1000)}, weights)  # 4 MB
    result = gate(str(weights), "--json")
    row = json.loads(result.stdout)[0]
    assert result.returncode == 0 and row["params"] == 1_000_000 and row["bytes"] == weights.stat().st_size
    big = tmp_path / "big.pth"
    torch.save({"w": torch.zeros(13_000_000)}, big)  # 52 MB: over 50e6 bytes, under 50 MiB
    result = gate(str(big))
    assert result.returncode == 1 and "OVER THE LIMIT" in result.stdout
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not weights")
    result = gate(str(junk))
    assert result.returncode == 2 and "junk.pth" in result.stderr and "Traceback" not in result.stderr
