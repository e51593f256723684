from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rawpy
import tifffile

from rawdenoise import InputError
from rawdenoise.contest import CFA_PATTERNS
from rawdenoise.raw import CHANNELS, RawFrame, denormalise, normalise, pack, read, unpack, write_back, write_dng
from rawdenoise.tiff import locate_raw
from tests.conftest import random_mosaic
from tests.dng_builders import write_pidng_style


def colour_coded_mosaic(cfa: str, shape=(6, 8)) -> np.ndarray:
    """Each site holds 10 * (its channel's index in R, Gr, Gb, B) + its row parity, so a channel that
    ends up in the wrong place, or a G from the wrong row, shows at once."""
    out = np.zeros(shape, dtype=np.uint16)
    cells = {(r, c): cfa[2 * r + c] for r in range(2) for c in range(2)}
    red_row = next(p[0] for p, v in cells.items() if v == "R")
    for (r, c), colour in cells.items():
        name = "Gr" if colour == "G" and r == red_row else "Gb" if colour == "G" else colour
        out[r::2, c::2] = 10 * CHANNELS.index(name) + 1
    return out


@pytest.mark.parametrize("cfa", CFA_PATTERNS)
def test_pack_puts_each_colour_in_its_canonical_channel(cfa):
    packed = pack(colour_coded_mosaic(cfa), cfa)
    assert packed.shape == (4, 3, 4)
    for k in range(4):
        assert np.all(packed[k] == 10 * k + 1), f"{cfa}: channel {CHANNELS[k]} holds another colour"


@pytest.mark.parametrize("cfa", CFA_PATTERNS)
def test_unpack_is_the_exact_inverse_of_pack(cfa, rng):
    mosaic = rng.integers(0, 65536, size=(10, 14)).astype(np.uint16)
    assert np.array_equal(unpack(pack(mosaic, cfa), cfa), mosaic)
    packed = rng.random((4, 5, 7), dtype=np.float32)
    assert np.array_equal(pack(unpack(packed, cfa), cfa), packed)


@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (8,), (2, 4, 4), (0, 4)])
def test_pack_rejects_odd_or_non_2d_shapes(shape):
    with pytest.raises(ValueError):
        pack(np.zeros(shape, dtype=np.uint16), "RGGB")


def test_unpack_rejects_wrong_channel_count_and_unknown_cfa():
    with pytest.raises(ValueError):
        unpack(np.zeros((3, 4, 4)), "RGGB")
    with pytest.raises(InputError, match="XGGB"):
        pack(np.zeros((4, 4)), "XGGB")


def test_normalise_round_trip_is_exact_and_denormalise_rounds_and_clips(contest, rng):
    mosaic = random_mosaic(rng, contest)
    x = normalise(mosaic, contest.black_array, contest.white)
    assert x.dtype == np.float32
    assert np.array_equal(denormalise(x, contest.black_array, contest.white), mosaic)
    black = contest.black_array
    step = 1.0 / (contest.white - black[0, 0])
    x = np.zeros((2, 2), np.float32)
    x[0, 0] = 10.6 * step  # rounds up to 11 DN above black: truncation would give 10
    x[0, 1] = -0.5  # below black: clipped to black
    x[1, 0] = 1.7  # above white: clipped to white
    dn = denormalise(x, black, contest.white)
    assert dn[0, 0] == black[0, 0] + 11
    assert dn[0, 1] == black[0, 1]
    assert dn[1, 0] == contest.white


def test_normalise_and_denormalise_compute_exactly_what_the_formula_says(rng):
    """The compiled passes against the formula in numpy: float32 (dn - black) / (white - black), and
    float64 rint(x * (white - black) + black) clipped, with a different black at each mosaic site and
    values placed on rounding's half-way points."""
    black, white = np.array([[1024, 1000], [1010, 64]]), 16383
    grid = np.tile(black, (50, 40))
    mosaic = rng.integers(0, 16384, grid.shape).astype(np.uint16)
    expected = (mosaic.astype(np.float32) - grid.astype(np.float32)) / (white - grid).astype(np.float32)
    assert np.array_equal(normalise(mosaic, black, white), expected)
    for dtype in (np.float32, np.float64):
        x = rng.uniform(-0.1, 1.1, grid.shape).astype(dtype)
        x[::3] = ((rng.integers(0, 16000, grid.shape) + 0.5) / (white - grid))[::3]  # x.5 DN after scaling
        dn = np.clip(np.rint(x.astype(np.float64) * (white - grid) + grid), grid, white).astype(np.uint16)
        assert np.array_equal(denormalise(x, black, white), dn)
        strided = np.empty((x.shape[0], 2 * x.shape[1]), dtype)
        strided[:, ::2] = x
        assert np.array_equal(denormalise(strided[:, ::2], black, white), dn)  # a view alike
    assert denormalise(np.full((2, 2), np.nan), black, white).tolist() == black.tolist()
    for cfa in ("RGGB", "BGGR", "GRBG", "GBRG"):  # a frame packs and unpacks in one pass, to the same values
        frame = RawFrame(mosaic, cfa, black, white, Path("x.dng"))
        assert np.array_equal(frame.packed(), pack(normalise(mosaic, black, white), cfa))
        assert np.array_equal(frame.to_mosaic(pack(x, cfa)), denormalise(x, black, white))
    one_black = RawFrame(mosaic, "RGGB", 64, white, Path("x.dng"))  # one level for every site, as normalise takes
    assert np.array_equal(one_black.packed(), RawFrame(mosaic, "RGGB", np.full((2, 2), 64), white, Path("x.dng")).packed())


