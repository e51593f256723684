"""Raw frames: read a Bayer DNG, pack its mosaic into 4 channels, normalise, and write DNGs back.

Conventions (docs/ARCHITECTURE.md): a packed frame is `(4, H/2, W/2)` in the canonical order R, Gr, Gb, B
whatever the CFA (Gr shares a row with R, Gb with B), so channel k always means the same colour;
normalised values are `(dn - black) / (white - black)`; going back rounds and clips to [black, white].
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rawpy
import tifffile

from rawdenoise.contest import CFA_PATTERNS
from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path, write_bytes_atomic
from rawdenoise.tiff import RawLayout, locate_raw

CHANNELS = ("R", "Gr", "Gb", "B")
# A packed frame's channels R, Gr, Gb, B are exactly the 2x2 sites of an RGGB mosaic, whatever the
# camera's CFA: the mosaic where flips and transposes act while keeping each channel's colour.
CANONICAL_CFA = "RGGB"
_CFA_CODES = {"R": 0, "G": 1, "B": 2}  # the DNG CFAPattern tag's colour codes


def channel_positions(cfa: str) -> tuple[tuple[int, int], ...]:
    """(row, col) inside the 2x2 tile of R, Gr, Gb, B for a CFA string such as "BGGR"."""
    cfa = cfa.upper()
    if cfa not in CFA_PATTERNS:
        raise InputError(f"unsupported CFA {cfa!r}: expected one of {', '.join(CFA_PATTERNS)}")
    cells = {(r, c): cfa[2 * r + c] for r in range(2) for c in range(2)}
    red = next(p for p, colour in cells.items() if colour == "R")
    blue = next(p for p, colour in cells.items() if colour == "B")
    green_red_row = next(p for p, colour in cells.items() if colour == "G" and p[0] == red[0])
    green_blue_row = next(p for p, colour in cells.items() if colour == "G" and p[0] == blue[0])
    return (red, green_red_row, green_blue_row, blue)


def _check_mosaic(mosaic: np.ndarray, what: str = "mosaic") -> np.ndarray:
    mosaic = np.asarray(mosaic)
    if mosaic.ndim != 2:
        raise ValueError(f"{what} must be 2-D (H, W), got shape {mosaic.shape}")
    if mosaic.shape[0] % 2 or mosaic.shape[1] % 2 or 0 in mosaic.shape:
        raise ValueError(f"{what} needs even, non-zero height and width for a 2x2 CFA, got {mosaic.shape}")
    return mosaic


def pack(mosaic: np.ndarray, cfa: str) -> np.ndarray:
    """(H, W) mosaic -> (4, H/2, W/2) in R, Gr, Gb, B order; same dtype."""
    mosaic = _check_mosaic(mosaic)
    return np.stack([mosaic[r::2, c::2] for r, c in channel_positions(cfa)])


def unpack(packed: np.ndarray, cfa: str) -> np.ndarray:
    """The exact inverse of `pack`."""
    packed = np.asarray(packed)
    if packed.ndim != 3 or packed.shape[0] != 4 or 0 in packed.shape:
        raise ValueError(f"packed must be (4, H/2, W/2), got shape {packed.shape}")
    _, h, w = packed.shape
    mosaic = np.empty((2 * h, 2 * w), dtype=packed.dtype)
    for k, (r, c) in enumerate(channel_positions(cfa)):
        mosaic[r::2, c::2] = packed[k]
    return mosaic


def canonical_mosaic(packed: np.ndarray) -> np.ndarray:
    """A packed frame as the mosaic its channels make in canonical order (CANONICAL_CFA)."""
    return unpack(packed, CANONICAL_CFA)


def pack_canonical(mosaic: np.ndarray) -> np.ndarray:
    """The inverse of canonical_mosaic: a canonical (RGGB-phased) mosaic back to a packed frame."""
    return pack(mosaic, CANONICAL_CFA)


def dihedral(mosaic: np.ndarray, op: int, inverse: bool = False) -> np.ndarray:
    """One of the 8 flips and transposes of a mosaic (a view): op bit 2 transposes (first), bit 0
    mirrors left-right, bit 1 top-bottom; `inverse` undoes it.

    A transpose keeps an RGGB mosaic RGGB (R and B stay on the diagonal, the two greens trade places);
    a mirrored axis starts one site late in the CFA phase: see `phase_offset`."""
    if op & 4 and not inverse:
        mosaic = mosaic.T
    if op & 1:
        mosaic = mosaic[:, ::-1]
    if op & 2:
        mosaic = mosaic[::-1, :]
    if op & 4 and inverse:
        mosaic = mosaic.T
    return mosaic


def phase_offset(op: int) -> tuple[int, int]:
    """(rows, columns) by which `dihedral(mosaic, op)` must be shifted to restore the CFA phase."""
    return op >> 1 & 1, op & 1


def _black_grid(black) -> np.ndarray:
    black = np.asarray(black, dtype=np.float64)
    if black.ndim == 0:
        return np.full((2, 2), float(black))
    if black.shape != (2, 2):
        raise ValueError(f"black must be a number or a 2x2 array per mosaic position, got shape {black.shape}")
    return black


def _tiles(mosaic: np.ndarray) -> np.ndarray:
    """View (H, W) as (H/2, 2, W/2, 2) so a 2x2 per-position array broadcasts as [None, :, None, :]."""
    h, w = mosaic.shape
    return mosaic.reshape(h // 2, 2, w // 2, 2)


def normalise(mosaic: np.ndarray, black, white: int) -> np.ndarray:
    """DN mosaic -> float32 (dn - black) / (white - black), black per mosaic position."""
    mosaic = _check_mosaic(mosaic)
    grid = _black_grid(black)
    out = np.empty(mosaic.shape, dtype=np.float32)
    for r in range(2):
        for c in range(2):
            _normalise_site(mosaic[r::2, c::2], grid[r, c], white, out[r::2, c::2])
    return out


def denormalise(x: np.ndarray, black, white: int) -> np.ndarray:
    """Normalised float mosaic -> uint16 DN, rounded to nearest (half to even) and clipped to
    [black, white], black per mosaic position; NaN becomes black."""
    x = _check_mosaic(x, "normalised mosaic")
    grid = _black_grid(black)
    out = np.empty(x.shape, dtype=np.uint16)
    for r in range(2):
        for c in range(2):
            _denormalise_site(x[r::2, c::2], grid[r, c], white, out[r::2, c::2])
    return out


def normalise_channels(dn: np.ndarray, black, white: float) -> np.ndarray:
    """(C, h, w) DN, packed, with one black level per channel -> float32 (dn - black) / (white - black)."""
    out = np.empty(dn.shape, dtype=np.float32)
    for k in range(dn.shape[0]):
        _normalise_site(dn[k], np.ravel(black)[k], white, out[k])
    return out


# One mosaic site (or packed channel) at a time, written straight into its destination: a frame's
# packing and normalising are one pass (RawFrame.packed, to_mosaic), with no whole-frame temporaries
# (a contest frame's float64 copy is 128 MB; predict's peak memory counts them).
def _normalise_site(dn: np.ndarray, black: float, white: int, out: np.ndarray) -> None:
    np.subtract(dn, np.float32(black), out=out, dtype=np.float32)
    out /= np.float32(white - black)


def _denormalise_site(x: np.ndarray, black: float, white: int, out: np.ndarray) -> None:
    dn = x.astype(np.float64)  # float64: float32 would round some values half-way to the wrong DN
    dn *= white - black
    dn += black
    np.rint(dn, out=dn)
    np.fmax(dn, black, out=dn)  # fmax, not clip: NaN becomes black
    np.minimum(dn, white, out=dn)
    out[...] = dn


@dataclass
class RawFrame:
    """A decoded DNG: the visible mosaic and the facts needed to interpret and write it back."""

    mosaic: np.ndarray  # uint16 (H, W)
    cfa: str  # e.g. "BGGR"
    black: np.ndarray  # int64 (2, 2), per mosaic position
    white: int
    path: Path
    noise_profile: tuple[float, ...] | None = field(default=None)

    def packed(self) -> np.ndarray:
        """Normalised float32 (4, H/2, W/2), R, Gr, Gb, B: pack(normalise(mosaic)) in one pass."""
        h, w = self.mosaic.shape
        out, black = np.empty((4, h // 2, w // 2), dtype=np.float32), _black_grid(self.black)
        for k, (r, c) in enumerate(channel_positions(self.cfa)):
            _normalise_site(self.mosaic[r::2, c::2], black[r, c], self.white, out[k])
        return out

    def to_mosaic(self, packed: np.ndarray) -> np.ndarray:
        """A normalised packed prediction -> uint16 mosaic in this frame's levels and CFA:
        denormalise(unpack(packed)) in one pass."""
        packed = np.asarray(packed)
        if packed.shape != (4, self.mosaic.shape[0] // 2, self.mosaic.shape[1] // 2):
            raise ValueError(f"packed prediction of shape {packed.shape} does not fit {self.path}'s {self.mosaic.shape} mosaic")
        out, black = np.empty(self.mosaic.shape, dtype=np.uint16), _black_grid(self.black)
        for k, (r, c) in enumerate(channel_positions(self.cfa)):
            _denormalise_site(packed[k], black[r, c], self.white, out[r::2, c::2])
        return out


def check_levels(frame: RawFrame, where) -> None:
    """Refuse a frame with values outside [black, white] (black per mosaic position): a prediction must
    lie there, as the contest requires."""
    tiles = _tiles(frame.mosaic)
    if (tiles.min(axis=(0, 2)) < frame.black).any() or frame.mosaic.max() > frame.white:
        low = int((tiles < frame.black[None, :, None, :]).sum())
        high = int((frame.mosaic > frame.white).sum())
        raise InputError(
            f"{where}: {low} values below the black level and {high} above the white level {frame.white}; "
            "predictions must lie in [black, white]"
        )


def check_prediction(pred: RawFrame, reference: RawFrame, where) -> None:
    """What makes a prediction of a frame (its input or its ground truth) valid: the reference's shape,
    and every value in [black, white]. Read both with the contest profile, which makes their CFA and
    levels the profile's (and so each other's)."""
    if pred.mosaic.shape != reference.mosaic.shape:
        raise InputError(f"{where}: shape {pred.mosaic.shape} differs from {reference.path.name}'s {reference.mosaic.shape}")
    check_levels(pred, where)


def read(path: str | os.PathLike, contest=None) -> RawFrame:
    """Read a Bayer DNG. With a contest profile, its CFA and levels must agree with the profile's."""
    path = Path(path)
    return decode(_read_bytes(path), path, contest)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None


