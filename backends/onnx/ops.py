"""Per-op ONNX converters for kiln's elementwise, reduction, shape and creation ops.

A converter is `fn(b: OnnxBuilder, node: Node, ins: list[str]) -> list[str]`: it emits standard
ONNX nodes (opset >= 17) computing `node`'s outputs from the ONNX names of its inputs and returns
one name per output. Converters are registered on the op objects of `kiln.ir.opset`
(`@converts("add", "sub")`), once per op; `nn.py` holds the matmul/norm/attention/quant family and
the onnxruntime contrib-op variants.

Dtypes follow the kiln node's inferred types: inputs are cast to the type the computation runs
in (PyTorch's promotion, which ONNX does not do), so `exp(i64)` computes in f32 like PyTorch.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ...ir.dtypes import DType, b8, from_torch, i64
from ...ir.graph import Node
from ...ir.ops import Op, get_op
from .builder import OnnxBuilder, onnx_dtype

Converter = Callable[[OnnxBuilder, Node, list], list]
CONVERTERS: dict[Op, Converter] = {}


def converts(*names: str) -> Callable[[Converter], Converter]:
    def wrap(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[get_op(n)] = fn
        return fn

    return wrap


def dtype_of(node: Node, i: int) -> DType:
    return node.inputs[i].type.dtype


def out_dtype(node: Node, i: int = 0) -> DType:
    return node.outputs[i].type.dtype


# --- elementwise ------------------------------------------------------------------------------

_UNARY = {
    "neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "sin": "Sin", "cos": "Cos",
    "tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu", "erf": "Erf", "reciprocal": "Reciprocal",
    "floor": "Floor", "ceil": "Ceil", "sign": "Sign",
}


@converts(*_UNARY)
def _unary(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    x = b.cast(ins[0], dtype_of(node, 0), dt)
    if node.op.name in ("floor", "ceil") and not dt.is_float:
        return [b.op("Identity", x)]  # PyTorch returns integers unchanged
    return [b.op(_UNARY[node.op.name], x)]


@converts("rsqrt", "log1p", "expm1", "exp2", "silu", "trunc")
def _unary_composite(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    x = b.cast(ins[0], dtype_of(node, 0), dt)
    name = node.op.name
    if name in ("log1p", "expm1"):
        one = b.const(1.0, dt)
    if name == "rsqrt":
        return [b.op("Reciprocal", b.op("Sqrt", x))]
    if name == "log1p":
        return [b.op("Log", b.op("Add", x, one))]
    if name == "expm1":
        return [b.op("Sub", b.op("Exp", x), one)]
    if name == "exp2":
        return [b.op("Pow", b.const(2.0, dt), x)]
    if name == "silu":
        return [b.op("Mul", x, b.op("Sigmoid", x))]
    if not dt.is_float:
        return [b.op("Identity", x)]
    return [b.op("Mul", b.op("Sign", x), b.op("Floor", b.op("Abs", x)))]  # trunc


@converts("logical_not", "bitwise_not", "isnan")
def _unary_logic(b: OnnxBuilder, node: Node, ins: list) -> list:
    src = dtype_of(node, 0)
    if node.op.name == "isnan":
        return [b.op("IsNaN", ins[0])]
    if node.op.name == "logical_not" or src is b8:
        return [b.op("Not", b.cast(ins[0], src, b8))]
    return [b.op("BitwiseNot", ins[0])]


def gelu(b: OnnxBuilder, x: str, dt: DType, approximate: str) -> str:
    half = b.op("Mul", x, b.const(0.5, dt))
    if approximate == "tanh":
        inner = b.op("Mul", b.op("Add", x, b.op("Mul", b.const(0.044715, dt), b.op("Mul", x, b.op("Mul", x, x)))),
                     b.const(math.sqrt(2 / math.pi), dt))
        return b.op("Mul", half, b.op("Add", b.const(1.0, dt), b.op("Tanh", inner)))
    erf = b.op("Erf", b.op("Mul", x, b.const(1 / math.sqrt(2), dt)))
    return b.op("Mul", half, b.op("Add", b.const(1.0, dt), erf))


@converts("gelu")
def _gelu(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    return [gelu(b, b.cast(ins[0], dtype_of(node, 0), dt), dt, node.attrs["approximate"])]


@converts("clamp")
def _clamp(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    x = b.cast(ins[0], dtype_of(node, 0), dt)
    lo, hi = node.attrs["min"], node.attrs["max"]
    return [b.op("Clip", x, "" if lo is None else b.const(lo, dt), "" if hi is None else b.const(hi, dt))]


@converts("cast")
def _cast(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Cast", ins[0], to=onnx_dtype(out_dtype(node)))]


def _compute_dtype(node: Node) -> DType:
    """The dtype a binary op computes in: its result's for arithmetic, the promoted operand type
    for comparisons (PyTorch's result_type over tensors and the scalar)."""
    ts = [v.type.dtype.torch for v in node.inputs]
    scalar = node.attrs.get("lhs") if node.attrs.get("lhs") is not None else node.attrs.get("rhs")
    if len(ts) == 2:
        return from_torch(torch.promote_types(ts[0], ts[1]))
    if isinstance(scalar, (bool, int, float)):
        return from_torch(torch.result_type(torch.empty((1,), dtype=ts[0]), scalar))
    return from_torch(ts[0])


_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max", "minimum": "Min"}
_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}
_BITS = {"bitwise_and": ("And", "BitwiseAnd"), "bitwise_or": ("Or", "BitwiseOr"), "bitwise_xor": ("Xor", "BitwiseXor"),
         "logical_and": ("And", "And"), "logical_or": ("Or", "Or")}


