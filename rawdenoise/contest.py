"""Contest profiles: every fact of a contest lives in configs/contests/NAME.toml and is read from there.

The code never types a level, a file name or a score weight of its own; a second contest is a second
TOML file. `load_contest()` validates the whole profile up front, so a typo fails with the file and
key named instead of deep inside a stage.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rawdenoise.errors import InputError

CONTESTS_DIR = Path(__file__).resolve().parent.parent / "configs" / "contests"
DEFAULT_CONTEST = "zte2022"
CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
SSIM_MODES = ("columns", "2d")


@dataclass(frozen=True)
class FilePattern:
    """A file name with one `{i}` for the frame index, relative to a data folder (may hold a subfolder).

    Names are patterns, never counts: `find` returns the indices actually present.
    """

    pattern: str

    def __post_init__(self) -> None:
        if self.pattern.count("{i}") != 1 or "{i}" in str(Path(self.pattern).parent):
            raise ValueError(f"pattern {self.pattern!r} must hold exactly one {{i}}, in its file name")

    @property
    def folder(self) -> str:
        return str(Path(self.pattern).parent)

    def name(self, i: int) -> str:
        return Path(self.pattern).name.replace("{i}", str(int(i)))

    @property
    def bare(self) -> "FilePattern":
        """The same names without the folder: for a folder given directly (GT, test inputs, predictions)."""
        return FilePattern(Path(self.pattern).name)

    def path(self, root: str | Path, i: int) -> Path:
        return Path(root) / self.folder / self.name(i)

    def index_of(self, filename: str) -> int | None:
        """The index a bare file name carries under this pattern, or None when it does not match.

        ASCII digits only: `\\d` would also read '٠' (Arabic-Indic zero) as 0, so that two names of one
        index pass as different files. At most 18 of them, so that int() never meets a 5,000-digit
        name from a zip (past 4,300 digits it raises). "denoise00" is index 0 like "denoise0": `find`
        and open_submission refuse a folder or zip holding both.
        """
        before, after = Path(self.pattern).name.split("{i}")
        match = re.fullmatch(re.escape(before) + r"([0-9]{1,18})" + re.escape(after), filename)
        return int(match.group(1)) if match else None

    def matches(self, filename: str) -> bool:
        """Whether a bare file name is one of this pattern's (for a folder that holds only such files)."""
        return self.index_of(filename) is not None

    def check_matches(self, expected, found, where, counterpart: str) -> None:
        """Refuse predictions that are missing, or that have no `counterpart` among the expected indices."""
        missing = sorted(set(expected) - set(found))
        if missing:
            raise InputError(f"{where}: missing predictions {', '.join(self.name(i) for i in missing)}")
        extra = sorted(set(found) - set(expected))
        if extra:
            raise InputError(f"{where}: predictions without {counterpart}: {', '.join(self.name(i) for i in extra)}")

    def find(self, root: str | Path) -> dict[int, Path]:
        """Map index -> path for every file in the pattern's folder under `root`, sorted by index."""
        folder = Path(root) / self.folder
        if not folder.is_dir():
            raise InputError(f"{folder}: folder not found (expected files named {self.pattern!r})")
        found: dict[int, Path] = {}
        for entry in sorted(folder.iterdir()):
            i = self.index_of(entry.name)
            if i is None or not entry.is_file():
                continue
            if i in found:
                raise InputError(f"{entry}: index {i} also used by {found[i].name}")
            found[i] = entry
        return dict(sorted(found.items()))


@dataclass(frozen=True)
class Layout:
    train_noisy: FilePattern
    train_gt: FilePattern
    test_noisy: FilePattern
    test_gt: FilePattern


@dataclass(frozen=True)
class Submission:
    output: FilePattern  # a prediction's bare name; lives in data_dir inside the zip
    data_dir: str
    network: str
    weights: str
    readme: str
    max_model_bytes: int

    def member(self, i: int) -> str:
        return f"{self.data_dir}/{self.output.name(i)}"


