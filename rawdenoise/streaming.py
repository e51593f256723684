"""A model run down the frame in strips, layer by layer, so no pixel is computed twice and memory is a
strip's, not a frame's.

Square tiles are exact only with a margin as wide as the model's reach on every side, which they
compute again for each neighbour: at a trained U-Net's reach of 112 packed pixels, tiles of 512 compute
twice the frame's pixels. Streaming keeps instead, for every layer, the rows of its output that a later
layer still needs (a 3x3 convolution's row above, a skip connection's rows until the decoder reaches
them) and computes each layer's next rows from them: every row of every layer is computed once, as in
the whole frame, and only the rows in flight are held.

The model is traced once (torch.fx) into its operations. Each one that involves the frame is given a
row rule, the rows of its input that a range of its output rows needs:
- row-local operations (pointwise arithmetic and activations, 1x1 layers, per-pixel norms, channel
  concatenation and splits, permutes) need the same rows;
- windowed ones (convolutions, pooling, with any stride and padding) need the rows under their kernel.
  A zero-padded convolution runs with no row padding of its own on exactly those rows, zero rows added
  where they pass the frame's real edge; any other runs on a window with its own padding, and only the
  rows whose kernel stayed inside the window or met the frame's real edge are kept, so replicate or
  excluded padding (count_include_pad=False) also comes out as in the whole frame;
- up-sampling (a transposed convolution whose kernel is its stride, a pixel shuffle) needs a row per
  `stride` rows; row padding and row slicing shift rows.
An operation outside these rules (one that mixes rows in a way not listed: a global pooling, a reshape
across rows) makes the model not streamable, and the caller uses margin tiles instead.
"""

from __future__ import annotations

import contextlib
import operator
import weakref

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from rawdenoise.models import probe_input


class NotStreamable(Exception):
    """The model holds an operation whose rows cannot be streamed; the message names it."""


# Operations whose output row r depends only on input row r of every spatial argument.
_ROW_LOCAL_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.clamp, torch.where,
    torch.sqrt, torch.rsqrt, torch.exp, torch.log, torch.abs, torch.sigmoid, torch.tanh, torch.relu, torch.special.ndtr,
    F.relu, F.gelu, F.silu, F.leaky_relu, F.elu, F.sigmoid, F.tanh, F.hardtanh,
    torch._C._nn.gelu, torch._C._nn.leaky_relu, torch._C._nn.elu, torch._C._nn.silu,
}  # fmt: skip
_ROW_LOCAL_METHODS = {
    "add", "sub", "mul", "div", "pow", "clamp", "clamp_min", "clamp_max", "sqrt", "rsqrt", "exp", "log",
    "abs", "neg", "sigmoid", "tanh", "relu", "contiguous", "to", "float", "type_as", "detach",
}  # fmt: skip
_REDUCTIONS = {"mean", "sum", "amax", "amin", "var", "std"}  # over the dims they name (rows excluded)
_POINTWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Identity, nn.Hardtanh)
_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim"}


class _Geometry:
    """Where a node's rows are: which dimension, of how many, in a tensor of how many dimensions."""

    def __init__(self, rowdim: int, ndim: int, height: int):
        self.rowdim, self.ndim, self.height = rowdim, ndim, height


class _Rule:
    """How a node's output rows [r0, r1) come from its spatial inputs (this base class: row-local).

    need(r0, r1): the input rows [a, b) they read. Run on those rows (its arguments changed by
    adjust(), in the context running() sets), the operation yields output rows from first(r0, a, b)
    on, of which [r0, r1) are kept. last(available, height_in): how far input rows [0, available)
    determine the output. `granule`: output rows are computed in multiples of it (an up-sampling's
    factor)."""

    granule = 1

    def __init__(self, geometry: _Geometry, inputs: list[fx.Node]):
        self.geometry, self.inputs = geometry, inputs

    def need(self, r0: int, r1: int) -> tuple[int, int]:
        return r0, r1

    def first(self, r0: int, a: int, b: int) -> int:
        return a

    def last(self, available: int, height_in: int) -> int:
        """The end of the output rows that input rows [0, available) of height_in determine."""
        return self.geometry.height if available >= height_in else available

    def adjust(self, args, kwargs, r0: int, r1: int, a: int, b: int):
        return args, kwargs

    def running(self, traced, node):
        """The context the operation runs in (a layer's settings changed for the call)."""
        return contextlib.nullcontext()


