"""Hostile submissions (issue 9, classes 4 and 5): bounds in proportion to the contest, and readers of
weights and source that take whatever they cannot read for bad input.

Every case runs the scorer's command line as a user would (--json, a run name, a leaderboard) and must
end in exit 2 with one line on stderr naming the file or zip member and the problem: no traceback,
nothing on stdout, no leaderboard created, and a peak memory far below what the input claims. The
inputs are built by hand (pickle opcodes, zip records), each a valid submission but for the one thing
under test.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from rawdenoise import InputError
from rawdenoise.checkpoint import parameter_count
from rawdenoise.contest import FilePattern
from rawdenoise.demo import make_demo_dataset
from rawdenoise.leaderboard import ranked
from rawdenoise.submission_zip import MAX_TEXT_BYTES, open_submission
from tests.test_score import NETWORK, ROOT, ZTE, predictions

SUB = ZTE.submission
FRAME0 = f"{SUB.data_dir}/denoise0.dng"
BIG = 300 << 20  # accepted for one frame by the old 1 GiB bound; a demo frame's ground truth is 50 kB
PEAK_RSS_BOUND = 256 << 20  # refusing takes the scorer about 100 MiB; reading BIG, over 400


# --- weights assembled from pickle opcodes, as torch.save writes them (protocol 2) ------------------------


def _text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def _int(n: int) -> bytes:
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


ORDERED_DICT = _global("collections", "OrderedDict") + b")R"  # OrderedDict()


PROTO = b"\x80\x02"


def _tensor(shape: tuple[int, ...], key: str, numel: int | None = None) -> bytes:
    """_rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict()) over FloatStorage `key`."""
    numel = math.prod(shape) if numel is None else numel
    stride = [math.prod(shape[k + 1 :]) for k in range(len(shape))]
    storage = _tuple(_text("storage"), _global("torch", "FloatStorage"), _text(key), _text("cpu"), _int(numel))
    sizes = _tuple(*map(_int, shape)) + _tuple(*map(_int, stride))
    args = _tuple(storage + b"Q", _int(0), sizes, b"\x89", ORDERED_DICT)  # BINPERSID, NEWFALSE
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


WEIGHT = _text("weight") + _tensor((4, 4, 3, 3), "0")
STATE = PROTO + ORDERED_DICT + WEIGHT + b"s" + _text("bias") + _tensor((4,), "1") + b"s."  # Conv2d(4, 4, 3)


def torch_zip(pkl: bytes, compression: int = zipfile.ZIP_STORED) -> bytes:
    """A torch.save zip around `pkl`, with the storages STATE names."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", pkl, compress_type=compression)
        zf.writestr("archive/data/0", bytes(4 * 144))
        zf.writestr("archive/data/1", bytes(4 * 4))
        zf.writestr("archive/version", b"3\n")
    return buffer.getvalue()


# --- zip records -------------------------------------------------------------------------------------------


def _patch_entry(data: bytes, member: str, flag: int = 0, method: int | None = None) -> bytes:
    """Set general-purpose flag bits, or the compression method, in `member`'s local and central headers."""
    out, name = bytearray(data), member.encode()
    for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = out.find(signature)
        while at >= 0:
            if out[at + name_at : at + name_at + len(name)] == name:
                out[at + flags_at] |= flag
                if method is not None:
                    out[at + flags_at + 2 : at + flags_at + 4] = struct.pack("<H", method)
            at = out.find(signature, at + 1)
    return bytes(out)


def _declaring(data: bytes, count: int) -> bytes:
    """The zip with its end record declaring `count` members."""
    at = data.rindex(b"PK\x05\x06")
    return data[: at + 8] + struct.pack("<HH", count, count) + data[at + 12 :]


def _zip64_declaring(data: bytes, count: int) -> bytes:
    """The zip with a ZIP64 end record (which zipfile then follows) declaring `count` members."""
    at = data.rindex(b"PK\x05\x06")
    size, offset = struct.unpack_from("<LL", data, at + 12)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:at] + record + locator + end


