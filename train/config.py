"""Recipes: configs/train/NAME.toml with [model], [data] and [train], plus `--set key=value` overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path

REQUIRED = {"model": ["name"], "data": ["crop"], "train": ["seed", "iterations", "batch", "lr"]}


def parse_override(text: str) -> tuple[list[str], object]:
    """"train.lr=3e-4" -> (["train", "lr"], 0.0003); the value is parsed as TOML, else kept as a string."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    path = Path(path)
    try:
        recipe = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None
    for text in overrides:
        keys, value = parse_override(text)
        table = recipe
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise InputError(f"--set {text!r}: {k} is not a table")
        table[keys[-1]] = value
    for section, keys in REQUIRED.items():
        for key in keys:
            if key not in recipe.get(section, {}):
                raise InputError(f"{path}: missing {section}.{key}")
    recipe["model"].setdefault("args", {})
    return recipe


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps(recipe: dict, prefix: str = "") -> str:
    """TOML for our recipes: tables of scalars, strings and lists, nested tables after them."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in recipe.items() if not isinstance(v, dict)]
    for k, v in recipe.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            lines.append(f"\n[{name}]")
            lines.append(dumps(v, name + ".").strip("\n"))
    return "\n".join(line for line in lines if line != "") + "\n"


def write_toml(path: str | Path, recipe: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(dumps(recipe).lstrip("\n"))
