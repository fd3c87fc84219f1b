"""Shared inference rules: symbolic broadcasting, dim normalisation, and dtype by meta execution.

Dtypes follow PyTorch's promotion exactly because they are read off the reference
implementation run on 1-element meta tensors (cached per op and dtype signature).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import sympy
import torch

from ..dtypes import DType, from_torch
from ..ops import InferenceError, runtime_attr
from ..symbolic import Dim
from ..types import TensorType, ValueType


def same_dim(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def broadcast(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy broadcasting over symbolic dims; dims that are neither equal nor 1 are an error."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        d: Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            e = s[j]
            if e == 1:
                continue
            if d == 1:
                d = e
            elif not same_dim(d, e):
                raise InferenceError(f"cannot broadcast dim {d} with {e} in shapes {[list(map(str, s)) for s in shapes]}")
        out.append(d)
    return tuple(out)


def norm_dim(d: int, rank: int, what: str = "dim") -> int:
    """A non-negative dim index, with a clear error when out of range."""
    r = max(rank, 1)
    if not -r <= d < r:
        raise InferenceError(f"{what} {d} is out of range for a rank-{rank} tensor")
    return d % r


def tensors(types: Sequence[ValueType]) -> list[TensorType]:
    for t in types:
        if not isinstance(t, TensorType):
            raise InferenceError(f"expected tensor inputs, got {t}")
    return list(types)  # type: ignore[arg-type]


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, sympy.Expr):
        return 2  # dims don't change dtypes; any small int stands in
    return v


def meta_dtype(impl: Callable[..., Any], types: Sequence[TensorType], attr_values: Sequence[Any], kinds: Sequence[Any]) -> DType:
    """The dtype `impl` produces for these input dtypes and attributes."""
    sig = tuple((t.dtype.name, t.rank) for t in types)
    values = tuple(_hashable(v) for v in attr_values)
    # 1 == 1.0 == True and they hash alike, so the cache key also records each value's type:
    # without it add(i64){rhs=1} got the f32 result cached for add(i64){rhs=1.0}.
    return _meta_dtype_cached(impl, sig, values, tuple(kinds), _type_key(values))


def _type_key(v: Any) -> Any:
    return tuple(_type_key(x) for x in v) if isinstance(v, tuple) else type(v)


@functools.lru_cache(maxsize=8192)
def _meta_dtype_cached(impl, sig, attr_values, kinds, type_key) -> DType:  # noqa: ANN001, ARG001
    from ..dtypes import by_name

    attrs = [runtime_attr(k, v) for k, v in zip(kinds, attr_values)]
    dtypes = [by_name(name).torch for name, _ in sig]
    try:
        out = impl(*[torch.empty((1,) * rank, dtype=dt, device="meta") for dt, (_, rank) in zip(dtypes, sig)], *attrs)
        if all(d.is_floating_point and d.itemsize >= 2 or not d.is_floating_point for d in dtypes):
            # Meta kernels are laxer than real ones (silu on int64, bool scalar minus float);
            # one 1-element CPU call makes inference accept exactly what the reference runs.
            impl(*[torch.ones((1,) * rank, dtype=dt) for dt, (_, rank) in zip(dtypes, sig)], *attrs)
    except Exception as e:  # the reference rejects these dtypes/attributes
        raise InferenceError(f"{type(e).__name__}: {e}") from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    return from_torch(out.dtype)


def elementwise(impl: Callable[..., Any], attr_kinds: Sequence[Any] = ()) -> Callable:
    """Inference for an elementwise op: broadcast shapes, dtype from the reference impl."""

    def infer(types: Sequence[ValueType], attrs: dict[str, Any]) -> tuple[TensorType, ...]:
        ts = tensors(types)
        shape = broadcast(*(t.shape for t in ts))
        dtype = meta_dtype(impl, ts, list(attrs.values()), attr_kinds)
        return (TensorType(dtype, shape),)

    return infer