def _directory_bomb(entries: int, declared: int) -> bytes:
    """A zip that is nothing but `entries` minimal directory entries (46 bytes and the name 'a'), under an
    end record declaring `declared`: zipfile builds a ZipInfo for each."""
    fields = (20, 3, 20, 0, 0, 0, 0, 0x21, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)  # zeros, but versions, date, name length
    entry = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", *fields)
    directory = (entry + b"a") * entries
    return directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, declared, declared, len(directory), 0, 0)


# --- fixtures and the scorer --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", ZTE, size=(128, 192), progress=False)


@pytest.fixture(scope="module")
def pred_dir(demo, tmp_path_factory) -> Path:
    """denoise{i}.dng for the demo set: its ground truth written into copies of the test inputs."""
    out = tmp_path_factory.mktemp("p") / "pred"
    predictions(demo, out)
    return out


@pytest.fixture(scope="module")
def members(pred_dir) -> dict[str, bytes]:
    """A valid submission's members: those predictions and a small model."""
    frames = {f"{SUB.data_dir}/{f.name}": f.read_bytes() for f in sorted(pred_dir.iterdir())}
    algorithm = {SUB.network: NETWORK.encode(), SUB.weights: torch_zip(STATE), SUB.readme: b"a test entry\n"}
    return frames | algorithm


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def score(pred: Path, demo: Path, tmp: Path) -> tuple[subprocess.CompletedProcess, int]:
    """tools/score.py PRED GT --json --name --leaderboard, and its peak resident memory in bytes.

    A child Python runs the scorer, so that RUSAGE_CHILDREN holds the scorer's peak and no other's."""
    command = [
        sys.executable, str(ROOT / "tools" / "score.py"), str(pred), str(demo / "testset_gt"),
        "--json", "--name", "hostile", "--leaderboard", str(tmp / "board.sqlite"), "--workers", "1",
    ]  # fmt: skip
    measure = (
        "import json, resource, subprocess, sys;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "print(json.dumps([r.returncode, r.stdout, r.stderr, peak]))"
    )
    out = subprocess.run([sys.executable, "-c", measure, *command], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rc, stdout, stderr, max_rss_kib = json.loads(out.stdout)
    return subprocess.CompletedProcess(command, rc, stdout, stderr), max_rss_kib * 1024


def assert_refused(result: subprocess.CompletedProcess, peak: int, tmp: Path, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.count("\n") == 1, f"not one line: {result.stderr!r}"
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp / "board.sqlite").exists() and not (tmp / "board.csv").exists()
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak >> 20} MiB"


# --- the cases: each builds its PRED in `tmp` and names the message expected -------------------------------

CASES = {}


def case(label: str, message: str):
    def register(build):
        CASES[label] = (build, message)
        return build

    return register


def _member(tmp: Path, members: dict, name: str, data: bytes) -> Path:
    """The submission with member `name` added or replaced."""
    return write_zip(tmp / "sub.zip", members | {name: data})


def _weights(tmp, members, weights: bytes) -> Path:
    return _member(tmp, members, SUB.weights, weights)


def _pickle(tmp, members, pkl: bytes) -> Path:
    return _weights(tmp, members, torch_zip(pkl))


def _network(tmp, members, source: str) -> Path:
    return _member(tmp, members, SUB.network, source.encode())


_WEIGHTS = re.escape(f"sub.zip:{SUB.weights}")
_NETWORK = re.escape(f"sub.zip:{SUB.network}")
_NOT_A_STATE_DICT = rf"{_WEIGHTS}: data\.pkl is not a readable state_dict"

# Class 4: bounds in proportion to the contest


@case("a frame of 300 MB in the zip", rf"{re.escape(FRAME0)}: declares 3\d{{8}} bytes .* ground truth gt0\.dng")
def _(tmp, members, pred_dir):
    path = tmp / "sub.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in members.items():
            if name != FRAME0:
                zf.writestr(name, data)
        with zf.open(FRAME0, "w") as f:  # a valid DNG, then zeros: the old reader scored it
            f.write(members[FRAME0])
            for _ in range(BIG >> 20):
                f.write(bytes(1 << 20))
    return path


