from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

from rawdenoise import InputError
from rawdenoise.models import REGISTRY, build_model, source_file
from rawdenoise.tiling import infer

SMALL = {
    "unet": {"widths": [8, 16, 32]},
    "convnext_unet": {"widths": [8, 16, 32], "kernels": [5, 3, 3]},
    "nafnet": {"width": 8, "encoder_blocks": [1, 2], "middle_blocks": 1, "decoder_blocks": [1, 1]},
}
NOISE = torch.tensor([[1e-3, 1e-5]])


def trained_like(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name], **kwargs)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("noise", ["none", "map", "ksigma"])
@pytest.mark.parametrize("shape", [(2, 4, 32, 48), (1, 4, 17, 29), (1, 4, 3, 5)])
def test_output_shape_and_identity_at_initialisation(name, noise, shape):
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name], noise=noise)
    x = torch.rand(shape)
    with torch.no_grad():
        y = model(x, NOISE.expand(shape[0], 2))
    assert y.shape == x.shape
    assert torch.equal(y, x), "an untrained model must return its input (zero-initialised head)"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_conditioned_model_uses_each_samples_noise_and_a_blind_one_ignores_it(name):
    x = torch.rand(1, 4, 24, 32).expand(2, 4, 24, 32)
    levels = torch.tensor([[1e-4, 1e-6], [1e-2, 1e-3]])
    with torch.no_grad():
        for mode in ("map", "ksigma"):
            model = trained_like(name, noise=mode)
            y = model(x, levels)
            assert not torch.allclose(y[0], y[1], atol=1e-4), f"{mode}: two levels gave one output"
            with pytest.raises(ValueError, match="noise-conditioned"):
                model(x)
        blind = trained_like(name)
        y = blind(x, levels)
        assert torch.equal(y[0], y[1]) and torch.equal(y, blind(x))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_ksigma_stays_bounded_where_shot_noise_vanishes(name):
    """a -> 0 would scale the input by k/a and offset it by k*b/a**2: the floor keeps it a sensor's level."""
    model = trained_like(name, noise="ksigma")
    x = torch.rand(1, 4, 24, 32) * 0.5
    with torch.no_grad():
        for level in ([0.0, 1e-3], [0.0, 1e-6], [0.0, 0.0]):
            residual = model(x, torch.tensor([level])) - x
            assert torch.isfinite(residual).all() and residual.abs().max() < 0.5, level


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_ksigma_maps_every_level_onto_one(name):
    """The k-sigma transform t = x*k/a + k*b/a**2 is what the network sees: two frames at two levels
    with the same t get the same network output, scaled back by each level's a/k."""
    model = trained_like(name, noise="ksigma").double()
    k = 1e-3  # the model's anchor
    (a1, b1), (a2, b2) = (2e-4, 3e-6), (4e-3, 1e-4)
    x1 = torch.rand(1, 4, 24, 32, dtype=torch.float64) * 0.5
    t = x1 * k / a1 + k * b1 / a1**2
    x2 = (t - k * b2 / a2**2) * a2 / k
    with torch.no_grad():
        r1 = model(x1, torch.tensor([[a1, b1]], dtype=torch.float64)) - x1
        r2 = model(x2, torch.tensor([[a2, b2]], dtype=torch.float64)) - x2
    assert r1.abs().max() > 1e-6
    assert torch.allclose(r2, r1 * a2 / a1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_padding_and_cropping_keep_odd_sizes_consistent(name):
    """Once trained (non-zero head), an odd-sized input still maps pixel to pixel: the crop of the
    model's output on a larger frame agrees away from the border where padding differs."""
    model = trained_like(name)
    x = torch.rand(1, 4, 37, 45)
    with torch.no_grad():
        y = model(x)
        z = model(x[..., :33, :41])  # smaller odd frame starting at the same origin
    assert y.shape == x.shape and z.shape == (1, 4, 33, 41)
    assert not torch.equal(y, x)
    # pixels far from the cut see identical inputs, and the pooling grid starts at the same origin
    assert torch.allclose(y[..., :8, :8], z[..., :8, :8], atol=1e-5)


def test_default_sizes_match_the_seeds_write_up():
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(build_model("convnext_unet")) == 10_368_483  # 41.5 MB in fp32
    assert params(build_model("convnext_unet", kernels=[23, 23, 23, 3])) * 4 == pytest.approx(46.0e6, rel=1e-3)
    assert params(build_model("unet")) == 7_760_484


def test_a_unet_can_add_its_skips_instead_of_concatenating_them():
    """merge="add": each decoder level sums the up-sampled path and the skip, so its first convolution
    reads w channels instead of 2w (a quarter of the compute saved); still the identity until trained."""
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    widths = [8, 16, 32]
    concat, added = build_model("unet", widths=widths, noise="ksigma"), build_model("unet", widths=widths, noise="ksigma", merge="add")
    assert params(concat) - params(added) == sum(9 * w * w for w in widths[:-1])  # one 3x3 kernel of w inputs fewer per output
    x = torch.rand(2, 4, 17, 29)
    with torch.no_grad():
        assert torch.equal(added(x, NOISE.expand(2, 2)), x)
    with pytest.raises(InputError, match="merge"):
        build_model("unet", widths=widths, merge="sum")


@pytest.mark.parametrize("mode", ["same", "all"])
def test_identity_init_adds_the_identity_to_the_convolutions_it_names_and_nothing_else(mode):
    """identity_init changes where training starts, not the model: the same parameters (so a model.pth
    loads either way), each convolution it names starting as the identity plus the very random weights
    it had without ("same": those that keep their width; "all": every k x k one, and each transposed
    convolution up as nearest-neighbour upsampling), every other layer untouched, and the untrained
    network still its input."""
    widths = [8, 16, 32]
    torch.manual_seed(0)
    plain = build_model("unet", widths=widths, noise="ksigma", merge="add")
    torch.manual_seed(0)
    started = build_model("unet", widths=widths, noise="ksigma", merge="add", identity_init=mode)
    plain_state, started_state = plain.state_dict(), started.state_dict()
    assert plain_state.keys() == started_state.keys()
    shifted = 0
    for name, module in started.named_modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            continue
        # (w + 1) - w: 1 within float32's rounding
        difference = started_state[f"{name}.weight"] - plain_state[f"{name}.weight"]
        if isinstance(module, torch.nn.ConvTranspose2d):
            expected = torch.zeros_like(difference)
            if mode == "all":
                expected[range(module.out_channels), range(module.out_channels)] = 1  # (in, out, 2, 2)
        elif module.kernel_size == (3, 3) and (mode == "all" or module.in_channels == module.out_channels):
            expected = torch.nn.init.dirac_(torch.empty_like(difference))
        else:
            expected = torch.zeros_like(difference)
        torch.testing.assert_close(difference, expected, rtol=0, atol=1e-6, msg=name)
        shifted += bool(expected.any())
    levels = len(widths)
    # "same": each level's second convolution and both of each decoder level's; "all": every 3x3 and each up
    assert shifted == {"same": levels + 2 * (levels - 1), "all": 2 * levels + 3 * (levels - 1)}[mode]
    x = torch.rand(2, 4, 17, 29)
    with torch.no_grad():
        assert torch.equal(started(x, NOISE.expand(2, 2)), x)
    with pytest.raises(InputError, match="identity_init"):
        build_model("unet", widths=widths, identity_init="sum")


@pytest.mark.parametrize("switch, mode", [(True, "same"), (False, "none")])
def test_identity_init_from_a_run_trained_when_it_was_a_switch_builds_as_it_did(switch, mode):
    """Run folders from when identity_init was true/false rebuild their model from config.toml: they
    must build (predict, pack and resume) with the init they trained from."""
    built = []
    for value in (switch, mode):
        torch.manual_seed(0)
        built.append(build_model("unet", widths=[8, 16, 32], noise="ksigma", merge="add", identity_init=value).state_dict())
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[1])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_model_files_are_self_contained(name):
    tree = ast.parse(source_file(name).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"torch"}, imported