def decode(data: bytes, name: str | os.PathLike, contest=None) -> RawFrame:
    """Decode a DNG held in memory (a zip member, say); `name` is what messages call it."""
    # The structure is parsed from the very bytes decoded (0.3 ms a frame): a layout located earlier
    # could describe another file that has since taken this one's name.
    layout = locate_raw(data, str(name))  # not a DNG, no CFA image, truncated: InputError naming it
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            mosaic = np.array(raw.raw_image_visible, dtype=np.uint16, copy=True)
            pattern = np.array(raw.raw_pattern)
            colours = raw.color_desc.decode("ascii", "replace")
            black_per_colour = list(raw.black_level_per_channel)
            white = int(raw.white_level)
            full_shape = raw.raw_image.shape
    except rawpy.LibRawError as err:
        raise InputError(f"{name}: rawpy cannot decode it ({type(err).__name__}: {err})") from None
    if pattern.shape != (2, 2) or sorted(pattern.ravel().tolist()) != [0, 1, 2, 3] or colours != "RGBG":
        raise InputError(f"{name}: not a 2x2 Bayer CFA (raw_pattern {pattern.tolist()}, colours {colours!r})")
    if mosaic.shape != full_shape or mosaic.shape != (layout.height, layout.width):
        raise InputError(
            f"{name}: DNG with margins or crop (visible {mosaic.shape}, stored {layout.height}x{layout.width}) "
            "is not supported"
        )
    try:
        _check_mosaic(mosaic)
    except ValueError as err:
        raise InputError(f"{name}: {err}") from None
    cfa = "".join(colours[i] for i in pattern.ravel())
    black = np.array([[black_per_colour[pattern[r, c]] for c in range(2)] for r in range(2)], dtype=np.int64)
    frame = RawFrame(mosaic, cfa, black, white, Path(name), layout.noise_profile)
    if contest is not None:
        contest.check_frame(frame)
    return frame