@case("a frame of 300 MB in a folder", rf"denoise0\.dng: {BIG} bytes, .* ground truth gt0\.dng")
def _(tmp, members, pred_dir):
    shutil.copytree(pred_dir, tmp / "pred")
    with open(tmp / "pred" / "denoise0.dng", "r+b") as f:
        f.truncate(BIG)  # sparse: costs no disk
    return tmp / "pred"


@case("60,000 members declared", r"sub\.zip: the zip declares 60000 members")
def _(tmp, members, pred_dir):
    path = write_zip(tmp / "sub.zip", members)
    path.write_bytes(_declaring(path.read_bytes(), 60_000))
    return path


@case("2**40 members declared by a ZIP64 record", r"sub\.zip: the zip declares 1099511627776 members")
def _(tmp, members, pred_dir):
    path = write_zip(tmp / "sub.zip", members)
    path.write_bytes(_zip64_declaring(path.read_bytes(), 1 << 40))
    return path


@case("50,000 directory entries declared as 20", r"sub\.zip: a central directory of 2350000 bytes for 20 ")
def _(tmp, members, pred_dir):
    path = tmp / "sub.zip"
    path.write_bytes(_directory_bomb(50_000, 20))
    return path


@case("denoise0.dng and denoise00.dng", r"denoise00\.dng: refused: index 0 also used by .*/denoise0\.dng")
def _(tmp, members, pred_dir):
    return _member(tmp, members, f"{SUB.data_dir}/denoise00.dng", members[FRAME0])


@case("an Arabic-Indic zero: denoise\u0660.dng", r"denoise\u0660\.dng: unexpected file in result/data/")
def _(tmp, members, pred_dir):
    return _member(tmp, members, f"{SUB.data_dir}/denoise\u0660.dng", members[FRAME0])


@case("a 5,000-digit index", r"denoise1{100}1*': unexpected file in result/data/")
def _(tmp, members, pred_dir):
    return _member(tmp, members, f"{SUB.data_dir}/denoise{'1' * 5000}.dng", members[FRAME0])


@case("a newline in a member's name", r"denoise1\\n\.dng': refused: a control character in its name")
def _(tmp, members, pred_dir):
    return _member(tmp, members, f"{SUB.data_dir}/denoise1\n.dng", members[FRAME0])


@case("a folder with denoise\u0661.dng for denoise1.dng", r"pred: missing predictions denoise1\.dng$")
def _(tmp, members, pred_dir):
    shutil.copytree(pred_dir, tmp / "pred")
    (tmp / "pred" / "denoise1.dng").rename(tmp / "pred" / "denoise\u0661.dng")
    return tmp / "pred"


@case("a folder with denoise1.dng and denoise01.dng", r"denoise1\.dng: index 1 also used by denoise01\.dng")
def _(tmp, members, pred_dir):
    shutil.copytree(pred_dir, tmp / "pred")
    shutil.copy(tmp / "pred" / "denoise1.dng", tmp / "pred" / "denoise01.dng")
    return tmp / "pred"


# Class 5: the checkpoint reader


@case("APPENDS on an OrderedDict", rf"{_NOT_A_STATE_DICT} \(AttributeError")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, PROTO + ORDERED_DICT + b"(" + _int(1) + b"e.")


@case("SETITEMS on a list", rf"{_NOT_A_STATE_DICT} \(IndexError")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, PROTO + b"](" + _int(5) + _int(1) + b"u.")


@case("BUILD on a storage class", rf"{_NOT_A_STATE_DICT} \(AttributeError")
def _(tmp, members, pred_dir):
    state = b"}" + _text("a") + _int(1) + b"s"
    return _pickle(tmp, members, PROTO + _global("torch", "FloatStorage") + state + b"b.")


@case("BUILD rewriting a tensor's shape", rf"{_NOT_A_STATE_DICT} \(AttributeError")
def _(tmp, members, pred_dir):
    state = b"}" + _text("shape") + _text("huge") + b"s"
    return _pickle(tmp, members, PROTO + ORDERED_DICT + WEIGHT + state + b"bs.")


