"""ONNX converters for shapes, data movement and tensor creation, and their import-time (Host)
evaluation on small integer values, which is what keeps `Shape`-based arithmetic symbolic."""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy
import torch

from ..ir import TensorType
from ..ir.dtypes import by_name, i64
from .onnx_import import Host, OnnxCtx, _NotOnHost, host_from_tensor_proto, host_op, kiln_dtype, onnx_op

BIG = 2**62  # ONNX uses INT64_MAX / INT_MAX bounds for "to the end"


def host(data: Any, dtype: Any) -> Host:
    """A Host value; object arrays holding only plain integers become int64 arrays."""
    a = np.asarray(data, dtype=object) if isinstance(data, (list, tuple)) else np.asarray(data)
    if a.dtype == object:
        flat = [(int(v) if isinstance(v, sympy.Expr) and v.is_Integer else v) for v in a.reshape(-1)]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat):
            a = np.array(flat, dtype=np.int64).reshape(a.shape)
        else:
            a = np.array(flat + [None], dtype=object)[:-1].reshape(a.shape)
    if a.dtype != object and dtype.kind != "bool" and a.dtype != np.dtype(str(dtype.torch).removeprefix("torch.")):
        a = a.astype(str(dtype.torch).removeprefix("torch."))
    return Host(a, dtype)


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _numel(shape: Any) -> Any:
    n: Any = 1
    for d in shape:
        n = n * d
    return sympy.expand(n) if isinstance(n, sympy.Expr) else n


def _exact_div(a: Any, b: Any, ctx: OnnxCtx) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        if b == 0 or a % b:
            raise ctx.error(f"cannot infer -1: {a} elements do not divide by {b}")
        return a // b
    q = sympy.cancel(sympy.sympify(a) / sympy.sympify(b))
    num, den = sympy.fraction(q)
    if den != 1:
        raise ctx.error(f"cannot infer -1: {a} is not a multiple of {b}")
    return int(q) if q.is_Integer else q


