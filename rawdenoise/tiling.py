"""The one way any stage runs a model on a frame.

`infer(model, packed)` takes a normalised packed frame (4, H/2, W/2) as numpy or torch and returns the
model's output as float32 numpy, under inference mode, on the model's device. Tiled inference in
bounded memory (tiles aligned to 2**depth with a receptive-field margin, equal to whole-frame
inference) is issue 5's work and will arrive here as `infer(..., tile=N)`; training validation already
goes through this function so it will use tiles without changing.
"""

from __future__ import annotations

import numpy as np
import torch


def infer(model: torch.nn.Module, packed) -> np.ndarray:
    """Whole-frame inference: (4, h, w) in, (4, h, w) float32 numpy out."""
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(packed, dtype=np.float32) if not torch.is_tensor(packed) else packed)
    if x.ndim != 3:
        raise ValueError(f"packed frame must be (C, h, w), got shape {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            y = model(x.to(device=device, dtype=torch.float32)[None])[0]
    finally:
        model.train(was_training)
    return y.float().cpu().numpy()
