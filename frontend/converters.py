"""ATen overload -> kiln op converters, one small function each.

A converter receives the FX node and its arguments with graph tensors already mapped to kiln
Values and SymInts to sympy dims. It returns the Value(s) standing for the node, or raises
Decline to leave the node opaque. Shapes the ATen call leaves implicit (-1 in a view, slice
bounds past the end) are resolved from the traced output type, which is exact.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from ..ir import Value
from ..ir.dtypes import from_torch
from ..ir.opset.elementwise import UNARY
from .fx_import import Ctx, Decline, converter, write_back

aten = torch.ops.aten


def _out(ctx: Ctx, node: Any, i: int = 0) -> Any:
    return ctx.out_types(node)[i]


def _is_value(x: Any) -> bool:
    return isinstance(x, Value)


def _scalar(x: Any) -> Any:
    if isinstance(x, Value):
        raise Decline("expected a scalar")
    if isinstance(x, torch.Tensor):
        raise Decline("tensor literal operand")
    return x


# --- elementwise ----------------------------------------------------------------------------
def _unary(name: str):
    def conv(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
        return ctx.emit(name, [args[0]])

    return conv


for _name in UNARY:
    _packet = getattr(aten, _name, None)
    if _packet is not None and hasattr(_packet, "default"):
        converter(_packet.default)(_unary(_name))


@converter(aten.gelu.default)
def _gelu(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("gelu", [args[0]], approximate=kwargs.get("approximate", args[1] if len(args) > 1 else "none"))


@converter(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    name = node.target._schema.name
    lo = hi = None
    if name.endswith("clamp_min"):
        lo = args[1]
    elif name.endswith("clamp_max"):
        hi = args[1]
    else:
        lo = args[1] if len(args) > 1 else kwargs.get("min")
        hi = args[2] if len(args) > 2 else kwargs.get("max")
    return ctx.emit("clamp", [args[0]], min=_scalar(lo), max=_scalar(hi))


def _binary(name: str, reverse: bool = False):
    def conv(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
        a, b = args[0], args[1] if len(args) > 1 else kwargs["other"]
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if reverse:
            a, b = b, a
        if alpha != 1:
            if not _is_value(b):
                b = b * alpha
            else:
                b = _plain(ctx, "mul", [b], rhs=alpha)
        if _is_value(a) and _is_value(b):
            return ctx.emit(name, [a, b])
        if _is_value(a):
            return ctx.emit(name, [a], rhs=_scalar(b))
        if _is_value(b):
            return ctx.emit(name, [b], lhs=_scalar(a))
        raise Decline("no tensor operand")

    return conv


_BINARY_OVERLOADS = {
    "add": ["Tensor", "Scalar"], "sub": ["Tensor", "Scalar"], "mul": ["Tensor", "Scalar"],
    "div": ["Tensor", "Scalar"], "pow": ["Tensor_Tensor", "Tensor_Scalar"], "eq": ["Tensor", "Scalar"],
    "ne": ["Tensor", "Scalar"], "lt": ["Tensor", "Scalar"], "le": ["Tensor", "Scalar"],
    "gt": ["Tensor", "Scalar"], "ge": ["Tensor", "Scalar"], "bitwise_and": ["Tensor", "Scalar"],
    "bitwise_or": ["Tensor", "Scalar"], "bitwise_xor": ["Tensor", "Scalar"], "remainder": ["Tensor", "Scalar"],
    "maximum": ["default"], "minimum": ["default"], "logical_and": ["default"], "logical_or": ["default"],
    "floor_divide": ["default", "Scalar"], "atan2": ["default"],
}
for _name, _ovs in _BINARY_OVERLOADS.items():
    for _ov in _ovs:
        _op = getattr(getattr(aten, _name), _ov, None)
        if _op is not None:
            converter(_op)(_binary(_name))
converter(aten.rsub.Scalar, aten.rsub.Tensor)(_binary("sub", reverse=True))
converter(aten.pow.Scalar)(_binary("pow"))
converter(aten.__and__.Tensor)(_binary("bitwise_and"))
converter(aten.__or__.Tensor)(_binary("bitwise_or"))
converter(aten.__xor__.Tensor)(_binary("bitwise_xor"))


@converter(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    mode = kwargs.get("rounding_mode", args[2] if len(args) > 2 else None)
    if mode is None:
        return _binary("div")(ctx, node, args[:2], {})
    if mode == "floor":
        return _binary("floor_divide")(ctx, node, args[:2], {})
    raise Decline("trunc division")


@converter(aten.where.self)
def _where(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    if not all(_is_value(a) for a in args):
        raise Decline("scalar where")
    return ctx.emit("where", list(args))


@converter(aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def _where_scalar(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    """where with a Python scalar branch: the scalar becomes a 0-dim tensor of the result dtype."""
    cond, a, b = args[:3]
    dtype = from_torch(node.meta["val"].dtype)
    device = str(node.meta["val"].device)

    def operand(v: Any) -> Value:
        if _is_value(v):
            return v
        return _plain(ctx, "full", [], shape=(), value=_scalar(v), dtype=dtype, device=device)

    return ctx.emit("where", [cond, operand(a), operand(b)])


@converter(aten.masked_fill.Scalar)
def _masked_fill(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("masked_fill", [args[0], args[1]], value=_scalar(args[2]))


def _cast_to(ctx: Ctx, node: Any, x: Value) -> Value:
    val = node.meta["val"]
    src = node.args[0].meta.get("val")
    if src is not None and src.device != val.device:
        raise Decline("device copy")
    return ctx.emit("cast", [x], dtype=from_torch(val.dtype))


@converter(aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.type_as.default, aten.to.device)
def _to(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return _cast_to(ctx, node, args[0])


# --- identity-like ----------------------------------------------------------------------------
@converter(aten.lift_fresh_copy.default)
def _lift_fresh_copy(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    """A tensor literal made in forward: a fresh copy each call (in-place ops on it must not
    reach the lifted constant)."""
    return ctx.emit("clone", [args[0]])


@converter(aten.alias.default, aten.detach.default, aten.contiguous.default)
def _identity(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return args[0]


@converter(aten.dropout.default, aten.feature_dropout.default)
def _dropout(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    train = kwargs.get("train", args[2] if len(args) > 2 else True)
    if train and (args[1] if len(args) > 1 else 0.5) > 0:
        raise Decline("dropout in training mode is random")
    return args[0]


@converter(aten.clone.default)
def _clone(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("clone", [args[0]])


# --- reductions -------------------------------------------------------------------------------
def _reduce(name: str, with_dtype: bool):
    def conv(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
        x = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get("dim", None)
        if isinstance(dims, torch.dtype):  # sum.default(x, dtype)
            kwargs = {**kwargs, "dtype": dims}
            dims = None
        dims = () if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        rank = x.type.rank
        attrs: dict[str, Any] = {"dims": tuple(sorted(d % max(rank, 1) for d in dims)), "keepdim": keepdim}
        if with_dtype:
            dt = args[3] if len(args) > 3 else kwargs.get("dtype")
            attrs["dtype"] = from_torch(dt) if dt is not None else None
        return ctx.emit(name, [x], **attrs)

    return conv


converter(aten.sum.dim_IntList, aten.sum.default)(_reduce("sum", True))
converter(aten.mean.dim, aten.mean.default)(_reduce("mean", True))
converter(aten.amax.default)(_reduce("amax", False))
converter(aten.amin.default)(_reduce("amin", False))
converter(aten.any.dim, aten.any.dims, aten.any.default)(_reduce("any", False))


@converter(aten.var.correction)
def _var(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    correction = kwargs.get("correction", 1)
    rank = x.type.rank
    dims = tuple(sorted(d % rank for d in dims)) if dims else ()
    return ctx.emit("var", [x], dims=dims, correction=float(1 if correction is None else correction), keepdim=kwargs.get("keepdim", False))


@converter(aten.max.dim)
def _max_dim(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Any:
    return ctx.emit("max_dim", [args[0]], dim=args[1] % args[0].type.rank, keepdim=args[2] if len(args) > 2 else False)


@converter(aten.argmax.default)
def _argmax(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None:
        raise Decline("argmax over all dims")
    return ctx.emit("argmax", [args[0]], dim=dim % args[0].type.rank, keepdim=args[2] if len(args) > 2 else kwargs.get("keepdim", False))


@converter(aten.cumsum.default)
def _cumsum(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    dt = kwargs.get("dtype")
    return ctx.emit("cumsum", [args[0]], dim=args[1] % max(args[0].type.rank, 1), dtype=from_torch(dt) if dt is not None else None)


@converter(aten._softmax.default, aten._log_softmax.default, aten.softmax.int, aten.log_softmax.int)
def _softmax(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    name = "log_softmax" if "log_softmax" in node.target._schema.name else "softmax"
    x, dim = args[0], args[1]
    third = args[2] if len(args) > 2 else kwargs.get("dtype", kwargs.get("half_to_float"))
    if isinstance(third, torch.dtype):
        x = _plain(ctx, "cast", [x], dtype=from_torch(third))
    elif third:
        raise Decline("half_to_float softmax")
    return ctx.emit(name, [x], dim=dim % max(x.type.rank, 1))


def _plain(ctx: Ctx, op: str, inputs: list, **attrs: Any) -> Value:
    """An intermediate node with no traced counterpart (inference alone gives its type)."""
    from .fx_import import source_info

    return ctx.g.add_node(op, inputs, attrs, source=source_info(ctx.fx_node)).output


# --- shapes -----------------------------------------------------------------------------------
@converter(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _reshape(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("reshape", [args[0]], shape=_out(ctx, node).shape)


@converter(aten.permute.default)
def _permute(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    rank = args[0].type.rank
    return ctx.emit("permute", [args[0]], dims=tuple(d % rank for d in args[1]))


@converter(aten.transpose.int)
def _transpose(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    rank = args[0].type.rank
    dims = list(range(rank))
    a, b = args[1] % rank, args[2] % rank
    dims[a], dims[b] = dims[b], dims[a]
    return ctx.emit("permute", [args[0]], dims=tuple(dims))


@converter(aten.t.default, aten.numpy_T.default)
def _t(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    rank = args[0].type.rank
    if rank < 2:
        return args[0]
    return ctx.emit("permute", [args[0]], dims=tuple(reversed(range(rank))))


@converter(aten.expand.default)
def _expand(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("expand", [args[0]], shape=_out(ctx, node).shape)


@converter(aten.unsqueeze.default)
def _unsqueeze(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("unsqueeze", [args[0]], dim=args[1] % (args[0].type.rank + 1))


@converter(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    rank = x.type.rank
    dims = args[1] if len(args) > 1 else [i for i, d in enumerate(x.type.shape) if d == 1]
    dims = [dims] if isinstance(dims, int) else dims
    return ctx.emit("squeeze", [x], dims=tuple(sorted(d % max(rank, 1) for d in dims)))


@converter(aten.slice.Tensor)
def _slice(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    rank = x.type.rank
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % rank
    start = args[2] if len(args) > 2 else kwargs.get("start")
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    size = x.type.shape[dim]
    n = _out(ctx, node).shape[dim]
    start = 0 if start is None else start
    if isinstance(start, int) and start < 0:
        start = start + size
        if isinstance(start, int):
            start = max(start, 0)
    if n == 0:
        start = 0
    end = start + (n - 1) * step + 1 if n != 0 else 0
    if step == 1 and not isinstance(n, int):
        end = start + n
    if start == 0 and n == size and step == 1:
        return x
    return ctx.emit("slice", [x], dim=dim, start=start, end=end, step=step)


@converter(aten.select.int)
def _select(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x, dim, index = args
    dim = dim % x.type.rank
    if isinstance(index, int) and index < 0:
        index = index + x.type.shape[dim]
    return ctx.emit("select", [x], dim=dim, index=index)


@converter(aten.cat.default)
def _cat(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    xs = list(args[0])
    if len(xs) == 1:
        return xs[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return ctx.emit("cat", xs, dim=dim % max(xs[0].type.rank, 1))


@converter(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
def _split(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.type.rank
    sizes = tuple(t.shape[dim] for t in ctx.out_types(node))
    return tuple(ctx.emit("split", [x], dim=dim, sizes=sizes))


@converter(aten.index_select.default)
def _index_select(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("index_select", [args[0], args[2]], dim=args[1] % args[0].type.rank)


@converter(aten.gather.default)
def _gather(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("gather", [args[0], args[2]], dim=args[1] % args[0].type.rank)


@converter(aten.embedding.default)
def _embedding(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("embedding", [args[0], args[1]])


# --- matmul and transformer blocks ----------------------------------------------------------------
@converter(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _matmul(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("matmul", [args[0], args[1]])


@converter(aten.linear.default)
def _linear(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return ctx.emit("linear", [args[0], args[1]] + ([bias] if bias is not None else []))


@converter(aten.addmm.default)
def _addmm(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("addmm", list(args[:3]), beta=kwargs.get("beta", 1), alpha=kwargs.get("alpha", 1))


@converter(aten.layer_norm.default, aten.native_layer_norm.default)
def _layer_norm(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Any:
    x, shape = args[0], args[1]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    b = args[3] if len(args) > 3 else kwargs.get("bias")
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    if w is None or b is None:
        raise Decline("layer_norm without weight and bias")
    native = "native" in node.target._schema.name
    if native and any(u.args[1] != 0 for u in node.users):
        raise Decline("native_layer_norm statistics are used")
    out = _plain(ctx, "layer_norm", [x, w, b], shape=tuple(ctx.dim(d) for d in shape), eps=float(eps))
    return (out, None, None) if native else out


def _attention(ctx: Ctx, q: Value, k: Value, v: Value, mask: Any, dropout: float, causal: bool, scale: Any, gqa: bool) -> Value:
    if dropout:
        raise Decline("attention dropout")
    if mask is not None and not _is_value(mask):
        raise Decline("attention mask is not a tensor")
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    return _plain(ctx, "attention", inputs, causal=bool(causal), scale=None if scale is None else float(scale), gqa=bool(gqa))


@converter(aten.scaled_dot_product_attention.default)
def _sdpa(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    names = ["attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]
    opts = dict(zip(names, args[3:]))
    opts.update(kwargs)
    return _attention(ctx, *args[:3], opts.get("attn_mask"), opts.get("dropout_p", 0.0), opts.get("is_causal", False), opts.get("scale"), opts.get("enable_gqa", False))


def _only_first_output_used(node: Any) -> bool:
    return all(u.target is operator.getitem and u.args[1] == 0 for u in node.users)


@converter(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _sdpa_cpu(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> tuple:
    if not _only_first_output_used(node):
        raise Decline("attention statistics are used")
    dropout = args[3] if len(args) > 3 else kwargs.get("dropout_p", 0.0)
    causal = args[4] if len(args) > 4 else kwargs.get("is_causal", False)
    out = _attention(ctx, *args[:3], kwargs.get("attn_mask"), dropout, causal, kwargs.get("scale"), False)
    return (out, None)


@converter(aten._scaled_dot_product_efficient_attention.default)
def _sdpa_efficient(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> tuple:
    if not _only_first_output_used(node):
        raise Decline("attention statistics are used")
    bias = args[3] if len(args) > 3 else None
    dropout = args[5] if len(args) > 5 else 0.0
    causal = args[6] if len(args) > 6 else False
    out = _attention(ctx, *args[:3], bias, dropout, causal, kwargs.get("scale"), False)
    return (out, None, None, None)


@converter(aten._scaled_dot_product_flash_attention.default)
def _sdpa_flash(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> tuple:
    if not _only_first_output_used(node):
        raise Decline("attention statistics are used")
    dropout = args[3] if len(args) > 3 else 0.0
    causal = args[4] if len(args) > 4 else False
    out = _attention(ctx, *args[:3], None, dropout, causal, kwargs.get("scale"), False)
    return (out,) + (None,) * 8


# --- creation ---------------------------------------------------------------------------------
def _full_like_trace(ctx: Ctx, node: Any, value: Any) -> Value:
    val = node.meta["val"]
    return ctx.emit("full", [], shape=_out(ctx, node).shape, value=_scalar(value), dtype=from_torch(val.dtype), device=str(val.device))


@converter(aten.full.default, aten.new_full.default, aten.full_like.default)
def _full(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    value = args[2] if node.target is aten.new_full.default else args[1]
    return _full_like_trace(ctx, node, value)


@converter(aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default, aten.empty.memory_format, aten.new_empty.default, aten.empty_like.default)
def _zeros(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return _full_like_trace(ctx, node, False if node.meta["val"].dtype is torch.bool else 0)


@converter(aten.ones.default, aten.new_ones.default, aten.ones_like.default)
def _ones(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return _full_like_trace(ctx, node, True if node.meta["val"].dtype is torch.bool else 1)


@converter(aten.scalar_tensor.default)
def _scalar_tensor(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return _full_like_trace(ctx, node, args[0])


@converter(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    val = node.meta["val"]
    if val.dtype.is_floating_point:
        raise Decline("float arange")
    nums = list(args)
    start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums[0], nums[1], nums[2] if len(nums) > 2 else 1)
    if not all(isinstance(v, int) or hasattr(v, "free_symbols") for v in (start, end)) or not isinstance(step, int):
        raise Decline("non-integer arange bounds")
    return ctx.emit("arange", [], start=start, end=end, step=step, dtype=from_torch(val.dtype), device=str(val.device))


# --- in-place writes --------------------------------------------------------------------------
@converter(aten.copy_.default)
def _copy(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    dst, src = args[0], args[1]
    if dst.type.shape != src.type.shape:
        raise Decline("broadcasting copy_")
    if src.type.dtype is not dst.type.dtype:
        src = _plain(ctx, "cast", [src], dtype=dst.type.dtype)
    write_back(ctx, dst, src)
    return src


@converter(aten.index.Tensor)
def _index(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x, indices = args[0], list(args[1])
    positions = tuple(i for i, t in enumerate(indices) if t is not None)
    if not positions or any(not _is_value(indices[i]) for i in positions):
        raise Decline("index without tensor indices")
    return ctx.emit("index", [x] + [indices[i] for i in positions], positions=positions)


@converter(aten.tril.default, aten.triu.default)
def _tri(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    name = "tril" if "tril" in node.target._schema.name else "triu"
    return ctx.emit(name, [args[0]], diagonal=args[1] if len(args) > 1 else kwargs.get("diagonal", 0))


@converter(aten.diff.default)
def _diff(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    """diff(x) along dim = y[1:] - y[:-1] with y = cat(prepend, x, append): declared ops only."""
    names = ["n", "dim", "prepend", "append"]
    opts = {"n": 1, "dim": -1, "prepend": None, "append": None, **dict(zip(names, args[1:])), **kwargs}
    x = args[0]
    if opts["n"] != 1:
        raise Decline("diff with n != 1")
    dim = opts["dim"] % x.type.rank
    parts = [p for p in (opts["prepend"], x, opts["append"]) if p is not None]
    if any(not _is_value(p) or p.type.rank != x.type.rank for p in parts):
        raise Decline("diff with scalar prepend/append")
    y = _plain(ctx, "cat", parts, dim=dim) if len(parts) > 1 else x
    n = y.type.shape[dim]
    hi = _plain(ctx, "slice", [y], dim=dim, start=1, end=n, step=1)
    lo = _plain(ctx, "slice", [y], dim=dim, start=0, end=n - 1, step=1)
    if y.type.dtype.kind == "bool":
        return ctx.emit("bitwise_xor", [hi, lo])
    return ctx.emit("sub", [hi, lo])


@converter(aten.roll.default)
def _roll(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    shifts = args[1] if len(args) > 1 else kwargs["shifts"]
    dims = args[2] if len(args) > 2 else kwargs.get("dims", [])
    if not dims:
        raise Decline("roll over the flattened tensor")
    return ctx.emit("roll", [x], shifts=tuple(shifts), dims=tuple(d % x.type.rank for d in dims))


@converter(aten.addcmul.default)
def _addcmul(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("addcmul", list(args[:3]), value=_scalar(kwargs.get("value", 1)))
