"""Results grouped by the test frames' noise level: the PSNR a method gains over its input, per level.

A mean over the test set hides what matters most about a denoiser: whether it helps every level. A
blind model can gain several dB on heavy noise and lose several on light noise (wiping texture the
input kept), and the mean still looks fine. So when the test data say each frame's level (the data
folder's noise.csv, which make_demo_data writes, or the noisy inputs' NoiseProfile tags), the scorer
also measures each input as it came and shows the gain per level, worst frame included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rawdenoise.noise_csv import listed_profiles
from rawdenoise.noise_estimate import tag_profile


@dataclass(frozen=True)
class Level:
    label: str  # the data's name for the level (noise.csv's noise_type), else its (a, b)
    a: float
    b: float


@dataclass(frozen=True)
class LevelRow:
    level: Level
    frames: int
    input_psnr: float  # mean over the level's frames, infinite PSNRs capped as in the contest's means
    psnr: float
    gain: float  # psnr - input_psnr
    worst_gain: float  # the level's worst frame: below 0 means the method made it worse than its input


def listed_levels(gt_dir: str | Path) -> dict[Path, Level]:
    """Ground-truth file (resolved) -> its level, from noise.csv at the ground-truth folder's data root."""
    root = Path(gt_dir).absolute().parent  # the data root as given: a linked GT folder keeps its noise.csv
    levels = {}
    for row in listed_profiles(root):
        if row.gt:
            kind = row.noise_type
            label = f"type {kind}" if kind.isdigit() else kind or format_profile(row.a, row.b)
            levels[(root / row.gt).resolve()] = Level(label, row.a, row.b)
    return levels


def tagged_level(frame) -> Level | None:
    """A noisy frame's level from its NoiseProfile tag, if it has a usable one."""
    tagged = tag_profile(frame)
    return None if tagged is None else Level(format_profile(*tagged), *tagged)


def format_profile(a: float, b: float) -> str:
    return f"a={a:.3g}, b={b:.3g}"


def by_level(results, cap: float) -> list[LevelRow]:
    """One row per level, lightest first, for results that carry a level and their input's PSNR."""
    groups: dict[Level, list] = {}
    for r in results:
        if r.level is not None and r.input_psnr is not None:
            groups.setdefault(r.level, []).append(r)
    rows = []
    for level, members in sorted(groups.items(), key=lambda kv: (kv[0].a, kv[0].b, kv[0].label)):
        inputs = [min(r.input_psnr, cap) for r in members]
        outputs = [min(r.psnr, cap) for r in members]
        gains = [o - i for o, i in zip(outputs, inputs)]
        rows.append(LevelRow(level, len(members), math.fsum(inputs) / len(members), math.fsum(outputs) / len(members),
                             math.fsum(gains) / len(members), min(gains)))  # fmt: skip
    return rows


def as_json(rows: list[LevelRow]) -> list[dict]:
    return [
        {"level": r.level.label, "a": r.level.a, "b": r.level.b, "frames": r.frames, "input_psnr": r.input_psnr,
         "psnr": r.psnr, "gain": r.gain, "worst_gain": r.worst_gain}  # fmt: skip
        for r in rows
    ]


def plot_gains(rows: list[LevelRow], title: str):
    """A matplotlib figure: the mean gain per level as bars, each level's worst frame as a mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 2), 3.2), dpi=100)
    x = range(len(rows))
    ax.bar(x, [r.gain for r in rows], color=["#1b9e77" if r.worst_gain >= 0 else "#d95f02" for r in rows])
    ax.plot(x, [r.worst_gain for r in rows], "k_", markersize=18, label="worst frame")
    ax.axhline(0, color="#444", linewidth=0.8)
    ax.set_xticks(list(x), [r.level.label for r in rows], parse_math=False, rotation=20 if len(rows) > 4 else 0)
    ax.set(xlabel="noise level (lightest first)", ylabel="PSNR gain over the input (dB)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
