"""Where a DNG keeps its raw pixels, read from its TIFF structure rather than assumed.

A DNG is a TIFF: a header, a chain of IFDs (and SubIFDs) whose tags give the image size, sample
format, compression and the byte ranges (strips or tiles) that hold the pixels. The contest's own
script wrote pixels at "file size minus image size", which breaks on any file whose pixel data is not
last. This module finds the full-resolution CFA image wherever it is, checks every range lies inside
the file, and reports the layout; raw.write_back uses it to overwrite exactly those bytes.

tifffile parses the structure (IFD chain, SubIFDs, tag types and values, both byte orders). It is
built to display as much of a damaged file as it can, so it repairs quietly where we must refuse: it
truncates an over-long offset list to the strip count, invents missing byte counts, ends a chain at a
bad pointer, follows IFD loops for ever when walked page by page, and it crashes with TypeError or
IndexError on a tag that has no values. So locate_raw works in two steps: `_read_ifds` lets tifffile
read the tag values we need into plain tuples, under a byte budget and with its log muted, and turns
anything it raises into one InputError; `_layout` then checks those values itself, and checks every
declared size against the file before building anything as large as the declaration.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from rawdenoise.errors import InputError

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
TILE_WIDTH = 322
TILE_LENGTH = 323
TILE_OFFSETS = 324
TILE_BYTE_COUNTS = 325
SUB_IFDS = 330
DNG_VERSION = 50706
NOISE_PROFILE = 51041
PHOTOMETRIC_CFA = 32803

_INTEGER_TAGS = {
    NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC, STRIP_OFFSETS,
    SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS,
    TILE_BYTE_COUNTS, SUB_IFDS,
}  # fmt: skip
_READ_TAGS = _INTEGER_TAGS | {NOISE_PROFILE}
_INTEGER_TYPES = {1, 3, 4, 6, 8, 9, 13, 16, 17, 18}  # BYTE SHORT LONG SBYTE SSHORT SLONG IFD LONG8 SLONG8 IFD8
_DOUBLE = 12

_MAX_IFDS = 256
# Bytes tifffile may read to parse the structure. It never reads pixels here, only IFDs and tag
# values: kilobytes in a real DNG. It keeps some tag arrays as Python tuples (up to ~18 bytes of
# memory per stored byte) and reads a repeated tag once per copy, so without a budget a 450 KB file
# repeating one tag 4096 times made it use gigabytes.
_STRUCTURE_BUDGET = 4 << 20
# Deflate's theoretical best is about 1032:1; no codec a DNG uses does better on real sensor data.
_MAX_COMPRESSION_RATIO = 1032


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


@dataclass
class _Ifd:
    """One IFD as plain values: {tag: (TIFF type, values)} for the tags locate_raw reads."""

    offset: int
    tags: dict[int, tuple[int, tuple]]
    dng: bool  # has DNGVersion


class _OverBudget(Exception):
    """tifffile tried to read more structure than any DNG has (deliberately not an OSError or
    ValueError, which tifffile catches and logs in places)."""


class _MeteredStream:
    """The file as tifffile sees it: reads are counted, and refused once past the budget."""

    def __init__(self, f, size: int, budget: int):
        self._f = f
        self._size = size
        self.left = budget

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, size: int = -1) -> bytes:
        left_in_file = max(self._size - self._f.tell(), 0)
        self._spend(left_in_file if size < 0 else min(size, left_in_file))
        return self._f.read(size)

    def readinto(self, buffer) -> int:
        self._spend(memoryview(buffer).nbytes)
        return self._f.readinto(buffer)

    def _spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _OverBudget


_muted = threading.local()


class _MuteWhileLocating(logging.Filter):
    """Drop tifffile's log records on a thread inside locate_raw: what they report either becomes our
    one InputError or does not matter, and a CLI's stderr must carry only that one line (with no
    handler configured, Python prints warnings from any library to stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_muted, "active", False)


