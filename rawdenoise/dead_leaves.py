"""Dead-leaves scenes: synthetic clean crops that no shortage of photographs limits.

Why: a laptop recipe trains on the few photographs a package ships (or a contest's few hundred frames),
and a wide network runs out of scenes before it runs out of steps. The dead-leaves model (Matheron
1968; Lee, Mumford and Huang 2001: "Occlusion models for natural images") stacks opaque discs whose
radii follow r**-3, which gives it the scale invariance, the occlusion edges at every orientation and
contrast, and the flat regions of natural images; Achddou, Gousseau and Ladjal ("Synthetic images as a
regularity prior for image restoration neural networks", 2021) train denoisers on such images alone to
within a fraction of a dB of natural ones. Here they are an extra source beside the real pairs.

Colours come from the sample's own ground-truth crop (each disc takes the packed values R, Gr, Gb, B of
a random pixel of it), so the synthetic scene keeps the sensor's brightness and colour balance, on the
demo set and on any contest's data alike. Label maps are drawn once per process, at twice the mosaic's
resolution; a crop takes a random window and flip of one, colours its discs, and averages each 2x2
block (anti-aliased edges, as optics blur them) before sampling the mosaic through the CFA.
"""

from __future__ import annotations

import numba
import numpy as np

from rawdenoise.raw import CANONICAL_CFA, channel_positions, dihedral

SUPERSAMPLE = 2  # label pixels per mosaic pixel along each axis
MAPS = 96  # label maps drawn per process; each serves windows at any offset and flip
MAP_CROPS = 2  # a map is this many crops wide, so its windows overlap little
R_MIN = 1.0  # disc radii in mosaic pixels: from below the sampling grid ...
R_MAX_SHARE = 1.0  # ... to the crop's own size (times this)


def disc_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float) -> np.ndarray:
    """n radii with density proportional to r**-3 on [r_min, r_max] (inverse transform sampling)."""
    u = rng.random(n)
    return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5


def label_map(size: int, rng: np.random.Generator, r_min: float, r_max: float) -> np.ndarray:
    """A (size, size) map of disc labels 1.., front to back: a disc only takes pixels no nearer disc holds."""
    labels = np.zeros((size, size), dtype=np.int32)
    state = np.array([size * size, 0])  # pixels still uncovered, last label given
    while state[0] > 0:  # until every pixel is covered
        batch = 4096
        _drop_discs(labels, rng.random((batch, 2)) * size, disc_radii(rng, batch, r_min, r_max), state)
    return labels


@numba.njit(cache=True)
def _drop_discs(labels, centres, radii, state):
    """Paint discs front to back into the pixels still 0; state = [uncovered pixels, last label]."""
    size = labels.shape[0]
    for d in range(len(radii)):
        cy, cx, r = centres[d, 0], centres[d, 1], radii[d]
        taken = 0
        for y in range(max(int(cy - r), 0), min(int(cy + r) + 1, size)):
            dy = y + 0.5 - cy
            for x in range(max(int(cx - r), 0), min(int(cx + r) + 1, size)):
                dx = x + 0.5 - cx
                if labels[y, x] == 0 and dy * dy + dx * dx <= r * r:
                    labels[y, x] = state[1] + 1
                    taken += 1
        if taken:
            state[1] += 1
            state[0] -= taken
            if state[0] <= 0:
                return


class DeadLeaves:
    """Dead-leaves clean crops of `crop` packed pixels (4 channels, canonical RGGB), coloured from a real crop."""

    def __init__(self, crop: int, seed: int, maps: int = MAPS):
        self.seed = seed
        self.count = maps
        self.window = 2 * crop * SUPERSAMPLE  # label pixels across one crop
        self._maps = None

    def maps(self) -> np.ndarray:
        if self._maps is None:  # drawn lazily, once per worker process, the same in every one
            rng = np.random.default_rng([self.seed, 0xDEAD])
            size = MAP_CROPS * self.window
            r_min, r_max = R_MIN * SUPERSAMPLE, R_MAX_SHARE * self.window
            self._maps = np.stack([label_map(size, rng, r_min, r_max) for _ in range(self.count)])
        return self._maps

    def sample(self, colours_from: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A (4, crop, crop) float32 clean crop whose discs take the values of random pixels of `colours_from`."""
        maps = self.maps()
        size, w = maps.shape[-1], self.window
        top, left = (int(v) for v in rng.integers(0, size - w + 1, size=2))
        window = maps[int(rng.integers(len(maps))), top : top + w, left : left + w]
        window = dihedral(window, int(rng.integers(8)))  # any flip or transpose: the CFA samples the scene later
        labels, inverse = np.unique(window, return_inverse=True)
        pixels = colours_from.reshape(4, -1)
        palette = pixels[:, rng.integers(pixels.shape[1], size=len(labels))]  # (4, discs)
        scene = palette[:, inverse.reshape(w, w)]  # (4, w, w): every colour everywhere, the CFA picks below
        s = SUPERSAMPLE
        scene = scene.reshape(4, w // s, s, w // s, s).mean(axis=(2, 4))  # (4, 2*crop, 2*crop) mosaic sites
        sites = channel_positions(CANONICAL_CFA)  # each packed channel keeps its own colour at its own site
        return np.stack([scene[k, dy::2, dx::2] for k, (dy, dx) in enumerate(sites)]).astype(np.float32, copy=False)
