"""The contest's submission zip, read as untrusted input: checked member by member, never extracted.

A submission is `data_dir/<output pattern>` images plus the algorithm files (network.py, the weights,
a README). Anything else, and anything shaped to attack the reader (path traversal, absolute names,
symlinks, duplicate names or frame indices, encryption, zip bombs, a central directory of millions of
entries), is refused with a message naming the member. Members are read into memory with a size bound;
nothing is ever written to disk.
"""

from __future__ import annotations

import ast
import lzma
import posixpath
import stat
import struct
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rawdenoise.errors import InputError

MAX_MEMBERS = 10_000  # a submission holds its frames and three algorithm files
MAX_ENTRY_BYTES = 1024  # one central-directory entry: 46 bytes plus its name, extra fields and comment
MAX_TOTAL_BYTES = 16 << 30  # declared uncompressed size of the whole archive
MAX_IMAGE_BYTES = 1 << 30  # one prediction, before its ground truth is known; scoring bounds it by that
MAX_TEXT_BYTES = 256 << 10  # network.py: ours are 3 kB, and parsing takes up to 0.7 kB of memory a byte
MAX_NAME_CHARS = 100  # the model name shown on the leaderboard

# What reading a member can raise besides InputError: a corrupt or truncated archive, a bad CRC or
# compressed stream (zlib, lzma, bz2 as OSError), an unsupported method, encryption (RuntimeError).
READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError, OSError
)  # fmt: skip

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64 = struct.Struct("<4sQ2H2L4Q")  # ZIP64 end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")


def shown(text: str, limit: int = 300) -> str:
    """`text` fit for a one-line message: names and errors may come from a hostile file."""
    return text if text.isprintable() and len(text) <= limit else ascii(text[:limit])