def write_dng(
    path: str | os.PathLike,
    mosaic: np.ndarray,
    cfa: str,
    black,
    white: int,
    *,
    noise_profile: tuple[float, float] | None = None,
    as_shot_neutral: tuple[float, float, float] | None = None,
    color_matrix: np.ndarray | None = None,
    camera: str = "rawdenoise synthetic camera",
    tile: tuple[int, int] | None = None,
    byteorder: str = "<",
    subifd: bool = False,
) -> None:
    """Write a new uncompressed 16-bit CFA DNG that rawpy reads back bit-exactly.

    noise_profile is the DNG NoiseProfile (S, O): variance = S*x + O on normalised x. as_shot_neutral
    is the camera-space neutral (1 / white-balance gains); color_matrix is XYZ(D65) -> camera, 3x3.
    tile (multiples of 16) writes tiles instead of strips; subifd puts the raw image in a SubIFD behind
    a small preview, as cameras do. The file appears only once complete.
    """
    mosaic = _check_mosaic(mosaic)
    if mosaic.dtype != np.uint16:
        raise ValueError(f"write_dng wants a uint16 mosaic, got {mosaic.dtype}")
    positions = {p: colour for p, colour in zip(channel_positions(cfa), CHANNELS)}
    pattern = [_CFA_CODES[positions[(r, c)][0]] for r in range(2) for c in range(2)]
    grid = _black_grid(black).astype(np.int64)
    tags = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, tuple(pattern), True),  # CFAPattern
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, "H", 1, 1, True),  # CFALayout: rectangular
        (50713, "H", 2, (2, 2), True),  # BlackLevelRepeatDim
        (50714, "I", 4, tuple(int(v) for v in grid.ravel()), True),  # BlackLevel
        (50717, "I", 1, int(white), True),  # WhiteLevel
    ]
    if noise_profile is not None:
        tags.append((51041, "d", len(noise_profile), tuple(float(v) for v in noise_profile), True))
    ifd0_tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, camera, True),  # UniqueCameraModel
        (271, "s", 0, "rawdenoise", True),  # Make
        (272, "s", 0, camera, True),  # Model
    ]
    if color_matrix is not None:
        cm = np.asarray(color_matrix, dtype=np.float64).ravel()
        ifd0_tags.append((50721, "2i", 9, tuple(v for x in cm for v in (int(round(x * 10000)), 10000)), True))
        ifd0_tags.append((50778, "H", 1, 21, True))  # CalibrationIlluminant1: D65
    if as_shot_neutral is not None:
        ifd0_tags.append(
            (50728, "2I", 3, tuple(v for x in as_shot_neutral for v in (int(round(x * 1_000_000)), 1_000_000)), True)
        )
    options = dict(photometric=32803, subfiletype=0, software=False, metadata=None)
    if tile is not None:
        options["tile"] = tuple(tile)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, byteorder=byteorder) as tif:
            if subifd:
                preview = np.zeros((16, 16, 3), dtype=np.uint8)
                tif.write(
                    preview, photometric="rgb", subfiletype=1, subifds=1, software=False, metadata=None,
                    extratags=ifd0_tags,
                )  # fmt: skip
                tif.write(mosaic, extratags=tags, **options)
            else:
                tif.write(mosaic, extratags=ifd0_tags + tags, **options)


