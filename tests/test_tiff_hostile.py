"""Malformed TIFF structures (issue 9, class 3): each is refused with one InputError naming the file,
quickly and in little memory, and every CLI turns it into one line on stderr and exit 2."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rawdenoise import InputError
from rawdenoise.contest import load_contest
from rawdenoise.raw import read, write_dng
from rawdenoise.tiff import locate_raw
from tests.dng_builders import append_ifd_ring, ifd0_entries, patch_tag, set_next_ifd

ROOT = Path(__file__).resolve().parent.parent
ZTE = load_contest("zte2022")
LONG, SSHORT = 4, 8


def _frame(rng, shape=(64, 64)) -> np.ndarray:
    return rng.integers(ZTE.black_array.max(), ZTE.white + 1, size=shape).astype(np.uint16)


def _write(path: Path, mosaic: np.ndarray, **options) -> Path:
    write_dng(path, mosaic, ZTE.cfa, ZTE.black_array, ZTE.white, **options)
    return path


def _one_tile(data: bytearray, tile_length: int) -> None:
    """Keep only the first of a tiled file's tiles and make it one tile as wide as the image and
    `tile_length` rows tall, with the image as tall as that tile: the counts then agree."""
    bo = "<" if data[:2] == b"II" else ">"
    array = struct.unpack(bo + "I", data[ifd0_entries(data)[324] + 8 :][:4])[0]
    first = struct.unpack(bo + "I", data[array : array + 4])[0]
    patch_tag(data, 324, count=1, value=first)
    patch_tag(data, 325, count=1, value=2048)
    patch_tag(data, 322, value=64)
    patch_tag(data, 323, value=tile_length)
    patch_tag(data, 257, value=tile_length)


def _tags(*changes):
    """A patch setting each (tag, value) in turn."""

    def patch(data):
        for code, value in changes:
            patch_tag(data, code, value=value)

    return patch


# name: (base file, patch, what the message must say)
MALFORMED = {
    "count-0 ImageWidth": ("strips", lambda d: patch_tag(d, 256, count=0), r"ImageWidth .*0 values"),
    "count-0 ImageLength": ("strips", lambda d: patch_tag(d, 257, count=0), "corrupt TIFF structure"),
    "count-0 BitsPerSample": ("strips", lambda d: patch_tag(d, 258, count=0), "corrupt TIFF structure"),
    "count-0 RowsPerStrip": ("strips", lambda d: patch_tag(d, 278, count=0), "corrupt TIFF structure"),
    "count-0 StripOffsets": ("strips", lambda d: patch_tag(d, 273, count=0), "needs 1 strips; the file lists 0 StripOffsets"),
    "count-0 PhotometricInterpretation": ("strips", lambda d: patch_tag(d, 262, count=0), "Photometric.*0 values"),
    "zero tile width": ("tiles", _tags((322, 0)), "TileWidth 0"),
    "zero tile length": ("tiles", _tags((323, 0)), "TileLength 0"),
    "zero RowsPerStrip": ("strips", _tags((278, 0)), "RowsPerStrip is 0"),
    "fewer byte counts than tiles": ("tiles", lambda d: patch_tag(d, 325, count=3), "4 TileOffsets and 3 TileByteCounts"),
    "strip offset past the end": ("strips", _tags((273, 1 << 20)), "outside the .*-byte file"),
    "strip byte count past the end": ("strips", _tags((279, 10**9)), "outside the .*-byte file"),
    "strip offset inside the header": ("strips", _tags((273, 2)), "byte 2 overlaps the TIFF header"),
    "strip shorter than its rows": ("strips", _tags((279, 100)), "holds 100 bytes"),
    "negative width": ("strips", lambda d: patch_tag(d, 256, field_type=SSHORT, value=-64), "no size"),
    "zero height": ("strips", _tags((257, 0)), "no size"),
    "two samples per pixel": ("strips", _tags((277, 2)), "2 samples per pixel"),
    "0 bits per sample": ("strips", _tags((258, 0)), "0 bits per sample"),
    "IFD0 points at itself": ("strips", lambda d: set_next_ifd(d, 8), "a loop"),
    "IFD ring of 150": ("strips", lambda d: append_ifd_ring(d, 150), "a loop"),
    "SubIFD points at IFD0": ("subifd", lambda d: patch_tag(d, 330, value=8), "a loop"),
    "SubIFD past the end": ("subifd", lambda d: patch_tag(d, 330, value=1 << 24), "SubIFD at byte"),
}
# Claims of a frame far larger than the file: refused before anything that size is built.
HUGE = {
    "20M rows in 1-row strips": ("strips", _tags((257, 20_000_000), (278, 1)), "RowsPerStrip 1 needs 20000000 strips"),
    "20M rows in one strip": ("strips", _tags((257, 20_000_000), (278, 20_000_000)), "needs 2560000000 bytes"),
    "2^31 rows in 1-row strips": ("strips", _tags((257, 2**31), (278, 1)), "RowsPerStrip 1 needs 2147483648 strips"),
    "2^31 rows in one strip": ("strips", _tags((257, 2**31), (278, 2**31)), "needs 274877906944 bytes"),
    "20M rows in 32x32 tiles": ("tiles", _tags((257, 20_000_000)), "needs 1250000 tiles"),
    "2^31 rows in 32x32 tiles": ("tiles", _tags((257, 2**31)), "needs 134217728 tiles"),
    "2^31 rows in one tile": ("tiles", lambda d: _one_tile(d, 2**31), "needs 274877906944 bytes"),
    "deflate at 156250:1": (
        "strips", _tags((259, 8), (257, 20_000_000), (278, 20_000_000)), r"8192 bytes of compressed .* 1032:1",
    ),  # fmt: skip
}
ALL = {**MALFORMED, **HUGE}
BASES = {"strips": {}, "tiles": {"tile": (32, 32)}, "subifd": {"subifd": True}}


@pytest.fixture(scope="module")
def base_mosaics():
    rng = np.random.default_rng(9)
    return {name: _frame(rng) for name in BASES}


@pytest.fixture(scope="module")
def bases(tmp_path_factory, base_mosaics):
    folder = tmp_path_factory.mktemp("bases")
    return {name: _write(folder / f"{name}.dng", base_mosaics[name], **options) for name, options in BASES.items()}


def _hostile(bases, folder: Path, label: str, case) -> Path:
    base, patch, _ = case
    data = bytearray(bases[base].read_bytes())
    patch(data)
    path = folder / (re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + ".dng")
    path.write_bytes(bytes(data))
    return path


def test_the_unpatched_files_read(bases, base_mosaics):
    """The control: every hostile file differs from one of these in one field."""
    for name, path in bases.items():
        assert np.array_equal(read(path, ZTE).mosaic, base_mosaics[name]), name


@pytest.mark.parametrize("label", list(ALL))
def test_a_malformed_structure_is_one_error_naming_the_file(label, bases, tmp_path, caplog):
    path = _hostile(bases, tmp_path, label, ALL[label])
    with pytest.raises(InputError) as caught:
        read(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert re.search(ALL[label][2], message), message
    with pytest.raises(InputError, match=re.escape(str(path))):
        locate_raw(path.read_bytes(), str(path))  # the in-memory path (zip members) says the same
    # tifffile logs many of these; with no handler configured Python would print them to stderr
    assert not [r.getMessage() for r in caplog.records if r.name == "tifffile"]


def _repeated_tags(path: Path, tags: int = 4096, values: int = 100_000) -> Path:
    """One IFD holding `tags` copies of a StripOffsets tag, all pointing at the same 400 KB array:
    tifffile loads every copy, as a tuple of Python ints (gigabytes, from a 450 KB file)."""
    array = 8 + 2 + 12 * tags + 4
    entries = struct.pack("<HHII", 273, LONG, values, array) * tags
    path.write_bytes(b"II*\0" + struct.pack("<IH", 8, tags) + entries + struct.pack("<I", 0) + bytes(4 * values))
    return path


def test_tag_values_repeated_to_exhaust_memory_are_refused(tmp_path):
    path = _repeated_tags(tmp_path / "repeated.dng")
    with pytest.raises(InputError, match=r"repeated\.dng: corrupt TIFF structure .*exceed 4 MiB"):
        read(path)


# The child's own peak since exec (VmHWM, kB). Not ru_maxrss: Linux carries the parent's RSS at fork
# into the child's ru_maxrss across exec, so under a large pytest process it reads the parent's size.
PEAK_RSS = """
import re, sys
from rawdenoise import InputError
from rawdenoise.raw import read
for path in sys.argv[1:]:
    try:
        read(path)
    except InputError as err:
        print("refused", err)
    else:
        print("read", path)
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def test_huge_claims_are_refused_in_little_memory(bases, tmp_path):
    """One process reads every huge-claim file; its peak RSS (kB on Linux) stays far below the claims.
    The child measures itself: RUSAGE_CHILDREN in pytest would include every earlier test's children."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc (Linux)")
    paths = [_hostile(bases, tmp_path, label, case) for label, case in HUGE.items()]
    repeated = _repeated_tags(tmp_path / "repeated.dng")
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *map(str, paths + [repeated])], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    *lines, peak_kb = result.stdout.strip().splitlines()
    assert len(lines) == len(paths) + 1 and all(line.startswith("refused") for line in lines), lines
    assert int(peak_kb) < 400 * 1024, f"peak RSS {int(peak_kb) // 1024} MB"


def _one_error_line(result: subprocess.CompletedProcess, path: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and path.name in lines[0], lines[0]


def test_score_cli_names_a_hostile_prediction(bases, tmp_path):
    rng = np.random.default_rng(3)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in range(3):
        mosaic = _frame(rng)
        _write(gt / f"gt{i}.dng", mosaic)
        _write(pred / f"denoise{i}.dng", mosaic)
    good = subprocess.run(
        [sys.executable, "tools/score.py", str(pred), str(gt), "--json"], capture_output=True, text=True, cwd=ROOT
    )
    assert good.returncode == 0 and len(json.loads(good.stdout)["images"]) == 3, good.stderr
    hostile = _hostile(bases, tmp_path, "x", HUGE["20M rows in 1-row strips"])
    shutil.move(hostile, pred / "denoise1.dng")
    result = subprocess.run(
        [sys.executable, "tools/score.py", str(pred), str(gt), "--json"], capture_output=True, text=True, cwd=ROOT
    )
    _one_error_line(result, pred / "denoise1.dng")
    assert "needs 20000000 strips" in result.stderr and result.stdout == ""


def test_make_patches_cli_names_a_hostile_training_frame(bases, tmp_path):
    rng = np.random.default_rng(4)
    data = tmp_path / "data"
    for i in range(2):
        mosaic = _frame(rng, (96, 96))
        noisy, gt = ZTE.layout.train_noisy.path(data, i), ZTE.layout.train_gt.path(data, i)
        noisy.parent.mkdir(parents=True, exist_ok=True)
        gt.parent.mkdir(parents=True, exist_ok=True)
        _write(noisy, mosaic)
        _write(gt, mosaic)
    hostile = _hostile(bases, tmp_path, "x", HUGE["2^31 rows in 32x32 tiles"])
    target = ZTE.layout.train_noisy.path(data, 1)
    shutil.move(hostile, target)
    command = [sys.executable, "train/make_patches.py", "--data", str(data), "--out", str(tmp_path / "store")]
    command += ["--patch-size", "16", "--val-frames", "0", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    _one_error_line(result, target)
    assert "needs 134217728 tiles" in result.stderr
    assert not (tmp_path / "store" / "meta.json").exists()