# --- constants and shapes -----------------------------------------------------------------------
@onnx_op("Constant")
def _constant(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Host:
    if "value" in attrs:
        return host_from_tensor_proto(attrs["value"], f"Constant {node.name!r}")
    for key, dtype in (("value_float", "f32"), ("value_floats", "f32"), ("value_int", "i64"), ("value_ints", "i64")):
        if key in attrs:
            return host(np.array(attrs[key]), by_name(dtype))
    raise ctx.error(f"Constant with attribute(s) {sorted(attrs)} is unsupported (strings, sparse tensors)")


@onnx_op("Identity")
def _identity(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    return ins[0]


host_op("Identity")(_identity)


@onnx_op("Shape")
def _shape(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Host:
    shape = list(ctx.type_of(ins[0]).shape)
    rank = len(shape)
    start = max(0, min(rank, _axis(attrs.get("start", 0), rank)))
    end = max(0, min(rank, _axis(attrs.get("end", rank), rank)))
    return host(np.array(shape[start:end] + [None], dtype=object)[:-1], i64)


host_op("Shape")(_shape)


@onnx_op("Size")
def _size(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Host:
    return host(np.array([_numel(ctx.type_of(ins[0]).shape), None], dtype=object)[:1].reshape(()), i64)


host_op("Size")(_size)


@onnx_op("ConstantOfShape")
def _constant_of_shape(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    value = attrs.get("value")
    fill = host_from_tensor_proto(value, "ConstantOfShape value") if value is not None else Host(np.zeros(1, np.float32), by_name("f32"))
    shape = ctx.ints(ins[0], "ConstantOfShape's shape")
    scalar = fill.data.reshape(-1)[0].item()
    if all(isinstance(d, int) for d in shape) and fill.dtype.kind in ("int", "bool") and _numel(shape) <= 4096:
        return host(np.full(shape, scalar, dtype=fill.data.dtype), fill.dtype)
    return ctx.emit("full", [], shape=tuple(shape), value=scalar, dtype=fill.dtype)


@onnx_op("Cast", "CastLike")
def _cast(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    dtype = kiln_dtype(attrs["to"], "Cast target") if node.op_type == "Cast" else ctx.type_of(ins[1]).dtype
    x = ins[0]
    if isinstance(x, Host) and not x.symbolic and x.data.size <= 4096 and dtype.kind != "float":
        return host(x.data.astype(str(dtype.torch).removeprefix("torch.") if dtype.kind != "bool" else np.bool_), dtype)
    if ctx.type_of(x).dtype is dtype:
        return x
    return ctx.emit("cast", [x], dtype=dtype)


@host_op("Cast", "CastLike")
def _cast_host(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    dtype = kiln_dtype(attrs["to"], "Cast target") if node.op_type == "Cast" else ins[1].dtype
    if ins[0].symbolic and dtype.kind not in ("int", "uint") or dtype.name not in ("i64", "i32", "i16", "i8", "u8", "b8", "f32", "f64"):
        raise _NotOnHost
    if not ins[0].symbolic:
        return Host(ins[0].data.astype(np.bool_ if dtype.kind == "bool" else str(dtype.torch).removeprefix("torch.")), dtype)
    return host(ins[0].data, dtype)


# --- reshapes ------------------------------------------------------------------------------------
def reshape_target(ctx: OnnxCtx, in_shape: tuple, shape: list, allowzero: bool) -> tuple:
    out = [in_shape[i] if (d == 0 and not allowzero and i < len(in_shape)) else d for i, d in enumerate(shape)]
    minus = [i for i, d in enumerate(out) if isinstance(d, int) and d == -1]
    if len(minus) > 1:
        raise ctx.error("Reshape shape has more than one -1")
    if minus:
        known = _numel([d for i, d in enumerate(out) if i != minus[0]])
        out[minus[0]] = _exact_div(_numel(in_shape), known, ctx)
    return tuple(out)


@onnx_op("Reshape")
def _reshape(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x = ins[0]
    t = ctx.type_of(x)
    shape = reshape_target(ctx, t.shape, ctx.ints(ins[1], "Reshape's shape"), bool(attrs.get("allowzero", 0)))
    if isinstance(x, Host):
        return host(x.data.reshape([int(d) for d in shape]), x.dtype)
    return ctx.emit("reshape", [x], shape=shape) if tuple(shape) != t.shape else x


host_op("Reshape")(_reshape)


@onnx_op("Flatten")
def _flatten(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axis = _axis(attrs.get("axis", 1), t.rank)
    return ctx.emit("reshape", [ins[0]], shape=(_numel(t.shape[:axis]), _numel(t.shape[axis:])))


@onnx_op("Transpose")
def _transpose(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    rank = ctx.type_of(ins[0]).rank
    perm = tuple(attrs.get("perm", reversed(range(rank))))
    if perm == tuple(range(rank)):
        return ins[0]
    return ctx.emit("permute", [ins[0]], dims=tuple(_axis(p, rank) for p in perm))


def _axes_arg(ctx: OnnxCtx, ins: list, attrs: dict, since: int) -> list | None:
    if ctx.opset >= since and len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in ctx.ints(ins[1], "axes")]
    return list(attrs["axes"]) if "axes" in attrs else None


@onnx_op("Unsqueeze")
def _unsqueeze(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x = ins[0]
    t = ctx.type_of(x)
    axes = _axes_arg(ctx, ins, attrs, 13) or []
    rank = t.rank + len(axes)
    axes = sorted(_axis(a, rank) for a in axes)
    shape = list(t.shape)
    for a in axes:
        shape.insert(a, 1)
    if isinstance(x, Host):
        return host(x.data.reshape(shape) if not x.symbolic else np.reshape(x.data, [int(s) for s in shape]), x.dtype)
    return ctx.emit("reshape", [x], shape=tuple(shape))


host_op("Unsqueeze")(_unsqueeze)


@onnx_op("Squeeze")
def _squeeze(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x = ins[0]
    t = ctx.type_of(x)
    axes = _axes_arg(ctx, ins, attrs, 13)
    axes = [i for i, d in enumerate(t.shape) if d == 1] if axes is None else [_axis(a, t.rank) for a in axes]
    shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    if isinstance(x, Host):
        return host(np.reshape(x.data, [int(s) for s in shape]), x.dtype)
    return ctx.emit("reshape", [x], shape=shape) if shape != t.shape else x


host_op("Squeeze")(_squeeze)


@onnx_op("Concat")
def _concat(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    xs = [x for x in ins if x is not None]
    rank = ctx.type_of(xs[0]).rank
    axis = _axis(attrs["axis"], rank)
    if all(isinstance(x, Host) for x in xs):
        return host(np.concatenate([x.data for x in xs], axis=axis), xs[0].dtype)
    xs = [x for x in xs if _numel(ctx.type_of(x).shape) != 0] or xs[:1]
    return ctx.emit("cat", xs, dim=axis) if len(xs) > 1 else xs[0]


host_op("Concat")(_concat)


@onnx_op("Split")
def _split(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axis = _axis(attrs.get("axis", 0), t.rank)
    d = t.shape[axis]
    n = len(node.output)
    if len(ins) > 1 and ins[1] is not None:
        sizes = ctx.ints(ins[1], "Split's sizes")
    elif "split" in attrs:
        sizes = list(attrs["split"])
    elif not isinstance(d, int):
        if attrs.get("num_outputs", n) != n or n != 1 and not isinstance(sympy.cancel(d / n), sympy.Expr):
            raise ctx.error("an uneven split of a symbolic dim is unsupported")
        sizes = [sympy.cancel(d / n)] * n
    else:
        n = attrs.get("num_outputs", n)
        chunk = -(-d // n)
        sizes = [chunk] * (d // chunk) + ([d % chunk] if d % chunk else [])
    out = ctx.emit("split", [ins[0]], sizes=tuple(sizes), dim=axis)
    return list(out) if isinstance(out, tuple) else [out]


# --- slicing and gathering -----------------------------------------------------------------------
def _clamp(v: int, lo: Any, hi: Any) -> Any:
    if isinstance(lo, int) and isinstance(hi, int):
        return max(lo, min(hi, v))
    return sympy.Max(lo, sympy.Min(hi, v))


def _bounds(start: int, end: int, step: int, d: Any) -> tuple:
    """ONNX Slice bounds normalised against dim d (start/end clamped as numpy does)."""
    if step > 0:
        s = start + d if start < 0 else (d if start >= BIG else start)
        e = end + d if end < 0 else (d if end >= BIG else end)
        if isinstance(d, int):
            return _clamp(s, 0, d), _clamp(e, 0, d)
        return s, e  # symbolic: the model's bounds are taken to lie inside the dim
    s = start + d if start < 0 else start
    e = end + d if end < 0 and end > -BIG else (-1 if end <= -BIG else end)
    return _clamp(s, 0, d - 1), _clamp(e, -1, d - 1)


@onnx_op("Slice")
def _slice(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x = ins[0]
    t = ctx.type_of(x)
    if ctx.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes, steps = list(attrs.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = ctx.ints(ins[1], "Slice's starts"), ctx.ints(ins[2], "Slice's ends")
        axes = ctx.ints(ins[3], "Slice's axes") if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ctx.ints(ins[4], "Slice's steps") if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    if isinstance(x, Host):
        index = [slice(None)] * t.rank
        for s, e, a, k in zip(starts, ends, axes, steps):
            index[_axis(int(a), t.rank)] = slice(int(s), int(e), int(k))  # Python's slicing is ONNX's
        return host(x.data[tuple(index)], x.dtype)
    for s, e, a, k in zip(starts, ends, axes, steps):
        a, k = _axis(int(a), t.rank), int(k)
        d = ctx.type_of(x).shape[a]
        if not all(isinstance(v, int) for v in (s, e)):
            raise ctx.error("Slice bounds must be integers known at import time")
        lo, hi = _bounds(s, e, k, d)
        if k < 0:
            if not isinstance(d, int):
                raise ctx.error("a negative Slice step needs a static dim")
            x = ctx.aten(torch.ops.aten.flip.default, [x], [ctx.type_of(x)], dims=(a,))
            lo, hi, k = d - 1 - lo, d - 1 - hi, -k
        if lo == 0 and hi == d and k == 1:
            continue
        x = ctx.emit("slice", [x], dim=a, start=lo, end=max(lo, hi) if isinstance(lo, int) and isinstance(hi, int) else hi, step=k)
    return x


host_op("Slice")(_slice)


def _normalized_index(ctx: OnnxCtx, idx: Any, d: Any) -> Any:
    """Indices with negatives wrapped (ONNX allows -d..d-1)."""
    if isinstance(idx, Host) and not idx.symbolic:
        if (idx.data < 0).any():
            if not isinstance(d, int):
                raise ctx.error("negative indices into a symbolic dim are unsupported")
            return host(np.where(idx.data < 0, idx.data + d, idx.data), idx.dtype)
        return idx
    idx = ctx.tensor(idx)
    neg = ctx.emit("lt", [idx], rhs=0)
    return ctx.emit("where", [neg, ctx.emit("add", [idx], rhs=d), idx])


@onnx_op("Gather")
def _gather(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x, idx = ins[0], ins[1]
    t = ctx.type_of(x)
    axis = _axis(attrs.get("axis", 0), t.rank)
    if isinstance(x, Host) and isinstance(idx, Host):
        if idx.symbolic or x.data.size > 4096:
            raise _NotOnHost
        return host(np.take(x.data, np.where(idx.data < 0, idx.data + x.data.shape[axis], idx.data), axis=axis), x.dtype)
    idx = _normalized_index(ctx, idx, t.shape[axis])
    it = ctx.type_of(idx)
    if isinstance(idx, Host) and it.rank == 0:
        return ctx.emit("select", [x], dim=axis, index=int(idx.data))
    flat = idx if it.rank == 1 else ctx.emit("reshape", [idx], shape=(_numel(it.shape),))
    out = ctx.emit("index_select", [x, flat], dim=axis)
    shape = t.shape[:axis] + it.shape + t.shape[axis + 1:]
    return out if ctx.type_of(out).shape == shape else ctx.emit("reshape", [out], shape=shape)


host_op("Gather")(_gather)


@onnx_op("GatherElements")
def _gather_elements(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axis = _axis(attrs.get("axis", 0), t.rank)
    idx = _normalized_index(ctx, ins[1], t.shape[axis])
    if ctx.type_of(idx).dtype is not i64:
        idx = ctx.emit("cast", [idx], dtype=i64)
    return ctx.emit("gather", [ins[0], idx], dim=axis)


def broadcast_shapes(ctx: OnnxCtx, a: tuple, b: tuple) -> tuple:
    rank = max(len(a), len(b))
    a, b = (1,) * (rank - len(a)) + tuple(a), (1,) * (rank - len(b)) + tuple(b)
    out = []
    for p, q in zip(a, b):
        if p == 1:
            out.append(q)
        elif q == 1 or p == q:
            out.append(p)
        elif not isinstance(p, int) or not isinstance(q, int):
            out.append(p if isinstance(q, int) else q)  # symbolic vs symbolic/other: trust the model
        else:
            raise ctx.error(f"cannot broadcast shapes {a} and {b}")
    return tuple(out)


@onnx_op("Expand")
def _expand(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    shape = broadcast_shapes(ctx, t.shape, tuple(ctx.ints(ins[1], "Expand's shape")))
    if shape == t.shape:
        return ins[0]
    return ctx.emit("expand", [ins[0]], shape=shape)


@onnx_op("Tile")
def _tile(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    reps = ctx.ints(ins[1], "Tile's repeats")
    out = TensorType(t.dtype, tuple(d * r for d, r in zip(t.shape, reps)))
    return ctx.aten(torch.ops.aten.repeat.default, [ins[0]], [out], repeats=tuple(reps))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@onnx_op("Pad")
def _pad(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    if ctx.opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = ctx.ints(ins[1], "Pad's pads")
        v = ins[2] if len(ins) > 2 else None
        value = np.asarray(ctx.host(v, "Pad's value")).reshape(-1)[0].item() if v is not None else 0
    axes = ctx.ints(ins[3], "Pad's axes") if len(ins) > 3 and ins[3] is not None else list(range(t.rank))
    axes = [_axis(int(a), t.rank) for a in axes]
    n = len(axes)
    begin, end = dict(zip(axes, pads[:n])), dict(zip(axes, pads[n:]))
    torch_pads: list = []
    for a in reversed(range(t.rank)):
        torch_pads += [begin.get(a, 0), end.get(a, 0)]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    mode = _PAD_MODES.get(attrs.get("mode", "constant"))
    if mode is None:
        raise ctx.error(f"Pad mode {attrs.get('mode')!r} is unsupported")
    shape = tuple(d + begin.get(i, 0) + end.get(i, 0) for i, d in enumerate(t.shape))
    kw = {"value": float(value)} if mode == "constant" else {}
    return ctx.aten(torch.ops.aten.pad.default, [ins[0]], [TensorType(t.dtype, shape)], pad=tuple(torch_pads), mode=mode, **kw)


@onnx_op("Trilu")
def _trilu(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    k = int(ctx.ints(ins[1], "Trilu's k")[0]) if len(ins) > 1 and ins[1] is not None else 0
    return ctx.emit("triu" if attrs.get("upper", 1) else "tril", [ins[0]], diagonal=k)


@onnx_op("Range")
def _range(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    start, limit, delta = (np.asarray(ctx.host(x, "Range's bounds")).reshape(-1)[0] for x in ins)
    dtype = ctx.type_of(ins[0]).dtype
    if dtype.kind == "int" and all(isinstance(v, (int, np.integer)) for v in (start, delta)) and isinstance(limit, (sympy.Expr, np.integer, int)):
        if isinstance(limit, sympy.Expr) and not limit.is_Integer:
            if int(delta) != 1:
                raise ctx.error("a symbolic Range needs delta 1")
            return ctx.emit("arange", [], start=int(start), end=limit, step=1, dtype=dtype)
        n = max(0, -(-(int(limit) - int(start)) // int(delta)))
        return host(np.int64(start) + np.int64(delta) * np.arange(n, dtype=np.int64), dtype)
    if any(isinstance(v, sympy.Expr) for v in (start, limit, delta)):
        raise ctx.error("a symbolic float Range is unsupported")
    n = max(0, int(np.ceil((float(limit) - float(start)) / float(delta))))
    np_dtype = np.dtype(str(dtype.torch).removeprefix("torch."))
    return Host((np.asarray(start, np_dtype) + np.asarray(delta, np_dtype) * np.arange(n).astype(np_dtype)).astype(np_dtype), dtype)


host_op("Range")(_range)


@onnx_op("Dropout")
def _dropout(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    if len(ins) > 2 and ins[2] is not None and bool(np.asarray(ctx.host(ins[2], "Dropout's training_mode")).reshape(-1)[0]):
        raise ctx.error("Dropout in training mode is random: kiln compiles inference only")
    out = [ins[0]]
    if len(node.output) > 1 and node.output[1]:
        out.append(ctx.emit("full", [], shape=ctx.type_of(ins[0]).shape, value=True, dtype=by_name("b8")))
    return out


@onnx_op("DepthToSpace", "SpaceToDepth")
def _depth_space(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    b, c, h, w = ctx.type_of(ins[0]).shape
    bs = attrs["blocksize"]
    if node.op_type == "SpaceToDepth":
        x = ctx.emit("reshape", [ins[0]], shape=(b, c, h // bs, bs, w // bs, bs))
        x = ctx.emit("permute", [x], dims=(0, 3, 5, 1, 2, 4))
        return ctx.emit("reshape", [x], shape=(b, c * bs * bs, h // bs, w // bs))
    crd = attrs.get("mode", "DCR") == "CRD"
    x = ctx.emit("reshape", [ins[0]], shape=(b, c // (bs * bs), bs, bs, h, w) if crd else (b, bs, bs, c // (bs * bs), h, w))
    x = ctx.emit("permute", [x], dims=(0, 1, 4, 2, 5, 3) if crd else (0, 3, 4, 1, 5, 2))
    return ctx.emit("reshape", [x], shape=(b, c // (bs * bs), h * bs, w * bs))


@onnx_op("TopK")
def _topk(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axis = _axis(attrs.get("axis", -1), t.rank)
    k = int(ctx.ints(ins[1], "TopK's k")[0]) if ctx.opset >= 10 else int(attrs["k"])
    shape = t.shape[:axis] + (k,) + t.shape[axis + 1:]
    return list(ctx.aten(torch.ops.aten.topk.default, [ins[0]], [TensorType(t.dtype, shape), TensorType(i64, shape)],
                         k=k, dim=axis, largest=bool(attrs.get("largest", 1)), sorted=bool(attrs.get("sorted", 1))))
