"""Hand-built DNGs for tests: files laid out the way other writers do it, independent of our writer."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_TYPES = {"B": (1, 1), "H": (3, 2), "I": (4, 4), "s": (2, 1)}


def write_pidng_style(path: Path, mosaic: np.ndarray, cfa_codes: tuple[int, ...], black, white: int) -> None:
    """A DNG shaped like PiDNG's output (the contest's files): one IFD, the whole image as a single
    tile, tag values after the IFD and the pixel data last in the file. black: 2x2 per position."""
    h, w = mosaic.shape
    pixels = mosaic.astype("<u2").tobytes()
    tags = [
        (254, "I", [0]), (256, "I", [w]), (257, "I", [h]), (258, "H", [16]), (259, "H", [1]),
        (262, "H", [32803]), (277, "H", [1]), (284, "H", [1]), (305, "s", b"PiDNG\0"),
        (322, "I", [w]), (323, "I", [h]), (324, "I", [0]), (325, "I", [len(pixels)]),
        (33421, "H", [2, 2]), (33422, "B", list(cfa_codes)), (50706, "B", [1, 4, 0, 0]),
        (50707, "B", [1, 0, 0, 0]), (50713, "H", [2, 2]),
        (50714, "I", [int(v) for v in np.asarray(black).ravel()]), (50717, "I", [white]),
    ]  # fmt: skip
    ifd_size = 2 + 12 * len(tags) + 4
    extra = bytearray()
    extra_start = 8 + ifd_size
    entries = []
    for tag, kind, values in tags:
        code, size = _TYPES[kind]
        payload = values if kind == "s" else struct.pack(f"<{len(values)}{kind}", *values)
        count = len(payload) // size
        entries.append([tag, code, count, payload])
    data_offset = extra_start + sum(len(e[3]) for e in entries if len(e[3]) > 4) + 16  # a few spare bytes
    for entry in entries:
        if entry[0] == 324:
            entry[3] = struct.pack("<I", data_offset)
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, code, count, payload in entries:
        if len(payload) <= 4:
            out += struct.pack("<HHI", tag, code, count) + payload.ljust(4, b"\0")
        else:
            out += struct.pack("<HHII", tag, code, count, extra_start + len(extra))
            extra += payload
    out += struct.pack("<I", 0) + extra
    out += b"\xab" * (data_offset - len(out))  # filler that write-back must keep
    out += pixels
    Path(path).write_bytes(bytes(out))


# Patching a file's IFD0 in place: malformed structures for the hostile-input tests, made from a
# valid DNG so that every field but the one under test stays sound.

_FIELD_TYPES = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 13: "I"}  # TIFF types a patched value may take


def ifd0_entries(data: bytes) -> dict[int, int]:
    """{tag code: byte position of its 12-byte entry} for the first IFD of a classic TIFF."""
    bo = "<" if data[:2] == b"II" else ">"
    first = struct.unpack(bo + "I", data[4:8])[0]
    count = struct.unpack(bo + "H", data[first : first + 2])[0]
    entries = {}
    for k in range(count):
        pos = first + 2 + 12 * k
        entries[struct.unpack(bo + "H", data[pos : pos + 2])[0]] = pos
    return entries


def patch_tag(
    data: bytearray, code: int, *, field_type: int | None = None, count: int | None = None, value: int | None = None
) -> None:
    """Rewrite the type, count or inline value of tag `code` in IFD0. `value` is stored in the entry's
    4-byte field as one number of the (new) type, left-justified as TIFF keeps short inline values."""
    bo = "<" if data[:2] == b"II" else ">"
    pos = ifd0_entries(data)[code]
    old_type, old_count = struct.unpack(bo + "HI", data[pos + 2 : pos + 8])
    field_type = old_type if field_type is None else field_type
    count = old_count if count is None else count
    data[pos + 2 : pos + 8] = struct.pack(bo + "HI", field_type, count)
    if value is not None:
        fmt = _FIELD_TYPES[field_type]
        data[pos + 8 : pos + 12] = struct.pack(bo + fmt, value).ljust(4, b"\0")


def set_next_ifd(data: bytearray, offset: int) -> None:
    """Point IFD0's next-IFD field at `offset` (0 ends the chain)."""
    bo = "<" if data[:2] == b"II" else ">"
    first = struct.unpack(bo + "I", data[4:8])[0]
    count = struct.unpack(bo + "H", data[first : first + 2])[0]
    data[first + 2 + 12 * count : first + 6 + 12 * count] = struct.pack(bo + "I", offset)


def append_ifd_ring(data: bytearray, length: int) -> None:
    """Append `length` small IFDs (one thumbnail-flag tag each) chained in a ring, and lead IFD0 into
    it: a loop longer than the window in which some readers look for repeats."""
    bo = "<" if data[:2] == b"II" else ">"
    data += b"\0" * (len(data) % 2)
    start, size = len(data), 2 + 12 + 4
    for k in range(length):
        following = start + size * ((k + 1) % length)
        data += struct.pack(bo + "HHHII", 1, 254, 4, 1, 1) + struct.pack(bo + "I", following)
    set_next_ifd(data, start)