def test_write_dng_reads_back_bit_exactly_with_pattern_and_levels(contest, rng, tmp_path):
    mosaic = random_mosaic(rng, contest)
    path = tmp_path / "frame.dng"
    write_dng(path, mosaic, contest.cfa, contest.black_array, contest.white, noise_profile=(1e-3, 2e-5))
    with rawpy.imread(str(path)) as raw:
        assert np.array_equal(raw.raw_image_visible, mosaic)
        colours = raw.color_desc.decode()
        assert "".join(colours[i] for i in raw.raw_pattern.ravel()) == contest.cfa
        assert raw.white_level == contest.white
    frame = read(path, contest)
    assert frame.cfa == contest.cfa
    assert np.array_equal(frame.black, contest.black_array)
    assert frame.white == contest.white
    assert np.array_equal(frame.mosaic, mosaic) and frame.mosaic.dtype == np.uint16
    assert frame.noise_profile == (1e-3, 2e-5)
    assert not list(tmp_path.glob(".*partial")), "temporary file left behind"


def test_read_rejects_a_frame_whose_levels_disagree_with_the_profile(contest, rng, tmp_path):
    path = tmp_path / "other.dng"
    write_dng(path, random_mosaic(rng, contest), contest.cfa, contest.black_array, contest.white - 1)
    with pytest.raises(InputError, match=r"other\.dng.*white level"):
        read(path, contest)
    other_cfa = next(c for c in CFA_PATTERNS if c != contest.cfa)
    write_dng(path, random_mosaic(rng, contest), other_cfa, contest.black_array, contest.white)
    with pytest.raises(InputError, match=rf"other\.dng.*CFA {other_cfa}"):
        read(path, contest)


def _segment_mask(path) -> np.ndarray:
    """True for every byte of the file that belongs to a strip or tile of the raw image."""
    layout = locate_raw(path)
    mask = np.zeros(path.stat().st_size, dtype=bool)
    for seg in layout.segments:
        mask[seg.offset : seg.offset + seg.byte_count] = True
    return mask


CONTAINERS = {
    "strips": dict(),
    "tiles with edge padding": dict(tile=(48, 64)),
    "big-endian strips": dict(byteorder=">"),
    "raw in a SubIFD": dict(subifd=True),
    "big-endian tiles in a SubIFD": dict(tile=(32, 32), byteorder=">", subifd=True),
}


@pytest.mark.parametrize("kind", list(CONTAINERS) + ["pidng-style"])
def test_write_back_replaces_only_the_pixels(kind, contest, rng, tmp_path):
    original = random_mosaic(rng, contest, shape=(80, 112))
    container = tmp_path / "container.dng"
    if kind == "pidng-style":
        codes = tuple({"R": 0, "G": 1, "B": 2}[c] for c in contest.cfa)
        write_pidng_style(container, original, codes, contest.black_array, contest.white)
    else:
        write_dng(container, original, contest.cfa, contest.black_array, contest.white, **CONTAINERS[kind])
    assert np.array_equal(read(container, contest).mosaic, original)

    new = random_mosaic(rng, contest, shape=(80, 112))
    dest = tmp_path / "denoised.dng"
    write_back(container, dest, new)

    before, after = container.read_bytes(), dest.read_bytes()
    assert len(after) == len(before)
    outside = ~_segment_mask(container)
    a, b = np.frombuffer(before, np.uint8), np.frombuffer(after, np.uint8)
    assert np.array_equal(a[outside], b[outside]), "bytes outside the pixel data changed"
    frame = read(dest, contest)
    assert np.array_equal(frame.mosaic, new)
    assert frame.cfa == contest.cfa and frame.white == contest.white