@case("a tensor of 2**93 elements on a storage of 144", rf"{_WEIGHTS}: .*larger than its storage of 144 ")
def _(tmp, members, pred_dir):
    huge = _tensor((2**31 - 1,) * 3, "0", numel=144)
    return _pickle(tmp, members, PROTO + ORDERED_DICT + _text("w") + huge + b"s.")


@case("a storage larger than the file", rf"{_WEIGHTS}: .*not a storage this file can hold")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, PROTO + ORDERED_DICT + _text("w") + _tensor((1 << 30,), "0") + b"s.")


@case("a memo bomb: BINPUT at 2**26", rf"{_WEIGHTS}: .*implausible memo write")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, PROTO + b"Nr" + struct.pack("<I", 1 << 26) + b".")


@case("a persistent id nested 100,000 deep", rf"{_WEIGHTS}: .*nested more than 32 deep")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, PROTO + b"]" * 100_000 + b"a" * 99_999 + b"Q.")


@case("a dict key nested 300,000 deep", rf"{_WEIGHTS}: .*nested more than 32 deep")
def _(tmp, members, pred_dir):  # hashing it overflowed the C stack: a segmentation fault
    return _pickle(tmp, members, PROTO + b"})" + b"\x85" * 300_000 + b"Ns.")


@case("data.pkl claiming 2**60 bytes of bytearray", rf"{_NOT_A_STATE_DICT}")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, b"\x80\x05\x96" + struct.pack("<Q", 1 << 60) + b"x.")


@case("data.pkl that is JSON", rf"{_NOT_A_STATE_DICT}")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, b'{"weight": [[1.0, 2.0]], "bias": [0.5]}\n')


@case("a pickle that imports os.system", rf"{_WEIGHTS}: .*os\.system is not allowed in a weights file")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, PROTO + _global("os", "system") + _tuple(_text("true")) + b"R.")


@case("data.pkl of 1.2 MB", rf"{_WEIGHTS}: data\.pkl is implausibly large \(1200\d+ bytes")
def _(tmp, members, pred_dir):
    return _pickle(tmp, members, STATE[:-1] + b"N0" * 600_000 + b".")


@case("an encrypted data.pkl", rf"{_WEIGHTS}: not a readable torch weights file \(.*encrypted")
def _(tmp, members, pred_dir):
    return _weights(tmp, members, _patch_entry(torch_zip(STATE), "archive/data.pkl", flag=1))


@case("data.pkl with a bad CRC", rf"{_WEIGHTS}: not a readable torch weights file \(Bad CRC-32")
def _(tmp, members, pred_dir):
    return _weights(tmp, members, torch_zip(STATE).replace(STATE, STATE[:-2] + b"N."))


@case("data.pkl with a bad deflate stream", rf"{_WEIGHTS}: not a readable torch weights file \(.*block type")
def _(tmp, members, pred_dir):
    deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    stream = deflate.compress(STATE) + deflate.flush()
    weights = torch_zip(STATE, zipfile.ZIP_DEFLATED)
    assert stream in weights
    return _weights(tmp, members, weights.replace(stream, b"\xff" * len(stream)))  # reserved block type


@case("data.pkl in compression method 99", rf"{_WEIGHTS}: not a readable torch weights file \(.*compression")
def _(tmp, members, pred_dir):
    return _weights(tmp, members, _patch_entry(torch_zip(STATE), "archive/data.pkl", method=99))


@case("model.pth of 50,000 directory entries", rf"{_WEIGHTS}: a central directory of 2350000 bytes")
def _(tmp, members, pred_dir):
    return _weights(tmp, members, _directory_bomb(50_000, 20))


# Class 5: network.py, read with ast


@case("network.py of 10,000 open parentheses", rf"{_NETWORK}: not valid Python")
def _(tmp, members, pred_dir):
    return _network(tmp, members, "(" * 10_000)


