"""The manifest of a prediction set: what predict made it from (its inputs, model and settings), written
beside the set's folder. The stages after predict read it (pack, for the test inputs to check the
predictions against) instead of reaching into training's files.
"""

from __future__ import annotations

import json
from pathlib import Path

from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path


def manifest_path(output_dir: Path) -> Path:
    """Where a prediction set's manifest lies: beside the set's folder (which holds only predictions),
    named after it: runs/X/result/data -> runs/X/result/data.manifest.json."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".manifest.json")


def write_manifest(output_dir: Path, facts: dict) -> None:
    """The manifest of the finished set in output_dir, written whole or not at all."""
    with atomic_path(manifest_path(output_dir)) as tmp:
        tmp.write_text(json.dumps(facts, indent=2) + "\n")


def read_manifest(output_dir: Path) -> dict | None:
    """The manifest predict wrote beside a prediction set, or None if it has none."""
    path = manifest_path(output_dir)
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text())
        if not isinstance(facts["inputs"], str):
            raise TypeError(f"inputs is {facts['inputs']!r}, not a path")
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a prediction manifest ({type(err).__name__}: {err}); predict again") from None
    return facts
