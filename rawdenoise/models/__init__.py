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
}


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


def build_model(name: str, **kwargs):
    try:
        return model_class(name)(**kwargs)
    except TypeError as err:
        raise InputError(f"model {name!r}: bad arguments {kwargs} ({err})") from None
