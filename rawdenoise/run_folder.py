"""A run folder as the stages after training see it: the recipe it was trained from and its weights.

Training writes `runs/X/config.toml` (the resolved recipe) and `runs/X/model.pth`; predict, pack and the
tools that measure a finished run all start from them and refuse the same way what is not one. predict
and the measuring tools build the network with its weights through `load_model`.
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rawdenoise.errors import InputError
from rawdenoise.models import REGISTRY, build_model


def existing_weights(weights: Path) -> Path:
    """`weights`, or an InputError if there is no such file (a run whose training has not written it)."""
    if not Path(weights).is_file():
        raise InputError(f"{weights}: no weights file (has training finished?)")
    return Path(weights)


def load_state_into(model: torch.nn.Module, weights: Path, device) -> None:
    """Load a state_dict file into `model`; a ValueError whose one line says why it does not fit (torch's
    own messages run to many lines: every missing key listed, a pickle warning ahead of them)."""
    try:
        with warnings.catch_warnings():  # torch warns before refusing a foreign pickle; the refusal is the news
            warnings.simplefilter("ignore")
            state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as err:  # a damaged or foreign file: torch raises many types
        raise ValueError(f"not a torch weights file ({type(err).__name__}: {' '.join(str(err).split())[:160]})") from None
    if isinstance(state, dict) and {"model", "ema"} <= set(state):
        raise ValueError("a training checkpoint (last.pt or best.pt), not exported weights: use the run's model.pth")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError("not a state_dict of tensors")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"not this model's weights: {len(missing)} of its {len(expected)} tensors missing "
                         f"(first {missing[:1]}), {len(unexpected)} unexpected (first {unexpected[:1]})")  # fmt: skip
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"not this model's weights: {key} is {tuple(value.shape)}, the model's {tuple(expected[key].shape)}")
    model.load_state_dict(state)


@dataclass(frozen=True)
class Run:
    path: Path
    recipe: dict

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """The run folder at `path`; an InputError naming it if it has no readable config.toml."""
        path = Path(path)
        config = path / "config.toml"
        if not config.is_file():
            raise InputError(f"{path}: not a run folder (no config.toml)")
        try:
            recipe = tomllib.loads(config.read_text(encoding="utf-8"))
            model = recipe["model"]
            str(model["name"]), dict(model.get("args", {}))
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(f"{config}: not a trained recipe ({type(err).__name__}: {err})") from None
        if model["name"] not in REGISTRY:
            raise InputError(f"{config}: unknown model {model['name']!r}; available: {', '.join(sorted(REGISTRY))}")
        return cls(path, recipe)

    @property
    def weights(self) -> Path:
        """model.pth, the exported weights (checked by `finished_weights`)."""
        return self.path / "model.pth"

    def finished_weights(self) -> Path:
        """model.pth, or an InputError if training has not written it yet."""
        return existing_weights(self.weights)

    @property
    def model_name(self) -> str:
        return self.recipe["model"]["name"]

    @property
    def model_args(self) -> dict:
        return dict(self.recipe["model"].get("args", {}))

    @property
    def tta(self) -> bool:
        """The recipe's [predict] tta: predict's default for this run (off for a run from before it)."""
        return bool(self.recipe.get("predict", {}).get("tta", False))

    @property
    def tta_views(self) -> int:
        """The recipe's [predict] tta_views: how many views predict's --tta averages (8 for a run from before it)."""
        return int(self.recipe.get("predict", {}).get("tta_views", 8))

    @property
    def patch_store(self) -> Path | None:
        """The patch store the run trained from (its recipe's data.patches), if it names one."""
        store = self.recipe.get("data", {}).get("patches")
        return Path(store) if store else None


def load_model(name: str, kwargs: dict, weights: Path, device) -> torch.nn.Module:
    """The registered model `name`(**kwargs) with the state_dict in `weights`, on `device`, in eval mode."""
    existing_weights(weights)
    model = build_model(name, **kwargs)
    try:
        load_state_into(model, weights, "cpu")
    except ValueError as err:
        raise InputError(f"{weights}: cannot load into {name}({kwargs}): {err}") from None
    return model.to(device).eval()


def run_model(run: Run, device) -> torch.nn.Module:
    """A run folder's model with its exported weights (model.pth)."""
    return load_model(run.model_name, run.model_args, run.weights, device)  # load_model checks it exists
