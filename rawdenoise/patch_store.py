"""The patch store: training pairs cut once into memory-mappable arrays, so training never decodes a DNG.

Layout of a store folder:
    train_noisy.npy, train_gt.npy   uint16 (N, 4, P, P): canonical packed R, Gr, Gb, B patches, in DN
    index.csv                       one row per patch: frame, files, position, the residual's std, and the
                                    pair's noise profile (a, b) with where it came from (noise_source)
    meta.json                       how it was made, the levels, and the validation frames (written last:
                                    a store without it is incomplete)
    localtest/                      only for data with no test ground truth: the validation frames again,
                                    under the profile's test names, as a local test set

Validation frames are whole frames, never cut: training validates on them as the contest scores.
Frames stream through one pair at a time; the arrays are preallocated from the frames' headers.

A pair's true noise profile is what a noise-conditioned model is told while it learns, so it is taken
from the best source there is: the data's noise.csv, else the noisy DNG's NoiseProfile tag, else a
fit of the residual noisy - ground truth against the ground truth's level (every pixel a sample).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path
from rawdenoise.noise_csv import NOISE_CSV, listed_profiles
from rawdenoise.noise_estimate import fit_pair_profile, tag_profile
from rawdenoise.raw import pack, read
from rawdenoise.tiff import locate_raw

META = "meta.json"
FORMAT = 3  # 2: index.csv carries each pair's noise profile; 3: meta names patch_size and channel_black


INDEX_COLUMNS = ["patch", "frame", "noisy", "gt", "top", "left", "noise_std", "a", "b", "noise_source"]


@dataclass(frozen=True)
class PatchOptions:
    patch_size: int = 128  # packed pixels per side (a 256 x 256 mosaic window); training crops inside it
    step: int = 128
    edge: str = "shift"  # "shift": one more patch flush with each far edge; "drop": only whole steps
    val_frames: int | None = None  # default: a tenth of the frames, at least one
    seed: int = 0

    def check(self) -> None:
        if self.patch_size < 8 or self.step < 1:
            raise InputError(f"patch size must be at least 8 and step at least 1, got {self.patch_size} and {self.step}")
        if self.edge not in ("shift", "drop"):
            raise InputError(f"edge must be 'shift' or 'drop', got {self.edge!r}")


def positions(length: int, side: int, step: int, edge: str) -> list[int]:
    """Patch origins along one packed axis."""
    if length < side:
        return []
    starts = list(range(0, length - side + 1, step))
    if edge == "shift" and starts[-1] != length - side:
        starts.append(length - side)
    return starts


def _listing_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _split(indices: list[int], options: PatchOptions) -> tuple[list[int], list[int]]:
    n_val = options.val_frames if options.val_frames is not None else max(1, len(indices) // 10)
    if not 0 <= n_val < len(indices):
        raise InputError(f"{n_val} validation frames leave no training frame out of {len(indices)}")
    order = np.random.default_rng([options.seed, 7]).permutation(len(indices))
    val = sorted(indices[k] for k in order[:n_val])
    return [i for i in indices if i not in val], val


def _listed_profiles(data: Path) -> dict[str, tuple[float, float]]:
    """noisy file (relative to the data folder) -> (a, b), from the data's noise.csv if it has one."""
    return {str(Path(row.noisy)): (row.a, row.b) for row in listed_profiles(data) if row.noisy}


def pair_profile(noisy, gt, listed: dict, relative: str, scale: np.ndarray) -> tuple[float, float, str]:
    """A training pair's (a, b) and its source: noise.csv, the NoiseProfile tag, or a fit to the pair."""
    if relative in listed:
        return (*listed[relative], "noise.csv")
    tagged = tag_profile(noisy)
    if tagged is not None:
        return (*tagged, "tag")
    rounding = float(np.mean(1.0 / (12.0 * scale**2)))
    try:
        a, b = fit_pair_profile(noisy.packed(), gt.packed(), rounding=rounding)
    except ValueError as err:
        raise InputError(f"{noisy.path}: cannot fit the pair's noise profile ({err}); list it in {NOISE_CSV}") from None
    return a, b, "pair fit"


