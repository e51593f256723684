"""Training samples from the patch store, with Bayer-preserving augmentation and optional extra noise.

A sample is (noisy, ground truth, noise profile): the (a, b) a noise-conditioned model is told. For a
stored pair that is the pair's true profile from the store's index; a re-noised sample (a share
`extra_noise` of them) gets fresh noise at a level drawn across the contest's whole range up to the
test set's heavier level, so every level is seen whatever the data holds (and, with `gain_jitter`,
its clean crop first takes another exposure and white balance). `noise_jitter` tells the
model a level off by a random factor (log-normal, that std in log units), so that it learns to
tolerate an estimated profile's error. A share `dead_leaves` of samples trade their clean crop for a
synthetic dead-leaves scene in its colours (rawdenoise/dead_leaves.py), noised the same way.

A sample is a function of (seed, step, index within the step's global batch) only: the generator that
picks its patch, crop, flip and noise is seeded by exactly those numbers. So a resumed run, and a run
split over torchrun processes (each taking its slice of the global batch), see the same samples as
one uninterrupted process.

Augmentation happens on the mosaic, where its meaning is plain: a flip moves the colour filter
phase by one pixel along the flipped axis, so we cut a window one packed pixel larger than the crop,
flip or transpose it, and take the crop at the offset that puts red back at the canonical site.
Channel k therefore always means the same colour (Liu et al., "Learning Raw Image Denoising with Bayer
Pattern Unification and Bayer Preserving Augmentation", 2019).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rawdenoise.dead_leaves import DeadLeaves
from rawdenoise.errors import InputError
from rawdenoise.noise import NoiseLevel, quantise_normalised
from rawdenoise.patch_store import load_meta, load_profiles
from rawdenoise.raw import canonical_mosaic, dihedral, normalise_channels, pack_canonical, phase_offset

LEVEL_SPREAD = 0.25  # how far b's place in its range may stray from a's in a synthetic level


def bayer_augment(packed: np.ndarray, op: int, crop: int) -> np.ndarray:
    """One of the 8 flips/transposes of a (C, crop+1, crop+1) packed window -> (C, crop, crop), CFA kept.

    op bit 0: mirror left-right, bit 1: mirror top-bottom, bit 2: transpose (applied first).
    Works on any leading channel count that is a multiple of 4 (noisy and clean stacked together).
    """
    dy, dx = phase_offset(op)
    out = []
    for g in range(0, packed.shape[0], 4):
        mosaic = dihedral(canonical_mosaic(packed[g : g + 4]), op)
        out.append(pack_canonical(np.ascontiguousarray(mosaic[dy : dy + 2 * crop, dx : dx + 2 * crop])))
    return np.concatenate(out)


class PatchSamples(torch.utils.data.Dataset):
    """Map-style: item `step * global_batch + i` is sample i of that step's global batch."""

    def __init__(self, store: str | Path, crop: int, global_batch: int, seed: int, augment: bool = True,
                 extra_noise: float = 0.0, noise_range: tuple | None = None, noise_jitter: float = 0.0,
                 gain_jitter: float = 0.0, dead_leaves: float = 0.0):  # fmt: skip
        self.store = Path(store)
        meta = load_meta(self.store)
        if crop + 1 > meta["patch_size"]:
            raise InputError(
                f"{store}: data.crop {crop} needs patches of at least {crop + 1} packed pixels; the store has "
                f"{meta['patch_size']} (cut a store with train/make_patches.py --patch-size {2 * crop})"
            )
        self.crop, self.global_batch, self.seed, self.augment = crop, global_batch, seed, augment
        self.patches = int(meta["patches"])
        self.channel_black = np.array(meta["channel_black"], dtype=np.float32)  # per packed channel, R Gr Gb B
        self.white = float(meta["white"])
        self.extra_noise = extra_noise
        self.noise_range = noise_range  # ((a_lo, a_hi), (b_lo, b_hi)) for synthetic noise
        self.noise_jitter = noise_jitter
        self.gain_jitter = gain_jitter
        self.dead_leaves = dead_leaves
        self.leaves = DeadLeaves(crop, seed) if dead_leaves else None
        self.profiles = load_profiles(self.store)
        if len(self.profiles) != self.patches:
            raise InputError(f"{store}: index.csv lists {len(self.profiles)} patches, the arrays hold {self.patches}")
        self._arrays = None

    def __len__(self) -> int:
        return 2**62  # indexed by (step, i); the sampler decides how many are drawn

    def arrays(self):
        if self._arrays is None:  # opened lazily, once per worker process
            self._arrays = (
                np.load(self.store / "train_noisy.npy", mmap_mode="r"),
                np.load(self.store / "train_gt.npy", mmap_mode="r"),
            )
        return self._arrays

    def __getitem__(self, key: int):
        step, i = divmod(int(key), self.global_batch)
        rng = np.random.default_rng([self.seed, step, i])
        noisy_arr, gt_arr = self.arrays()
        k = int(rng.integers(self.patches))
        size = noisy_arr.shape[-1]
        top, left = (int(v) for v in rng.integers(0, size - self.crop, size=2))
        window = (slice(None), slice(top, top + self.crop + 1), slice(left, left + self.crop + 1))
        pair = np.concatenate([noisy_arr[k][window], gt_arr[k][window]])
        op = int(rng.integers(8)) if self.augment else 0
        pair = bayer_augment(pair, op, self.crop)
        noisy = normalise_channels(pair[:4], self.channel_black, self.white)
        gt = normalise_channels(pair[4:], self.channel_black, self.white)
        profile = self.profiles[k]
        if self.dead_leaves and rng.random() < self.dead_leaves:
            gt = self.leaves.sample(gt, rng)
            profile = self.synthetic_level(rng)
            noisy = self.synthetic(gt, profile, rng)
        elif self.extra_noise and rng.random() < self.extra_noise:
            profile = self.synthetic_level(rng)
            if self.gain_jitter:
                gt = self.regained(gt, rng)
            noisy = self.synthetic(gt, profile, rng)
        if self.noise_jitter:
            profile = profile * np.exp(self.noise_jitter * rng.standard_normal(2))
        return torch.from_numpy(noisy), torch.from_numpy(gt), torch.tensor(profile, dtype=torch.float32)

    def synthetic_level(self, rng: np.random.Generator) -> np.ndarray:
        """(a, b) log-uniform over the range, b's place in its range near a's: a sensor's read noise
        grows with its gain, but not in lockstep (LEVEL_SPREAD of the log range either way)."""
        (a_lo, a_hi), (b_lo, b_hi) = self.noise_range
        t = rng.random()
        u = float(np.clip(t + LEVEL_SPREAD * (2 * rng.random() - 1), 0.0, 1.0))
        a = np.exp(np.log(a_lo) + t * (np.log(a_hi) - np.log(a_lo)))
        b = np.exp(np.log(b_lo) + u * (np.log(b_hi) - np.log(b_lo)))
        return np.array([a, b])

    def regained(self, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The clean crop under another exposure and white balance: one gain for the whole crop and one
        more each for red and blue (log-normal, `gain_jitter` std in log units), clipped at white as a
        sensor saturates. Only a re-noised sample can take it: a stored pair's noise belongs to its
        own exposure."""
        exposure, red, blue = np.exp(self.gain_jitter * rng.standard_normal(3))
        gains = np.array([exposure * red, exposure, exposure, exposure * blue], dtype=np.float32)
        return np.minimum(gt * gains[:, None, None], np.float32(1.0))  # channels R, Gr, Gb, B (canonical)

    def synthetic(self, gt: np.ndarray, profile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A fresh noisy input from the noise model at `profile`, clipped and rounded as a sensor's are."""
        noisy = NoiseLevel(*(float(v) for v in profile)).sample(gt, rng, dtype=np.float32)
        return quantise_normalised(noisy, self.channel_black, self.white)


class StepSampler(torch.utils.data.Sampler):
    """Keys for steps [start, stop): this rank's slice [rank*b, (rank+1)*b) of each global batch."""

    def __init__(self, start: int, stop: int, global_batch: int, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise InputError(f"train.batch {global_batch} does not split evenly over {world} processes")
        self.start, self.stop, self.global_batch = start, stop, global_batch
        self.local = global_batch // world
        self.offset = rank * self.local

    def __iter__(self):
        for step in range(self.start, self.stop):
            base = step * self.global_batch + self.offset
            yield from range(base, base + self.local)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.local
