"""Reductions: sum/mean/amax/amin/prod/any/all over dims, var, argmax, max with indices,
cumulative sum, softmax and log-softmax. `dims=[]` means all dims. Dims are stored
non-negative (the frontend normalises them)."""

from __future__ import annotations

from typing import Any

import torch

from ..dtypes import b8, i64
from ..ops import Attr, AttrKind, InferenceError, declare
from ..types import TensorType
from ._infer import meta_dtype, norm_dim, tensors


def _reduced_shape(t: TensorType, dims: tuple[int, ...], keepdim: bool) -> tuple:
    rank = t.rank
    ds = {norm_dim(d, rank) for d in dims} if dims else set(range(rank))
    if keepdim:
        return tuple(1 if i in ds else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in ds)


def _reduction(name: str, fn: Any, with_dtype: bool, out_dtype: Any = None) -> None:
    attrs = [Attr("dims", AttrKind.INTS, ()), Attr("keepdim", AttrKind.BOOL, False)]
    if with_dtype:
        attrs.append(Attr("dtype", AttrKind.DTYPE, None, True))

        def impl(x: torch.Tensor, dims: list, keepdim: bool, dtype: Any) -> torch.Tensor:
            return fn(x, dims or list(range(x.dim())), keepdim, dtype=dtype)
    else:

        def impl(x: torch.Tensor, dims: list, keepdim: bool) -> torch.Tensor:  # type: ignore[misc]
            return fn(x, dims or list(range(x.dim())), keepdim)

    def infer(types, a):  # noqa: ANN001, ANN202
        (t,) = tensors(types)
        kinds = [x.kind for x in attrs]
        dtype = out_dtype or meta_dtype(impl, [t], list(a.values()), kinds)
        return (TensorType(dtype, _reduced_shape(t, a["dims"], a["keepdim"])),)

    declare(name, ["x"], attrs, infer=infer, impl=impl, category="reduction", doc=f"{name} over dims")


_reduction("sum", torch.sum, True)
_reduction("mean", torch.mean, True)
_reduction("amax", torch.amax, False)
_reduction("amin", torch.amin, False)
_reduction("any", lambda x, d, k: torch.any(x, d, k), False, b8)


def _var(x: torch.Tensor, dims: list, correction: float, keepdim: bool) -> torch.Tensor:
    return torch.var(x, dims or None, correction=correction, keepdim=keepdim)


def _var_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    return (TensorType(t.dtype, _reduced_shape(t, a["dims"], a["keepdim"])),)


declare(
    "var", ["x"], [Attr("dims", AttrKind.INTS, ()), Attr("correction", AttrKind.FLOAT, 1.0), Attr("keepdim", AttrKind.BOOL, False)],
    infer=_var_infer, impl=_var, category="reduction", doc="variance with Bessel-style correction",
)


def _dim_reduce_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    return _reduced_shape(t, (a["dim"],), a["keepdim"])


def _max_dim(x: torch.Tensor, dim: int, keepdim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.max(x, dim, keepdim)
    return r.values, r.indices


declare(
    "max_dim", ["x"], [Attr("dim", AttrKind.INT), Attr("keepdim", AttrKind.BOOL, False)],
    infer=lambda ts, a: (TensorType(ts[0].dtype, _dim_reduce_infer(ts, a)), TensorType(i64, _dim_reduce_infer(ts, a))),
    impl=_max_dim, category="reduction", num_outputs=2, doc="max along dim: (values, indices)",
)


def _argmax(x: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor:
    return torch.argmax(x, dim, keepdim)


declare(
    "argmax", ["x"], [Attr("dim", AttrKind.INT), Attr("keepdim", AttrKind.BOOL, False)],
    infer=lambda ts, a: (TensorType(i64, _dim_reduce_infer(ts, a)),), impl=_argmax,
    category="reduction", doc="index of the max along dim",
)


def _cumsum(x: torch.Tensor, dim: int, dtype: Any) -> torch.Tensor:
    return torch.cumsum(x, dim, dtype=dtype)


def _cumsum_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    norm_dim(a["dim"], t.rank)
    return (TensorType(meta_dtype(_cumsum, [t], list(a.values()), [AttrKind.INT, AttrKind.DTYPE]), t.shape),)


declare(
    "cumsum", ["x"], [Attr("dim", AttrKind.INT), Attr("dtype", AttrKind.DTYPE, None, True)],
    infer=_cumsum_infer, impl=_cumsum, category="reduction", doc="cumulative sum along dim",
)


def _softmax_like(name: str, fn: Any) -> None:
    def impl(x: torch.Tensor, dim: int) -> torch.Tensor:
        return fn(x, dim)

    def infer(types, a):  # noqa: ANN001, ANN202
        (t,) = tensors(types)
        norm_dim(a["dim"], t.rank)
        if not t.dtype.is_float:
            raise InferenceError(f"{name} needs a floating-point input, got {t}")
        return (t,)

    declare(name, ["x"], [Attr("dim", AttrKind.INT)], infer=infer, impl=impl, category="reduction", doc=f"{name} along dim")


_softmax_like("softmax", torch.softmax)
_softmax_like("log_softmax", torch.log_softmax)
