"""Tensor creation and side effects: full, arange, copy_to (an explicit in-place write)."""

from __future__ import annotations

from typing import Any

import sympy
import torch

from ..dtypes import DType
from ..ops import Attr, AttrKind, Effect, InferenceError, declare
from ..symbolic import simplify_dim
from ..types import TensorType
from ._infer import tensors


def _full(shape: list, value: Any, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype, device=device)


def _full_infer(types, a):  # noqa: ANN001, ANN202
    if types:
        raise InferenceError("full takes no inputs")
    return (TensorType(a["dtype"], tuple(a["shape"])),)


declare(
    "full", [], [Attr("shape", AttrKind.DIMS), Attr("value", AttrKind.SCALAR), Attr("dtype", AttrKind.DTYPE), Attr("device", AttrKind.DEVICE, "cpu")],
    infer=_full_infer, impl=_full, category="creation", doc="a tensor filled with value",
)


def _arange(start: int, end: int, step: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.arange(start, end, step, dtype=dtype, device=device)


def _arange_infer(types, a):  # noqa: ANN001, ANN202
    start, end, step = a["start"], a["end"], a["step"]
    dtype: DType = a["dtype"]
    if step == 0 or dtype.kind not in ("int", "uint", "float"):
        raise InferenceError("arange needs a non-zero step and a numeric dtype")
    span = end - start
    if isinstance(span, int):
        n: Any = max(0, -(-span // step))
    else:
        n = simplify_dim(span if step == 1 else sympy.floor((span + step - 1) / step))
    return (TensorType(dtype, (n,)),)


declare(
    "arange", [], [Attr("start", AttrKind.DIM, 0), Attr("end", AttrKind.DIM), Attr("step", AttrKind.INT, 1), Attr("dtype", AttrKind.DTYPE), Attr("device", AttrKind.DEVICE, "cpu")],
    infer=_arange_infer, impl=_arange, category="creation", doc="integers start, start+step, ... < end",
)


def _copy_to(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src)


def _copy_to_infer(types, a):  # noqa: ANN001, ANN202
    dst, src = tensors(types)
    if dst.shape != src.shape:
        raise InferenceError(f"copy_to needs equal shapes, got {dst} and {src}")
    return ()


declare(
    "copy_to", ["dst", "src"], infer=_copy_to_infer, impl=_copy_to, effect=Effect.WRITE,
    category="effect", num_outputs=0,
    doc="write src into dst in place (a buffer or input update such as a KV-cache write)",
)


def _group_infer(types, a):  # noqa: ANN001, ANN202
    raise InferenceError("a fusion group's types come from its subgraph")


def _group_impl(*args: Any) -> Any:
    raise RuntimeError("fusion groups run through their subgraph (ir.interpret / runtime.plan)")


declare(
    "fusion_group", ["*xs"], [Attr("kind", AttrKind.STR, "elementwise")], infer=_group_infer, impl=_group_impl,
    category="fusion", num_outputs=-1,
    doc="a node owning a subgraph (node.subgraph) run as one kernel; kind: elementwise | reduction",
)
