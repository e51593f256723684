"""The improved U-Net: ConvNeXt-style blocks (depthwise conv, LayerNorm, an inverted MLP with GELU)
whose branch is scaled by a learned scalar that starts at 0, plus a 1x1 residual projection.

Self-contained (imports torch only): this file ships as the contest's network.py. The network learns
the noise residual, out = x + f(x), with a zero-initialised head, so an untrained network returns its
input. No batch statistics and no global pooling: an output pixel depends on a bounded neighbourhood,
which is what lets tiled inference equal whole-frame inference.

Noise conditioning (`noise=` "none", "map" or "ksigma") lives here too, pointwise, so tiles stay exact:
forward(x, noise) takes each sample's (a, b), the variance a*x + b of its normalised values.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


KSIGMA_ANCHOR = 1e-3  # the shot-noise gain every level is mapped to by the k-sigma transform
KSIGMA_FLOOR = 0.03  # a is taken as at least this times the read noise std sqrt(b) (and 1e-6)


class NoiseConditioning(nn.Module):
    """How the network is told each sample's noise profile (a, b):
    - "none": blind; (a, b) is ignored;
    - "map": the per-pixel noise std sqrt(a*x + b) joins the input as one channel per colour channel
      (Brooks et al. 2019, "Unprocessing Images for Learned Raw Denoising");
    - "ksigma": PMRID's variance-stabilising scaling (Wang et al. 2020): t = x*k/a + k*b/a**2 has variance
      k*E[t] at every level, so the network sees one noise family; its residual is scaled back by a/k.
    """

    MODES = ("none", "map", "ksigma")

    def __init__(self, mode: str, channels: int):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"noise must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode
        self.extra_channels = channels if mode == "map" else 0

    def forward(self, x, noise):
        """-> (the network's input, the factor that maps its residual back to x's scale)."""
        if self.mode == "none":
            return x, 1.0
        if noise is None:
            raise ValueError(f"this model is noise-conditioned ({self.mode}): call it as model(x, noise) with each sample's (a, b)")
        noise = noise.to(device=x.device, dtype=x.dtype).reshape(-1, 2, 1, 1)
        a, b = noise[:, :1].clamp(min=0), noise[:, 1:].clamp(min=0)
        if self.mode == "map":
            return torch.cat([x, torch.sqrt(a * x.clamp(min=0) + b + 1e-12)], dim=1), 1.0
        # Where shot noise vanishes (a -> 0) the transform's scale k/a and offset k*b/a**2 explode; a floor
        # of KSIGMA_FLOOR * sqrt(b) keeps the offset below k / KSIGMA_FLOOR**2 (about 1) and
        # leaves every level of a real sensor's range alone.
        a = torch.maximum(a, torch.clamp(KSIGMA_FLOOR * torch.sqrt(b), min=1e-6))
        return x * (KSIGMA_ANCHOR / a) + KSIGMA_ANCHOR * b / (a * a), a / KSIGMA_ANCHOR


class Block(nn.Module):
    """depthwise k x k -> LayerNorm -> Linear(d, 2d) -> GELU -> Linear(2d, d_out), times a learned
    scale (0 at start), added to a 1x1 projection of the input."""

    def __init__(self, d_in: int, d_out: int, kernel: int):
        super().__init__()
        self.dwconv = nn.Conv2d(d_in, d_in, kernel, padding=kernel // 2, groups=d_in)
        self.norm = nn.LayerNorm(d_in)
        self.expand = nn.Linear(d_in, 2 * d_in)
        self.reduce = nn.Linear(2 * d_in, d_out)
        self.scale = nn.Parameter(torch.zeros(1))
        self.project = nn.Conv2d(d_in, d_out, 1)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels last for LayerNorm and Linear
        y = self.reduce(F.gelu(self.expand(self.norm(y)))).permute(0, 3, 1, 2)
        return self.project(x) + self.scale * y


class ConvNeXtUNet(nn.Module):
    def __init__(self, in_channels: int = 4, widths=(128, 256, 512, 1024), kernels=(3, 3, 3, 3), noise: str = "none"):
        super().__init__()
        widths, kernels = list(widths), list(kernels)
        if len(kernels) != len(widths):
            raise ValueError(f"one kernel size per level: {len(widths)} widths, {len(kernels)} kernels")
        self.depth = len(widths) - 1
        self.noise = noise
        self.conditioning = NoiseConditioning(noise, in_channels)
        self.encoder = nn.ModuleList()
        c = in_channels + self.conditioning.extra_channels
        for w, k in zip(widths, kernels):
            self.encoder.append(Block(c, w, k))
            c = w
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(self.depth))
        self.decoder = nn.ModuleList(Block(2 * widths[i], widths[i], kernels[i]) for i in range(self.depth))
        self.head_norm = nn.LayerNorm(widths[0])
        self.head = nn.Linear(widths[0], in_channels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x, noise=None):
        h, w = x.shape[-2:]
        m = 2**self.depth
        padded = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        y, scale = self.conditioning(padded, noise)
        skips = []
        for level, block in enumerate(self.encoder):
            y = block(y)
            if level < self.depth:
                skips.append(y)
                y = F.max_pool2d(y, 2)
        for level in reversed(range(self.depth)):
            y = self.decoder[level](torch.cat([self.up[level](y), skips.pop()], dim=1))  # each skip freed once merged
        residual = self.head(self.head_norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return (padded + residual * scale)[..., :h, :w]