def check_writable(layout: RawLayout) -> None:
    """Refuse a container whose raw pixels cannot be overwritten in place: compressed or not 16-bit."""
    if layout.compression != 1:
        raise InputError(
            f"{layout.path}: raw data is compressed (TIFF Compression {layout.compression}); "
            "predictions can only be written back into an uncompressed DNG container"
        )
    if layout.bits_per_sample != 16:
        raise InputError(
            f"{layout.path}: raw data has {layout.bits_per_sample}-bit samples; "
            "predictions can only be written back into 16-bit raw data"
        )


def write_back(container: str | os.PathLike, dest: str | os.PathLike, mosaic: np.ndarray) -> None:
    """Copy the DNG `container` to `dest` with its raw pixels replaced by `mosaic`; every other byte is kept.

    The pixel bytes are found from the TIFF structure of the bytes read here (strips or tiles, main IFD
    or SubIFD, either byte order), never from a layout located earlier: a container replaced since by
    another of the same size would otherwise get pixels at the old file's offsets. Padding in edge tiles
    keeps its old bytes. Compressed or non-16-bit raw data cannot be overwritten in place and is
    refused. dest appears only once complete.
    """
    container = Path(container)
    original = _read_bytes(container)
    layout = locate_raw(original, str(container))  # parsed from bytes, not the bytearray: BytesIO shares them
    data = bytearray(original)
    check_writable(layout)
    mosaic = np.asarray(mosaic)
    if mosaic.shape != (layout.height, layout.width):
        raise ValueError(f"mosaic shape {mosaic.shape} does not match {container}'s {layout.height}x{layout.width}")
    if mosaic.dtype.kind not in "ui":
        raise ValueError(f"write_back wants integer DN values, got {mosaic.dtype}; denormalise first")
    if mosaic.size and (mosaic.min() < 0 or mosaic.max() > 65535):
        raise ValueError("mosaic values must fit 16-bit samples")
    for seg in layout.segments:
        needed = seg.rows * seg.stride * 2
        if seg.byte_count < needed:
            raise InputError(
                f"{container}: {'tile' if layout.tiled else 'strip'} at byte {seg.offset} holds {seg.byte_count} "
                f"bytes, {needed} expected for uncompressed 16-bit samples"
            )
        stored = np.frombuffer(data, dtype=layout.sample_dtype, count=seg.rows * seg.stride, offset=seg.offset)
        stored = stored.reshape(seg.rows, seg.stride)
        stored[: seg.height, : seg.width] = mosaic[seg.top : seg.top + seg.height, seg.left : seg.left + seg.width]
    write_bytes_atomic(dest, data)