@dataclass(frozen=True)
class Metric:
    data_range: float
    ssim_mode: str
    psnr_cap: float


@dataclass(frozen=True)
class ScoreRule:
    """score = scale * [psnr_weight * max(PSNR - psnr_floor, 0) / psnr_span
                        + ssim_weight * max(SSIM - ssim_floor, 0) / ssim_span]"""

    scale: float
    psnr_weight: float
    psnr_floor: float
    psnr_span: float
    ssim_weight: float
    ssim_floor: float
    ssim_span: float

    def __call__(self, psnr: float, ssim: float) -> float:
        psnr_term = max(psnr - self.psnr_floor, 0.0) / self.psnr_span
        ssim_term = max(ssim - self.ssim_floor, 0.0) / self.ssim_span
        return self.scale * (self.psnr_weight * psnr_term + self.ssim_weight * ssim_term)


@dataclass(frozen=True)
class NoiseRange:
    """The organisers' noise model: variance a*x + b on normalised x, at `types` discrete levels."""

    a_range: tuple[float, float]
    b_range: tuple[float, float]
    types: int
    test_heavier: float


@dataclass(frozen=True)
class Contest:
    name: str
    title: str
    path: Path
    cfa: str
    black: tuple[tuple[int, int], tuple[int, int]]  # per mosaic position (row, col) of the 2x2 tile
    white: int
    height: int
    width: int
    layout: Layout
    submission: Submission
    metric: Metric
    score: ScoreRule
    noise: NoiseRange

    @property
    def black_array(self) -> np.ndarray:
        return np.array(self.black, dtype=np.int64)

    def check_frame(self, frame) -> None:
        """Raise InputError when a RawFrame's CFA or levels disagree with this profile (it is authoritative)."""
        problems = []
        if frame.cfa != self.cfa:
            problems.append(f"CFA {frame.cfa}, the {self.name} profile says {self.cfa}")
        if not np.array_equal(frame.black, self.black_array):
            problems.append(f"black level {frame.black.tolist()}, profile says {self.black_array.tolist()}")
        if frame.white != self.white:
            problems.append(f"white level {frame.white}, profile says {self.white}")
        if problems:
            raise InputError(f"{frame.path}: " + "; ".join(problems))


def available_contests() -> list[str]:
    return sorted(p.stem for p in CONTESTS_DIR.glob("*.toml"))


def resolve_contest_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise InputError(f"{path}: contest profile not found")
        return path
    path = CONTESTS_DIR / f"{text}.toml"
    if not path.is_file():
        raise InputError(
            f"unknown contest {text!r}: no {path}; available: {', '.join(available_contests()) or 'none'}"
        )
    return path


def load_contest(name_or_path: str | Path | None = None) -> Contest:
    """Load and validate a contest profile by name (configs/contests/NAME.toml) or by path."""
    path = resolve_contest_path(name_or_path or DEFAULT_CONTEST)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"{path}: not a readable TOML file ({err})") from None
    reader = _ProfileReader(path, data)
    try:
        return reader.contest()
    except (KeyError, TypeError, ValueError) as err:
        message = err.args[0] if err.args else repr(err)
        raise InputError(f"{path}: {message}") from None