@case("network.py nesting 100,000 unary minuses", rf"{_NETWORK}: nested too deeply to parse \(MemoryError\)")
def _(tmp, members, pred_dir):
    return _network(tmp, members, NETWORK + "X = " + "-" * 100_000 + "1\n")


@case("network.py nesting 100,000 lists", rf"{_NETWORK}: (not valid Python|nested too deeply to parse)")
def _(tmp, members, pred_dir):
    return _network(tmp, members, NETWORK + "X = " + "[" * 100_000 + "]" * 100_000 + "\n")


@case("network.py returning a 2,000-deep attribute", rf"{_NETWORK}: nested too deeply to parse \(Recursion")
def _(tmp, members, pred_dir):
    return _network(tmp, members, "def build_network():\n    return a" + ".b" * 2000 + "()\n")


@case("network.py with a NUL byte", rf"{_NETWORK}: not valid Python \(source code string cannot contain null")
def _(tmp, members, pred_dir):
    return _network(tmp, members, NETWORK + "\0\n")


@case("network.py of 2 MB", rf"{_NETWORK}: declared uncompressed size 2\d+ bytes passes the {MAX_TEXT_BYTES}-")
def _(tmp, members, pred_dir):
    return _network(tmp, members, NETWORK + "#" * (2 << 20) + "\n")


# --- the tests ---------------------------------------------------------------------------------------------


def test_the_hand_built_submission_is_valid(demo, members, tmp_path):
    """Every case below differs from this one in the one thing under test."""
    assert parameter_count(torch_zip(STATE), "model.pth") == 4 * 4 * 9 + 4
    result, _ = score(write_zip(tmp_path / "sub.zip", members), demo, tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    frames = len(members) - 3  # beside network.py, the weights and the readme
    assert [image["name"] for image in doc["images"]] == [SUB.output.name(i).removesuffix(".dng") for i in range(frames)]
    assert doc["psnr"] == ZTE.metric.psnr_cap  # the predictions are the ground truth
    (entry,) = ranked(tmp_path / "board.sqlite")  # what the refusals below must never write
    assert (entry.name, entry.images, entry.model, entry.params) == ("hostile", frames, "TinyNet", 4 * 4 * 9 + 4)


@pytest.mark.parametrize("label", list(CASES))
def test_hostile_input_exits_2_naming_it_and_writes_nothing(label, demo, members, pred_dir, tmp_path):
    build, message = CASES[label]
    pred = build(tmp_path, members, pred_dir)
    result, peak = score(pred, demo, tmp_path)
    assert_refused(result, peak, tmp_path, message)


def test_an_honest_zip64_end_record_is_followed(members, tmp_path):
    path = write_zip(tmp_path / "sub.zip", members)
    path.write_bytes(_zip64_declaring(path.read_bytes(), len(members)))
    sub = open_submission(path, ZTE)
    assert sorted(sub.images) == list(range(len(members) - 3))
    assert (sub.network, sub.weights, sub.readme) == (SUB.network, SUB.weights, SUB.readme)


def test_the_weights_reader_imports_nothing():
    """A name it does not know is refused before any import: a module's import can run its code."""
    if "wave" in sys.modules:
        pytest.skip("wave is already imported")
    with pytest.raises(InputError, match=r"model\.pth: .*wave\.open is not allowed"):
        parameter_count(torch_zip(PROTO + _global("wave", "open") + _tuple(_text("x")) + b"R."), "model.pth")
    assert "wave" not in sys.modules


def test_indices_are_ascii_digits_and_folders_and_zips_agree(tmp_path):
    names = FilePattern("denoise{i}.dng")
    assert [names.index_of(n) for n in ("denoise0.dng", "denoise00.dng", "denoise17.dng")] == [0, 0, 17]
    others = ("denoise\u0660.dng", "denoise\uff11.dng", f"denoise{'1' * 19}.dng")  # Arabic-Indic, fullwidth
    assert [names.index_of(n) for n in others] == [None] * 3
    for name in ("denoise1.dng", "denoise01.dng"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(InputError, match=r"denoise1\.dng: index 1 also used by denoise01\.dng"):
        names.find(tmp_path)