def test_write_back_keeps_the_padding_of_edge_tiles(rng, tmp_path):
    container = tmp_path / "tiled.dng"
    mosaic = rng.integers(0, 4096, size=(40, 40)).astype(np.uint16)
    write_dng(container, mosaic, "RGGB", 0, 4095, tile=(32, 32))
    data = bytearray(container.read_bytes())
    layout = locate_raw(container)
    last = layout.segments[-1]  # covers rows 32..39 and columns 32..39 of a 32x32 tile
    tile = np.frombuffer(data, "<u2", count=32 * 32, offset=last.offset).reshape(32, 32).copy()
    tile[8:, :] = 0xBEEF
    tile[:, 8:] = 0xBEEF
    data[last.offset : last.offset + tile.nbytes] = tile.astype("<u2").tobytes()
    container.write_bytes(bytes(data))
    write_back(container, tmp_path / "out.dng", mosaic[::-1].copy())
    out = np.frombuffer((tmp_path / "out.dng").read_bytes(), "<u2", count=32 * 32, offset=last.offset)
    out = out.reshape(32, 32)
    assert np.all(out[8:, :] == 0xBEEF) and np.all(out[:, 8:] == 0xBEEF)
    assert np.array_equal(out[:8, :8], mosaic[::-1][32:, 32:])
    assert np.array_equal(read(tmp_path / "out.dng").mosaic, mosaic[::-1])  # and every other tile holds the new pixels


def test_write_back_in_place_and_shape_checks(rng, tmp_path):
    path = tmp_path / "frame.dng"
    write_dng(path, rng.integers(0, 1000, (32, 32)).astype(np.uint16), "BGGR", 0, 1023)  # LibRaw wants >= 22 px
    new = rng.integers(0, 1000, (32, 32)).astype(np.uint16)
    write_back(path, path, new)
    assert np.array_equal(read(path).mosaic, new)
    with pytest.raises(ValueError, match="shape"):
        write_back(path, tmp_path / "x.dng", new[:4])
    with pytest.raises(ValueError, match="denormalise"):
        write_back(path, tmp_path / "x.dng", new.astype(np.float32))
    assert not (tmp_path / "x.dng").exists()


def test_write_back_refuses_compressed_raw_data(rng, tmp_path):
    path = tmp_path / "compressed.dng"
    mosaic = rng.integers(0, 1000, (16, 16)).astype(np.uint16)
    tifffile.imwrite(
        path, mosaic, photometric=32803, compression="zlib", subfiletype=0,
        extratags=[(50706, "B", 4, (1, 4, 0, 0), True), (33421, "H", 2, (2, 2), True),
                   (33422, "B", 4, (0, 1, 1, 2), True)],
    )  # fmt: skip
    with pytest.raises(InputError, match=r"compressed\.dng.*compressed"):
        write_back(path, tmp_path / "out.dng", mosaic)
    assert not (tmp_path / "out.dng").exists()


def _bad_files(tmp_path, rng):
    good = tmp_path / "good.dng"
    write_dng(good, rng.integers(0, 1000, (64, 64)).astype(np.uint16), "RGGB", 0, 1023)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.dng"
    truncated.write_bytes(data[: len(data) - 100])
    garbage = tmp_path / "garbage.dng"
    garbage.write_bytes(b"II*\0" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    text = tmp_path / "notes.dng"
    text.write_text("not an image at all\n")
    plain_tiff = tmp_path / "photo.tif"
    tifffile.imwrite(plain_tiff, np.zeros((8, 8), np.uint16))
    empty = tmp_path / "empty.dng"
    empty.write_bytes(b"")
    return {
        "truncated": (truncated, "truncated"),
        "corrupt": (garbage, "corrupt|truncated"),
        "not a TIFF": (text, "not a DNG"),
        "TIFF without DNG tags": (plain_tiff, "not a DNG"),
        "empty": (empty, "truncated|not a DNG"),
        "missing": (tmp_path / "missing.dng", "no such file"),
    }


@pytest.mark.parametrize(
    "case", ["truncated", "corrupt", "not a TIFF", "TIFF without DNG tags", "empty", "missing"]
)
def test_bad_files_give_one_clear_error_naming_the_file(case, tmp_path, rng):
    path, problem = _bad_files(tmp_path, rng)[case]
    with pytest.raises(InputError, match=rf"{path.name}.*({problem})"):
        read(path)
    with pytest.raises(InputError, match=path.name):
        write_back(path, tmp_path / "out.dng", np.zeros((64, 64), np.uint16))
    assert not (tmp_path / "out.dng").exists()