def _operands(b: OnnxBuilder, node: Node, ins: list, dt: DType) -> tuple[str, str]:
    """(lhs, rhs) ONNX names in dtype `dt`: tensors cast, a scalar lhs/rhs as a constant."""
    from ...ir.ops import is_symbolic

    def scalar(v: Any) -> str:
        if is_symbolic(v) or hasattr(v, "free_symbols"):
            return b.cast(b.dim_scalar(v), i64, dt)
        return b.const(v, dt)

    lhs, rhs = node.attrs["lhs"], node.attrs["rhs"]
    t0 = b.cast(ins[0], dtype_of(node, 0), dt)
    if lhs is not None:
        return scalar(lhs), t0
    if rhs is not None:
        return t0, scalar(rhs)
    return t0, b.cast(ins[1], dtype_of(node, 1), dt)


@converts(*_ARITH, "floor_divide", "remainder", "atan2")
def _arith(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    name = node.op.name
    if dt is b8 and name in ("add", "mul", "maximum", "minimum"):  # PyTorch's bool arithmetic is logic
        a, c = _operands(b, node, ins, b8)
        return [b.op("Or" if name in ("add", "maximum") else "And", a, c)]
    a, c = _operands(b, node, ins, dt)
    if name in _ARITH:
        return [b.op(_ARITH[name], a, c)]
    if name == "atan2":
        return [_atan2(b, a, c, dt)]
    if dt.is_float:
        q = b.op("Floor", b.op("Div", a, c))
        return [q if name == "floor_divide" else b.op("Sub", a, b.op("Mul", c, q))]
    mod = b.op("Mod", a, c, fmod=0)  # integer Mod with fmod=0 takes the divisor's sign, like Python
    return [mod if name == "remainder" else b.op("Div", b.op("Sub", a, mod), c)]


def _atan2(b: OnnxBuilder, y: str, x: str, dt: DType) -> str:
    zero, pi = b.const(0.0, dt), b.const(math.pi, dt)
    base = b.op("Atan", b.op("Div", y, x))
    shift = b.op("Where", b.op("Less", y, zero), b.op("Neg", pi), pi)
    fixed = b.op("Where", b.op("Less", x, zero), b.op("Add", base, shift), base)
    half = b.op("Mul", b.op("Sign", y), b.const(math.pi / 2, dt))
    return b.op("Where", b.op("Equal", x, zero), half, fixed)


@converts(*_COMPARE, "ne")
def _compare(b: OnnxBuilder, node: Node, ins: list) -> list:
    a, c = _operands(b, node, ins, _compute_dtype(node))
    if node.op.name == "ne":
        return [b.op("Not", b.op("Equal", a, c))]
    return [b.op(_COMPARE[node.op.name], a, c)]


@converts(*_BITS)
def _bits(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    logic, bitwise = _BITS[node.op.name]
    a, c = _operands(b, node, ins, dt)
    return [b.op(logic if dt is b8 else bitwise, a, c)]


@converts("where")
def _where(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    cond = b.cast(ins[0], dtype_of(node, 0), b8)
    return [b.op("Where", cond, b.cast(ins[1], dtype_of(node, 1), dt), b.cast(ins[2], dtype_of(node, 2), dt))]


@converts("masked_fill")
def _masked_fill(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    return [b.op("Where", b.cast(ins[1], dtype_of(node, 1), b8), b.const(node.attrs["value"], dt), ins[0])]


@converts("addcmul")
def _addcmul(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    x, p, q = (b.cast(n, dtype_of(node, i), dt) for i, n in enumerate(ins))
    prod = b.op("Mul", b.op("Mul", p, q), b.const(node.attrs["value"], dt))
    return [b.op("Add", x, prod)]


# --- reductions -------------------------------------------------------------------------------

_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax", "amin": "ReduceMin", "any": "ReduceMax"}


def reduce(b: OnnxBuilder, op: str, x: str, dims: Any, keepdim: bool) -> str:
    if dims:
        return b.op(op, x, b.ints(list(dims)), keepdims=int(keepdim))
    return b.op(op, x, keepdims=int(keepdim))


@converts(*_REDUCE)
def _reduce(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt, src = out_dtype(node), dtype_of(node, 0)
    a = node.attrs
    if node.op.name == "any":  # over 0/1 integers: ReduceMax takes no bool before opset 20
        y = reduce(b, "ReduceMax", b.cast(b.cast(ins[0], src, b8), b8, from_torch(torch.int32)), a["dims"], a["keepdim"])
        return [b.cast(y, from_torch(torch.int32), b8)]
    return [reduce(b, _REDUCE[node.op.name], b.cast(ins[0], src, dt), a["dims"], a["keepdim"])]


@converts("var")
def _var(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    t = node.inputs[0].type
    dims = list(node.attrs["dims"]) or list(range(t.rank))
    x = b.cast(ins[0], dtype_of(node, 0), dt)
    dev = b.op("Sub", x, reduce(b, "ReduceMean", x, dims, True))
    ss = reduce(b, "ReduceSum", b.op("Mul", dev, dev), dims, node.attrs["keepdim"])
    n: Any = 1
    for d in dims:
        n = n * t.shape[d]
    denom = b.op("Sub", b.cast(b.dim_scalar(n), i64, dt), b.const(node.attrs["correction"], dt))
    return [b.op("Div", ss, denom)]


@converts("max_dim")
def _max_dim(b: OnnxBuilder, node: Node, ins: list) -> list:
    d, k = node.attrs["dim"], int(node.attrs["keepdim"])
    return [reduce(b, "ReduceMax", ins[0], [d], bool(k)), b.op("ArgMax", ins[0], axis=d, keepdims=k)]


@converts("argmax")
def _argmax(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("ArgMax", ins[0], axis=node.attrs["dim"], keepdims=int(node.attrs["keepdim"]))]


@converts("cumsum")
def _cumsum(b: OnnxBuilder, node: Node, ins: list) -> list:
    x = b.cast(ins[0], dtype_of(node, 0), out_dtype(node))
    return [b.op("CumSum", x, b.const(node.attrs["dim"], i64))]


@converts("softmax", "log_softmax")
def _softmax(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Softmax" if node.op.name == "softmax" else "LogSoftmax", ins[0], axis=node.attrs["dim"])]


# --- shape and data movement --------------------------------------------------------------------


@converts("reshape")
def _reshape(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Reshape", ins[0], b.shape(node.attrs["shape"]))]


@converts("permute")
def _permute(b: OnnxBuilder, node: Node, ins: list) -> list:
    rank = node.inputs[0].type.rank
    return [b.op("Transpose", ins[0], perm=[d % max(rank, 1) for d in node.attrs["dims"]])]


@converts("expand")
def _expand(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Expand", ins[0], b.shape(node.outputs[0].type.shape))]


@converts("unsqueeze")
def _unsqueeze(b: OnnxBuilder, node: Node, ins: list) -> list:
    rank = node.inputs[0].type.rank
    return [b.op("Unsqueeze", ins[0], b.ints([node.attrs["dim"] % (rank + 1)]))]


@converts("squeeze")
def _squeeze(b: OnnxBuilder, node: Node, ins: list) -> list:
    t = node.inputs[0].type
    axes = sorted({d % max(t.rank, 1) for d in node.attrs["dims"] if t.shape[d % max(t.rank, 1)] == 1})
    return [b.op("Squeeze", ins[0], b.ints(axes)) if axes else b.op("Identity", ins[0])]


@converts("slice")
def _slice(b: OnnxBuilder, node: Node, ins: list) -> list:
    a = node.attrs
    rank = node.inputs[0].type.rank
    return [b.op("Slice", ins[0], b.dim(a["start"]), b.dim(a["end"]), b.ints([a["dim"] % rank]), b.ints([a["step"]]))]


@converts("select")
def _select(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Gather", ins[0], b.dim_scalar(node.attrs["index"]), axis=node.attrs["dim"])]


@converts("cat")
def _cat(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    keep = [(n, v) for n, v in zip(ins, node.inputs) if not (v.type.rank == 1 and v.type.shape[0] == 0)]
    if not keep:
        return [b.op("Identity", ins[0])]
    rank = keep[0][1].type.rank
    parts = [b.cast(n, v.type.dtype, dt) for n, v in keep]
    return [b.op("Concat", *parts, axis=node.attrs["dim"] % rank)]


@converts("split")
def _split(b: OnnxBuilder, node: Node, ins: list) -> list:
    sizes = node.attrs["sizes"]
    split = b.shape(sizes)
    return b.op("Split", ins[0], split, outputs=len(sizes), axis=node.attrs["dim"]) if len(sizes) > 1 else [b.op("Identity", ins[0])]


@converts("clone")
def _clone(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Identity", ins[0])]


@converts("index_select")
def _index_select(b: OnnxBuilder, node: Node, ins: list) -> list:
    idx = ins[1] if node.inputs[1].type.rank == 1 else b.op("Reshape", ins[1], b.ints([1]))
    return [b.op("Gather", ins[0], b.cast(idx, dtype_of(node, 1), i64), axis=node.attrs["dim"])]


@converts("gather")
def _gather(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("GatherElements", ins[0], b.cast(ins[1], dtype_of(node, 1), i64), axis=node.attrs["dim"])]


@converts("embedding")
def _embedding(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Gather", ins[0], b.cast(ins[1], dtype_of(node, 1), i64), axis=0)]


@converts("index")
def _index(b: OnnxBuilder, node: Node, ins: list) -> list:
    """x[..., i0, ..., i1, ...]: move the indexed dims first, GatherND over the broadcast indices
    stacked on a last axis, then move the result dims back in place when they were adjacent."""
    from ...ir.opset._infer import broadcast

    x = node.inputs[0].type
    pos = list(node.attrs["positions"])
    rest = [i for i in range(x.rank) if i not in pos]
    xt = b.op("Transpose", ins[0], perm=pos + rest) if pos + rest != list(range(x.rank)) else ins[0]
    bshape = broadcast(*(v.type.shape for v in node.inputs[1:]))
    shape = b.shape(bshape)
    stacked = [b.op("Unsqueeze", b.op("Expand", b.cast(n, v.type.dtype, i64), shape), b.ints([-1]))
               for n, v in zip(ins[1:], node.inputs[1:])]
    idx = stacked[0] if len(stacked) == 1 else b.op("Concat", *stacked, axis=-1)
    y = b.op("GatherND", xt, idx)
    ordered = sorted(pos)
    first = ordered[0]
    if ordered == list(range(first, ordered[-1] + 1)) and first > 0:
        nb, nr = len(bshape), len(rest)
        perm = [nb + i for i in range(first)] + list(range(nb)) + [nb + i for i in range(first, nr)]
        y = b.op("Transpose", y, perm=perm)
    return [y]


@converts("tril", "triu")
def _tri(b: OnnxBuilder, node: Node, ins: list) -> list:
    return [b.op("Trilu", ins[0], b.const(node.attrs["diagonal"], i64), upper=int(node.op.name == "triu"))]


@converts("roll")
def _roll(b: OnnxBuilder, node: Node, ins: list) -> list:
    import sympy

    t = node.inputs[0].type
    y = ins[0]
    for shift, d in zip(node.attrs["shifts"], node.attrs["dims"]):
        d %= t.rank
        n = t.shape[d]
        k = shift % n if isinstance(shift, int) and isinstance(n, int) else sympy.Mod(shift, n)
        cut = n - k
        tail = b.op("Slice", y, b.dim(cut), b.dim(n), b.ints([d]))
        head = b.op("Slice", y, b.ints([0]), b.dim(cut), b.ints([d]))
        y = b.op("Concat", tail, head, axis=d)
    return [y]


# --- creation ---------------------------------------------------------------------------------


@converts("full")
def _full(b: OnnxBuilder, node: Node, ins: list) -> list:
    from onnx import helper

    dt = out_dtype(node)
    value = helper.make_tensor("value", onnx_dtype(dt), [1], [node.attrs["value"]]) if dt.name != "bf16" else None
    if value is None:
        return [b.op("Cast", b.op("ConstantOfShape", b.shape(node.attrs["shape"]),
                                  value=helper.make_tensor("value", onnx_dtype(from_torch(torch.float32)), [1], [node.attrs["value"]])),
                      to=onnx_dtype(dt))]
    return [b.op("ConstantOfShape", b.shape(node.attrs["shape"]), value=value)]


@converts("arange")
def _arange(b: OnnxBuilder, node: Node, ins: list) -> list:
    dt = out_dtype(node)
    a = node.attrs
    start, end, step = (b.cast(b.dim_scalar(v), i64, dt) for v in (a["start"], a["end"], a["step"]))
    return [b.op("Range", start, end, step)]


# --- opaque ATen ops with a direct ONNX form ---------------------------------------------------


@converts("aten.stack.default")
def _stack(b: OnnxBuilder, node: Node, ins: list) -> list:
    rank = node.outputs[0].type.rank
    axis = node.attrs["dim"] % rank
    return [b.op("Concat", *(b.op("Unsqueeze", x, b.ints([axis])) for x in ins), axis=axis)]
