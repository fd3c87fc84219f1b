"""Elementwise ops: unary math and activations, binary arithmetic and comparisons, where, casts.

Binary ops take two tensors, or one tensor and a Python scalar in attribute `lhs` or `rhs`
(`%1 = sub(%0) {lhs=1.0}` is `1.0 - %0`). Shapes broadcast; dtypes follow PyTorch promotion.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..ops import Attr, AttrKind, Call, InferenceError, declare, is_symbolic
from ._infer import elementwise

UNARY: dict[str, Callable[..., Any]] = {
    "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "log1p": torch.log1p,
    "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh,
    "sigmoid": torch.sigmoid, "relu": torch.relu, "silu": F.silu, "erf": torch.erf,
    "reciprocal": torch.reciprocal, "floor": torch.floor, "ceil": torch.ceil, "sign": torch.sign,
    "logical_not": torch.logical_not, "bitwise_not": torch.bitwise_not, "isnan": torch.isnan,
    "exp2": torch.exp2, "expm1": torch.expm1, "trunc": torch.trunc,
}

for _name, _fn in UNARY.items():
    declare(_name, ["x"], infer=elementwise(_fn), impl=_fn, category="elementwise", doc=f"elementwise {_name}")


def _gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


declare(
    "gelu", ["x"], [Attr("approximate", AttrKind.STR, "none")],
    infer=elementwise(_gelu, [AttrKind.STR]), impl=_gelu, category="elementwise",
    doc="GELU; approximate is 'none' (erf) or 'tanh'",
)


def _clamp(x: torch.Tensor, min: Any, max: Any) -> torch.Tensor:  # noqa: A002 - ATen's names
    return torch.clamp(x, min, max)


declare(
    "clamp", ["x"], [Attr("min", AttrKind.SCALAR, None, True), Attr("max", AttrKind.SCALAR, None, True)],
    infer=elementwise(_clamp, [AttrKind.SCALAR, AttrKind.SCALAR]), impl=_clamp, category="elementwise",
    doc="clamp to [min, max]; either bound may be none",
)


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


declare(
    "cast", ["x"], [Attr("dtype", AttrKind.DTYPE)],
    infer=elementwise(_cast, [AttrKind.DTYPE]), impl=_cast, category="elementwise",
    doc="convert element type (a no-op when it already matches)",
)

# name -> (tensor-first function, scalar-first function or None when a scalar lhs is illegal)
BINARY: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None]] = {
    "add": (operator.add, operator.add), "sub": (operator.sub, operator.sub),
    "mul": (operator.mul, operator.mul), "div": (operator.truediv, operator.truediv),
    "floor_divide": (operator.floordiv, operator.floordiv), "remainder": (operator.mod, operator.mod),
    "pow": (torch.pow, torch.pow), "eq": (operator.eq, operator.eq), "ne": (operator.ne, operator.ne),
    "lt": (operator.lt, operator.gt), "le": (operator.le, operator.ge),
    "gt": (operator.gt, operator.lt), "ge": (operator.ge, operator.le),
    "bitwise_and": (operator.and_, operator.and_), "bitwise_or": (operator.or_, operator.or_),
    "bitwise_xor": (operator.xor, operator.xor), "maximum": (torch.maximum, None),
    "minimum": (torch.minimum, None), "logical_and": (torch.logical_and, None),
    "logical_or": (torch.logical_or, None), "atan2": (torch.atan2, None),
}
_SWAPPED = {"lt", "le", "gt", "ge"}  # scalar-first comparisons flip instead of reflecting


def _binary(name: str, fn: Callable[..., Any], rfn: Callable[..., Any] | None):
    flip = name in _SWAPPED

    def impl(*args: Any) -> torch.Tensor:
        *ts, lhs, rhs = args
        if lhs is not None:
            return rfn(ts[0], lhs) if flip else rfn(lhs, ts[0])  # type: ignore[misc]
        if rhs is not None:
            return fn(ts[0], rhs)
        return fn(ts[0], ts[1])

    def infer(types, attrs):  # noqa: ANN001, ANN202
        n_scalars = (attrs["lhs"] is not None) + (attrs["rhs"] is not None)
        if n_scalars + len(types) != 2:
            raise InferenceError(f"{name} needs two operands: tensors plus lhs/rhs scalars")
        if attrs["lhs"] is not None and rfn is None:
            raise InferenceError(f"{name} takes no scalar lhs")
        return elementwise(impl, [AttrKind.SCALAR, AttrKind.SCALAR])(types, attrs)

    def lower(node: Any) -> Call:
        lhs, rhs = node.attrs["lhs"], node.attrs["rhs"]
        if lhs is not None:
            s = ("dims", lhs) if is_symbolic(lhs) else ("const", lhs)
            return Call(rfn, (("in", 0), s) if flip else (s, ("in", 0)))
        if rhs is not None:
            return Call(fn, (("in", 0), ("dims", rhs) if is_symbolic(rhs) else ("const", rhs)))
        return Call(fn, (("in", 0), ("in", 1)))

    declare(
        name, ["*operands"], [Attr("lhs", AttrKind.SCALAR, None, True), Attr("rhs", AttrKind.SCALAR, None, True)],
        infer=infer, impl=impl, category="elementwise", lower=lower,
        doc=f"elementwise {name} of two tensors, or of a tensor and a scalar lhs/rhs",
    )


for _name, (_fn, _rfn) in BINARY.items():
    _binary(_name, _fn, _rfn)


declare(
    "where", ["cond", "a", "b"], infer=elementwise(torch.where), impl=torch.where,
    category="elementwise", doc="cond ? a : b, broadcasting all three",
)


def _masked_fill(x: torch.Tensor, mask: torch.Tensor, value: Any) -> torch.Tensor:
    return x.masked_fill(mask, value)


def _masked_fill_infer(types, attrs):  # noqa: ANN001, ANN202
    out = elementwise(_masked_fill, [AttrKind.SCALAR])(types, attrs)[0]
    if out.shape != types[0].shape:
        raise InferenceError("masked_fill's mask may not grow the input's shape")
    return (out.with_dtype(types[0].dtype),)


declare(
    "masked_fill", ["x", "mask"], [Attr("value", AttrKind.SCALAR)], infer=_masked_fill_infer,
    impl=_masked_fill, category="elementwise", doc="x with `value` where mask is true",
)

__all__ = ["BINARY", "UNARY"]


def _addcmul(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, value: Any) -> torch.Tensor:
    return torch.addcmul(x, a, b, value=value)


declare(
    "addcmul", ["x", "a", "b"], [Attr("value", AttrKind.SCALAR, 1)],
    infer=elementwise(_addcmul, [AttrKind.SCALAR]), impl=_addcmul, category="elementwise",
    doc="x + value * a * b, broadcasting all three",
)
