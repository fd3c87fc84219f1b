"""Converters for elementwise ops, identity-like ops and reductions."""

from __future__ import annotations

from typing import Any

import torch

from ..ir import Value
from ..ir.dtypes import from_torch
from ..ir.opset.elementwise import UNARY
from .convert_util import aten, is_value, plain, scalar
from .fx_import import Ctx, Decline, converter


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
    return ctx.emit("clamp", [args[0]], min=scalar(lo), max=scalar(hi))


def _binary(name: str, reverse: bool = False):
    def conv(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
        a, b = args[0], args[1] if len(args) > 1 else kwargs["other"]
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if reverse:
            a, b = b, a
        if alpha != 1:
            if not is_value(b):
                b = b * alpha
            else:
                b = plain(ctx, "mul", [b], rhs=alpha)
        if is_value(a) and is_value(b):
            return ctx.emit(name, [a, b])
        if is_value(a):
            return ctx.emit(name, [a], rhs=scalar(b))
        if is_value(b):
            return ctx.emit(name, [b], lhs=scalar(a))
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
    if not all(is_value(a) for a in args):
        raise Decline("scalar where")
    return ctx.emit("where", list(args))


@converter(aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def _where_scalar(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    """where with a Python scalar branch: the scalar becomes a 0-dim tensor of the result dtype."""
    cond, a, b = args[:3]
    dtype = from_torch(node.meta["val"].dtype)
    device = str(node.meta["val"].device)

    def operand(v: Any) -> Value:
        if is_value(v):
            return v
        return plain(ctx, "full", [], shape=(), value=scalar(v), dtype=dtype, device=device)

    return ctx.emit("where", [cond, operand(a), operand(b)])


@converter(aten.masked_fill.Scalar)
def _masked_fill(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("masked_fill", [args[0], args[1]], value=scalar(args[2]))


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
        x = plain(ctx, "cast", [x], dtype=from_torch(third))
    elif third:
        raise Decline("half_to_float softmax")
    return ctx.emit(name, [x], dim=dim % max(x.type.rank, 1))
