"""What a torch weights file holds, read without torch and without running any of its code.

A `torch.save`d state_dict is a zip whose `data.pkl` names tensors through `_rebuild_tensor_v2`
calls. A restricted unpickler that knows only those few names turns each tensor into its shape and
dtype, so the scorer can report a submission's parameter count without importing torch, and a
hostile pickle can do nothing but fail. Whatever the file holds, the answer is its tensors or an
InputError naming it: its zip directory and data.pkl are bounded in size, the opcodes are walked
before anything is built (lengths, memo indices, nesting), and what the unpickler builds is checked.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from typing import NamedTuple

from rawdenoise.errors import InputError
from rawdenoise.submission_zip import READ_ERRORS, check_directory, shown

MAX_PICKLE_BYTES = 1 << 20  # data.pkl; a 10-million-parameter convnext_unet's is 10.5 kB
MAX_DEPTH = 32  # objects nested in data.pkl; in a state_dict's, 5

_STORAGE_BYTES = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
}  # fmt: skip
_MEMO_WRITES = ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE")
_MEMO_READS = ("GET", "BINGET", "LONG_BINGET")
_IN_PLACE = ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD")  # change the object below


class TensorInfo(NamedTuple):
    """A tensor's shape and storage type. Immutable like _Storage, and for the same reason: a pickle's
    BUILD rewrites any object that has a __dict__ or a __setstate__ (a slotted dataclass has one)."""

    shape: tuple[int, ...]
    storage: str  # e.g. "FloatStorage"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _Storage(NamedTuple):
    kind: str
    numel: int


def _check_opcodes(pkl: bytes) -> None:
    """Walk the pickle's opcodes before the unpickler builds anything, tracking how deeply each object
    on its stack would nest.

    pickletools reads every argument in full, so a length that the data does not hold fails here
    instead of being allocated. Refused as well: a memo index past the pickle's own length (the C
    unpickler grows its memo to twice the largest index: a gigabyte from 8 bytes) and nesting past
    MAX_DEPTH (hashing a tuple nested 300,000 deep, as a dict key say, overflows the C stack).
    An object's depth is taken when it is memoised; only mutable, unhashable ones can grow after.
    """
    stack: list[int] = []  # the depth of each object the unpickler will hold
    marks: list[int] = []  # where each open MARK lies in `stack`
    memo: dict[int, int] = {}
    for op, arg, pos in pickletools.genops(pkl):
        if op.name == "MARK":
            marks.append(len(stack))
            continue
        if op.name in _MEMO_WRITES:
            index = len(memo) if arg is None else arg
            if index > len(pkl) or len(stack) <= (marks[-1] if marks else 0):
                raise pickle.UnpicklingError(f"implausible memo write at byte {pos}")
            memo[index] = stack[-1]
            continue
        before, items = op.stack_before, []
        if pickletools.markobject in before:  # takes everything above the last MARK, then what lies below it
            if not marks:
                raise pickle.UnpicklingError(f"{op.name} without a MARK at byte {pos}")
            mark = marks.pop()
            items, stack[mark:] = stack[mark:], []
            before = before[: before.index(pickletools.markobject)]
        if len(stack) - len(before) < (marks[-1] if marks else 0):
            raise pickle.UnpicklingError(f"{op.name} finds too little on the stack at byte {pos}")
        if before:
            items, stack[-len(before) :] = stack[-len(before) :] + items, []
        if op.name in _IN_PLACE:  # the object below gains the others as its contents
            pushed = [max(items[0], 1 + max(items[1:], default=0))]
        elif op.name in _MEMO_READS:
            pushed = [memo.get(arg, 0)]
        elif op.name == "DUP":
            pushed = items * 2
        else:  # new objects holding the items taken
            pushed = [1 + max(items, default=-1)] * len(op.stack_after)
        if any(depth > MAX_DEPTH for depth in pushed):
            raise pickle.UnpicklingError(f"objects nested more than {MAX_DEPTH} deep at byte {pos}")
        stack += pushed


class _ShapesOnly(pickle.Unpickler):
    """Knows the names a state_dict uses and nothing else; the tensor rebuilders are bound methods, so
    that a pickle's BUILD cannot set attributes on module-level functions."""

    def __init__(self, file, file_bytes: int):
        super().__init__(file)
        self.file_bytes = file_bytes  # the weights file's size: no storage can hold more

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return self.rebuild_parameter
        if module == "torch" and name in _STORAGE_BYTES:
            return name
        raise pickle.UnpicklingError(f"{shown(f'{module}.{name}', 80)} is not allowed in a weights file")

    def persistent_load(self, pid):
        """('storage', kind, key, location, numel): a storage whose bytes fit in the file."""
        if type(pid) is tuple and len(pid) >= 5 and pid[0] == "storage" and type(pid[1]) is str:
            kind, numel = pid[1], pid[4]
            itemsize = _STORAGE_BYTES.get(kind)
            if itemsize and type(numel) is int and 0 <= numel * itemsize <= self.file_bytes:
                return _Storage(kind, numel)
        raise pickle.UnpicklingError("a persistent id that is not a storage this file can hold")

    def rebuild_tensor(self, storage, offset, size, stride, *rest):
        """Its shape: non-negative integers whose product its storage holds."""
        if type(storage) is not _Storage or type(size) is not tuple:
            raise pickle.UnpicklingError("a tensor without a storage or a shape")
        if not all(type(n) is int and n >= 0 for n in size):
            raise pickle.UnpicklingError("a tensor whose shape is not non-negative integers")
        numel = 0 if 0 in size else 1
        for n in size:  # stops at the first factor past the storage: no product of a million factors
            numel *= n
            if numel > storage.numel:
                raise pickle.UnpicklingError(f"a tensor larger than its storage of {storage.numel} elements")
        return TensorInfo(size, storage.kind)

    def rebuild_parameter(self, data, *rest):
        return data


def tensor_shapes(data: bytes, name: str) -> dict[str, TensorInfo]:
    """name -> TensorInfo for every tensor of a state_dict saved by torch.save (zip format)."""
    source = io.BytesIO(data)
    try:
        check_directory(source, name)
        with zipfile.ZipFile(source) as zf:
            pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise InputError(f"{name}: not a torch weights file (no data.pkl)")
            info = zf.getinfo(pickles[0])
            if info.file_size > MAX_PICKLE_BYTES:
                size = f"{info.file_size} bytes, more than {MAX_PICKLE_BYTES}"
                raise InputError(f"{name}: data.pkl is implausibly large ({size})")
            pkl = zf.read(info)
    except (*READ_ERRORS, ValueError) as err:
        raise InputError(f"{name}: not a readable torch weights file ({shown(str(err))})") from None
    try:
        _check_opcodes(pkl)
        state = _ShapesOnly(io.BytesIO(pkl), len(data)).load()
    except Exception as err:  # noqa: BLE001
        # Only the few names above can run, on hostile arguments: whatever they or the unpickler
        # raise (AttributeError from APPENDS on a dict, IndexError, TypeError, ...) is the file's.
        problem = f"{type(err).__name__}: {shown(str(err))}"
        raise InputError(f"{name}: data.pkl is not a readable state_dict ({problem})") from None
    plain = isinstance(state, dict) and all(type(k) is str and type(v) is TensorInfo for k, v in state.items())
    if not plain:
        raise InputError(f"{name}: not a plain state_dict of tensors")
    return dict(state)


def parameter_count(data: bytes, name: str) -> int:
    return sum(t.numel for t in tensor_shapes(data, name).values())
