from __future__ import annotations

import numpy as np
import pytest
import torch

from rawdenoise import streaming
from rawdenoise.contest import DEFAULT_CONTEST, load_contest
from rawdenoise.errors import InputError
from rawdenoise.models import build_model
from rawdenoise.recipe import SCHEMA
from rawdenoise.tiling import BORDER, infer, margin_for, receptive_radius, why_not_streamed
from submission.predict import TTA_VIEWS, _backward, _forward, denoise

ZTE = load_contest(DEFAULT_CONTEST)

MODELS = {
    "unet": {"widths": [8, 16, 32, 64]},
    "convnext_unet": {"widths": [8, 16, 32], "kernels": [7, 5, 3]},
    "nafnet": {"width": 8, "encoder_blocks": [1, 1], "middle_blocks": 1, "decoder_blocks": [1, 1]},
}
CASES = [  # (model, conditioning, the frame's (a, b)): the light read-noise-heavy level stretches k-sigma most
    ("unet", "none", None), ("convnext_unet", "none", None), ("nafnet", "none", None),
    ("unet", "map", (2e-3, 4e-5)), ("nafnet", "ksigma", (2e-3, 4e-5)), ("unet", "ksigma", (1e-4, 1e-3)),
]


def trained_like(name: str, noise: str = "none", **args) -> torch.nn.Module:
    """Default initialisation plus a non-zero last layer (and NAFNet's residual scales): a model whose
    output depends on its neighbourhood."""
    torch.manual_seed(0)
    model = build_model(name, **MODELS[name], noise=noise, **args)
    for param_name, param in model.named_parameters():
        if param_name.startswith(("head.", "ending.")) or param_name.endswith((".beta", ".gamma")):
            torch.nn.init.normal_(param, std=0.05)
    return model


@pytest.mark.parametrize("name,noise,level", CASES)
@pytest.mark.parametrize("tile", [16, 40, 64])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "margin-tiles"])
def test_tiles_equal_whole_frame_inference_on_odd_frames(name, noise, level, tile, stream):
    """Streamed strips of tile**2/149 rows (the frame's 141 columns and its mirrored border; from one row
    of the deepest level up) and square tiles with margins both give the whole frame's output."""
    model = trained_like(name, noise)
    x = np.random.default_rng(1).random((4, 107, 141)).astype(np.float32) * 0.6
    whole = infer(model, x, noise=level)
    tiled = infer(model, x, tile=tile, noise=level, stream=stream)
    assert tiled.shape == x.shape and np.abs(tiled - whole).max() <= 1e-5
    assert (getattr(model, "_receptive_radius", None) is None) == stream  # strips need no margin, so no probe
    # float32 convolutions round differently for different shapes; in float64 what remains is the
    # tiling itself (for margin tiles: influence beyond the measured receptive field, below the probe's tolerance)
    model.double()
    whole, tiled = infer(model, x, noise=level), infer(model, x, tile=tile, noise=level, stream=stream)
    scale = ZTE.white - ZTE.black_array.max()  # DN per unit of normalised signal
    assert np.abs(tiled - whole).max() <= 1e-6
    assert np.mean(np.rint(tiled * scale) == np.rint(whole * scale)) >= 0.9999


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "margin-tiles"])
def test_a_clipped_models_tiles_equal_the_whole_frame(name, stream):
    """The clipped mapping (the inverse of the clipped mean) is pointwise: a dark frame at the heavy
    test level, where it bends most, still tiles exactly (float64: the tiling alone, no kernel rounding)."""
    model = trained_like(name, "ksigma", clipped=True).double()
    x = np.random.default_rng(2).random((4, 75, 93)) * 0.1
    level = (2e-2, 2e-3)
    whole = infer(model, x, noise=level)
    assert np.abs(whole - infer(trained_like(name, "ksigma").double(), x, noise=level)).max() > 1e-3  # the same weights unclipped
    assert np.abs(infer(model, x, tile=32, noise=level, stream=stream) - whole).max() <= 1e-6


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "margin-tiles"])
def test_a_unet_that_adds_its_skips_streams_and_tiles_exactly(stream):
    model = trained_like("unet", "ksigma", clipped=True, merge="add").double()
    x = np.random.default_rng(3).random((4, 75, 93)) * 0.6
    level = (1e-3, 1e-5)
    whole = infer(model, x, noise=level)
    assert np.abs(infer(model, x, tile=32, noise=level, stream=stream) - whole).max() <= 1e-6
    assert (getattr(model, "_receptive_radius", None) is None) == stream  # streamed, not fallen back to margins


