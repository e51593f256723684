"""Recipes: configs/train/NAME.toml with [model], [data], [train] and [predict], plus `--set key=value`
overrides.

Every key a recipe may hold is declared once, in SCHEMA, with its type, its range and its default:
`load_recipe` checks the whole recipe against it (a typo, a wrong type or an out-of-range value is
an InputError naming the key) and fills the defaults, so the training loop reads plain values and a
bad value never reaches it.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path

REQUIRED = object()  # a key with no default: the recipe must give it


@dataclass(frozen=True)
class Key:
    """One recipe key: its kind ("int", "float", "bool", "str", "table"), an optional range
    [low, high] (`low_open`, `high_open`: that end excluded) or set of choices, and its default."""

    kind: str
    default: object = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    help: str = ""

    def check(self, name: str, value):
        if self.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = {"int": int, "float": float, "bool": bool, "str": str, "table": dict}[self.kind]
        if not isinstance(value, expected) or (self.kind in ("int", "float") and isinstance(value, bool)):
            what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                    "table": "a table"}[self.kind]  # fmt: skip
            raise InputError(f"{name} must be {what}, got {value!r}")
        if self.kind == "float" and not math.isfinite(value):
            raise InputError(f"{name} must be finite, got {value!r}")
        if self.choices and value not in self.choices:
            raise InputError(f"{name} must be one of {', '.join(map(repr, self.choices))}, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            low = "" if self.low is None else f"{'above' if self.low_open else 'at least'} {self.low:g}"
            high = "" if self.high is None else f"{'below' if self.high_open else 'at most'} {self.high:g}"
            raise InputError(f"{name} must be {' and '.join(p for p in (low, high) if p)}, got {value!r}")
        return value


SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "name": Key("str", help="a registered architecture (rawdenoise/models)"),
        "args": Key("table", {}, help="keyword arguments of the model's constructor"),
    },
    "data": {
        "crop": Key("int", low=8, help="packed pixels per side of a training crop"),
        "augment": Key("bool", True, help="Bayer-preserving flips and transposes"),
        "extra_noise": Key("float", 0.0, low=0, high=1,
                           help="share of inputs re-noised from the noise model, at levels across the contest's range"),
        "noise_jitter": Key("float", 0.0, low=0, high=1,
                            help="std (log units) of the error put on the (a, b) a conditioned model is told"),
        "gain_jitter": Key("float", 0.0, low=0, high=1,
                           help="std (log units) of a random exposure and red/blue balance put on re-noised samples' clean crops"),
        "dead_leaves": Key("float", 0.0, low=0, high=1,
                           help="share of samples whose clean crop is a synthetic dead-leaves scene in the crop's own colours, noised at a level across the range"),
        "workers": Key("int", 0, low=0, help="data-loading worker processes"),
        "patches": Key("str", "", help="the patch store folder (or --patches)"),
    },
    "train": {
        "seed": Key("int", low=0),
        "iterations": Key("int", low=1, help="steps; with train.minutes, the most it may take"),
        "minutes": Key("float", 0.0, low=0,
                       help="a wall-clock budget: the run's length is planned, from its first steps' speed, to finish "
                            "within it (validation included); 0 turns it off"),
        "batch": Key("int", low=1, help="the global batch, split over torchrun processes"),
        "lr": Key("float", low=0, low_open=True, help="peak learning rate (AdamW)"),
        "lr_fan_in": Key("int", 0, low=0,
                         help="layers summing more input channels than this train at lr * lr_fan_in / their fan-in "
                              "(a rate per layer as in muP); 0: every layer at lr"),
        "weight_decay": Key("float", 0.0, low=0),
        "beta2": Key("float", 0.999, low=0, high=1, low_open=True, high_open=True,
                     help="Adam's second-moment decay; lower (0.95) adapts faster to a sudden large gradient"),
        "warmup": Key("int", 0, low=0, help="steps of linear warm-up"),
        "min_lr_ratio": Key("float", 0.05, low=0, high=1, help="the cosine decay's floor, times lr"),
        "ema": Key("float", 0.999, low=0, high=1, high_open=True, help="EMA decay of the exported weights (warmed up: min(ema, (1 + step) / (10 + step)))"),
        "loss": Key("str", "l1", choices=("l1", "l2", "psnr", "l1_level"),
                    help="l1_level: L1 in units of each sample's noise std, so every noise level weighs alike"),
        "clip": Key("float", 0.0, low=0, help="gradient-norm clip; 0 turns it off"),
        "val_every": Key("int", 500, low=1),
        "log_every": Key("int", 10, low=1),
        "float32_recipe": Key("str", "", help="a recipe in configs/train sized for devices without bf16 arithmetic: "
                              "the warning for a budget that fits under half the steps names it there"),
        "amp": Key("str", "none", choices=("none", "bf16", "auto"),
                   help="bf16 autocast; auto: bf16 where the device has bf16 arithmetic (AVX512-BF16, AMX, a bf16 GPU), else none"),  # fmt: skip
        "device": Key("str", "auto", choices=("auto", "cpu", "cuda")),
        "dtype": Key("str", "float32", choices=("float32", "float64"),
                     help="parameters and inputs; float64 only to check exactness (equal runs), several times slower"),  # fmt: skip
    },
    "predict": {  # how submission/predict.py runs this recipe's model unless told otherwise
        "tta": Key("bool", False,
                   help="average Bayer-preserving flips and transposes (tta_views of them: that many times the model's prediction time)"),
        "tta_views": Key("int", 8, choices=(2, 8),
                         help="8: every flip and transpose; 2: the frame and its transpose, the views that keep the CFA's phase "
                              "(on held-out scenes 70 to 90 % of the 8 views' gain at a quarter of their time)"),  # fmt: skip
    },
}


def describe() -> str:
    """Every recipe key with its range and default, for --help."""
    lines = []
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            if key.choices:
                kind = " | ".join(map(str, key.choices))
            else:
                low = "" if key.low is None else f"{'>' if key.low_open else '>='} {key.low:g}"
                high = "" if key.high is None else f"{'<' if key.high_open else '<='} {key.high:g}"
                kind = key.kind + (f" {low}" if low else "") + (f", {high}" if high else "")
            default = "required" if key.default is REQUIRED else f"default {key.default!r}"
            lines.append(f"  {section + '.' + name:<19} {kind} ({default}){': ' + key.help if key.help else ''}")
    return "\n".join(lines)


def validate(recipe: dict, source) -> dict:
    """The recipe checked key by key against SCHEMA, with defaults filled in; `source` names it in messages."""
    unknown = [s for s in recipe if s not in SCHEMA]
    if unknown:
        raise InputError(f"{source}: unknown section [{unknown[0]}]; a recipe has {', '.join(f'[{s}]' for s in SCHEMA)}")
    resolved = {}
    for section, keys in SCHEMA.items():
        table = recipe.get(section, {})
        if not isinstance(table, dict):
            raise InputError(f"{source}: {section} must be a table, got {table!r}")
        for name in table:
            if name not in keys:
                close = difflib.get_close_matches(name, keys, n=1)
                hint = f" (did you mean {section}.{close[0]}?)" if close else ""
                raise InputError(f"{source}: unknown key {section}.{name}{hint}")
        resolved[section] = {}
        for name, key in keys.items():
            if name not in table:
                if key.default is REQUIRED:
                    raise InputError(f"{source}: missing {section}.{name}")
                resolved[section][name] = key.default
                continue
            try:
                resolved[section][name] = key.check(f"{section}.{name}", table[name])
            except InputError as err:
                raise InputError(f"{source}: {err}") from None
    if resolved["train"]["amp"] == "bf16" and resolved["train"]["dtype"] == "float64":
        raise InputError(f"{source}: train.amp = 'bf16' needs train.dtype = 'float32'")
    return resolved


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
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a recipe (not UTF-8 text: a TOML file is)") from None
    except OSError as err:  # a folder, unreadable
        raise InputError(f"{path}: cannot read the recipe ({err.strerror or err})") from None
    for text in overrides:
        keys, value = parse_override(text)
        table = recipe
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise InputError(f"--set {text!r}: {k} is not a table")
        table[keys[-1]] = value
    return validate(recipe, f"{path} with --set {' '.join(overrides)}" if overrides else path)


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
