"""A self-contained HTML report of one scoring: the tables, crops where the prediction errs most
(noisy / prediction / ground truth, rendered to sRGB), and the leaderboard as a plot."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

from rawdenoise.files import atomic_path


def _to_srgb(packed: np.ndarray, gains: np.ndarray, exposure: float) -> np.ndarray:
    """A normalised packed crop -> uint8 sRGB: half-resolution demosaic, grey-world white balance, gamma."""
    rgb = np.stack([packed[0], (packed[1] + packed[2]) / 2, packed[3]], axis=-1) * gains * exposure
    rgb = np.clip(rgb, 0.0, 1.0)
    srgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055)
    image = (srgb * 255 + 0.5).astype(np.uint8)
    return image.repeat(2, axis=0).repeat(2, axis=1)  # back to mosaic resolution, for the eye


def render_crops(crops: dict) -> dict[str, np.ndarray]:
    """One rendering for all crops of an image, fitted to the ground truth, so they compare fairly."""
    gt = np.clip(crops["gt"], 0, None)
    green = gt[1:3].mean() + 1e-6
    gains = np.clip(np.array([green / (gt[0].mean() + 1e-6), 1.0, green / (gt[3].mean() + 1e-6)]), 0.2, 5.0)
    reference = np.stack([gt[0], gt[1:3].mean(0), gt[3]], -1) * gains
    exposure = 0.9 / max(float(np.percentile(reference, 99)), 1e-3)
    return {k: _to_srgb(v, gains, exposure) for k, v in crops.items()}


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _leaderboard_plot(entries, highlight: str | None) -> str | None:
    if not entries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = entries[:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(shown) + 1.2), dpi=100)
    colours = ["#d95f02" if e.name == highlight else "#1b9e77" for e in shown]
    ax.barh(range(len(shown)), [e.score for e in shown], color=colours)
    ax.set_yticks(range(len(shown)), [e.name for e in shown], parse_math=False)  # names are text, never "$math$"
    for y, e in enumerate(shown):
        ax.text(e.score, y, f" {e.score:.3f}", va="center", fontsize=8)
    ax.set_xlabel("score")
    ax.set_title("local leaderboard")
    fig.tight_layout()
    return _figure_png(fig)


def _fmt_psnr(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4f}"


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _levels_section(levels) -> str:
    """The gain over the input per noise level: a table and a bar plot (worst frame marked)."""
    if not levels:
        return ""
    from rawdenoise.noise_levels import plot_gains

    esc = html.escape
    rows = "".join(
        f"<tr{' class=harm' if r.worst_gain < 0 else ''}><td>{esc(r.level.label)}</td><td>{r.level.a:.3g}</td>"
        f"<td>{r.level.b:.3g}</td><td>{r.frames}</td><td>{r.input_psnr:.3f}</td><td>{r.psnr:.3f}</td>"
        f"<td>{r.gain:+.3f}</td><td>{r.worst_gain:+.3f}</td></tr>"
        for r in levels
    )
    plot = _figure_png(plot_gains(levels, "PSNR gain over the input, per noise level"))
    return (
        "<h2>By noise level</h2><p>Mean PSNR of the inputs and of the predictions per noise level, lightest first; "
        "a worst gain below zero (highlighted) means a frame came out worse than it went in.</p>"
        f"<img src='{plot}' alt='gain per noise level'>"
        "<table><tr><th>level</th><th>a</th><th>b</th><th>frames</th><th>input PSNR</th><th>PSNR</th><th>gain</th>"
        f"<th>worst gain</th></tr>{rows}</table>"
    )


def write_html(path: str | Path, title: str, contest, results, summary, entries, run_name: str | None,
               levels=()) -> None:  # fmt: skip
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(r.name)}</td><td>{_fmt_psnr(r.psnr)}</td><td>{r.ssim:.6f}</td><td>{r.score:.4f}</td></tr>"
        for r in results
    )
    crops_html = []
    for r in results:
        if not r.crops:
            continue
        rendered = render_crops(r.crops)
        cells = "".join(
            f"<figure><img src='{_png(rendered[k])}' alt='{k}'><figcaption>{label}</figcaption></figure>"
            for k, label in (("noisy", "noisy input"), ("pred", "prediction"), ("gt", "ground truth"))
            if k in rendered
        )
        crops_html.append(f"<h3>{esc(r.name)} — PSNR {_fmt_psnr(r.psnr)} dB, SSIM {r.ssim:.4f}</h3><div class='row'>{cells}</div>")
    board = "".join(
        f"<tr{' class=me' if e.name == run_name else ''}><td>{k}</td><td>{esc(e.name)}</td><td>{e.score:.4f}</td>"
        f"<td>{e.psnr:.4f}</td><td>{e.ssim:.6f}</td><td>{esc(e.model or '')}</td>"
        f"<td>{'' if e.params is None else f'{e.params:,}'}</td><td>{esc(e.scored_at)}</td></tr>"
        for k, e in enumerate(entries, 1)
    )
    plot = _leaderboard_plot(entries, run_name)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.me, tr.harm {{ background: #fde0c5; }}
.row {{ display: flex; gap: 1em; }}
figure {{ margin: 0; }} figcaption {{ text-align: center; font-size: 0.9em; }}
img {{ image-rendering: pixelated; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(contest.title)}: score = {contest.score.scale:g} × [{contest.score.psnr_weight:g} × max(PSNR − {contest.score.psnr_floor:g}, 0)/{contest.score.psnr_span:g}
 + {contest.score.ssim_weight:g} × max(SSIM − {contest.score.ssim_floor:g}, 0)/{contest.score.ssim_span:g}] on the means; SSIM mode “{esc(contest.metric.ssim_mode)}”.</p>
<h2>Per image</h2>
<table><tr><th>image</th><th>PSNR (dB)</th><th>SSIM</th><th>score</th></tr>{rows}
<tr><th>mean</th><th>{summary.psnr:.4f}</th><th>{summary.ssim:.6f}</th><th>{summary.score:.4f}</th></tr></table>
{_levels_section(levels)}
<h2>Where the prediction errs most</h2>
<p>For each image, the {256}×{256} block with the largest squared error, rendered with one white balance and exposure fitted to the ground truth.</p>
{''.join(crops_html) or '<p>(no crops)</p>'}
<h2>Leaderboard</h2>
{f"<img src='{plot}' alt='leaderboard plot'>" if plot else ''}
<table><tr><th>rank</th><th>run</th><th>score</th><th>PSNR</th><th>SSIM</th><th>model</th><th>parameters</th><th>scored at</th></tr>{board}</table>
</body></html>
"""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
