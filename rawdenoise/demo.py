"""The embedded demo dataset: contest-layout DNG pairs synthesised from photographs shipped offline.

With no contest data at hand, every stage still needs realistic raw frames. We take the natural
photographs bundled inside installed packages (the data folders of scikit-image, matplotlib,
PyWavelets and scikit-learn, read as files; never a download), unprocess them into clean raw mosaics
(noise.unprocess), and add the organisers' noise at the profile's noise types. Test frames come only
from photographs never used for training, and they also hold a noise level heavier than any in
training, as the contest's test set does.

Default frames are small crops at native resolution, so the whole demo runs in minutes on 2 cores;
full-size frames (the profile's height x width) are collages of native-resolution crops, never
upscaled, so their content repeats.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from rawdenoise.errors import InputError
from rawdenoise.noise_csv import NOISE_CSV
from rawdenoise.noise import NoiseLevel, contest_noise_levels, mosaic_from_rgb, quantise, random_camera, unprocess
from rawdenoise.raw import denormalise, normalise, write_dng

DEFAULT_SIZE = (384, 512)  # mosaic H x W: the contest's 3:4 shape, small enough for a CPU demo
MAX_CROPS_PER_PHOTO = 2
FULL_SIZE_TRAIN_SCENES = 4
FULL_SIZE_TEST_SCENES = 2
MIN_SIDE = 32  # mosaic pixels a demo frame's side has at least

CSV_COLUMNS = [
    "split", "index", "noisy", "gt", "scene", "source", "noise_type", "a", "b",
    "red_gain", "blue_gain", "exposure",
]  # fmt: skip

# (package, file inside the package, split). Natural photographs only; the two test photos are never seen
# in training. Files missing from an installed version are skipped.
PHOTO_SOURCES = [
    ("skimage", "data/astronaut.png", "train"),
    ("skimage", "data/chelsea.png", "train"),
    ("skimage", "data/hubble_deep_field.jpg", "train"),
    ("skimage", "data/motorcycle_left.png", "train"),
    ("skimage", "data/motorcycle_right.png", "train"),
    ("skimage", "data/retina.jpg", "train"),
    ("skimage", "data/ihc.png", "train"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "train"),
    # Greyscale photographs of fine natural texture, taken as neutral-coloured scenes: light noise is
    # where a denoiser must tell texture from noise, and eight colour photos show it too little of it
    # (measured on held-out scenes at the demo budget: +0.18 dB mean PSNR, most of it at light noise).
    ("skimage", "data/brick.png", "train"),
    ("skimage", "data/grass.png", "train"),
    ("skimage", "data/gravel.png", "train"),
    ("skimage", "data/camera.png", "train"),
    ("skimage", "data/moon.png", "train"),
    # More scenes, from the other packages that ship photographs: PyWavelets' greyscale aerial view and
    # staircase, scikit-learn's two colour photographs (Flickr, CC BY 2.0: a pagoda under a wide sky, a
    # dahlia before smooth bokeh). Quality is judged on unseen photographs, so more scenes is the
    # generalising lever (held-out scenes, quality recipe at widths 32: +0.20 dB for aero and ascent alone).
    ("pywt", "data/aero.npz", "train"),
    ("pywt", "data/ascent.npz", "train"),
    ("sklearn", "datasets/images/china.jpg", "train"),
    ("sklearn", "datasets/images/flower.jpg", "train"),
    ("skimage", "data/coffee.png", "test"),
    ("skimage", "data/rocket.jpg", "test"),
]


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    split: str

    def load(self) -> np.ndarray:
        """float32 sRGB in [0, 1], (H, W, 3); a greyscale photograph is a neutral-coloured one."""
        image = _read_pixels(self.path)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] < 3:
            raise InputError(f"{self.path}: not a photograph (shape {image.shape})")
        return image[..., :3].astype(np.float32) / 255.0


def bundled_photos(hold_out: Sequence[str] = ()) -> list[Photo]:
    """The installed photographs with their split; `hold_out` names training photos to test on instead.

    A held-out split is for choosing a recipe: the named photos become the test scenes and the demo's own
    test photos are left out entirely, so a choice made on it has never seen the demo test set.
    """
    photos = []
    for package, relative, split in PHOTO_SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(spec.submodule_search_locations[0]) / relative
        if path.is_file():
            photos.append(Photo(Path(relative).stem, path, split))
    if not hold_out:
        return photos
    training = [p.name for p in photos if p.split == "train"]
    unknown = sorted(set(hold_out) - set(training))
    if unknown:
        raise InputError(f"cannot hold out {', '.join(unknown)}: the training photographs are {', '.join(training)}")
    if set(hold_out) == set(training):
        raise InputError("holding out every training photograph leaves nothing to train on")
    return [
        dataclasses.replace(p, split="test" if p.name in hold_out else "train") for p in photos if p.split == "train"
    ]


@dataclass(frozen=True)
class Scene:
    """What one ground-truth frame shows: a crop of one photo, or a collage (crop is None)."""

    photos: tuple[Photo, ...]
    crop: tuple[int, int] | None  # (top, left) for a single-photo crop

    @property
    def source(self) -> str:
        if self.crop is None:
            return "collage:" + "+".join(p.name for p in self.photos)
        return f"{self.photos[0].name}@{self.crop[0]},{self.crop[1]}"


def crop_scenes(photos: list[Photo], size: tuple[int, int], shapes: dict[str, tuple[int, int]]) -> list[Scene]:
    """Up to MAX_CROPS_PER_PHOTO non-overlapping native-resolution crops of each photo that is large enough."""
    h, w = size
    scenes = []
    for photo in photos:
        ph, pw = shapes[photo.name]
        rows, cols = ph // h, pw // w
        if rows == 0 or cols == 0:
            continue
        top0, left0 = (ph - rows * h) // 2, (pw - cols * w) // 2  # centre the grid of crops
        grid = [(top0 + r * h, left0 + c * w) for r in range(rows) for c in range(cols)]
        picks = np.linspace(0, len(grid) - 1, min(MAX_CROPS_PER_PHOTO, len(grid))).round().astype(int)
        scenes.extend(Scene((photo,), grid[k]) for k in sorted(set(picks.tolist())))
    return scenes


def collage(photos: list[Photo], size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A frame of `size` tiled with random native-resolution crops (randomly mirrored) of `photos`."""
    images = [p.load() for p in photos]
    min_h = min(im.shape[0] for im in images)
    min_w = min(im.shape[1] for im in images)
    h, w = size
    row_edges = np.linspace(0, h, -(-h // min_h) + 1).astype(int)
    col_edges = np.linspace(0, w, -(-w // min_w) + 1).astype(int)
    canvas = np.empty((h, w, 3), dtype=np.float32)
    for r0, r1 in zip(row_edges[:-1], row_edges[1:]):
        for c0, c1 in zip(col_edges[:-1], col_edges[1:]):
            image = images[rng.integers(len(images))]
            top = rng.integers(image.shape[0] - (r1 - r0) + 1)
            left = rng.integers(image.shape[1] - (c1 - c0) + 1)
            cell = image[top : top + r1 - r0, left : left + c1 - c0]
            canvas[r0:r1, c0:c1] = cell[:, ::-1] if rng.random() < 0.5 else cell
    return canvas


@dataclass(frozen=True)
class Job:
    """One pair to write: the scene, its noise, and its names in the layout."""

    split: str  # "train" or "test"
    index: int
    scene_index: int
    scene: Scene
    noise_type: str  # "0".."types-1", or "heavy" (test only)
    level: NoiseLevel


def plan(contest, size: tuple[int, int], full_size: bool, hold_out: Sequence[str] = ()) -> list[Job]:
    photos = bundled_photos(hold_out)
    train = [p for p in photos if p.split == "train"]
    test = [p for p in photos if p.split == "test"]
    if not train or not test:
        raise InputError("the bundled photographs are missing: is scikit-image installed?")
    if full_size:
        train_scenes = [Scene(tuple(train), None)] * FULL_SIZE_TRAIN_SCENES
        test_scenes = [Scene(tuple(test), None)] * FULL_SIZE_TEST_SCENES
    else:
        shapes = {p.name: _image_shape(p.path) for p in photos}
        train_scenes = crop_scenes(train, size, shapes)
        test_scenes = crop_scenes(test, size, shapes)
        if not train_scenes or not test_scenes:
            raise InputError(
                f"frame size {size[0]}x{size[1]} is larger than the bundled photographs; "
                f"use at most {max(s[0] for s in shapes.values())}x{max(s[1] for s in shapes.values())}"
            )
    levels, heavy = contest_noise_levels(contest)
    jobs = []
    for s, scene in enumerate(train_scenes):
        for t, level in enumerate(levels):
            jobs.append(Job("train", s * len(levels) + t, s, scene, str(t), level))
    test_levels = [(str(t), level) for t, level in enumerate(levels)] + [("heavy", heavy)]
    for s, scene in enumerate(test_scenes):
        for t, (name, level) in enumerate(test_levels):
            jobs.append(Job("test", s * len(test_levels) + t, s, scene, name, level))
    return jobs


def _read_pixels(path: Path) -> np.ndarray:
    """uint8 pixels of an image file, or of the one array in an .npz (PyWavelets ships its photos so)."""
    if path.suffix == ".npz":
        with np.load(path) as archive:
            return archive[archive.files[0]]
    from skimage.io import imread

    return imread(path)


def _image_shape(path: Path) -> tuple[int, int]:
    if path.suffix == ".npz":
        return _read_pixels(path).shape[:2]
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def _rng(seed: int, split: str, purpose: str, index: int) -> np.random.Generator:
    """An independent stream per (seed, split, purpose, index): results never depend on job order."""
    return np.random.default_rng([seed, ("train", "test").index(split), ("camera", "noise", "scene").index(purpose), index])


def clean_mosaic(job: Job, contest, size: tuple[int, int], seed: int) -> tuple[np.ndarray, object]:
    """The ground-truth uint16 mosaic of a job's scene, and the synthetic camera that took it."""
    if job.scene.crop is None:
        srgb = collage(list(job.scene.photos), size, _rng(seed, job.split, "scene", job.scene_index))
    else:
        top, left = job.scene.crop
        srgb = job.scene.photos[0].load()[top : top + size[0], left : left + size[1]]
    camera = random_camera(_rng(seed, job.split, "camera", job.scene_index))
    linear = mosaic_from_rgb(unprocess(srgb, camera), contest.cfa)
    return denormalise(linear, contest.black_array, contest.white), camera


def _write_job(job: Job, out: Path, contest, size: tuple[int, int], seed: int, cache: dict) -> dict:
    key = (job.split, job.scene_index)
    if key not in cache:  # the five noise types of a scene share its clean frame
        cache.clear()
        cache[key] = clean_mosaic(job, contest, size, seed)
    gt, camera = cache[key]
    black, white = contest.black_array, contest.white
    noisy = quantise(job.level.sample(normalise(gt, black, white), _rng(seed, job.split, "noise", job.index)), black, white)
    layout = contest.layout
    noisy_pattern, gt_pattern = (
        (layout.train_noisy, layout.train_gt) if job.split == "train" else (layout.test_noisy, layout.test_gt)
    )
    tags = dict(as_shot_neutral=camera.as_shot_neutral, color_matrix=camera.xyz_to_camera)
    write_dng(gt_pattern.path(out, job.index), gt, contest.cfa, black, white, **tags)
    write_dng(
        noisy_pattern.path(out, job.index), noisy, contest.cfa, black, white,
        noise_profile=(job.level.a, job.level.b), **tags,
    )  # fmt: skip
    return {
        "split": job.split,
        "index": job.index,
        "noisy": noisy_pattern.path(".", job.index).as_posix().removeprefix("./"),
        "gt": gt_pattern.path(".", job.index).as_posix().removeprefix("./"),
        "scene": job.scene_index,
        "source": job.scene.source,
        "noise_type": job.noise_type,
        "a": repr(job.level.a),
        "b": repr(job.level.b),
        "red_gain": f"{camera.red_gain:.6f}",
        "blue_gain": f"{camera.blue_gain:.6f}",
        "exposure": f"{camera.exposure:.6f}",
    }


def _check_destination(out: Path, contest) -> None:
    """Refuse to replace a folder that is not a previous demo set: it may hold real contest data (which
    can carry a noise.csv too), or files of the user's beside a demo set; replacing would delete them.
    A demo set holds what its own noise.csv lists (of whichever contest made it), files named as this
    contest's demo would name them, and hidden stamps beside them."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose an empty or new folder for the demo set")
    if not any(out.iterdir()):
        return
    refuse = f"{out}: exists and is not a demo dataset ({{}}); choose an empty or new folder"
    try:
        with open(out / NOISE_CSV, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            columns = list(rows[0]) if rows else None
    except (OSError, UnicodeDecodeError, csv.Error):
        columns = None
    if columns != CSV_COLUMNS:
        raise InputError(refuse.format(f"no {NOISE_CSV} of a demo set's columns"))
    listed = {NOISE_CSV} | {row[k] for row in rows for k in ("noisy", "gt")}
    layout = contest.layout
    patterns = (layout.train_noisy, layout.train_gt, layout.test_noisy, layout.test_gt)
    for path in out.rglob("*"):
        relative = path.relative_to(out)
        if path.is_dir() or relative.as_posix() in listed or (len(relative.parts) == 1 and relative.name.startswith(".")):
            continue
        if any(relative.parent.as_posix() == p.folder and p.bare.matches(path.name) for p in patterns):
            continue
        raise InputError(refuse.format(f"{relative} is not one of its files, and replacing the folder would delete it"))


def make_demo_dataset(
    out: str | Path,
    contest,
    *,
    size: tuple[int, int] | None = None,
    full_size: bool = False,
    seed: int = 0,
    hold_out: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Write the demo set in the contest's layout (plus noise.csv) to `out`, replacing a previous demo.

    The set is built in a hidden sibling folder and swapped in only when complete, so an interrupted
    run never leaves a folder that looks like a finished dataset. `hold_out`: see bundled_photos.
    """
    out = Path(out)
    if full_size:
        size = (contest.height, contest.width)
    size = tuple(size or DEFAULT_SIZE)
    if len(size) != 2 or size[0] <= 0 or size[1] <= 0 or size[0] % 2 or size[1] % 2:
        raise InputError(f"frame size {size} must be two positive even numbers (a 2x2 CFA)")
    if min(size) < MIN_SIDE:  # LibRaw refuses to decode DNGs of about 20 pixels a side and less
        raise InputError(f"frame size {size[0]}x{size[1]}: each side must be at least {MIN_SIDE} pixels (a frame rawpy can read back)")
    _check_destination(out, contest)
    jobs = plan(contest, size, full_size, hold_out)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows, cache = [], {}
    for job in tqdm(jobs, desc="demo data", unit="pair", disable=not progress):
        rows.append(_write_job(job, staging, contest, size, seed, cache))
    with open(staging / NOISE_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    _swap_in(staging, out)
    return out


def _swap_in(staging: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
