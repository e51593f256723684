"""Facts measured once on a model's exported weights and kept beside them, so that every process that
predicts with those weights reads them instead of measuring again: the receptive radius that exact
tiles need (seconds of probing a model) and what bf16 inference costs in PSNR (which needs the
validation frames' ground truth: training measures it, tools/measure_bf16.py for a run finished elsewhere).

Training writes `runs/X/inference.json` right after `model.pth`. Each record names the sha256 of the
weights it was measured on and is ignored once they change: a fact never outlives its weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path

RECORD_NAME = "inference.json"


def weights_digest(weights: Path) -> str:
    return hashlib.sha256(Path(weights).read_bytes()).hexdigest()


def read_measured(run: Path | None, weights: Path) -> dict:
    """The facts measured on these weights in run folder `run` ({} if none, or if they describe other weights):
    `receptive_radius` {"tolerance", "radius"} and `bf16` {"psnr_fp32", "psnr_bf16", "cost_db", "frames", "device",
    "scheme"}."""
    return {} if run is None else _read(run, weights_digest(weights))


def _read(run: Path, digest: str) -> dict:
    path = Path(run) / RECORD_NAME
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        str(record["weights_sha256"])
        if "bf16" in record and not math.isfinite(float(record["bf16"]["cost_db"])):
            raise ValueError("bf16 cost is not a number")
        if "receptive_radius" in record:
            int(record["receptive_radius"]["radius"]), float(record["receptive_radius"]["tolerance"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a record of measured facts ({type(err).__name__}: {err}); delete it") from None
    return record if record["weights_sha256"] == digest else {}


def write_measured(run: Path, weights: Path, facts: dict) -> None:
    """The record of these weights: exactly `facts` (training, which has just written new weights)."""
    _write(run, weights_digest(weights), facts)


def update_measured(run: Path, weights: Path, facts: dict) -> None:
    """`facts` added to (or replacing the same parts of) what was measured on these weights before."""
    digest = weights_digest(weights)
    kept = {k: v for k, v in _read(run, digest).items() if k != "weights_sha256"}
    _write(run, digest, {**kept, **facts})


def _write(run: Path, digest: str, facts: dict) -> None:
    with atomic_path(Path(run) / RECORD_NAME) as tmp:
        tmp.write_text(json.dumps({"weights_sha256": digest, **facts}, indent=2) + "\n")
