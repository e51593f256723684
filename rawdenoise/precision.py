"""The floating-point precision a model runs in: float32, or bfloat16 for the network's body only.

A CPU with AVX512-BF16 or AMX, and most CUDA GPUs, multiply bf16 at about twice the float32 rate or
more. bf16 keeps 8 bits of mantissa, which would round a 14-bit raw signal badly, so only the network's
body runs in it: under autocast the convolutions and matrix products take bf16 while the input, the
noise conditioning (pointwise, before the first convolution), the first and last weight layers (which
read the signal and write the residual) and the residual add `x + f(x)` stay float32 (a bf16 residual
would promote to float32 against the float32 input anyway), and so does the output.

Whether bf16 is worth it is measured, never assumed: `auto` takes bf16 only on hardware that has it and
only for a model whose measured PSNR cost (training measures it on its validation frames, into the run
folder's inference.json) is within MAX_COST_DB. A CPU's features are read from the CPU, not its name.
"""

from __future__ import annotations

import contextlib

import torch

from rawdenoise.cpu import cpu_flags
from rawdenoise.errors import InputError
from rawdenoise.models import probe_input

PRECISIONS = ("fp32", "bf16", "auto")
MAX_COST_DB = 0.01  # what `auto` lets bf16 cost the model's mean PSNR
# What runs in bf16, as a measured cost records it: a cost measured under another split is not this one's.
BF16_SCHEME = "bf16 body; float32 input, signal layers, residual add and output"


def bf16_hardware(device: torch.device | str) -> bool:
    """Whether the device multiplies bf16 natively: AVX512-BF16 or AMX-BF16 on a CPU; a CUDA GPU that
    supports bf16 (Ampere and later). Without it bf16 is emulated, slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    capabilities = getattr(torch.cpu, "get_capabilities", lambda: {})()  # no /proc: ask torch's own cpuinfo
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


WEIGHT_LAYERS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)


def signal_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The first and the last weight layer a forward pass runs: the one that reads the signal and the one
    that writes the residual. In bf16 they would round the signal to 8 bits on the way in and the
    residual on the way out; measured on the widths-64 quality U-Net over the demo test set, bf16 everywhere cost
    0.010 dB, these two kept in float32 0.002 dB, for a fraction of the work (4 channels in, 4 out).
    Found by running the model once on a small frame, so any architecture is covered; cached on it."""
    cached = getattr(model, "_signal_layers", None)
    if cached is not None:
        return cached
    order = []
    hooks = [m.register_forward_pre_hook(lambda module, _: order.append(module)) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    x, noise = probe_input(model)
    try:
        with torch.inference_mode(), torch.autocast(x.device.type, enabled=False):
            model(x, noise)
    finally:
        for hook in hooks:
            hook.remove()
    model._signal_layers = [order[0], order[-1]] if len(order) > 1 else order
    return model._signal_layers


def _float32_forward(layer: torch.nn.Module, device_type: str):
    forward = type(layer).forward.__get__(layer)

    def float32_forward(*args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return forward(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args), **kwargs)

    return float32_forward


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str, model: torch.nn.Module | None = None):
    """The context a forward pass of `model` runs under: nothing for fp32; for bf16, autocast with the
    model's signal layers (signal_layers) kept in float32 for its duration."""
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"precision must be fp32 or bf16 here, got {precision!r} (resolve 'auto' first)")
    device_type = torch.device(device).type
    layers = signal_layers(model) if model is not None else []
    for layer in layers:
        layer.forward = _float32_forward(layer, device_type)  # an instance attribute shadows the class's forward
    try:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            yield
    finally:
        for layer in layers:
            del layer.forward


def resolve(requested: str, device: torch.device | str, measured: dict | None = None) -> tuple[str, str]:
    """`requested` (fp32, bf16 or auto) -> (the precision to run, why, in words for the user). `auto`
    reads `measured["bf16"]`, the cost training measured for these weights (rawdenoise.measured)."""
    if requested not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    kind = torch.device(device).type.upper()
    if requested == "bf16":
        return "bf16", "as asked" + ("" if bf16_hardware(device) else f" (this {kind} has no bf16 arithmetic: emulated, slower)")
    if requested == "fp32":
        return "fp32", "as asked"
    if not bf16_hardware(device):
        return "fp32", f"this {kind} has no bf16 arithmetic"
    record = (measured or {}).get("bf16", {})
    cost = record.get("cost_db")
    if cost is None or record.get("scheme") != BF16_SCHEME:
        what = "no bf16 cost measured for these weights" if cost is None else "bf16's cost was measured for an earlier bf16 scheme"
        return "fp32", f"{what} (training measures it; for a finished run: python tools/measure_bf16.py --run RUN)"
    if cost > MAX_COST_DB:
        return "fp32", f"bf16 costs this model {cost:.3f} dB on its validation frames, more than {MAX_COST_DB} dB"
    return "bf16", f"bf16 costs this model {cost:+.4f} dB on its validation frames"
