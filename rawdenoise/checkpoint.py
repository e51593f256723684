"""What a torch weights file holds, read without torch and without running any of its code.

A `torch.save`d state_dict is a zip whose `data.pkl` names tensors through `_rebuild_tensor_v2`
calls. A restricted unpickler that knows only those few names turns each tensor into its shape and
dtype, so the scorer can report a submission's parameter count without importing torch, and a
hostile pickle can do nothing but fail.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

from rawdenoise.errors import InputError

_STORAGE_BYTES = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    storage: str  # e.g. "FloatStorage"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _Storage:
    def __init__(self, kind: str):
        self.kind = kind


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return TensorInfo(tuple(int(s) for s in size), storage.kind if isinstance(storage, _Storage) else "?")


def _rebuild_parameter(data, *rest):
    return data


class _ShapesOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_BYTES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage" and isinstance(pid[1], str):
            return _Storage(pid[1])
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


def tensor_shapes(data: bytes, name: str) -> dict[str, TensorInfo]:
    """name -> TensorInfo for every tensor of a state_dict saved by torch.save (zip format)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise InputError(f"{name}: not a torch weights file (no data.pkl)")
            info = zf.getinfo(pickles[0])
            if info.file_size > 64 << 20:
                raise InputError(f"{name}: data.pkl is implausibly large ({info.file_size} bytes)")
            state = _ShapesOnly(io.BytesIO(zf.read(info))).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InputError(f"{name}: not a readable torch weights file ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, TensorInfo) for v in state.values()):
        raise InputError(f"{name}: not a plain state_dict of tensors")
    return dict(state)


def parameter_count(data: bytes, name: str) -> int:
    return sum(t.numel for t in tensor_shapes(data, name).values())