def test_the_self_contained_copies_of_the_noise_conditioning_agree():
    """Each model file carries its own copy of the conditioning (network.py ships alone); a fix made to
    one copy and not the others would train and predict differently by architecture."""
    shared = ("KSIGMA_ANCHOR", "KSIGMA_FLOOR", "INV_SQRT_2PI", "clipped_mean", "unclip", "NoiseConditioning")

    def definitions(name):
        tree = ast.parse(source_file(name).read_text())
        found = {}
        for node in tree.body:
            names = [node.name] if hasattr(node, "name") else [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            found.update({n: ast.dump(node) for n in names if n in shared})
        return found

    copies = {name: definitions(name) for name in sorted(REGISTRY)}
    first = copies[sorted(REGISTRY)[0]]
    assert set(first) == set(shared)
    for name, found in copies.items():
        assert found == first, f"{name}: {[n for n in shared if found.get(n) != first.get(n)]} differ"


def test_levels_live_in_module_lists_and_bad_names_are_clear():
    model = build_model("convnext_unet", widths=[8, 16], kernels=[3, 3])
    assert (model.depth, len(model.encoder), len(model.decoder)) == (1, 2, 1)
    assert "encoder.1.dwconv.weight" in model.state_dict()  # the checkpoint's names, level by level
    with pytest.raises(InputError, match="unknown model 'resnet'"):
        build_model("resnet")
    with pytest.raises(InputError, match="cannot be built from arguments .*unexpected keyword argument 'width'"):
        build_model("unet", width=3)
    with pytest.raises(InputError, match=r"cannot be built from arguments \{'widths': \[0, 8\]\}"):
        build_model("unet", widths=[0, 8])  # builds, but cannot run a frame: refused before any training
    with pytest.raises(InputError, match="cannot be built from arguments .*unexpected keyword argument 'name'"):
        build_model("unet", name=1)  # a --model-args key that is build_model's own parameter's name


def test_infer_runs_whole_frames_and_restores_training_mode():
    model = build_model("unet", widths=[8, 16])
    model.train()
    x = torch.rand(4, 20, 26)
    y = infer(model, x.numpy())
    assert y.shape == (4, 20, 26) and y.dtype.name == "float32"
    assert model.training


def test_weights_that_do_not_fit_say_why_in_one_line(tmp_path):
    from rawdenoise.run_folder import load_state_into

    small = tmp_path / "small.pth"
    torch.save(build_model("unet", widths=[8, 16]).state_dict(), small)
    with pytest.raises(ValueError, match=r"not this model's weights: \d+ of its \d+ tensors missing") as caught:
        load_state_into(build_model("unet", widths=[8, 16, 32]), small, "cpu")
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"down.0.body.0.weight is \(8, 4, 3, 3\), the model's \(4, 4, 3, 3\)"):
        load_state_into(build_model("unet", widths=[4, 16]), small, "cpu")
    model = build_model("unet", widths=[8, 16])
    load_state_into(model, small, "cpu")  # the right weights load exactly
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), torch.load(small).values()))


