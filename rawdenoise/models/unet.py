"""The baseline U-Net: two k x k convolutions per level, max-pool down, transposed-conv up, skips.

The skips join the decoder concatenated (merge="concat", the classic U-Net) or added (merge="add", as
NAFNet does): adding halves what each decoder level's first convolution reads, a fifth of the whole
network's compute. In this normalisation-free network the sums train spikier, but at Adam's beta2 of
0.95 each spike passed within tens of steps, and added they made as good a model a fifth faster (README,
the quality recipe against BM3D): the demo and quality recipes add them; the others concatenate.

`identity_init` starts convolutions as the identity plus their random init (a Dirac delta added to the
weights), so a plain stack of some twenty convolutions starts by passing its features through, as a
residual network does, and trains faster with the same weights at inference: "same", each k x k
convolution that keeps its channel count; "all", every k x k convolution too (one that changes the count
passes its first channels through) and each transposed convolution up as nearest-neighbour upsampling of
its first channels. On held-out split 2 in the demo recipe's 300 s, "same" gained 0.08 / 0.12 dB over
"none" (seeds 0 / 1) and "all" 0.05 / 0.06 dB more (README, The CPU recipes). An initialisation only:
weights load into a model built any way.

Self-contained (imports torch only): this file ships as the contest's network.py. The network learns
the noise residual, out = x + f(x); its last layer starts at zero, so an untrained network returns
its input (with `clipped`, the clean value whose clipped mean its input is). Padding to a multiple
of 2**depth happens inside forward, so callers pass any even size.

Noise conditioning (`noise=` "none", "map" or "ksigma") lives here too, pointwise, so tiles stay exact:
forward(x, noise) takes each sample's (a, b), the variance a*x + b of its normalised values.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


KSIGMA_ANCHOR = 1e-3  # the shot-noise gain every level is mapped to by the k-sigma transform
KSIGMA_FLOOR = 0.03  # a is taken as at least this times the read noise std sqrt(b) (and 1e-6)
INV_SQRT_2PI = 0.3989422804014327  # the standard normal density at 0


def clipped_mean(x, a, b):
    """E[clip(y, 0, 1)] for y ~ N(x, a*x + b): what a sensor that clips at black (0) and white (1)
    records on average at clean value x, and its derivative in x (both elementwise, x in [0, 1])."""
    s = torch.sqrt((a * x + b).clamp(min=1e-12))
    ds = a / (2 * s)
    t0, t1 = x / s, (x - 1) / s
    pdf0, pdf1 = torch.exp(-0.5 * t0 * t0) * INV_SQRT_2PI, torch.exp(-0.5 * t1 * t1) * INV_SQRT_2PI
    cdf0, cdf1 = torch.special.ndtr(t0), torch.special.ndtr(t1)
    mean = x * cdf0 + s * pdf0 - (x - 1) * cdf1 - s * pdf1
    return mean, cdf0 - cdf1 + ds * (pdf0 - pdf1)


def unclip(u, a, b, steps: int = 4):
    """The clean value whose clipped mean (clipped_mean) is u, by Newton's method from u itself (four
    steps reach float64's rounding over the contest's levels and well past them). Past the means of 0
    and 1 the tangent continues the curve, so every output has a value and a gradient. Only the last
    step is differentiated: its gradient, 1 / the curve's slope at the root, is the inverse's own,
    without back-propagating through every step."""
    low, slope_low = clipped_mean(torch.zeros_like(a), a, b)
    high, slope_high = clipped_mean(torch.ones_like(a), a, b)
    inside = torch.minimum(torch.maximum(u, low), high)
    target = inside.detach()
    x = target.clamp(0, 1)
    for _ in range(steps - 1):
        mean, slope = clipped_mean(x, a, b)
        x = (x - (mean - target) / slope.clamp(min=1e-3)).clamp(0, 1)
    mean, slope = clipped_mean(x, a, b)
    x = (x - (mean - inside) / slope.clamp(min=1e-3)).clamp(0, 1)
    return x + (u - low).clamp(max=0) / slope_low + (u - high).clamp(min=0) / slope_high


class NoiseConditioning(nn.Module):
    """How the network is told each sample's noise profile (a, b):
    - "none": blind; (a, b) is ignored;
    - "map": the per-pixel noise std sqrt(a*x + b) joins the input as one channel per colour channel
      (Brooks et al. 2019, "Unprocessing Images for Learned Raw Denoising");
    - "ksigma": PMRID's variance-stabilising scaling (Wang et al. 2020): t = x*k/a + k*b/a**2 has variance
      k*E[t] at every level, so the network sees one noise family; its residual is scaled back by a/k.
    `clipped`: the sensor clipped each noisy value to [0, 1] (black and white), as the organisers' noise
    model does, which lifts the mean of dark pixels. The network then learns the residual to the
    clipped mean of the clean value, a zero-mean one, and `restore` maps its output back through that
    mean's inverse (clipped_mean, unclip), instead of learning the lift's correction itself.
    """

    MODES = ("none", "map", "ksigma")

    def __init__(self, mode: str, channels: int, clipped: bool = False):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"noise must be one of {', '.join(self.MODES)}, got {mode!r}")
        if clipped and mode == "none":
            raise ValueError("clipped needs the noise profile: give noise \"map\" or \"ksigma\" with it")
        self.mode = mode
        self.clipped = clipped
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

    def restore(self, out, noise):
        """The network's output (input plus scaled residual) -> the clean value it stands for."""
        if not self.clipped:
            return out
        noise = noise.to(device=out.device, dtype=out.dtype).reshape(-1, 2, 1, 1).clamp(min=0)
        return unclip(out, noise[:, :1], noise[:, 1:])


