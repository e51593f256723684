"""The contest's submission zip, read as untrusted input: checked member by member, never extracted.

A submission is `data_dir/<output pattern>` images plus the algorithm files (network.py, the weights,
a README). Anything else, and anything shaped to attack the reader (path traversal, absolute names,
symlinks, duplicate names, encryption, zip bombs), is refused with a message naming the member.
Members are read into memory with a size bound; nothing is ever written to disk.
"""

from __future__ import annotations

import ast
import posixpath
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from rawdenoise.errors import InputError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 16 << 30  # declared uncompressed size of the whole archive
MAX_IMAGE_BYTES = 1 << 30  # one prediction DNG (a 16-megapixel 16-bit DNG is 32 MiB)
MAX_TEXT_BYTES = 16 << 20  # network.py and README


@dataclass
class SubmissionZip:
    path: Path
    images: dict[int, str]  # index -> member name, sorted by index
    network: str | None = None
    weights: str | None = None
    readme: str | None = None

    def where(self, member: str) -> str:
        return f"{self.path}:{member}"

    def read(self, member: str, limit: int) -> bytes:
        """A member's bytes, refusing more than `limit` and any CRC or decompression error."""
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(member) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as err:
            raise InputError(f"{self.where(member)}: cannot be read ({err})") from None
        if len(data) > limit:
            raise InputError(f"{self.where(member)}: uncompressed size passes the {limit}-byte bound (zip bomb?)")
        return data

    def model_name(self) -> str | None:
        """The class network.py's build_network() returns, read from its syntax tree (never run)."""
        if self.network is None:
            return None
        source = self.read(self.network, MAX_TEXT_BYTES).decode("utf-8", "replace")
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise InputError(f"{self.where(self.network)}: not valid Python ({err.msg}, line {err.lineno})") from None
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
        with zipfile.ZipFile(path) as zf:
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
        where = f"{path}:{name}"
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
        folder, base = posixpath.split(name)
        if folder == sub.data_dir:
            index = sub.output.index_of(base)
            if index is None:
                raise InputError(f"{where}: unexpected file in {sub.data_dir}/ (expected {sub.output.pattern})")
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