logging.getLogger("tifffile").addFilter(_MuteWhileLocating())


def locate_raw(source: str | os.PathLike | bytes, name: str | None = None) -> RawLayout:
    """Find the full-resolution CFA image of a DNG and where each of its strips or tiles lies.

    `source` is a path or the file's bytes (then `name` says what to call it in messages). Raises
    InputError, its message starting with the file's name, for a file that is not a DNG, has no CFA
    image, has a corrupt structure, or whose declared pixel data runs past the end of the file or
    could not fit in it (truncated, or claims made to exhaust memory).
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
        size = f.seek(0, io.SEEK_END)
        byteorder = _check_header(path, f, size)
        ifds = _read_ifds(path, f, size)
    if not ifds[0].dng:
        raise InputError(f"{path}: not a DNG (a TIFF without the DNGVersion tag)")
    raws = [
        ifd
        for ifd in ifds
        if _scalar(path, ifd, PHOTOMETRIC, 0) == PHOTOMETRIC_CFA
        and _scalar(path, ifd, NEW_SUBFILE_TYPE, 0) == 0
    ]
    if not raws:
        raise InputError(f"{path}: no full-resolution CFA image in this DNG (PhotometricInterpretation 32803)")
    return _layout(path, size, byteorder, raws[0], ifds[0])


def _check_header(path, f, size: int) -> str:
    """Refuse what is not a classic TIFF ourselves: tifffile also opens BigTIFF and several camera
    formats with TIFF-like headers, none of which is a DNG. Returns the byte order."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        raise InputError(f"{path}: not a DNG (no TIFF header)")
    byteorder = "<" if head[:2] == b"II" else ">"
    magic, first = struct.unpack(byteorder + "HI", head[2:8])
    if magic == 43:
        raise InputError(f"{path}: BigTIFF files are not DNGs")
    if magic != 42:
        raise InputError(f"{path}: not a DNG (bad TIFF magic number {magic})")
    if not 8 <= first < size:
        raise InputError(
            f"{path}: truncated or corrupt (first IFD at byte {first}, outside the {size}-byte file)"
        )
    return byteorder


def _read_ifds(path, f, size: int) -> list[_Ifd]:
    """Every IFD of the main chain, then (breadth first) the SubIFDs, as tifffile parses them.

    tifffile's log is muted and its reads are budgeted; whatever it raises means it could not parse
    the file and becomes an InputError. Loops and absurd IFD counts are refused here."""
    f.seek(0)  # tifffile takes the stream's position as the start of the file
    stream = _MeteredStream(f, size, _STRUCTURE_BUDGET)
    was_muted = getattr(_muted, "active", False)
    _muted.active = True
    try:
        with tifffile.TiffFile(stream, is_ndpi=False, is_lsm=False, is_scanimage=False) as tif:
            found, pages, seen = [], [], set()

            def visit(page) -> None:
                if page.offset in seen:
                    raise InputError(
                        f"{path}: corrupt TIFF structure (a loop: the IFD at byte {page.offset} is reached twice)"
                    )
                if len(seen) >= _MAX_IFDS:
                    raise InputError(f"{path}: corrupt TIFF structure (more than {_MAX_IFDS} IFDs)")
                seen.add(page.offset)
                found.append(_plain(path, page, size))
                pages.append(page)

            for page in tif.pages:  # walked one by one: a loop goes on until `visit` sees a repeat
                visit(page)
            k = 0
            while k < len(pages):  # SubIFDs of every IFD found so far, theirs included
                subpages = pages[k].pages if SUB_IFDS in found[k].tags else None
                for j in range(len(subpages or ())):
                    visit(subpages.get(j))
                k += 1
            return found
    except _OverBudget:
        raise InputError(
            f"{path}: corrupt TIFF structure (its IFDs and tag values exceed {_STRUCTURE_BUDGET >> 20} MiB; "
            "a DNG's take kilobytes)"
        ) from None
    except (InputError, OSError):
        raise
    except Exception as err:  # tifffile raises TiffFileError, TypeError, IndexError, struct.error ...
        raise InputError(
            f"{path}: corrupt TIFF structure, tifffile cannot parse it ({type(err).__name__}: {err})"
        ) from None
    finally:
        _muted.active = was_muted


