"""Whole validation frames through the same inference as predict: what training scores its steps by,
and what bf16 inference costs a model, for predict's `--precision auto`.

Training scores its EMA weights with `validate` on the patch store's validation frames every
`val_every` steps and, where the device has bf16, measures the exported weights with `measure_bf16`
when it ends; `tools/measure_bf16.py` measures a run finished elsewhere.
"""

from __future__ import annotations

import torch

from rawdenoise import precision
from rawdenoise.metrics import frame_metrics, summarise
from rawdenoise.models import is_noise_conditioned
from rawdenoise.noise_estimate import frame_noise_profile
from rawdenoise.raw import read
from rawdenoise.tiling import infer


def validate(model, frames, contest, precision: str = "fp32") -> tuple[float, float, float]:
    """Contest metrics of the model (None: the noisy input as is) on whole validation frames, through
    the same inference as predict, noise profile included (the tag, else the estimate)."""
    psnrs, ssims = [], []
    for noisy_path, gt_path in frames:
        noisy, gt = read(noisy_path, contest), read(gt_path, contest)
        if model is None:
            prediction = noisy.mosaic
        else:
            noise = frame_noise_profile(noisy) if is_noise_conditioned(model) else None
            prediction = noisy.to_mosaic(infer(model, noisy.packed(), noise=noise, precision=precision))
        p, s = frame_metrics(gt.mosaic, prediction, contest)
        psnrs.append(p)
        ssims.append(s)
    return summarise(psnrs, ssims, contest)


def measure_bf16(model, frames, contest, device) -> dict | None:
    """What bf16 inference costs the exported model on the validation frames, for predict's
    `--precision auto`; measured only where the device has bf16 arithmetic (elsewhere auto keeps float32
    anyway, and emulated bf16 would take many times the float32 time)."""
    if not frames or not precision.bf16_hardware(device):
        return None
    psnr_fp32 = validate(model, frames, contest, "fp32")[0]
    psnr_bf16 = validate(model, frames, contest, "bf16")[0]
    return {"psnr_fp32": psnr_fp32, "psnr_bf16": psnr_bf16, "cost_db": psnr_fp32 - psnr_bf16, "frames": len(frames),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "scheme": precision.BF16_SCHEME}  # fmt: skip
