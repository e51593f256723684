from __future__ import annotations

import numpy as np
import pytest
import torch

from rawdenoise.models import build_model
from rawdenoise.tiling import infer, margin_for, receptive_radius
from submission.predict import _backward, _forward, denoise

MODELS = {
    "unet": {"widths": [8, 16, 32, 64]},
    "convnext_unet": {"widths": [8, 16, 32], "kernels": [7, 5, 3]},
    "nafnet": {"width": 8, "encoder_blocks": [1, 1], "middle_blocks": 1, "decoder_blocks": [1, 1]},
}
CASES = [  # (model, conditioning, the frame's (a, b)): the light read-noise-heavy level stretches k-sigma most
    ("unet", "none", None), ("convnext_unet", "none", None), ("nafnet", "none", None),
    ("unet", "map", (2e-3, 4e-5)), ("nafnet", "ksigma", (2e-3, 4e-5)), ("unet", "ksigma", (1e-4, 1e-3)),
]


def trained_like(name: str, noise: str = "none") -> torch.nn.Module:
    """Default initialisation plus a non-zero last layer (and NAFNet's residual scales): a model whose
    output depends on its neighbourhood."""
    torch.manual_seed(0)
    model = build_model(name, **MODELS[name], noise=noise)
    for param_name, param in model.named_parameters():
        if param_name.startswith(("head.", "ending.")) or param_name.endswith((".beta", ".gamma")):
            torch.nn.init.normal_(param, std=0.05)
    return model


@pytest.mark.parametrize("name,noise,level", CASES)
@pytest.mark.parametrize("tile", [16, 40, 64])
def test_tiles_equal_whole_frame_inference_on_odd_frames(name, noise, level, tile):
    model = trained_like(name, noise)
    x = np.random.default_rng(1).random((4, 107, 141)).astype(np.float32) * 0.6
    whole = infer(model, x, noise=level)
    tiled = infer(model, x, tile=tile, noise=level)
    assert tiled.shape == x.shape and np.abs(tiled - whole).max() <= 1e-5
    # float32 convolutions round differently for different shapes; in float64 what remains is the
    # tiling itself: influence beyond the measured receptive field, below the probe's tolerance
    model.double()
    whole, tiled = infer(model, x, noise=level), infer(model, x, tile=tile, noise=level)
    scale = 15359  # zte2022's white - black
    assert np.abs(tiled - whole).max() <= 1e-6
    assert np.mean(np.rint(tiled * scale) == np.rint(whole * scale)) >= 0.9999


def test_a_frame_within_one_tile_is_run_whole_without_the_seconds_of_probing_its_margin():
    model = trained_like("unet", "ksigma")
    x = np.random.default_rng(3).random((4, 40, 57)).astype(np.float32) * 0.6
    assert np.array_equal(infer(model, x, tile=64, noise=(1e-3, 1e-5)), infer(model, x, noise=(1e-3, 1e-5)))
    assert getattr(model, "_receptive_radius", None) is None  # the probe never ran


class _Recorder(torch.nn.Module):
    """The identity with a U-Net's alignment that records the windows it is given."""

    depth = 4

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.windows = []

    def forward(self, x, noise=None):
        self.windows.append(tuple(x.shape[-2:]))
        return x


def test_tiles_share_the_frame_evenly_so_the_largest_window_is_small():
    """A contest frame (1736 x 2312 packed) in tiles of at most 512: 4 x 5 tiles of 448 x 464 (the same
    number as 512 would need), so no window is larger than 448 + 2 margins by 464 + 2 margins, and no
    sliver of a last tile pays a whole margin for a few columns; every pixel is still computed once."""
    model, margin = _Recorder(), 32
    x = np.random.default_rng(4).random((4, 1736, 2312)).astype(np.float32)
    assert np.array_equal(infer(model, x, tile=512, margin=margin), x)
    assert len(model.windows) == 4 * 5
    assert max(model.windows) == (448 + 2 * margin, 464 + 2 * margin)
    assert min(h for h, _ in model.windows) >= 1736 - 3 * 448 + margin  # the last row is 392, not 200


def test_the_margin_is_measured_from_the_model():
    identity = build_model("unet", **MODELS["unet"])  # zero head: the output is the input itself
    assert receptive_radius(identity) == 0
    model = trained_like("unet")
    assert receptive_radius(model) > 0
    assert margin_for(model) % 2**model.depth == 0 and margin_for(model) >= receptive_radius(model)


def test_test_time_augmentation_is_invertible_and_exact_for_the_identity():
    x = np.random.default_rng(2).random((4, 11, 14)).astype(np.float32)
    for op in range(8):
        assert np.array_equal(_backward(_forward(x, op), op), x), op
    identity = build_model("unet", **MODELS["unet"])
    assert np.allclose(denoise(identity, x, None, tta=True), x, atol=1e-7)
