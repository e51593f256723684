"""NAFNet-style U-Net (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022): blocks with
no non-linear activation, a per-pixel LayerNorm, a 1x1 expansion, a depthwise 3x3 convolution, a
SimpleGate (one half of the channels times the other), a simplified channel attention and a 1x1
projection, each of the block's two branches added back through a learned per-channel scale that
starts at 0. Down-sampling is a stride-2 2x2 convolution, up-sampling a 1x1 convolution and a pixel
shuffle, and skips are added, not concatenated.

One change from the paper keeps tiled inference exact: its channel attention pools the whole image,
which would make every output pixel depend on the whole frame. Here it pools a local window
(`attention_window` pixels at each level's resolution), as NAFNet's own test-time local converter
does, so an output pixel depends on a bounded neighbourhood.

Self-contained (imports torch only): this file ships as the contest's network.py. The network learns
the noise residual, out = x + f(x), with a zero-initialised last layer, so an untrained network
returns its input (with `clipped`, the clean value whose clipped mean its input is). Padding to a
multiple of 2**depth happens inside forward.

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


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel (no statistics across pixels or samples)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        variance = centred.pow(2).mean(1, keepdim=True)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias


def simple_gate(x):
    first, second = x.chunk(2, dim=1)
    return first * second


class LocalChannelAttention(nn.Module):
    """NAFNet's simplified channel attention, x * W(mean of x), with the mean over a local window."""

    def __init__(self, channels: int, window: int):
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"attention_window must be an odd number of pixels, got {window}")
        self.window = window
        self.weight = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        if self.window == 1:
            pooled = x
        else:
            pooled = F.avg_pool2d(x, self.window, stride=1, padding=self.window // 2, count_include_pad=False)
        return x * self.weight(pooled)


class NAFBlock(nn.Module):
    def __init__(self, channels: int, window: int, expand: int = 2):
        super().__init__()
        hidden = channels * expand
        self.norm1 = LayerNorm2d(channels)
        self.expand1 = nn.Conv2d(channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.attention = LocalChannelAttention(hidden // 2, window)
        self.project1 = nn.Conv2d(hidden // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.expand2 = nn.Conv2d(channels, hidden, 1)
        self.project2 = nn.Conv2d(hidden // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        y = self.project1(self.attention(simple_gate(self.depthwise(self.expand1(self.norm1(x))))))
        x = x + y * self.beta
        y = self.project2(simple_gate(self.expand2(self.norm2(x))))
        return x + y * self.gamma


class NAFNet(nn.Module):
    def __init__(self, in_channels: int = 4, width: int = 16, encoder_blocks=(1, 1, 1, 1), middle_blocks: int = 1,
                 decoder_blocks=(1, 1, 1, 1), attention_window: int = 7, noise: str = "none",
                 clipped: bool = False):  # fmt: skip
        super().__init__()
        encoder_blocks, decoder_blocks = list(encoder_blocks), list(decoder_blocks)
        if len(encoder_blocks) != len(decoder_blocks):
            raise ValueError(f"one decoder level per encoder level: {len(encoder_blocks)} and {len(decoder_blocks)}")
        self.depth = len(encoder_blocks)
        self.noise = noise
        self.conditioning = NoiseConditioning(noise, in_channels, clipped)
        self.intro = nn.Conv2d(in_channels + self.conditioning.extra_channels, width, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        c = width
        for n in encoder_blocks:
            self.encoders.append(nn.Sequential(*(NAFBlock(c, attention_window) for _ in range(n))))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*(NAFBlock(c, attention_window) for _ in range(middle_blocks)))
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in reversed(decoder_blocks):
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(c, attention_window) for _ in range(n))))
        self.ending = nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(self.ending.weight)
        nn.init.zeros_(self.ending.bias)

    def forward(self, x, noise=None):
        h, w = x.shape[-2:]
        m = 2**self.depth
        padded = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        y, scale = self.conditioning(padded, noise)
        y = self.intro(y)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            y = encoder(y)
            skips.append(y)
            y = down(y)
        y = self.middle(y)
        for up, decoder in zip(self.ups, self.decoders):
            y = decoder(up(y) + skips.pop())  # each skip freed once added: tiles spend memory at full resolution
        return self.conditioning.restore((padded + self.ending(y) * scale)[..., :h, :w], noise)