def make_patch_store(data: str | Path, out: str | Path, contest, options: PatchOptions, progress: bool = True) -> Path:
    """Cut the training pairs of `data` into a store at `out`; an identical complete store is kept as is."""
    options.check()
    data, out = Path(data), Path(out)
    noisy_files = contest.layout.train_noisy.find(data)
    gt_files = contest.layout.train_gt.find(data)
    missing = sorted(set(noisy_files) ^ set(gt_files))
    if missing:
        raise InputError(f"{data}: frames {missing} lack their noisy or ground-truth half")
    if not noisy_files:
        raise InputError(f"{data}: no training pairs named like {contest.layout.train_noisy.pattern}")
    indices = list(noisy_files)
    listing = data / NOISE_CSV
    key = {
        "format": FORMAT,
        "noise_csv": hashlib.sha256(listing.read_bytes()).hexdigest()[:16] if listing.is_file() else None,
        "contest": contest.name,
        "data": str(data.resolve()),
        "options": options.__dict__,
        "inputs": _listing_hash([noisy_files[i] for i in indices] + [gt_files[i] for i in indices]),
    }
    meta_path = out / META
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("key") == key:
                return out
        except json.JSONDecodeError:
            pass
    train, val = _split(indices, options)
    for i in val:  # read now: training opens them only at its first validation, and a local test set copies them as they are
        noisy, gt = read(noisy_files[i], contest), read(gt_files[i], contest)
        if noisy.mosaic.shape != gt.mosaic.shape:
            raise InputError(f"{noisy.path}: shape {noisy.mosaic.shape} differs from {gt.path.name}'s {gt.mosaic.shape}")

    shapes = {}
    for i in train:
        layout = locate_raw(noisy_files[i])
        shapes[i] = (layout.height // 2, layout.width // 2)
    grid = {i: [(t, l) for t in positions(h, options.patch_size, options.step, options.edge)
                for l in positions(w, options.patch_size, options.step, options.edge)] for i, (h, w) in shapes.items()}  # fmt: skip
    total = sum(len(g) for g in grid.values())
    if total == 0:
        raise InputError(f"{data}: no training frame is large enough for {options.patch_size}-pixel packed patches")

    listed = _listed_profiles(data)
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # from here on the folder is incomplete until meta.json returns
    black = white = None
    rows = []
    shape = (total, 4, options.patch_size, options.patch_size)
    with atomic_path(out / "train_noisy.npy") as tmp_noisy, atomic_path(out / "train_gt.npy") as tmp_gt:
        noisy_arr = np.lib.format.open_memmap(tmp_noisy, mode="w+", dtype=np.uint16, shape=shape)
        gt_arr = np.lib.format.open_memmap(tmp_gt, mode="w+", dtype=np.uint16, shape=shape)
        k = 0
        for i in tqdm(train, desc="patches", unit="frame", disable=not progress):
            noisy, gt = read(noisy_files[i], contest), read(gt_files[i], contest)
            if noisy.mosaic.shape != gt.mosaic.shape:
                raise InputError(f"{noisy.path}: shape {noisy.mosaic.shape} differs from {gt.path.name}'s {gt.mosaic.shape}")
            black = pack(gt.black, contest.cfa)[:, 0, 0] if black is None else black  # per channel
            white = gt.white
            pn, pg = pack(noisy.mosaic, contest.cfa), pack(gt.mosaic, contest.cfa)
            scale = (white - black.astype(np.float64))[:, None, None]
            a, b, source = pair_profile(noisy, gt, listed, str(noisy_files[i].relative_to(data)), scale[:, 0, 0])
            for top, left in grid[i]:
                window = (slice(None), slice(top, top + options.patch_size), slice(left, left + options.patch_size))
                noisy_arr[k], gt_arr[k] = pn[window], pg[window]
                residual = (pn[window].astype(np.float64) - pg[window]) / scale
                rows.append([k, i, noisy_files[i].relative_to(data), gt_files[i].relative_to(data), top, left,
                             f"{residual.std():.6g}", f"{a:.6g}", f"{b:.6g}", source])  # fmt: skip
                k += 1
        noisy_arr.flush()
        gt_arr.flush()
        del noisy_arr, gt_arr

    with atomic_path(out / "index.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(rows)
    local_test = _keep_local_test(data, out, contest, val, noisy_files, gt_files)
    meta = {
        "key": key,
        "contest": contest.name,
        "patch_size": options.patch_size,
        "patches": total,
        "channel_black": [int(v) for v in black],  # per packed channel, R Gr Gb B
        "white": int(white),
        "train_frames": train,
        "val_frames": [{"index": i, "noisy": str(noisy_files[i]), "gt": str(gt_files[i])} for i in val],
        "local_test": str(local_test) if local_test else None,
    }
    with atomic_path(meta_path) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2))
    return out


def _keep_local_test(data: Path, out: Path, contest, val, noisy_files, gt_files) -> Path | None:
    """Real contest data publishes no test ground truth: keep the validation frames as a local test set."""
    if (data / contest.layout.test_gt.folder).is_dir():
        return None
    root = out / "localtest"
    shutil.rmtree(root, ignore_errors=True)
    for k, i in enumerate(val):
        for source, pattern in ((noisy_files[i], contest.layout.test_noisy), (gt_files[i], contest.layout.test_gt)):
            dest = pattern.path(root, k)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    return root


def load_meta(store: str | Path) -> dict:
    path = Path(store) / META
    if not path.is_file():
        raise InputError(f"{store}: not a complete patch store (no {META}); run train/make_patches.py")
    try:
        meta = json.loads(path.read_text())
        meta.get("key", {}).get("format")
    except (ValueError, AttributeError, OSError) as err:  # cut short, not JSON, not an object, unreadable
        raise InputError(f"{store}: not a complete patch store ({META}: {type(err).__name__}: {err}); "
                         "rebuild it with train/make_patches.py") from None  # fmt: skip
    if meta.get("key", {}).get("format") != FORMAT:
        raise InputError(f"{store}: a patch store of an older format; rebuild it with train/make_patches.py")
    return meta


def validation_frames(store: str | Path) -> list[tuple[Path, Path]]:
    """The store's whole validation frames, (noisy, ground truth) DNG paths, each checked to still exist."""
    frames = [(Path(v["noisy"]), Path(v["gt"])) for v in load_meta(store)["val_frames"]]
    for path in (p for pair in frames for p in pair):
        if not path.is_file():
            raise InputError(f"{store}: validation frame {path} is gone; rebuild the store with train/make_patches.py")
    return frames


def load_profiles(store: str | Path) -> np.ndarray:
    """(patches, 2) float64: each patch's (a, b), in store order."""
    path = Path(store) / "index.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "a" not in rows[0]:
        raise InputError(f"{store}: its index has no noise profiles (an older store); rebuild it with train/make_patches.py")
    return np.array([[float(r["a"]), float(r["b"])] for r in rows])