def test_a_frame_within_one_tile_is_run_whole_without_the_seconds_of_probing_its_margin():
    model = trained_like("unet", "ksigma")
    x = np.random.default_rng(3).random((4, 40, 45)).astype(np.float32) * 0.6  # 48 x 53 with its mirrored border
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
    """A contest frame (1736 x 2312 packed; 1744 x 2320 with its mirrored border of 4) in tiles of at most
    512: 4 x 5 tiles of 448 x 464 (the same number as 512 would need), so no window is larger than 448 + 2
    margins by 464 + 2 margins, and no sliver of a last tile pays a whole margin for a few columns; every
    pixel is still computed once."""
    assert BORDER == 4  # the sizes below are worked out for it
    model, margin = _Recorder(), 32
    x = np.random.default_rng(4).random((4, 1736, 2312)).astype(np.float32)
    assert np.array_equal(infer(model, x, tile=512, margin=margin, stream=False), x)
    assert len(model.windows) == 4 * 5
    assert max(model.windows) == (448 + 2 * margin, 464 + 2 * margin)
    assert min(h for h, _ in model.windows) >= 1744 - 3 * 448 + margin  # the last row is 400, not 208


def test_the_frame_edge_is_denoised_with_mirrored_context_not_the_convolutions_zeros():
    """What a user gets at the frame's edge is the model's output on the frame mirrored by BORDER pixels
    (reflected, so each channel keeps its sites), cropped back: the same, whole, streamed or tiled, and
    different from the plain forward's, which sees zeros past the edge."""
    model = trained_like("unet", "ksigma")
    x = np.random.default_rng(5).random((4, 40, 52)).astype(np.float32) * 0.6
    level = (1e-3, 1e-5)
    with torch.inference_mode():
        mirrored = torch.nn.functional.pad(torch.from_numpy(x)[None], (BORDER,) * 4, mode="reflect")
        expected = model(mirrored, torch.tensor([level]))[0, :, BORDER:-BORDER, BORDER:-BORDER].numpy()
        plain = model(torch.from_numpy(x)[None], torch.tensor([level]))[0].numpy()
    for kwargs in ({}, {"tile": 16}, {"tile": 16, "stream": False}):
        assert np.abs(infer(model, x, noise=level, **kwargs) - expected).max() <= 1e-5, kwargs
    edge = np.abs(infer(model, x, noise=level) - plain)
    assert edge[:, 0].max() > 1e-4 and edge[:, :, -1].max() > 1e-4  # the outermost rows and columns change
    assert edge[:, 20, 26].max() <= 1e-5  # the middle moves by the edge's far influence only
    for shape in ((4, 1, 5), (4, 3, 6)):  # one row: nothing to mirror; three: a border of two
        tiny = np.random.default_rng(6).random(shape).astype(np.float32)
        assert infer(model, tiny, noise=level).shape == tiny.shape


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


def test_two_view_augmentation_averages_the_frame_and_its_transpose_only():
    """--tta-views 2 keeps the CFA's phase: the transpose needs no padding, so the pair is the frame's own
    prediction and its transpose's, nothing mirrored; more or fewer views than offered are refused."""
    x = np.random.default_rng(3).random((4, 12, 16)).astype(np.float32)
    model = trained_like("unet")
    own, transposed = (_backward(infer(model, _forward(x, op), None), op) for op in (0, 4))
    pair = denoise(model, x, None, tta=True, views=2)
    assert np.allclose(pair, (own.astype(np.float64) + transposed) / 2, atol=1e-6)
    assert not np.allclose(pair, own, atol=1e-4) and not np.allclose(pair, denoise(model, x, None, tta=True), atol=1e-4)
    with pytest.raises(InputError, match="2 or 8 views"):
        denoise(model, x, None, tta=True, views=4)
    assert TTA_VIEWS[2] == (0, 4)  # the phase-keeping views: the frame and its transpose
    assert set(SCHEMA["predict"]["tta_views"].choices) == set(TTA_VIEWS)  # a recipe names only what predict does