class _ProfileReader:
    """Reads one profile section by section, naming the key in every complaint."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    def get(self, section: str, key: str, kind: type):
        table = self.data.get(section) if section else self.data
        if not isinstance(table, dict) or key not in table:
            raise KeyError(f"missing key {section + '.' if section else ''}{key}")
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{section}.{key} must be a {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{section}.{key} must be finite, got {value!r}")
        return value

    def positive(self, section: str, key: str, kind: type = float):
        value = self.get(section, key, kind)
        if value <= 0:
            raise ValueError(f"{section}.{key} must be positive, got {value!r}")
        return value

    def pattern(self, section: str, key: str) -> FilePattern:
        try:
            return FilePattern(self.get(section, key, str))
        except ValueError as err:
            raise ValueError(f"{section}.{key}: {err}") from None

    def black(self, white: int) -> tuple[tuple[int, int], tuple[int, int]]:
        raw = self.data.get("raw", {}).get("black")
        if isinstance(raw, int) and not isinstance(raw, bool):
            grid = [[raw, raw], [raw, raw]]
        elif isinstance(raw, list) and len(raw) == 2 and all(isinstance(r, list) and len(r) == 2 for r in raw):
            grid = raw
        else:
            raise TypeError(f"raw.black must be an integer or a 2x2 list of integers, got {raw!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < white for r in grid for v in r):
            raise ValueError(f"raw.black values must be integers in [0, white level {white}), got {raw!r}")
        return (tuple(grid[0]), tuple(grid[1]))

    def range_pair(self, key: str) -> tuple[float, float]:
        value = self.data.get("noise", {}).get(key)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not 0 < value[0] <= value[1]
        ):
            raise ValueError(f"noise.{key} must be [low, high] with 0 < low <= high, got {value!r}")
        return (float(value[0]), float(value[1]))

    def contest(self) -> Contest:
        cfa = self.get("raw", "cfa", str).upper()
        if cfa not in CFA_PATTERNS:
            raise ValueError(f"raw.cfa must be one of {', '.join(CFA_PATTERNS)}, got {cfa!r}")
        white = self.positive("raw", "white", int)
        if white > 65535:
            raise ValueError(f"raw.white must fit 16-bit samples, got {white}")
        height, width = self.positive("raw", "height", int), self.positive("raw", "width", int)
        if height % 2 or width % 2:
            raise ValueError(f"raw.height and raw.width must be even for a 2x2 CFA, got {height}x{width}")
        ssim_mode = self.get("metric", "ssim_mode", str)
        if ssim_mode not in SSIM_MODES:
            raise ValueError(f"metric.ssim_mode must be one of {', '.join(SSIM_MODES)}, got {ssim_mode!r}")
        submission_paths = {k: self.get("submission", k, str) for k in ("data_dir", "network", "weights", "readme")}
        for key, value in submission_paths.items():
            if value.startswith("/") or ".." in Path(value).parts or value != value.strip("/"):
                raise ValueError(f"submission.{key} must be a relative zip path, got {value!r}")
        types = self.positive("noise", "types", int)
        test_heavier = self.positive("noise", "test_heavier")
        if test_heavier <= 1:
            raise ValueError(f"noise.test_heavier must be above 1, got {test_heavier}")
        return Contest(
            name=self.get("", "name", str),
            title=self.get("", "title", str),
            path=self.path,
            cfa=cfa,
            black=self.black(white),
            white=white,
            height=height,
            width=width,
            layout=Layout(
                train_noisy=self.pattern("layout", "train_noisy"),
                train_gt=self.pattern("layout", "train_gt"),
                test_noisy=self.pattern("layout", "test_noisy"),
                test_gt=self.pattern("layout", "test_gt"),
            ),
            submission=Submission(
                output=self.pattern("submission", "output"),
                max_model_bytes=self.positive("submission", "max_model_bytes", int),
                **submission_paths,
            ),
            metric=Metric(
                data_range=self.positive("metric", "data_range"),
                ssim_mode=ssim_mode,
                psnr_cap=self.positive("metric", "psnr_cap"),
            ),
            score=ScoreRule(
                scale=self.positive("score", "scale"),
                psnr_weight=self.get("score", "psnr_weight", float),
                psnr_floor=self.get("score", "psnr_floor", float),
                psnr_span=self.positive("score", "psnr_span"),
                ssim_weight=self.get("score", "ssim_weight", float),
                ssim_floor=self.get("score", "ssim_floor", float),
                ssim_span=self.positive("score", "ssim_span"),
            ),
            noise=NoiseRange(
                a_range=self.range_pair("a_range"),
                b_range=self.range_pair("b_range"),
                types=types,
                test_heavier=test_heavier,
            ),
        )
