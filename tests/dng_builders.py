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