def _rows_computed(model, x, **kwargs) -> int:
    """How many output rows the model's convolutions computed, over every call (on a blind model,
    which streaming never needs to run on a small frame to learn a dtype)."""
    rows = []
    hooks = [m.register_forward_hook(lambda m, i, out: rows.append(out.shape[-2])) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    try:
        infer(model, x, noise=(1e-3, 1e-5), **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(rows)


@pytest.mark.parametrize("name", MODELS)
def test_streamed_strips_compute_each_row_once_where_margin_tiles_compute_many_twice(name):
    """The point of streaming: the whole frame's work, where square tiles recompute their margins (a
    window's pooling rows past a strip's end, computed and dropped, aside)."""
    model = trained_like(name)
    x = np.random.default_rng(5).random((4, 256, 96)).astype(np.float32) * 0.6
    whole = _rows_computed(model, x)
    streamed = _rows_computed(model, x, tile=64)  # strips of 64 * 64 / 104 (border included) -> 32 rows (36 at alignment 4)
    tiled = _rows_computed(model, x, tile=64, stream=False)
    assert streamed == whole and tiled >= 1.5 * whole


class _GlobalMean(torch.nn.Module):
    """An operation streaming cannot know the rows of: every output pixel depends on every row."""

    depth = 0

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, noise=None):
        return x - self.weight * x.mean()


class _Bilinear(torch.nn.Module):
    """A local model made of an operation streaming does not know: bilinear up-sampling."""

    depth = 1

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, noise=None):
        y = torch.nn.functional.interpolate(self.conv(torch.nn.functional.avg_pool2d(x, 2)), scale_factor=2, mode="bilinear")
        return x + y


def test_a_model_that_cannot_stream_is_named_and_runs_in_margin_tiles():
    with pytest.raises(streaming.NotStreamable, match="mean"):
        streaming.check(_GlobalMean())
    model = _Bilinear()
    with pytest.raises(streaming.NotStreamable, match="interpolate"):
        streaming.check(model)
    x = np.random.default_rng(6).random((4, 90, 70)).astype(np.float32)
    assert np.abs(infer(model, x, tile=32) - infer(model, x)).max() <= 1e-5
    assert model._receptive_radius[1] > 0  # it took the margin path
    assert "interpolate" in why_not_streamed(model) and why_not_streamed(trained_like("nafnet")) is None


def test_a_copy_of_a_streamed_model_streams_its_own_weights():
    """The trace that streaming keeps calls the model's layers: a deep copy (an EMA, a float64 probe)
    with other weights must not run the original's."""
    import copy

    model = trained_like("unet", "ksigma")
    x = np.random.default_rng(7).random((4, 80, 64)).astype(np.float32) * 0.6
    infer(model, x, tile=32, noise=(1e-3, 1e-5))
    other = copy.deepcopy(model)
    torch.nn.init.normal_(other.head.weight, std=0.1)
    whole = infer(other, x, noise=(1e-3, 1e-5))
    assert np.abs(infer(other, x, tile=32, noise=(1e-3, 1e-5)) - whole).max() <= 1e-5
    assert np.abs(infer(model, x, noise=(1e-3, 1e-5)) - whole).max() > 1e-3


class _Custom(torch.nn.Module):
    """A contestant's own architecture, from operations beyond the registered models'."""

    depth = 1

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a = torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.down = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.valid = torch.nn.Conv2d(4, 4, 3)
        self.norm = torch.nn.LayerNorm(4)
        self.act = torch.nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x, noise=None):
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        if noise is not None:  # optional conditioning: a blind call takes the other branch
            x = x * (1 + noise[:, :1, None, None])
        y = self.a(x)
        if self.kind == "in-place over a tensor read again":
            y = self.a(self.act(y)) + y  # the whole frame adds the activated y: streaming refuses
        y = y + self.up(self.down(y))
        y = torch.nn.functional.pad(self.valid(y), (1, 1, 1, 1))
        y = self.norm(y.permute(dims=(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return (x + 0.1 * y)[..., :h, :w]


@pytest.mark.parametrize("kind", ["streams", "in-place over a tensor read again"])
@pytest.mark.parametrize("noise", [None, (1e-3, 1e-5)])
def test_other_architectures_stream_exactly_or_fall_back_to_margin_tiles(kind, noise):
    model = _Custom(kind).double()
    x = np.random.default_rng(8).random((4, 75, 41)) - 0.3
    assert np.abs(infer(model, x, tile=20, noise=noise) - infer(model, x, noise=noise)).max() <= 1e-12
    assert (why_not_streamed(model) is None) == (kind == "streams")
    assert model.act.inplace  # left as it was found


def test_a_streamed_model_runs_its_layers_as_they_are_now():
    """A buffer or layer replaced after a frame was streamed (a new gain, weights loaded with assign=True)
    is what the next frame runs."""
    model = _Custom("streams").double()
    x = np.random.default_rng(9).random((4, 60, 30))
    infer(model, x, tile=16)
    model.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2).double()
    assert np.abs(infer(model, x, tile=16) - infer(model, x)).max() <= 1e-12


def test_streaming_keeps_the_output_s_own_channels():
    model = _OneChannel()
    x = torch.rand(1, 4, 30, 12)
    with torch.inference_mode():
        assert torch.allclose(streaming.stream(model, x, None, 4), model(x), atol=1e-6)


class _OneChannel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x, noise=None):
        return self.conv(x)
