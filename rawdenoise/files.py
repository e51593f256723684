"""Atomic file output: a stage's outputs either exist complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rawdenoise.errors import InputError


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds.

    The temporary name lives in the same folder so the rename is atomic, starts with a dot and ends
    in `.partial` so it never matches a contest file pattern, and is removed on failure.
    """
    dest = Path(dest)
    try:
        if dest.is_dir():
            raise InputError(f"{dest}: is a folder; cannot write a file there")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    except OSError as err:  # name the file the user asked for, not our temporary one
        raise InputError(f"{dest}: cannot write ({unwritable_reason(dest, err)})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the user's usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def replaced_folder(dest: str | os.PathLike, owned: Callable[[str], bool]) -> Iterator[Path]:
    """Yield an empty staging folder beside `dest`; when the block succeeds it replaces `dest` whole.

    A set of outputs (a test set's predictions) is worth something only complete and from one run: a
    failure half-way leaves the previous set as it was, never a mix of old and new files. `dest` may
    hold only entries `owned(name)` accepts (and our hidden partial files): anything else is refused
    up front, before any work, since replacing the folder would delete it.
    """
    dest = Path(dest)
    try:
        if dest.exists() and not dest.is_dir():
            raise InputError(f"{dest}: exists and is not a folder")
        if dest.is_dir():
            foreign = sorted(e.name for e in dest.iterdir() if not (owned(e.name) or _is_partial(e.name)))
            if foreign:
                listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise InputError(f"{dest}: holds other files ({listed}); give the outputs a folder of their own")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as err:
        raise InputError(f"{dest}: cannot write ({unwritable_reason(dest, err)})") from None
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old.partial", dir=dest.parent))
            os.replace(dest, old / dest.name)  # from here until the next line, dest is absent, never mixed
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def unwritable_reason(dest: Path, err: OSError) -> str:
    """The reason a path cannot be written, in the user's terms: mkdir reports a file where a folder
    should be as "File exists" or "Not a directory", which names neither."""
    for parent in dest.parents:  # os.path's tests never raise (Path's do, on a folder that cannot be entered)
        if os.path.exists(parent):
            if not os.path.isdir(parent):
                return f"{parent} is a file, not a folder"
            break
    return err.strerror or str(err)


def _is_partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(".partial")


def write_bytes_atomic(dest: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