IDENTITY_INITS = ("none", "same", "all")


class DoubleConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, identity_init: str = "none"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2),
            nn.LeakyReLU(0.2, inplace=True),
        )
        if identity_init != "none":
            for conv in self.body:
                if isinstance(conv, nn.Conv2d) and (identity_init == "all" or conv.in_channels == conv.out_channels):
                    with torch.no_grad():  # a Dirac delta on top of the random init: y = x + W x at the start
                        conv.weight.add_(nn.init.dirac_(torch.empty_like(conv.weight)))

    def forward(self, x):
        return self.body(x)


class UNet(nn.Module):
    def __init__(self, in_channels: int = 4, widths=(32, 64, 128, 256, 512), kernel: int = 3, noise: str = "none",
                 clipped: bool = False, merge: str = "concat", identity_init: str = "none"):
        super().__init__()
        if merge not in ("concat", "add"):
            raise ValueError(f"merge must be \"concat\" or \"add\", got {merge!r}")
        if isinstance(identity_init, bool):  # runs trained when the option was a switch: true meant "same"
            identity_init = "same" if identity_init else "none"
        if identity_init not in IDENTITY_INITS:
            raise ValueError(f"identity_init must be one of {', '.join(map(repr, IDENTITY_INITS))}, got {identity_init!r}")
        widths = list(widths)
        self.merge_mode = merge
        self.depth = len(widths) - 1
        self.noise = noise
        self.conditioning = NoiseConditioning(noise, in_channels, clipped)
        self.down = nn.ModuleList()
        c = in_channels + self.conditioning.extra_channels
        for w in widths:
            self.down.append(DoubleConv(c, w, kernel, identity_init))
            c = w
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(self.depth))
        if identity_init == "all":
            for up in self.up:  # output channel j starts as input channel j, each pixel copied to its 2x2 cell
                with torch.no_grad():
                    channels = torch.arange(up.out_channels)
                    up.weight[channels, channels] += 1
        fan = 2 if merge == "concat" else 1
        self.merge = nn.ModuleList(DoubleConv(fan * widths[i], widths[i], kernel, identity_init) for i in range(self.depth))
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
            up = self.up[level](y)
            y = torch.cat([up, skips.pop()], dim=1) if self.merge_mode == "concat" else up + skips.pop()
            for layer in self.merge[level].body:
                y = layer(y)
        return self.conditioning.restore((padded + self.head(y) * scale)[..., :h, :w], noise)