def _plain(path, page, size: int) -> _Ifd:
    """The tags we read from one tifffile page, as (type, tuple of values); SubIFD pointers checked
    (tifffile silently skips a first SubIFD that lies past the end of the file)."""
    tags = {}
    for code in _READ_TAGS:
        tag = page.tags.get(code)
        if tag is not None:
            value = tag.value
            if isinstance(value, (bytes, bytearray)):
                value = tuple(value)
            elif isinstance(value, np.ndarray):
                value = tuple(value.ravel().tolist())
            elif not isinstance(value, tuple):
                value = (value,)
            tags[code] = (int(tag.dtype), value)
    for offset in _ints(path, _Ifd(page.offset, tags, False), SUB_IFDS, ()):
        if not 8 <= offset < size:
            raise InputError(
                f"{path}: truncated or corrupt (SubIFD at byte {offset}, outside the {size}-byte file)"
            )
    return _Ifd(page.offset, tags, DNG_VERSION in page.tags)


def _name(code: int) -> str:
    return tifffile.TIFF.TAGS.get(code, f"tag {code}")


def _ints(path, ifd: _Ifd, code: int, default: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The values of an integer tag; `default` if it is absent (None: it is required)."""
    if code not in ifd.tags:
        if default is None:
            raise InputError(f"{path}: the raw image (IFD at byte {ifd.offset}) has no {_name(code)} tag")
        return default
    typ, values = ifd.tags[code]
    if typ not in _INTEGER_TYPES:
        raise InputError(f"{path}: {_name(code)} (IFD at byte {ifd.offset}) has non-integer TIFF type {typ}")
    return tuple(int(v) for v in values)


def _scalar(path, ifd: _Ifd, code: int, default: int | None = None) -> int:
    """The one value of an integer tag (a count of 0 or 2 is corruption, not a default)."""
    values = _ints(path, ifd, code, None if default is None else (default,))
    if len(values) != 1:
        raise InputError(
            f"{path}: corrupt TIFF structure ({_name(code)} in the IFD at byte {ifd.offset} "
            f"has {len(values)} values, 1 expected)"
        )
    return values[0]


def _layout(path, size: int, byteorder: str, raw: _Ifd, ifd0: _Ifd) -> RawLayout:
    """Check the raw IFD's values and list its segments. Every size the file declares is weighed
    against the file before anything proportional to it is built, here or later by LibRaw."""
    width, height = _scalar(path, raw, IMAGE_WIDTH), _scalar(path, raw, IMAGE_LENGTH)
    if width <= 0 or height <= 0:
        raise InputError(f"{path}: raw image has no size ({width}x{height})")
    spp = _scalar(path, raw, SAMPLES_PER_PIXEL, 1)
    if spp != 1:
        raise InputError(f"{path}: raw image has {spp} samples per pixel, a CFA image has 1")
    bits = _ints(path, raw, BITS_PER_SAMPLE, (1,))
    if not bits or not 1 <= bits[0] <= 32:
        raise InputError(f"{path}: raw image has {bits[0] if bits else 'no'} bits per sample (1 to 32 expected)")
    bits = bits[0]
    compression = _scalar(path, raw, COMPRESSION, 1)

    tiled = TILE_OFFSETS in raw.tags
    offsets_tag, counts_tag = (TILE_OFFSETS, TILE_BYTE_COUNTS) if tiled else (STRIP_OFFSETS, STRIP_BYTE_COUNTS)
    offsets, counts = _ints(path, raw, offsets_tag), _ints(path, raw, counts_tag)
    if tiled:
        tw, tl = _scalar(path, raw, TILE_WIDTH), _scalar(path, raw, TILE_LENGTH)
        if tw <= 0 or tl <= 0:
            raise InputError(f"{path}: corrupt raw image: tiles of TileWidth {tw} and TileLength {tl}")
        across, down = -(-width // tw), -(-height // tl)
        needed, what = across * down, f"in {tl}x{tw} tiles"
    else:
        rps = _scalar(path, raw, ROWS_PER_STRIP, height)
        if rps <= 0:
            raise InputError(f"{path}: corrupt raw image: RowsPerStrip is {rps}")
        rps = min(rps, height)
        needed, what = -(-height // rps), f"with RowsPerStrip {rps}"
    if len(offsets) != needed or len(counts) != needed:
        raise InputError(
            f"{path}: corrupt raw image: a {height}x{width} image {what} needs {needed} "
            f"{'tiles' if tiled else 'strips'}; the file lists {len(offsets)} {_name(offsets_tag)} "
            f"and {len(counts)} {_name(counts_tag)}"
        )

    pixel_bytes = math.ceil(width * bits / 8) * height
    if compression == 1 and pixel_bytes > size:
        raise InputError(
            f"{path}: truncated or corrupt: a {height}x{width} {bits}-bit raw image needs {pixel_bytes} bytes, "
            f"the whole file has {size}"
        )
    stored = min(sum(counts), size)
    if compression != 1 and pixel_bytes > _MAX_COMPRESSION_RATIO * stored:
        raise InputError(
            f"{path}: corrupt raw image: {stored} bytes of compressed data (TIFF Compression {compression}) "
            f"cannot hold a {height}x{width} {bits}-bit image ({pixel_bytes} bytes, more than "
            f"{_MAX_COMPRESSION_RATIO}:1)"
        )

    segments = []
    for k, (offset, count) in enumerate(zip(offsets, counts)):
        if tiled:
            top, left, rows, stride = (k // across) * tl, (k % across) * tw, tl, tw
        else:
            top, left, rows, stride = k * rps, 0, min(rps, height - k * rps), width
        seg = Segment(offset, count, top, left, rows, stride, min(rows, height - top), min(stride, width - left))
        _check_segment(path, size, seg, tiled, compression, bits)
        segments.append(seg)
    return RawLayout(
        path=path,
        byteorder=byteorder,
        height=height,
        width=width,
        bits_per_sample=bits,
        compression=compression,
        tiled=tiled,
        segments=tuple(segments),
        noise_profile=_noise_profile(raw) or _noise_profile(ifd0),
    )


def _check_segment(path, size: int, seg: Segment, tiled: bool, compression: int, bits: int) -> None:
    """A strip or tile must lie inside the file, after the header, and (uncompressed) hold all its
    samples: LibRaw decodes a short one as zeros without a word."""
    kind = "tile" if tiled else "strip"
    if seg.offset < 8:
        raise InputError(f"{path}: corrupt raw image: {kind} data at byte {seg.offset} overlaps the TIFF header")
    if seg.offset + seg.byte_count > size:
        raise InputError(
            f"{path}: truncated or corrupt: {kind} data at byte {seg.offset}+{seg.byte_count} lies outside "
            f"the {size}-byte file"
        )
    needed = seg.rows * math.ceil(seg.stride * bits / 8)
    if compression == 1 and seg.byte_count < needed:
        raise InputError(
            f"{path}: corrupt raw image: the {kind} at byte {seg.offset} holds {seg.byte_count} bytes, its "
            f"{seg.rows}x{seg.stride} {bits}-bit samples need {needed}"
        )


def _noise_profile(ifd: _Ifd) -> tuple[float, ...] | None:
    typ, values = ifd.tags.get(NOISE_PROFILE, (None, ()))
    return tuple(float(v) for v in values) if typ == _DOUBLE and values else None
