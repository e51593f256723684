"""Where a DNG keeps its raw pixels, read from its TIFF structure rather than assumed.

A DNG is a TIFF: a header, a chain of IFDs (and SubIFDs) whose tags give the image size, sample
format, compression and the byte ranges (strips or tiles) that hold the pixels. The contest's own
script wrote pixels at "file size minus image size", which breaks on any file whose pixel data is not
last. This module finds the full-resolution CFA image wherever it is, checks every range lies inside
the file, and reports the layout; raw.write_back uses it to overwrite exactly those bytes.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from rawdenoise.errors import InputError

# TIFF field types -> size in bytes
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_INTEGER_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}

NEW_SUBFILE_TYPE = 254
IMAGE_WIDTH = 256
IMAGE_LENGTH = 257
BITS_PER_SAMPLE = 258
COMPRESSION = 259
PHOTOMETRIC = 262
STRIP_OFFSETS = 273
SAMPLES_PER_PIXEL = 277
ROWS_PER_STRIP = 278
STRIP_BYTE_COUNTS = 279
PLANAR_CONFIG = 284
TILE_WIDTH = 322
TILE_LENGTH = 323
TILE_OFFSETS = 324
TILE_BYTE_COUNTS = 325
SUB_IFDS = 330
DNG_VERSION = 50706
NOISE_PROFILE = 51041
PHOTOMETRIC_CFA = 32803

_MAX_IFDS = 256


@dataclass(frozen=True)
class Segment:
    """One strip or tile: `rows` x `stride` samples stored at `offset`, holding image rows from `top`
    and columns from `left`; only the first `height` rows and `width` columns lie inside the image
    (tiles at the right and bottom edges carry padding)."""

    offset: int
    byte_count: int
    top: int
    left: int
    rows: int
    stride: int
    height: int
    width: int


@dataclass(frozen=True)
class RawLayout:
    path: Path | str
    byteorder: str  # "<" or ">"
    height: int
    width: int
    bits_per_sample: int
    compression: int
    tiled: bool
    segments: tuple[Segment, ...]
    noise_profile: tuple[float, ...] | None

    @property
    def sample_dtype(self) -> str:
        return f"{self.byteorder}u2"


class _Reader:
    def __init__(self, path: Path | str, f):
        self.path = path
        self.f = f
        self.size = f.seek(0, io.SEEK_END)
        head = self._read(0, 8, "header")
        if head[:2] == b"II":
            self.bo = "<"
        elif head[:2] == b"MM":
            self.bo = ">"
        else:
            raise InputError(f"{path}: not a DNG (no TIFF header)")
        magic = struct.unpack(self.bo + "H", head[2:4])[0]
        if magic == 43:
            raise InputError(f"{path}: BigTIFF files are not DNGs")
        if magic != 42:
            raise InputError(f"{path}: not a DNG (bad TIFF magic number {magic})")
        self.first_ifd = struct.unpack(self.bo + "I", head[4:8])[0]

    def _read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise InputError(
                f"{self.path}: truncated or corrupt ({what} at byte {offset}+{length} "
                f"lies past the end of the {self.size}-byte file)"
            )
        self.f.seek(offset)
        return self.f.read(length)

    def ifd(self, offset: int) -> tuple[dict[int, tuple[int, int, bytes]], int]:
        """Return ({tag: (type, count, raw value bytes)}, next IFD offset)."""
        count = struct.unpack(self.bo + "H", self._read(offset, 2, "IFD"))[0]
        body = self._read(offset + 2, 12 * count + 4, "IFD entries")
        entries = {}
        for k in range(count):
            tag, typ, n, value = struct.unpack(self.bo + "HHI4s", body[12 * k : 12 * k + 12])
            size = _TYPE_SIZES.get(typ)
            if size is None:
                continue  # unknown types are legal; we never need them
            length = size * n
            if length <= 4:
                data = value[:length]
            elif tag in _WANTED:
                data = self._read(struct.unpack(self.bo + "I", value)[0], length, f"tag {tag} value")
            else:
                data = b""
            entries[tag] = (typ, n, data)
        next_ifd = struct.unpack(self.bo + "I", body[12 * count : 12 * count + 4])[0]
        return entries, next_ifd

    def ints(self, entries, tag: int, default=None) -> list[int] | None:
        if tag not in entries:
            return default
        typ, n, data = entries[tag]
        fmt = _INTEGER_FORMATS.get(typ)
        if fmt is None:
            raise InputError(f"{self.path}: tag {tag} has non-integer type {typ}")
        return list(struct.unpack(f"{self.bo}{n}{fmt}", data))

    def doubles(self, entries, tag: int) -> tuple[float, ...] | None:
        if tag not in entries or entries[tag][0] != 12:
            return None
        typ, n, data = entries[tag]
        return struct.unpack(f"{self.bo}{n}d", data)


_WANTED = {
    NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC, STRIP_OFFSETS,
    SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS, PLANAR_CONFIG, TILE_WIDTH, TILE_LENGTH,
    TILE_OFFSETS, TILE_BYTE_COUNTS, SUB_IFDS, DNG_VERSION, NOISE_PROFILE,
}  # fmt: skip


def _all_ifds(reader: _Reader) -> list[dict]:
    """Every IFD in the main chain and, depth first, in their SubIFDs; loops are corruption."""
    found, seen = [], set()
    pending = [reader.first_ifd]
    while pending:
        offset = pending.pop(0)
        while offset:
            if offset in seen or len(seen) >= _MAX_IFDS:
                raise InputError(f"{reader.path}: corrupt TIFF structure (IFD chain loops)")
            seen.add(offset)
            entries, offset_next = reader.ifd(offset)
            found.append(entries)
            pending.extend(reader.ints(entries, SUB_IFDS, []))
            offset = offset_next
    return found


def locate_raw(source: str | os.PathLike | bytes, name: str | None = None) -> RawLayout:
    """Find the full-resolution CFA image of a DNG and where each of its strips or tiles lies.

    `source` is a path or the file's bytes (then `name` says what to call it in messages). Raises
    InputError for a file that is not a DNG, has no CFA image, or whose declared pixel ranges run
    past the end of the file (truncated).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        path, f = name or "<bytes>", io.BytesIO(source)
    else:
        path = Path(source)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as err:
            raise InputError(f"{path}: cannot open ({err.strerror})") from None
    with f:
        reader = _Reader(path, f)
        ifds = _all_ifds(reader)
        if DNG_VERSION not in ifds[0]:
            raise InputError(f"{path}: not a DNG (a TIFF without the DNGVersion tag)")
        raws = [
            e
            for e in ifds
            if reader.ints(e, PHOTOMETRIC, [0])[0] == PHOTOMETRIC_CFA and reader.ints(e, NEW_SUBFILE_TYPE, [0])[0] == 0
        ]
        if not raws:
            raise InputError(f"{path}: no full-resolution CFA image in this DNG (PhotometricInterpretation 32803)")
        return _layout(reader, raws[0], ifds[0])


