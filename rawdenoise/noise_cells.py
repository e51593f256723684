"""The noise estimator's one compiled pass over a frame (rawdenoise.noise_estimate): per 3x3 cell, the
statistics its flatness test and noise measurement need. A module of its own so that numba, 56 MB of
memory and 0.3 s to load, is imported only by a process that estimates.
"""

import numba
import numpy as np


@numba.njit(cache=True, parallel=True)
def cell_statistics(packed):  # pragma: no cover - compiled
    """(C, h, w) float -> (C, h // 3, w // 3, 3): per 3x3 cell, the mean of its pixels, the mean square
    of its five flatness coefficients (1,1), (1,2), (2,1), (0,2), (2,0), and the square of its (2,2)
    coefficient."""
    channels, h, w = packed.shape
    rows, cols = h // 3, w // 3
    out = np.empty((channels, rows, cols, 3))
    r12, r18 = np.sqrt(12.0), np.sqrt(18.0)
    for t in numba.prange(channels * rows):
        c = t // rows
        top = 3 * (t - c * rows)
        for k in range(cols):
            left = 3 * k
            # down each of the three columns: the sum, first and second difference of its rows
            s0 = s1 = s2 = d0 = d1 = d2 = e0 = e1 = e2 = 0.0
            for j in range(3):
                p0 = np.float64(packed[c, top, left + j])
                p1 = np.float64(packed[c, top + 1, left + j])
                p2 = np.float64(packed[c, top + 2, left + j])
                if j == 0:
                    s0, d0, e0 = p0 + p1 + p2, p2 - p0, p0 - 2.0 * p1 + p2
                elif j == 1:
                    s1, d1, e1 = p0 + p1 + p2, p2 - p0, p0 - 2.0 * p1 + p2
                else:
                    s2, d2, e2 = p0 + p1 + p2, p2 - p0, p0 - 2.0 * p1 + p2
            # then across the columns: coefficient (m, n) has degree m down and n across
            c11 = (d2 - d0) / 2.0
            c12 = (d0 - 2.0 * d1 + d2) / r12
            c21 = (e2 - e0) / r12
            c02 = (s0 - 2.0 * s1 + s2) / r18
            c20 = (e0 + e1 + e2) / r18
            c22 = (e0 - 2.0 * e1 + e2) / 6.0
            out[c, t - c * rows, k, 0] = (s0 + s1 + s2) / 9.0
            out[c, t - c * rows, k, 1] = (c11 * c11 + c12 * c12 + c21 * c21 + c02 * c02 + c20 * c20) / 5.0
            out[c, t - c * rows, k, 2] = c22 * c22
    return out