LEVELS = [(1e-4, 1e-6), (1e-3, 3e-5), (1e-2, 1e-3), (2e-2, 2e-3)]  # the contest's range and its heavier test level


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_clipped_model_inverts_the_clipped_mean(name):
    """Told the sensor clips at black and white, an untrained model (zero residual) returns the clean
    value whose clipped mean its input is: the clipped mean computed here independently
    (noise_estimate.clipped_moments, numpy) goes back to the clean values at every level, dark and bright."""
    from rawdenoise.noise_estimate import clipped_moments

    torch.manual_seed(0)
    model = build_model(name, **SMALL[name], noise="ksigma", clipped=True).double()
    clean = torch.rand(len(LEVELS), 4, 16, 24, dtype=torch.float64) ** 3  # many dark pixels, where clipping lifts the mean
    clean[:, :, 0, :] = torch.linspace(0, 1, 24, dtype=torch.float64)  # black and white themselves
    means = torch.stack([torch.from_numpy(clipped_moments(c.numpy(), a, b)[0]) for c, (a, b) in zip(clean, LEVELS)])
    with torch.no_grad():
        restored = model(means, torch.tensor(LEVELS, dtype=torch.float64))
    assert (means - clean).abs().max() > 1e-2  # the heavy levels' lift is real
    assert torch.allclose(restored, clean, atol=1e-9, rtol=0)


def test_a_clipped_model_undoes_the_black_lift_of_the_contests_own_noise():
    """Noised as training and the demo set noise (rawdenoise.noise: the contest's model, clipped and
    rounded to DN), a flat dark patch averages well above its clean level; the mapping a clipped model
    applies to a denoised (averaged) value brings it back, and every output keeps a gradient."""
    from rawdenoise.noise import NoiseLevel, quantise_normalised

    a, b, level = 2e-2, 2e-3, 0.02
    clean = np.full((4, 256, 256), level)
    noisy = quantise_normalised(NoiseLevel(a, b).sample(clean, np.random.default_rng(0)), np.full(4, 1024.0), 16383.0)
    assert noisy.mean() - level > 0.008  # the lift (0.011 here): the negative values clipped to black
    model = build_model("unet", **SMALL["unet"], noise="ksigma", clipped=True).double()
    profile = torch.tensor([[a, b]], dtype=torch.float64)
    averaged = torch.full((1, 4, 8, 8), float(noisy.mean()), dtype=torch.float64)
    with torch.no_grad():
        restored = model(averaged, profile)
    assert abs(float(restored.mean()) - level) < 1e-3
    x = torch.from_numpy(noisy[None].astype(np.float64)).requires_grad_()
    model(x, profile).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad > 0).all()


def test_a_clipped_models_gradient_is_the_inverses_own():
    """Training back-propagates through the mapping: its derivative must be 1 / the clipped mean's
    slope, here against finite differences of the independent numpy clipped mean."""
    from rawdenoise.noise_estimate import clipped_moments

    a, b = 2e-2, 2e-3
    model = build_model("unet", **SMALL["unet"], noise="ksigma", clipped=True).double()
    clean = np.linspace(0.0, 1.0, 4 * 8 * 8) ** 2
    means = torch.from_numpy(clipped_moments(clean, a, b)[0].reshape(1, 4, 8, 8)).requires_grad_()
    model(means, torch.tensor([[a, b]], dtype=torch.float64)).sum().backward()
    h = 1e-6
    slope = (clipped_moments(clean + h, a, b)[0] - clipped_moments(clean - h, a, b)[0]) / (2 * h)
    inner = (clean > 1e-3) & (clean < 1 - 1e-3)  # the central difference needs room on both sides
    assert np.allclose(means.grad.numpy().ravel()[inner], 1 / slope[inner], rtol=1e-5)


def test_clipped_needs_the_noise_profile():
    with pytest.raises(InputError, match="clipped needs the noise profile"):
        build_model("unet", **SMALL["unet"], clipped=True)
