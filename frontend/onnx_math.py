"""ONNX converters for elementwise math, reductions, matmul/Gemm, softmax and normalisations.

Elementwise ops map onto kiln's declared ops (fusion targets); a 0-dim constant operand becomes
the op's `lhs`/`rhs` scalar. ONNX semantics PyTorch spells differently are handled here: integer
Div truncates, Mod follows the divisor's sign unless `fmod=1`, Pow keeps the base's type, Gemm's
transA/transB/alpha/beta, opset < 13 Softmax over a flattened tail.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import sympy
import torch

from ..ir import TensorType
from ..ir.dtypes import b8, f32, i64
from .onnx_import import Host, OnnxCtx, _NotOnHost, host_op, onnx_op
from .onnx_tensor import _axis, host

UNARY = {
    "Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
    "Floor": "floor", "Ceil": "ceil", "Sign": "sign", "Erf": "erf", "Sin": "sin", "Cos": "cos",
    "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Not": "logical_not", "IsNaN": "isnan",
    "BitwiseNot": "bitwise_not",
}
ATEN_UNARY = {
    "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh",
    "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh", "Round": "round",
}
BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Equal": "eq", "Less": "lt", "LessOrEqual": "le",
    "Greater": "gt", "GreaterOrEqual": "ge", "And": "logical_and", "Or": "logical_or", "Xor": "bitwise_xor",
    "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor",
}


@onnx_op(*UNARY)
def _unary(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    return ctx.emit(UNARY[node.op_type], [ins[0]])


@onnx_op(*ATEN_UNARY)
def _aten_unary(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    return ctx.aten(getattr(torch.ops.aten, ATEN_UNARY[node.op_type]).default, [ins[0]], [t])


def _scalar(x: Any) -> Any:
    """A 0-dim Host value as a Python scalar (None otherwise)."""
    if isinstance(x, Host) and x.data.ndim == 0 and not x.symbolic:
        v = x.data.item()
        return bool(v) if x.dtype.kind == "bool" else v
    return None


def binary(ctx: OnnxCtx, op: str, a: Any, b: Any) -> Any:
    sa, sb = _scalar(a), _scalar(b)
    if sb is not None and isinstance(a, Host) is False:
        return ctx.emit(op, [a], rhs=sb)
    if sa is not None and isinstance(b, Host) is False and op not in ("maximum", "minimum", "logical_and", "logical_or", "atan2"):
        return ctx.emit(op, [b], lhs=sa)
    return ctx.emit(op, [a, b])


@onnx_op(*BINARY)
def _binary(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    return binary(ctx, BINARY[node.op_type], ins[0], ins[1])


@onnx_op("Div")
def _div(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    if t.dtype.is_float:
        return binary(ctx, "div", ins[0], ins[1])
    out = TensorType(t.dtype, _bshape(ctx, ins))
    return ctx.aten(torch.ops.aten.div.Tensor_mode, ins[:2], [out], rounding_mode="trunc")


@onnx_op("Mod")
def _mod(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    if attrs.get("fmod", 0):
        t = ctx.type_of(ins[0])
        return ctx.aten(torch.ops.aten.fmod.Tensor, ins[:2], [TensorType(t.dtype, _bshape(ctx, ins))])
    return binary(ctx, "remainder", ins[0], ins[1])


@onnx_op("Pow")
def _pow(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    base, exp = ins
    bt = ctx.type_of(base)
    if ctx.type_of(exp).dtype is not bt.dtype:
        exp = host(exp.data.astype(str(bt.dtype.torch).removeprefix("torch.")), bt.dtype) if isinstance(exp, Host) and not exp.symbolic else ctx.emit("cast", [exp], dtype=bt.dtype)
    return binary(ctx, "pow", base, exp)


@onnx_op("BitShift")
def _bitshift(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    fn = torch.ops.aten.bitwise_left_shift.Tensor if attrs["direction"] == "LEFT" else torch.ops.aten.bitwise_right_shift.Tensor
    return ctx.aten(fn, ins[:2], [TensorType(t.dtype, _bshape(ctx, ins))])


def _bshape(ctx: OnnxCtx, ins: list) -> tuple:
    from .onnx_tensor import broadcast_shapes

    shape: tuple = ()
    for x in ins:
        if x is not None:
            shape = broadcast_shapes(ctx, shape, ctx.type_of(x).shape)
    return shape


@onnx_op("Max", "Min", "Sum", "Mean")
def _variadic(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}[node.op_type]
    xs = [x for x in ins if x is not None]
    acc = xs[0]
    for x in xs[1:]:
        acc = ctx.emit(op, [acc, x])
    if node.op_type == "Mean" and len(xs) > 1:
        acc = ctx.emit("div", [acc], rhs=float(len(xs)))
    if acc is xs[0] and isinstance(acc, Host):
        return acc
    out = ctx.tensor(acc)
    shape = _bshape(ctx, xs)
    return out if out.type.shape == shape else ctx.emit("expand", [out], shape=shape)


@onnx_op("Where")
def _where(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    return ctx.emit("where", ins[:3])


@onnx_op("Clip")
def _clip(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x = ins[0]
    if ctx.opset < 11:
        return ctx.emit("clamp", [x], min=attrs.get("min"), max=attrs.get("max"))
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    if lo is not None and _scalar(lo) is None:
        x, lo = ctx.emit("maximum", [x, lo]), None
    if hi is not None and _scalar(hi) is None:
        x, hi = ctx.emit("minimum", [x, hi]), None
    lo_v, hi_v = (_scalar(v) if v is not None else None for v in (lo, hi))
    if lo_v is None and hi_v is None:
        return x
    return ctx.emit("clamp", [x], min=lo_v, max=hi_v)


# --- host evaluation of integer/shape arithmetic ---------------------------------------------------
def _trunc_div(a: Any, b: Any) -> Any:
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return a / b
    if a.dtype == object or b.dtype == object:
        return a // b  # dims are non-negative: floor == trunc
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) ^ (b < 0), -q, q)


_HOST_BINARY = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": _trunc_div,
    "Equal": operator.eq, "Less": operator.lt, "LessOrEqual": operator.le, "Greater": operator.gt,
    "GreaterOrEqual": operator.ge, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}
_COMPARE = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor"}


@host_op(*_HOST_BINARY)
def _host_binary(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Host:
    a, b = ins
    out = _HOST_BINARY[node.op_type](a.data, b.data)
    if node.op_type in _COMPARE:
        flat = [bool(v) if isinstance(v, (bool, np.bool_)) or v in (sympy.true, sympy.false) else None for v in np.asarray(out).reshape(-1)]
        if any(v is None for v in flat):
            raise _NotOnHost  # a comparison of symbolic dims: computed at run time instead
        return Host(np.array(flat, dtype=np.bool_).reshape(np.shape(out)), b8)
    return host(out, a.dtype)


@host_op("Neg", "Abs", "Max", "Min", "Where", "Not", "Mod")
def _host_misc(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Host:
    op = node.op_type
    if any(x.symbolic for x in ins) and op not in ("Neg", "Max", "Min", "Where"):
        raise _NotOnHost
    if op == "Neg":
        return host(-ins[0].data, ins[0].dtype)
    if op == "Abs":
        return host(np.abs(ins[0].data), ins[0].dtype)
    if op == "Not":
        return Host(np.logical_not(ins[0].data), b8)
    if op == "Mod":
        fn = np.fmod if attrs.get("fmod", 0) else np.mod
        return host(fn(ins[0].data, ins[1].data), ins[0].dtype)
    if op == "Where":
        if ins[0].symbolic:
            raise _NotOnHost
        return host(np.where(ins[0].data, ins[1].data, ins[2].data), ins[1].dtype)
    acc = ins[0].data
    for x in ins[1:]:
        a, b = np.broadcast_arrays(acc, x.data)
        fn = sympy.Max if op == "Max" else sympy.Min
        acc = np.array([fn(p, q) for p, q in zip(a.reshape(-1), b.reshape(-1))] + [None], dtype=object)[:-1].reshape(a.shape)
    return host(acc, ins[0].dtype)


# --- matmul -------------------------------------------------------------------------------------
@onnx_op("MatMul")
def _matmul(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    return ctx.emit("matmul", ins[:2])


@onnx_op("Gemm")
def _gemm(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    ta, tb = attrs.get("transA", 0), attrs.get("transB", 0)
    if ta:
        a = ctx.emit("permute", [a], dims=(1, 0))
    n = ctx.type_of(b).shape[0 if tb else 1]
    bias_ok = c is None or (beta == 1.0 and ctx.type_of(c).shape == (n,))
    if tb and alpha == 1.0 and bias_ok:  # the common case: one fused linear
        return ctx.emit("linear", [a, b] + ([c] if c is not None else []))
    if tb:
        b = ctx.emit("permute", [b], dims=(1, 0))
    y = ctx.emit("matmul", [a, b])
    if alpha != 1.0:
        y = ctx.emit("mul", [y], rhs=alpha)
    if c is None:
        return y
    if beta != 1.0:
        c = ctx.emit("mul", [c], rhs=beta)
    return ctx.emit("add", [y, c])


# --- softmax ------------------------------------------------------------------------------------
@onnx_op("Softmax", "LogSoftmax")
def _softmax(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    t = ctx.type_of(ins[0])
    if ctx.opset >= 13:
        return ctx.emit(op, [ins[0]], dim=_axis(attrs.get("axis", -1), t.rank))
    axis = _axis(attrs.get("axis", 1), t.rank)  # opset < 13: softmax over the flattened tail
    from .onnx_tensor import _numel

    flat = ctx.emit("reshape", [ins[0]], shape=(_numel(t.shape[:axis]), _numel(t.shape[axis:])))
    return ctx.emit("reshape", [ctx.emit(op, [flat], dim=1)], shape=t.shape)


# --- reductions ---------------------------------------------------------------------------------
_REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "amax", "ReduceMin": "amin"}


def _reduce_axes(ctx: OnnxCtx, node: Any, ins: list, attrs: dict, rank: int) -> tuple | None:
    """Normalised reduction axes; () means all dims; None means a no-op (empty axes + noop)."""
    since = 13 if node.op_type == "ReduceSum" else 18
    if ctx.opset >= since and len(ins) > 1 and ins[1] is not None:
        axes = [int(a) for a in ctx.ints(ins[1], "the reduction axes")]
    else:
        axes = list(attrs.get("axes", []))
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return None
    return tuple(sorted({_axis(a, rank) for a in axes})) or tuple(range(rank))


@onnx_op(*_REDUCE)
def _reduce(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axes = _reduce_axes(ctx, node, ins, attrs, t.rank)
    if axes is None:
        return ins[0]
    keep = bool(attrs.get("keepdims", 1))
    op = _REDUCE[node.op_type]
    if any(t.shape[a] == 0 for a in axes) and op in ("amax", "amin"):
        raise ctx.error("a max/min over an empty dim is unsupported")
    if t.rank == 0:
        return ins[0]
    kw = {"dtype": t.dtype} if op == "sum" else {}
    return ctx.emit(op, [ins[0]], dims=axes, keepdim=keep, **kw)


@onnx_op("ReduceProd")
def _reduce_prod(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axes = _reduce_axes(ctx, node, ins, attrs, t.rank)
    if axes is None:
        return ins[0]
    keep = bool(attrs.get("keepdims", 1))
    x = ins[0]
    for a in sorted(axes, reverse=True):
        xt = ctx.type_of(x)
        shape = xt.shape[:a] + ((1,) if keep else ()) + xt.shape[a + 1:]
        x = ctx.aten(torch.ops.aten.prod.dim_int, [x], [TensorType(t.dtype, shape)], dim=a, keepdim=keep, dtype=t.dtype)
    return x


@onnx_op("ArgMax", "ArgMin")
def _argmax(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axis = _axis(attrs.get("axis", 0), t.rank)
    keep = bool(attrs.get("keepdims", 1))
    x = ins[0]
    last = attrs.get("select_last_index", 0)
    if last:  # the last extreme index: search the flipped tensor, then map the index back
        x = ctx.aten(torch.ops.aten.flip.default, [x], [t], dims=(axis,))
    shape = t.shape[:axis] + ((1,) if keep else ()) + t.shape[axis + 1:]
    if node.op_type == "ArgMax":
        idx = ctx.emit("argmax", [x], dim=axis, keepdim=keep)
    else:
        idx = ctx.aten(torch.ops.aten.argmin.default, [x], [TensorType(i64, shape)], dim=axis, keepdim=keep)
    if last:
        idx = ctx.emit("sub", [idx], lhs=t.shape[axis] - 1)
    return idx


@onnx_op("CumSum")
def _cumsum(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axis = _axis(int(ctx.ints(ins[1], "CumSum's axis")[0]), t.rank)
    x = ins[0]
    rev = attrs.get("reverse", 0)
    if rev:
        x = ctx.aten(torch.ops.aten.flip.default, [x], [t], dims=(axis,))
    y = ctx.emit("cumsum", [x], dim=axis, dtype=t.dtype)
    if attrs.get("exclusive", 0):
        y = ctx.emit("sub", [y, x])
    if rev:
        y = ctx.aten(torch.ops.aten.flip.default, [y], [t], dims=(axis,))
    return y


@onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    rank = ctx.type_of(ins[0]).rank
    op = "mean" if node.op_type == "GlobalAveragePool" else "amax"
    return ctx.emit(op, [ins[0]], dims=tuple(range(2, rank)), keepdim=True)


# --- normalisations -----------------------------------------------------------------------------
@onnx_op("LayerNormalization")
def _layer_norm(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    t = ctx.type_of(x)
    axis = _axis(attrs.get("axis", -1), t.rank)
    eps = float(attrs.get("epsilon", 1e-5))
    shape = t.shape[axis:]
    if ctx.type_of(scale).shape == shape and (bias is None or ctx.type_of(bias).shape == shape) and t.dtype.is_float:
        if bias is None:
            bias = ctx.emit("full", [], shape=shape, value=0.0, dtype=t.dtype)
        y = ctx.emit("layer_norm", [x, scale, bias], shape=shape, eps=eps)
    else:  # a broadcast scale/bias: the decomposed form
        dims = tuple(range(axis, t.rank))
        centred = ctx.emit("sub", [x, ctx.emit("mean", [x], dims=dims, keepdim=True)])
        var = ctx.emit("mean", [ctx.emit("mul", [centred, centred])], dims=dims, keepdim=True)
        y = ctx.emit("mul", [ctx.emit("mul", [centred, ctx.emit("rsqrt", [ctx.emit("add", [var], rhs=eps)])]), scale])
        y = ctx.emit("add", [y, bias]) if bias is not None else y
    outs = [y]
    if any(node.output[1:]):  # Mean and InvStdDev, over the same dims (kept)
        dims = tuple(range(axis, t.rank))
        mean = ctx.emit("mean", [x], dims=dims, keepdim=True)
        var = ctx.emit("var", [x], dims=dims, correction=0.0, keepdim=True)
        outs += [mean, ctx.emit("rsqrt", [ctx.emit("add", [var], rhs=eps)])]
    return outs


@onnx_op("RMSNormalization")
def _rms_norm(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x, scale = ins[0], ins[1]
    t = ctx.type_of(x)
    axis = _axis(attrs.get("axis", -1), t.rank)
    eps = float(attrs.get("epsilon", 1e-5))
    if axis == t.rank - 1 and ctx.type_of(scale).rank == 1 and t.dtype.name == "f32" and ctx.type_of(scale).dtype is t.dtype:
        return ctx.emit("rms_norm", [x, scale], eps=eps)
    xf = ctx.emit("cast", [x], dtype=f32) if t.dtype is not f32 else x  # ONNX's stash_type: fp32
    ms = ctx.emit("mean", [ctx.emit("mul", [xf, xf])], dims=tuple(range(axis, t.rank)), keepdim=True)
    y = ctx.emit("mul", [xf, ctx.emit("rsqrt", [ctx.emit("add", [ms], rhs=eps)])])
    if t.dtype is not f32:
        y = ctx.emit("cast", [y], dtype=t.dtype)
    return ctx.emit("mul", [y, scale])


def _channel(ctx: OnnxCtx, v: Any, rank: int) -> Any:
    """A per-channel [C] parameter shaped to broadcast over (N, C, ...)."""
    return ctx.emit("reshape", [v], shape=(ctx.type_of(v).shape[0],) + (1,) * (rank - 2))


@onnx_op("BatchNormalization")
def _batch_norm(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    if attrs.get("training_mode", 0) or any(node.output[1:]):
        raise ctx.error("BatchNormalization in training mode is unsupported (inference only)")
    x, scale, bias, mean, var = ins[:5]
    rank = ctx.type_of(x).rank
    eps = float(attrs.get("epsilon", 1e-5))
    inv = ctx.emit("rsqrt", [ctx.emit("add", [_channel(ctx, var, rank)], rhs=eps)])
    y = ctx.emit("mul", [ctx.emit("sub", [x, _channel(ctx, mean, rank)]), ctx.emit("mul", [inv, _channel(ctx, scale, rank)])])
    return ctx.emit("add", [y, _channel(ctx, bias, rank)])


@onnx_op("InstanceNormalization")
def _instance_norm(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x, scale, bias = ins[:3]
    rank = ctx.type_of(x).rank
    dims = tuple(range(2, rank))
    eps = float(attrs.get("epsilon", 1e-5))
    centred = ctx.emit("sub", [x, ctx.emit("mean", [x], dims=dims, keepdim=True)])
    var = ctx.emit("mean", [ctx.emit("mul", [centred, centred])], dims=dims, keepdim=True)
    y = ctx.emit("mul", [centred, ctx.emit("rsqrt", [ctx.emit("add", [var], rhs=eps)])])
    return ctx.emit("add", [ctx.emit("mul", [y, _channel(ctx, scale, rank)]), _channel(ctx, bias, rank)])


@onnx_op("Gelu")
def _gelu(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    return ctx.emit("gelu", [ins[0]], approximate=attrs.get("approximate", "none"))