class _Window(_Rule):
    """A kernel of `kernel` rows (dilation included) at `stride`, with `padding` rows each side, on an
    input of `height_in` rows."""

    def __init__(self, geometry, inputs, kernel: int, stride: int, padding: int, height_in: int):
        super().__init__(geometry, inputs)
        self.kernel, self.stride, self.padding, self.height_in = kernel, stride, padding, height_in

    def need(self, r0, r1):
        s = self.stride
        a = max(0, s * r0 - self.padding) // s * s  # a multiple of the stride: the window's outputs fall on the frame's grid
        return a, min(self.height_in, s * (r1 - 1) - self.padding + self.kernel)

    def first(self, r0, a, b):
        return a // self.stride

    def last(self, available, height_in):
        if available >= height_in:
            return self.geometry.height
        return max(0, (available + self.padding - self.kernel) // self.stride + 1)


class _RowsUnpaddedConv(_Window):
    """A zero-padded convolution run with no row padding of its own on exactly the rows its outputs
    need, the frame's padding rows added as zeros where the window passes the frame's edge. Run with its
    own padding on a window (_Window), a strip's convolution would also compute `padding` rows at each
    end from made-up zeros, only to drop them: at the deepest level of a U-Net, where a strip is a few
    rows, that was half its work again."""

    def need(self, r0, r1):
        start = self.stride * r0 - self.padding
        return max(0, start), min(self.height_in, start + self.stride * (r1 - r0 - 1) + self.kernel)

    def first(self, r0, a, b):
        return r0

    def adjust(self, args, kwargs, r0, r1, a, b):
        start = self.stride * r0 - self.padding
        top = a - start
        bottom = max(0, start + self.stride * (r1 - r0 - 1) + self.kernel - b)  # zero rows past the frame's end
        window = args[0]
        if top or bottom:
            window = F.pad(window, (0, 0, top, bottom))
        return (window, *args[1:]), kwargs

    @contextlib.contextmanager
    def running(self, traced, node):
        module = traced.get_submodule(node.target)
        padding = module.padding
        module.padding = (0, padding[1])
        try:
            yield
        finally:
            module.padding = padding


class _Upsample(_Rule):
    """Each input row becomes `granule` output rows (a transposed convolution whose kernel is its
    stride, a pixel shuffle)."""

    def __init__(self, geometry, inputs, factor: int):
        super().__init__(geometry, inputs)
        self.granule = factor

    def need(self, r0, r1):
        return r0 // self.granule, -(-r1 // self.granule)

    def first(self, r0, a, b):
        return a * self.granule

    def last(self, available, height_in):
        return self.geometry.height if available >= height_in else available * self.granule


class _RowSlice(_Rule):
    """x[..., start:stop, ...] on the row dimension: the operation runs on exactly the rows it keeps, with
    `index` (Ellipsis expanded) indexing the other dimensions."""

    def __init__(self, geometry, inputs, start: int, index: tuple):
        super().__init__(geometry, inputs)
        self.start = start
        self.index = index[: geometry.rowdim] + (slice(None),) + index[geometry.rowdim + 1 :]

    def need(self, r0, r1):
        return r0 + self.start, r1 + self.start

    def first(self, r0, a, b):
        return a - self.start

    def last(self, available, height_in):
        return self.geometry.height if available >= height_in else max(0, min(self.geometry.height, available - self.start))

    def adjust(self, args, kwargs, r0, r1, a, b):
        return (args[0], self.index), kwargs


class _RowPad(_Rule):
    """F.pad adding `top` and `bottom` rows (constant or replicate: a padding row is a constant or the
    edge row itself), on an input of `height_in` rows."""

    def __init__(self, geometry, inputs, top: int, bottom: int, height_in: int, pad_position: int):
        super().__init__(geometry, inputs)
        self.top, self.bottom, self.height_in, self.pad_position = top, bottom, height_in, pad_position

    def need(self, r0, r1):
        a = min(max(r0 - self.top, 0), self.height_in - 1)
        return a, min(max(r1 - self.top, a + 1), self.height_in)

    def first(self, r0, a, b):
        return 0 if a == 0 else a + self.top

    def last(self, available, height_in):
        if available >= height_in:
            return self.geometry.height
        return available + self.top if available > 0 else 0  # a padding row copies, or needs, a real one

    def adjust(self, args, kwargs, r0, r1, a, b):
        pad = list(args[1])
        pad[self.pad_position] = self.top if a == 0 else 0
        pad[self.pad_position + 1] = self.bottom if b == self.height_in else 0
        return (args[0], pad, *args[2:]), kwargs


def _flat(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flat(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat(item)
    else:
        yield value


def _rows(value, rowdim: int, a: int, b: int):
    if isinstance(value, tuple):
        return tuple(_rows(v, rowdim, a, b) for v in value)
    return value.narrow(rowdim, a, b - a)


def _cat_rows(values: list, rowdim: int):
    if isinstance(values[0], tuple):
        return tuple(_cat_rows([v[k] for v in values], rowdim) for k in range(len(values[0])))
    return torch.cat(values, dim=rowdim)


class _Held:
    """The rows of one node's output still needed, as the parts they were computed in."""

    def __init__(self, rowdim: int):
        self.rowdim, self.parts = rowdim, []  # [(first row, end row, value)]

    def add(self, r0: int, r1: int, value):
        self.parts.append((r0, r1, value))

    def rows(self, a: int, b: int):
        pieces = []
        for r0, r1, value in self.parts:
            if r1 > a and r0 < b:
                pieces.append(_rows(value, self.rowdim, max(a, r0) - r0, min(b, r1) - r0))
        if not pieces or self.parts[0][0] > a or self.parts[-1][1] < b:
            raise AssertionError(f"rows {a}:{b} are no longer held")  # a bug in the rules, never the input's
        return pieces[0] if len(pieces) == 1 else _cat_rows(pieces, self.rowdim)

    def drop_below(self, row: int):
        while self.parts and self.parts[0][1] <= row:
            self.parts.pop(0)
        if self.parts and self.parts[0][0] < row:  # keep a copy of the rows still needed, not the whole part
            r0, r1, value = self.parts[0]
            self.parts[0] = (row, r1, _clone(_rows(value, self.rowdim, row - r0, r1 - r0)))


def _clone(value):
    return tuple(_clone(v) for v in value) if isinstance(value, tuple) else value.clone()


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    """What a trace holds of the model: its layers, parameters and buffers, as objects (a trace made
    before one of them was replaced would run the old one)."""
    return tuple((name, id(value)) for named in (model.named_modules(), model.named_parameters(), model.named_buffers())
                 for name, value in named)  # fmt: skip


def trace(model: nn.Module, blind: bool = False) -> fx.GraphModule:
    """The model's operations (with noise=None specialised in when `blind`, so `if noise is None` takes
    its real branch), traced once while the model's layers stay the same objects. Kept beside the model,
    not on it, where a deep copy of the model would carry the original's layers."""
    key = (blind, _fingerprint(model))
    traces = _TRACES.setdefault(model, {})
    if key not in traces:
        try:
            traced = fx.symbolic_trace(model, concrete_args={"noise": None} if blind else None)
        except Exception as err:  # data-dependent control flow and the like: fx says why
            raise NotStreamable(f"torch.fx cannot trace it ({type(err).__name__}: {err})") from None
        traces.clear()  # the layers changed: older traces are stale
        traces[key] = traced
    return traces[key]


def check(model: nn.Module) -> None:
    """NotStreamable, naming the operation, unless every operation of the model streams."""
    with torch.inference_mode():
        _plan(model, *probe_input(model))


def _plan(model: nn.Module, x: torch.Tensor, noise) -> "_Plan":
    traced = trace(model, blind=noise is None)
    in_place = _in_place_layers(traced)
    with _out_of_place(in_place):
        try:
            return _Plan(traced, x, noise, in_place)
        except NotStreamable:
            raise
        except Exception as err:  # an operation's arguments in a form the rules do not read: not streamable
            raise NotStreamable(f"its operations could not be read ({type(err).__name__}: {err})") from None


# The functional activations that take `inplace`, and its position among their arguments.
_INPLACE_POSITION = {F.relu: 1, F.silu: 1, F.leaky_relu: 2, F.elu: 2, F.hardtanh: 3}
# Operations whose output is a view of their first argument (an in-place write through it reaches it).
_VIEW_FUNCTIONS = {operator.getitem}
_VIEW_METHODS = {"chunk", "split", "permute", "contiguous", "to", "float", "type_as", "narrow", "view", "unsqueeze"}


def _writes_in_place(traced: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return getattr(traced.get_submodule(node.target), "inplace", False) is True
    if node.op == "call_function" and node.target in _INPLACE_POSITION:
        position = _INPLACE_POSITION[node.target]
        return bool(node.kwargs.get("inplace", node.args[position] if len(node.args) > position else False))
    return node.op == "call_method" and isinstance(node.target, str) and node.target.endswith("_") and not node.target.startswith("_")


def _in_place_layers(traced: fx.GraphModule) -> list[nn.Module]:
    """The layers whose in-place activations must run out of place (one would overwrite rows its input
    still holds for a lagging consumer). Where the whole frame relies on the write (the overwritten
    tensor is read again later), the model does not stream."""
    modules = []
    order = {node: k for k, node in enumerate(traced.graph.nodes)}
    for node in traced.graph.nodes:
        if not _writes_in_place(traced, node):
            continue
        if node.op == "call_method":
            raise NotStreamable(f"{node.name} (.{node.target}()) writes in place")
        base = node.args[0]
        while isinstance(base, fx.Node) and (base.op == "call_function" and base.target in _VIEW_FUNCTIONS
                                             or base.op == "call_method" and base.target in _VIEW_METHODS):  # fmt: skip
            base = base.args[0]
        if isinstance(base, fx.Node) and any(order[user] > order[node] for user in _readers(base)):
            raise NotStreamable(f"{node.name} writes in place over a tensor that is read again after it")
        if node.op == "call_module":
            modules.append(traced.get_submodule(node.target))
    return modules


@contextlib.contextmanager
def _out_of_place(modules: list[nn.Module]):
    """The in-place layers found by _in_place_layers run out of place meanwhile (functional ones are
    called out of place by _Plan._evaluate)."""
    for module in modules:
        module.inplace = False
    try:
        yield
    finally:
        for module in modules:
            module.inplace = True


def _readers(node: fx.Node) -> set:
    """Every node that reads `node`, directly or through views of it."""
    readers, pending = set(), [node]
    while pending:
        for user in pending.pop().users:
            readers.add(user)
            if user.op == "call_function" and user.target in _VIEW_FUNCTIONS or user.op == "call_method" and user.target in _VIEW_METHODS:
                pending.append(user)
    return readers


class _Plan:
    """The spatial nodes of one traced model on one frame, in order, each with its row rule; every other
    node (shapes, the noise profile's transforms, parameters) evaluated once."""

    def __init__(self, traced: fx.GraphModule, x: torch.Tensor, noise, in_place: list[nn.Module]):
        self.traced, self.in_place = traced, in_place  # layers that run out of place while it runs
        self.values: dict[fx.Node, object] = {}
        self.rules: dict[fx.Node, _Rule] = {}
        self.order: list[fx.Node] = []
        placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 2:
            raise NotStreamable(f"forward takes {len(placeholders)} arguments, not (x, noise)")
        self.input, self.noise = placeholders
        self._small = None
        for node in traced.graph.nodes:
            if node.op == "placeholder":
                if node is self.input:
                    self.values[node] = x
                    self.rules[node] = _Rule(_Geometry(x.ndim - 2, x.ndim, x.shape[-2]), [])
                else:
                    self.values[node] = noise
            elif node.op == "get_attr":
                self.values[node] = _attribute(traced, node.target)
            elif node.op == "output":
                result = node.args[0]
                if not isinstance(result, fx.Node) or result not in self.rules:
                    raise NotStreamable("its output is not one tensor computed from the frame")
                self.output = result
            else:
                spatial = [n for n in _flat((node.args, node.kwargs)) if isinstance(n, fx.Node) and n in self.rules]
                if not spatial or self._is_shape_query(node, spatial):
                    if node not in self.values:
                        self.values[node] = self._evaluate(node, {})
                else:
                    self.rules[node] = self._rule(node, spatial)
                    self.order.append(node)
        geometry = self.rules[self.output].geometry
        if geometry.height != x.shape[-2] or geometry.rowdim != x.ndim - 2:
            raise NotStreamable("its output's rows are not its input's")
        self.users = {n: [u for u in n.users if u in self.rules] for n in self.rules}

    def _is_shape_query(self, node, spatial) -> bool:
        if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRIBUTES:
            attribute = node.args[1]
        elif node.op == "call_method" and node.target in ("size", "dim"):
            attribute = node.target
        else:
            return False
        if spatial == [self.input]:  # the input is held whole: its shape is the frame's
            return True
        if attribute not in ("dtype", "device", "ndim", "dim"):  # an inner tensor's full shape is not known here
            raise NotStreamable(f"{self._describe(node)} asks an inner tensor's shape")
        self.values[node] = self._small_frame_values()[node]  # the same on any frame size
        return True

    def _small_frame_values(self) -> dict:
        """Every node's value on a small crop of the frame, for what does not depend on the frame's size
        (a tensor's dtype or device under the caller's autocast)."""
        if self._small is None:
            recorded = {}

            class Recorder(fx.Interpreter):
                def run_node(self, node):
                    recorded[node] = value = super().run_node(node)
                    return value

            x = self.values[self.input]
            Recorder(self.traced).run(x[..., :32, :32].clone(), self.values[self.noise])
            self._small = recorded
        return self._small

    def _describe(self, node) -> str:
        """The operation in the model's own terms, for a message."""
        if node.op == "call_module":
            return f"{node.target} ({type(self._module(node)).__name__})"
        if node.op == "call_method":
            return f"{node.name} (.{node.target}())"
        return f"{node.name} ({getattr(node.target, '__name__', node.target)})"

    def _module(self, node):
        return self.traced.get_submodule(node.target)

    def _resolve(self, value, windows):
        return fx.node.map_arg(value, lambda n: windows[n] if n in windows else self.values[n])

    def _evaluate(self, node, windows, adjust=None):
        args, kwargs = self._resolve(node.args, windows), self._resolve(node.kwargs, windows)
        if adjust is not None:
            args, kwargs = adjust(args, kwargs)
        if node.op == "call_function" and node.target in _INPLACE_POSITION:  # out of place, as _in_place_layers requires
            position = _INPLACE_POSITION[node.target]
            args = args[:position] + (False,) + args[position + 1 :] if len(args) > position else args
            kwargs = {**kwargs, "inplace": False} if "inplace" in kwargs else kwargs
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return self._module(node)(*args, **kwargs)

    def _rule(self, node: fx.Node, spatial: list[fx.Node]) -> _Rule:
        what = self._describe(node)
        geometries = [self.rules[n].geometry for n in spatial]
        g = geometries[0]
        if any(o.height != g.height or o.ndim - o.rowdim != g.ndim - g.rowdim for o in geometries[1:]):
            raise NotStreamable(f"{what} combines tensors of different rows")
        target = node.target
        if node.op == "call_module":
            module = self._module(node)
            if isinstance(module, _POINTWISE_MODULES):
                return _Rule(g, spatial)
            if isinstance(module, nn.Linear) and g.rowdim != g.ndim - 1:
                return _Rule(g, spatial)
            if isinstance(module, nn.LayerNorm) and g.rowdim < g.ndim - len(module.normalized_shape):
                return _Rule(g, spatial)
            if isinstance(module, nn.Conv2d) and g.rowdim == g.ndim - 2:
                if isinstance(module.padding, str):
                    if module.padding == "same" and module.kernel_size[0] % 2 == 0:
                        raise NotStreamable(f"{what}: 'same' padding of an even kernel is uneven")
                    padding = 0 if module.padding == "valid" else module.dilation[0] * (module.kernel_size[0] - 1) // 2
                else:
                    padding = module.padding[0]
                kernel = module.dilation[0] * (module.kernel_size[0] - 1) + 1
                if padding >= kernel:
                    raise NotStreamable(f"{what}: padding of {padding} rows makes rows of padding alone")
                if module.padding_mode == "circular" or module.padding_mode != "zeros" and 2 * padding > kernel - 1:
                    raise NotStreamable(f"{what}: {module.padding_mode} padding of {padding} rows reaches past its window")
                if padding and module.padding_mode == "zeros" and not isinstance(module.padding, str):
                    height = (g.height + 2 * padding - kernel) // module.stride[0] + 1
                    geometry = _Geometry(g.rowdim, g.ndim, height)
                    return _RowsUnpaddedConv(geometry, spatial, kernel, module.stride[0], padding, g.height)
                return self._window(g, spatial, kernel, module.stride[0], padding)
            if isinstance(module, nn.ConvTranspose2d) and g.rowdim == g.ndim - 2:
                if (module.kernel_size[0] == module.stride[0] and module.padding[0] == 0 and module.output_padding[0] == 0
                        and module.dilation[0] == 1):  # fmt: skip
                    return _Upsample(_Geometry(g.rowdim, g.ndim, g.height * module.stride[0]), spatial, module.stride[0])
            if isinstance(module, nn.PixelShuffle) and g.rowdim == g.ndim - 2:
                factor = module.upscale_factor
                return _Upsample(_Geometry(g.rowdim, g.ndim, g.height * factor), spatial, factor)
            if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and g.rowdim == g.ndim - 2 and not module.ceil_mode:
                k, s, p = (_first(v) for v in (module.kernel_size, module.stride or module.kernel_size, module.padding))
                d = _first(getattr(module, "dilation", 1))
                return self._window(g, spatial, d * (k - 1) + 1, s, p)
            raise NotStreamable(f"{what}: {type(module).__name__} mixes rows in a way streaming does not know")
        args = self._resolve(node.args, {n: None for n in spatial})
        kwargs = self._resolve(node.kwargs, {n: None for n in spatial})
        function, method = node.op == "call_function", node.op == "call_method"
        if function and target in _ROW_LOCAL_FUNCTIONS or method and target in _ROW_LOCAL_METHODS:
            return self._broadcast(node, g, spatial, args, kwargs)
        if node.op == "call_function" and target is torch.cat:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            tensors = args[0] if args else kwargs["tensors"]
            if dim % g.ndim == g.rowdim or any(t is not None for t in tensors):
                raise NotStreamable(f"{what} concatenates along rows or with a tensor not computed from the frame")
            return _Rule(g, spatial)
        if node.op == "call_method" and target in _REDUCTIONS:
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dims is None:
                raise NotStreamable(f"{what} reduces over every pixel")
            dims = {d % g.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
            if g.rowdim in dims:
                raise NotStreamable(f"{what} reduces over rows")
            position = 3 if target in ("var", "std") else 2  # var and std take `unbiased` before keepdim
            if kwargs.get("keepdim", args[position] if len(args) > position else False):
                return _Rule(g, spatial)
            shift = sum(d < g.rowdim for d in dims)
            return _Rule(_Geometry(g.rowdim - shift, g.ndim - len(dims), g.height), spatial)
        if node.op == "call_method" and target in ("chunk", "split"):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            if dim % g.ndim == g.rowdim:
                raise NotStreamable(f"{what} splits rows")
            return _Rule(g, spatial)
        if node.op == "call_method" and target == "permute":
            dims = kwargs.get("dims") or (args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
            dims = [d % g.ndim for d in dims]
            return _Rule(_Geometry(dims.index(g.rowdim), g.ndim, g.height), spatial)
        if node.op == "call_function" and target is operator.getitem:
            return self._getitem(node, g, spatial, args)
        if node.op == "call_function" and target is F.pad:
            return self._pad(node, g, spatial, args, kwargs)
        if function and target in (F.max_pool2d, torch._C._nn.avg_pool2d, F.avg_pool2d) and g.rowdim == g.ndim - 2:
            names = ["input", "kernel_size", "stride", "padding"]
            names += ["dilation", "ceil_mode"] if target is F.max_pool2d else ["ceil_mode"]
            bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
            if bound.get("ceil_mode"):
                raise NotStreamable(f"{what}: ceil_mode pooling")
            k = _first(bound["kernel_size"])
            s = _first(bound.get("stride") or bound["kernel_size"])
            d = _first(bound.get("dilation", 1))
            return self._window(g, spatial, d * (k - 1) + 1, s, _first(bound.get("padding", 0)))
        raise NotStreamable(f"{what}: an operation streaming does not know")

    def _window(self, g, spatial, kernel, stride, padding) -> _Window:
        height = (g.height + 2 * padding - kernel) // stride + 1
        return _Window(_Geometry(g.rowdim, g.ndim, height), spatial, kernel, stride, padding, g.height)

    def _broadcast(self, node, g, spatial, args, kwargs) -> _Rule:
        """A row-local operation: other tensors must not vary along the row dimension."""
        ndim = max(o.ndim for o in (self.rules[n].geometry for n in spatial))
        for value in _flat((args, kwargs)):
            if torch.is_tensor(value):
                ndim = max(ndim, value.ndim)
        position = g.ndim - g.rowdim  # from the right
        for value in _flat((args, kwargs)):
            if torch.is_tensor(value) and value.ndim >= position and value.shape[-position] != 1:
                raise NotStreamable(f"{self._describe(node)} combines the frame with a tensor that varies along rows")
        return _Rule(_Geometry(ndim - position, ndim, g.height), spatial)

    def _getitem(self, node, g, spatial, args) -> _Rule:
        base, index = args
        if isinstance(node.args[0], fx.Node) and isinstance(index, int) and self._is_tuple(node.args[0]):
            return _Rule(g, spatial)  # one part of a chunk or split
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None or isinstance(i, int) or torch.is_tensor(i) for i in index):
            raise NotStreamable(f"{self._describe(node)}: indexing other than slices")
        if Ellipsis in index:
            e = index.index(Ellipsis)
            index = index[:e] + (slice(None),) * (g.ndim - len(index) + 1) + index[e + 1 :]
        index = index + (slice(None),) * (g.ndim - len(index))
        if len(index) != g.ndim:
            raise NotStreamable(f"{self._describe(node)}: an index of {len(index)} dimensions")
        start, stop, step = index[g.rowdim].indices(g.height)
        if step != 1:
            raise NotStreamable(f"{self._describe(node)}: a strided row slice")
        return _RowSlice(_Geometry(g.rowdim, g.ndim, max(0, stop - start)), spatial, start, index)

    def _is_tuple(self, node) -> bool:
        return node.op == "call_method" and node.target in ("chunk", "split")

    def _pad(self, node, g, spatial, args, kwargs) -> _Rule:
        pad = list(args[1] if len(args) > 1 else kwargs["pad"])
        position = 2 * (g.ndim - 1 - g.rowdim)
        if position + 1 >= len(pad):
            return _Rule(g, spatial)  # no rows padded
        top, bottom = pad[position], pad[position + 1]
        if top < 0 or bottom < 0:
            raise NotStreamable(f"{self._describe(node)} crops rows")
        mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        if (top or bottom) and mode not in ("constant", "replicate"):  # reflect and circular read rows far away
            raise NotStreamable(f"{self._describe(node)}: {mode} padding of rows")
        if len(args) < 2:
            raise NotStreamable(f"{self._describe(node)}: pad given by keyword")
        return _RowPad(_Geometry(g.rowdim, g.ndim, g.height + top + bottom), spatial, top, bottom, g.height, position)


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _attribute(module: nn.Module, target: str):
    value = module
    for name in target.split("."):
        value = getattr(value, name)
    return value


def stream(model: nn.Module, x: torch.Tensor, noise, rows: int) -> torch.Tensor:
    """model(x, noise) for a (N, C, H, W) batch, computed down the frame `rows` input rows at a time (see
    the module's docstring); NotStreamable (before any work) if the model holds an operation it cannot
    stream. The caller sets the context (inference mode, autocast), as for a plain forward.

    Each step releases `rows` more input rows and every layer, in order, computes the rows its inputs
    now determine, at most its share of a step: the deep layers' lag (the model's reach) is held once,
    as the skips' rows waiting for the decoder, and caught up at the end in steps of the same size."""
    plan = _plan(model, x, noise)
    held = {node: _Held(rule.geometry.rowdim) for node, rule in plan.rules.items()}
    done = dict.fromkeys(plan.rules, 0)
    height = x.shape[-2]
    held[plan.input].add(0, height, x)
    out = None
    with _out_of_place(plan.in_place):
        step = {node: _step(rule, rows, height) for node, rule in plan.rules.items()}
        while done[plan.output] < height:
            released = done[plan.input]
            done[plan.input] = min(released + rows, height)
            progress = done[plan.input] > released
            for node in plan.order:
                rule = plan.rules[node]
                available = min(done[source] for source in rule.inputs)
                r1 = min(rule.last(available, plan.rules[rule.inputs[0]].geometry.height), done[node] + step[node])
                if r1 < rule.geometry.height:
                    r1 -= r1 % rule.granule
                if r1 > done[node]:
                    _compute(plan, node, held, done, r1)
                    progress = True
            if not progress:
                raise AssertionError(f"streaming stalled at row {done[plan.output]} of {height}")  # a bug in the rules
            part = held[plan.output]
            for r0, r1, value in part.parts:
                if out is None:  # the output's own shape (its channels need not be the input's)
                    out = value.new_empty((*value.shape[:-2], height, value.shape[-1]))
                out[..., r0:r1, :] = value
            part.parts.clear()
    return out


def _step(rule: _Rule, rows: int, height: int) -> int:
    """The most rows a node computes in one step: its share of `rows` input rows, in whole granules. The
    deep layers' lag is then caught up at the end in steps of the same size, not all at once."""
    share = -(-rows * rule.geometry.height // height)
    return max(rule.granule, -(-share // rule.granule) * rule.granule)


def _compute(plan: _Plan, node: fx.Node, held: dict, done: dict, r1: int) -> None:
    """The node's output rows from where it stopped to r1; then each input drops the rows no consumer
    will read again."""
    rule, r0 = plan.rules[node], done[node]
    a, b = rule.need(r0, r1)
    windows = {source: held[source].rows(a, b) for source in rule.inputs}
    if plan.input in windows and windows[plan.input].ndim == 4:  # rows of the frame, channels last as a
        windows[plan.input] = windows[plan.input].contiguous(memory_format=torch.channels_last)  # whole one would be
    with rule.running(plan.traced, node):
        value = plan._evaluate(node, windows, lambda args, kwargs: rule.adjust(args, kwargs, r0, r1, a, b))
    c = rule.first(r0, a, b)
    done[node] = r1
    if plan.users[node] or node is plan.output:  # a result nothing reads is not kept
        held[node].add(r0, r1, _rows(value, rule.geometry.rowdim, r0 - c, r1 - c))
    for source in rule.inputs:
        if source is plan.input:
            continue
        pending = [u for u in plan.users[source] if done[u] < plan.rules[u].geometry.height]
        lowest = min((plan.rules[u].need(done[u], done[u] + 1)[0] for u in pending), default=None)
        if lowest is None:
            held[source].parts.clear()
        else:
            held[source].drop_below(lowest)