def check_directory(f, name: str, max_members: int = MAX_MEMBERS) -> None:
    """Refuse a zip whose end record declares more than `max_members` entries, or a central directory
    larger than that many entries need, before zipfile.ZipFile parses it.

    ZipFile builds a ZipInfo for every entry that fits in the directory's declared size and ignores
    the declared count: 47 MB of 47-byte entries took it 7 s and 460 MB before the member count could
    be refused. This reads the end record (and the ZIP64 one before it) where zipfile finds them; a
    file without one is left to zipfile to refuse.
    """
    size = f.seek(0, 2)
    start = max(size - _END.size - 0xFFFF, 0)  # the record ends the file, or precedes a comment of < 64 KiB
    f.seek(start)
    tail = f.read()
    at = len(tail) - _END.size
    if tail[at : at + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":  # zipfile's quick look: no comment
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        return
    count, directory = _END.unpack_from(tail, at)[4:6]
    end = start + at
    if end >= _END64.size + _END64_LOCATOR.size:
        f.seek(end - _END64.size - _END64_LOCATOR.size)
        records = f.read(_END64.size + _END64_LOCATOR.size)
        if records.startswith(b"PK\x06\x06") and records[_END64.size :].startswith(b"PK\x06\x07"):
            count, directory = _END64.unpack_from(records)[7:9]
    if count > max_members:
        raise InputError(f"{name}: the zip declares {count} members, more than the {max_members} it may hold")
    if directory > max(count, 1) * MAX_ENTRY_BYTES:
        raise InputError(
            f"{name}: a central directory of {directory} bytes for {count} members is implausible (zip bomb?)"
        )


@contextmanager
def opened_zip(path: Path):
    """zipfile.ZipFile over `path`, its directory bounded by check_directory first."""
    with open(path, "rb") as f:
        check_directory(f, str(path))
        with zipfile.ZipFile(f) as zf:
            yield zf


@dataclass
class SubmissionZip:
    path: Path
    images: dict[int, str]  # index -> member name, sorted by index
    network: str | None = None
    weights: str | None = None
    readme: str | None = None
    declared: dict[str, tuple[int, int]] = field(default_factory=dict)  # file member -> (uncompressed size, CRC-32)

    def where(self, member: str) -> str:
        return f"{self.path}:{shown(member)}"

    def read(self, member: str, limit: int) -> bytes:
        """A member's bytes. Its declared size is held to `limit` before anything is decompressed, at
        most `limit` bytes are read, and a CRC, decompression or encryption error is bad input."""
        try:
            with opened_zip(self.path) as zf:
                info = zf.getinfo(member)
                if info.file_size > limit:
                    raise InputError(
                        f"{self.where(member)}: declared uncompressed size {info.file_size} bytes "
                        f"passes the {limit}-byte bound (zip bomb?)"
                    )
                with zf.open(info) as f:
                    data = f.read(limit + 1)
        except (*READ_ERRORS, KeyError) as err:
            raise InputError(f"{self.where(member)}: cannot be read ({shown(str(err))})") from None
        if len(data) > limit:
            raise InputError(f"{self.where(member)}: uncompressed size passes the {limit}-byte bound (zip bomb?)")
        return data

    def model_name(self) -> str | None:
        """The class network.py's build_network() returns, read from its syntax tree (never run).

        The source is untrusted: nesting too deep for the parser or for ast.unparse (RecursionError,
        MemoryError) and NUL bytes (ValueError, or SyntaxError) are bad input like any syntax error."""
        if self.network is None:
            return None
        where = self.where(self.network)
        source = self.read(self.network, MAX_TEXT_BYTES).decode("utf-8", "replace")
        try:
            name = _built_class(ast.parse(source))
        except SyntaxError as err:
            line = f", line {err.lineno}" if err.lineno else ""
            raise InputError(f"{where}: not valid Python ({shown(str(err.msg))}{line})") from None
        except (RecursionError, MemoryError) as err:  # MemoryError: the parser's own stack overflowed
            raise InputError(f"{where}: nested too deeply to parse ({type(err).__name__})") from None
        except ValueError as err:
            raise InputError(f"{where}: not valid Python ({shown(str(err))})") from None
        return name if name is None or len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


def _built_class(tree: ast.Module) -> str | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "build_network":
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and isinstance(inner.value, ast.Call):
                    func = inner.value.func
                    return func.id if isinstance(func, ast.Name) else ast.unparse(func)
    return None


def _unsafe_name_problem(info: zipfile.ZipInfo) -> str | None:
    raw = info.orig_filename
    name = info.filename
    if "\x00" in raw:
        return "a NUL byte in its name"
    if any(c < " " or c == "\x7f" for c in raw):
        return "a control character in its name"
    if "\\" in raw:
        return "a backslash in its name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    parts = name.rstrip("/").split("/")
    if any(p in ("..", ".", "") for p in parts):
        return "a path that climbs out or is not normalised ('..', '.' or '//')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if info.flag_bits & 0x1:
        return "encryption"
    return None


def open_submission(path: str | Path, contest) -> SubmissionZip:
    """Validate a submission zip's directory against the profile's layout; read no member yet."""
    path = Path(path)
    sub = contest.submission
    algorithm_root = posixpath.commonpath([sub.network, sub.weights, sub.readme])
    try:
        with opened_zip(path) as zf:
            infos = zf.infolist()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable zip ({err})") from None
    if len(infos) > MAX_MEMBERS:
        raise InputError(f"{path}: {len(infos)} members, more than the {MAX_MEMBERS} a submission can hold")
    result = SubmissionZip(path, {})
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        where = f"{path}:{shown(name)}"
        problem = _unsafe_name_problem(info)
        if problem:
            raise InputError(f"{where}: refused: {problem}")
        if name in seen:
            raise InputError(f"{where}: refused: the name appears twice in the archive")
        seen.add(name)
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise InputError(f"{path}: declared uncompressed size passes {MAX_TOTAL_BYTES} bytes (zip bomb?)")
        if info.is_dir():
            inside = (name.rstrip("/") + "/").startswith
            if any(inside(p) or (p + "/").startswith(name) for p in (sub.data_dir, algorithm_root)):
                continue
            raise InputError(f"{where}: unexpected folder in a submission")
        result.declared[name] = (info.file_size, info.CRC)
        folder, base = posixpath.split(name)
        if folder == sub.data_dir:
            index = sub.output.index_of(base)
            if index is None:
                raise InputError(f"{where}: unexpected file in {sub.data_dir}/ (expected {sub.output.pattern})")
            if index in result.images:
                raise InputError(f"{where}: refused: index {index} also used by {result.images[index]}")
            if info.file_size > MAX_IMAGE_BYTES:
                raise InputError(f"{where}: declared size {info.file_size} bytes is not a plausible frame (zip bomb?)")
            result.images[index] = name
        elif name == sub.network:
            result.network = name
        elif name == sub.weights:
            result.weights = name
        elif name == sub.readme:
            result.readme = name
        elif not name.startswith(algorithm_root + "/"):
            raise InputError(f"{where}: unexpected member (a submission holds {sub.data_dir}/ and {algorithm_root}/)")
    result.images = dict(sorted(result.images.items()))
    return result
