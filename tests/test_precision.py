from __future__ import annotations

import numpy as np
import pytest
import torch

from rawdenoise import InputError, precision
from rawdenoise.contest import load_contest
from rawdenoise.demo import make_demo_dataset
from rawdenoise.measured import RECORD_NAME, read_measured, write_measured
from rawdenoise.models import build_model
from rawdenoise.tiling import infer
from tests.test_tiling import CASES, MODELS, trained_like
from rawdenoise.validation import measure_bf16, validate

ZTE = load_contest("zte2022")
SCALE = ZTE.white - ZTE.black[0][0]  # DN per unit of normalised value


@pytest.mark.parametrize("name,noise,level", CASES)
def test_bf16_keeps_the_input_and_the_residual_add_in_float32(name, noise, level):
    """An untrained model returns its input: in bf16 too, to the last bit, since only the network's
    body runs in bf16 (a bf16 residual add would round a 14-bit signal to 8 bits)."""
    model = build_model(name, **MODELS[name], noise=noise)
    x = np.random.default_rng(2).random((4, 37, 53)).astype(np.float32) * 0.9
    out = infer(model, x, noise=level, precision="bf16")
    assert out.dtype == np.float32 and np.array_equal(out, x)
    rounded = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.abs(rounded - x).max() * SCALE > 1  # what a bf16 output would have cost: more than a DN


@pytest.mark.parametrize("name,noise,level", CASES)
def test_bf16_output_is_the_float32_output_to_within_bf16_rounding_of_the_residual(name, noise, level):
    model = trained_like(name, noise)
    x = np.random.default_rng(3).random((4, 48, 64)).astype(np.float32) * 0.6
    fp32 = infer(model, x, noise=level)
    bf16 = infer(model, x, noise=level, precision="bf16")
    residual = np.abs(fp32 - x).max()
    assert residual > 1e-3  # the model does change its input
    assert 0 < np.abs(bf16 - fp32).max() <= 0.1 * residual  # bf16 ran (it differs), and only in the residual


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_runs_the_body_in_bf16_and_the_layers_that_read_the_signal_and_write_the_residual_in_float32(name):
    model = trained_like(name, "ksigma")
    first, last = precision.signal_layers(model)  # found by a float32 pass of its own, before the hooks below
    outputs = {}
    layers = [m for m in model.modules() if isinstance(m, precision.WEIGHT_LAYERS)]

    def record(module, args, out) -> None:  # a hook returning anything would replace the layer's output
        outputs.setdefault(module, out.dtype)

    hooks = [m.register_forward_hook(record) for m in layers]
    infer(model, np.full((4, 32, 32), 0.3, dtype=np.float32), noise=(1e-3, 1e-5), precision="bf16")
    for hook in hooks:
        hook.remove()
    assert outputs[first] == outputs[last] == torch.float32
    body = [dtype for module, dtype in outputs.items() if module not in (first, last)]
    assert body and all(dtype == torch.bfloat16 for dtype in body)
    assert all("forward" not in layer.__dict__ for layer in layers)  # the model is left as it was
    # the first layer is the one that reads the (conditioned) input, the last the one that writes the residual
    assert first is {"unet": lambda: model.down[0].body[0], "nafnet": lambda: model.intro,
                     "convnext_unet": lambda: model.encoder[0].dwconv}[name]()  # fmt: skip
    assert last is (model.ending if name == "nafnet" else model.head)


def test_auto_takes_bf16_only_with_the_hardware_and_a_measured_cost_for_these_weights(tmp_path, monkeypatch):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"weights one")

    def measured_cost(cost):
        write_measured(tmp_path, weights, {"bf16": {"psnr_fp32": 40.0, "psnr_bf16": 40.0 - cost, "cost_db": cost,
                                                    "scheme": precision.BF16_SCHEME}})  # fmt: skip
        return read_measured(tmp_path, weights)

    monkeypatch.setattr(precision, "bf16_hardware", lambda device: False)
    assert precision.resolve("auto", "cpu", measured_cost(0.002))[0] == "fp32"  # no bf16 units: float32
    assert precision.resolve("bf16", "cpu", {})[0] == "bf16"  # unless asked for
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: True)
    assert precision.resolve("auto", "cpu", measured_cost(0.002)) == ("bf16", "bf16 costs this model +0.0020 dB on its validation frames")
    assert precision.resolve("auto", "cpu", {})[0] == "fp32"  # nothing measured: float32
    assert precision.resolve("fp32", "cpu", measured_cost(0.002))[0] == "fp32"
    chosen, why = precision.resolve("auto", "cpu", measured_cost(0.03))
    assert chosen == "fp32" and "0.030 dB" in why
    earlier = measured_cost(0.002)
    earlier["bf16"]["scheme"] = "bf16 everywhere"  # measured before the signal layers were kept in float32
    assert precision.resolve("auto", "cpu", earlier)[0] == "fp32"
    weights.write_bytes(b"weights two")  # retrained: the record describes weights that are gone
    assert read_measured(tmp_path, weights) == {}
    (tmp_path / RECORD_NAME).write_text("{not json")
    with pytest.raises(InputError, match=RECORD_NAME):
        read_measured(tmp_path, weights)
    with pytest.raises(InputError, match="fp16"):
        precision.resolve("fp16", "cpu", {})


def test_training_measures_the_bf16_cost_on_its_validation_frames_only_where_bf16_is_native(tmp_path, monkeypatch):
    demo = make_demo_dataset(tmp_path / "demo", ZTE, size=(64, 96), progress=False)
    frames = [(demo / "noisy" / f"{i}_noise.dng", demo / "ground truth" / f"{i}_gt.dng") for i in (0, 1)]
    model = trained_like("unet", "ksigma")
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: False)
    assert measure_bf16(model, frames, ZTE, torch.device("cpu")) is None
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: True)
    record = measure_bf16(model, frames, ZTE, torch.device("cpu"))
    assert record["psnr_fp32"] == pytest.approx(validate(model, frames, ZTE)[0], abs=1e-9)
    assert record["psnr_bf16"] == pytest.approx(validate(model, frames, ZTE, "bf16")[0], abs=1e-9)
    assert record["cost_db"] == pytest.approx(record["psnr_fp32"] - record["psnr_bf16"], abs=1e-12)
    assert record["psnr_fp32"] != record["psnr_bf16"] and record["frames"] == 2