def _layout(reader: _Reader, e: dict, ifd0: dict) -> RawLayout:
    path = reader.path
    width = reader.ints(e, IMAGE_WIDTH, [0])[0]
    height = reader.ints(e, IMAGE_LENGTH, [0])[0]
    if width <= 0 or height <= 0:
        raise InputError(f"{path}: raw image has no size")
    bits = reader.ints(e, BITS_PER_SAMPLE, [1])
    spp = reader.ints(e, SAMPLES_PER_PIXEL, [1])[0]
    compression = reader.ints(e, COMPRESSION, [1])[0]
    if spp != 1:
        raise InputError(f"{path}: raw image has {spp} samples per pixel, a CFA image has 1")
    tiled = TILE_OFFSETS in e
    if tiled:
        tw, tl = reader.ints(e, TILE_WIDTH, [0])[0], reader.ints(e, TILE_LENGTH, [0])[0]
        offsets, counts = reader.ints(e, TILE_OFFSETS), reader.ints(e, TILE_BYTE_COUNTS, [])
        if tw <= 0 or tl <= 0:
            raise InputError(f"{path}: tiled raw image without a tile size")
        across, down = -(-width // tw), -(-height // tl)
        grid = [(r * tl, c * tw, tl, tw) for r in range(down) for c in range(across)]
    else:
        rps = min(reader.ints(e, ROWS_PER_STRIP, [height])[0], height)
        offsets, counts = reader.ints(e, STRIP_OFFSETS, []), reader.ints(e, STRIP_BYTE_COUNTS, [])
        if rps <= 0:
            raise InputError(f"{path}: RowsPerStrip is 0")
        grid = [(top, 0, min(rps, height - top), width) for top in range(0, height, rps)]
    if not offsets or len(offsets) != len(grid) or len(counts) != len(grid):
        raise InputError(
            f"{path}: corrupt raw image: {len(offsets or [])} {'tiles' if tiled else 'strips'} declared "
            f"with {len(counts)} byte counts, the image size needs {len(grid)}"
        )
    segments = []
    for offset, count, (top, left, rows, stride) in zip(offsets, counts, grid):
        if offset + count > reader.size:
            raise InputError(
                f"{path}: truncated: pixel data at byte {offset}+{count} runs past the end "
                f"of the {reader.size}-byte file"
            )
        segments.append(
            Segment(offset, count, top, left, rows, stride, min(rows, height - top), min(stride, width - left))
        )
    return RawLayout(
        path=path,
        byteorder=reader.bo,
        height=height,
        width=width,
        bits_per_sample=bits[0],
        compression=compression,
        tiled=tiled,
        segments=tuple(segments),
        noise_profile=reader.doubles(e, NOISE_PROFILE) or reader.doubles(ifd0, NOISE_PROFILE),
    )
