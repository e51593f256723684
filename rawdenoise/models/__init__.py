"""Model registry: a recipe's `[model] name` and `[model.args]` become a network here.

Each architecture is one self-contained file importing torch only, because that file is what ships
in the submission as network.py (with MODEL_ARGS and build_network appended by the packer).
"""

from __future__ import annotations

from pathlib import Path

from rawdenoise.errors import InputError

# name -> (module file in this folder, class name)
REGISTRY = {
    "unet": ("unet", "UNet"),
    "convnext_unet": ("convnext_unet", "ConvNeXtUNet"),
    "nafnet": ("nafnet", "NAFNet"),
}

# A level inside every contest's range, for the runs that only need some valid (a, b): the smoke
# forward below and the receptive-field probe.
PROBE_NOISE = (1e-3, 1e-5)


def probe_input(model):
    """(x, noise) for running a model once to learn something about it (that it runs at all, which
    layers it has, whether it streams): the smallest frame its levels allow (two pixels at the deepest)
    and PROBE_NOISE, in the model's dtype and on its device."""
    import torch

    parameter = next(model.parameters(), None)
    dtype, device = (parameter.dtype, parameter.device) if parameter is not None else (torch.float32, None)
    side = 2 ** (int(getattr(model, "depth", 0)) + 1)
    return (torch.zeros(1, 4, side, side, dtype=dtype, device=device),
            torch.tensor([PROBE_NOISE], dtype=dtype, device=device))  # fmt: skip


def is_noise_conditioned(model) -> bool:
    """Whether the model's output depends on the (a, b) it is given (and so needs each frame's)."""
    return getattr(model, "noise", "none") != "none"


def model_class(name: str):
    if name not in REGISTRY:
        raise InputError(f"unknown model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    module_name, class_name = REGISTRY[name]
    module = __import__(f"rawdenoise.models.{module_name}", fromlist=[class_name])
    return getattr(module, class_name)


def source_file(name: str) -> Path:
    """The model's self-contained source, as it ships in a submission."""
    model_class(name)
    return Path(__file__).resolve().parent / f"{REGISTRY[name][0]}.py"


def build_model(name: str, /, **kwargs):  # positional: a model argument may itself be called "name"
    """The named network; arguments it cannot be built from (a wrong name, type or size, which torch
    reports as any of several errors) are the caller's input, an InputError naming them."""
    import torch

    cls = model_class(name)
    try:
        model = cls(**kwargs)
        with torch.no_grad():  # arguments that build but cannot run (a zero width) fail here, not mid-training
            model(*probe_input(model))
    except Exception as err:
        raise InputError(f"model {name!r}: cannot be built from arguments {kwargs} ({type(err).__name__}: {err})") from None
    return model
