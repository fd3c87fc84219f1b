"""ONNX converters for convolution and pooling (static shapes; PyTorch's ATen kernels as opaque
nodes) and a few small ops built from kiln's declared ones (IsInf, CumProd, EyeLike)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..ir import TensorType
from ..ir.dtypes import b8
from .onnx_import import OnnxCtx, onnx_op
from .onnx_tensor import _axis


def _spatial_pads(ctx: OnnxCtx, attrs: dict, in_sizes: list, kernel: list, strides: list, dilations: list) -> tuple[list, list]:
    """(begin, end) padding per spatial dim from `pads` or `auto_pad`."""
    n = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0) for i, k, s, d in zip(in_sizes, kernel, strides, dilations)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        return (small, big) if auto == "SAME_UPPER" else (big, small)
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(attrs.get("pads", [0] * (2 * n)))
    return pads[:n], pads[n:]


def _pre_pad(ctx: OnnxCtx, x: Any, begin: list, end: list, value: float) -> Any:
    """Pad the spatial dims asymmetrically (PyTorch's conv/pool padding is symmetric)."""
    t = ctx.type_of(x)
    pads: list = []
    for b, e in zip(reversed(begin), reversed(end)):
        pads += [b, e]
    shape = t.shape[:2] + tuple(d + b + e for d, b, e in zip(t.shape[2:], begin, end))
    return ctx.aten(torch.ops.aten.constant_pad_nd.default, [x], [TensorType(t.dtype, shape)], pad=tuple(pads), value=value)


def _window(ctx: OnnxCtx, x: Any, attrs: dict, kernel: list, pad_value: float) -> tuple[Any, list, list, list]:
    t = ctx.type_of(x)
    if not t.is_static:
        raise ctx.error("needs static input shapes")
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    begin, end = _spatial_pads(ctx, attrs, list(t.shape[2:]), kernel, strides, dilations)
    if begin != end or any(2 * b > (k - 1) * d + 1 for b, k, d in zip(begin, kernel, dilations)):
        x, begin = _pre_pad(ctx, x, begin, end, pad_value), [0] * n  # PyTorch pads symmetrically, at most half a window
    return x, strides, begin, dilations


@onnx_op("Conv")
def _conv(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 and ins[2] is not None else None
    kernel = list(ctx.type_of(w).shape[2:])
    x, strides, pads, dilations = _window(ctx, x, attrs, kernel, 0.0)
    return ctx.aten(torch.ops.aten.convolution.default, [x, w] + ([bias] if bias is not None else []),
                    stride=tuple(strides), padding=tuple(pads), dilation=tuple(dilations), transposed=False,
                    output_padding=(0,) * len(kernel), groups=int(attrs.get("group", 1)))


_MAX_POOL = {1: torch.ops.aten.max_pool1d.default, 2: torch.ops.aten.max_pool2d.default, 3: torch.ops.aten.max_pool3d.default}
_AVG_POOL = {1: torch.ops.aten.avg_pool1d.default, 2: torch.ops.aten.avg_pool2d.default, 3: torch.ops.aten.avg_pool3d.default}


@onnx_op("MaxPool")
def _max_pool(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    if any(node.output[1:]):
        raise ctx.error("MaxPool's Indices output is unsupported")
    kernel = list(attrs["kernel_shape"])
    x, strides, pads, dilations = _window(ctx, ins[0], attrs, kernel, float("-inf"))
    return ctx.aten(_MAX_POOL[len(kernel)], [x], kernel_size=tuple(kernel), stride=tuple(strides), padding=tuple(pads),
                    dilation=tuple(dilations), ceil_mode=bool(attrs.get("ceil_mode", 0)))


@onnx_op("AveragePool")
def _avg_pool(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    kernel = list(attrs["kernel_shape"])
    if any(d != 1 for d in attrs.get("dilations", [])):
        raise ctx.error("dilated AveragePool is unsupported")
    include = bool(attrs.get("count_include_pad", 0))
    t = ctx.type_of(ins[0])
    begin, end = _spatial_pads(ctx, attrs, list(t.shape[2:]), kernel, list(attrs.get("strides", [1] * len(kernel))), [1] * len(kernel))
    if (begin != end or any(2 * b > k for b, k in zip(begin, kernel))) and not include:
        raise ctx.error("asymmetric or over-half-window padding without count_include_pad is unsupported")
    x, strides, pads, _ = _window(ctx, ins[0], attrs, kernel, 0.0)
    return ctx.aten(_AVG_POOL[len(kernel)], [x], kernel_size=tuple(kernel), stride=tuple(strides), padding=tuple(pads),
                    ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=include)


@onnx_op("IsInf")
def _isinf(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    x = ins[0]
    pos, neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    inf = float("inf")
    if pos and neg:
        return ctx.emit("eq", [ctx.emit("abs", [x])], rhs=inf)
    if pos:
        return ctx.emit("eq", [x], rhs=inf)
    if neg:
        return ctx.emit("eq", [x], rhs=-inf)
    return ctx.emit("full", [], shape=ctx.type_of(x).shape, value=False, dtype=b8)


@onnx_op("CumProd")
def _cumprod(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    t = ctx.type_of(ins[0])
    axis = _axis(int(ctx.ints(ins[1], "CumProd's axis")[0]), t.rank)
    x = ins[0]
    flip = torch.ops.aten.flip.default
    if attrs.get("reverse", 0):
        x = ctx.aten(flip, [x], [t], dims=(axis,))
    if attrs.get("exclusive", 0):  # shift right by one along axis, filling with 1
        d = t.shape[axis]
        ones = ctx.emit("full", [], shape=t.shape[:axis] + (1,) + t.shape[axis + 1:], value=1, dtype=t.dtype)
        x = ctx.emit("cat", [ones, ctx.emit("slice", [x], dim=axis, start=0, end=d - 1)], dim=axis)
    y = ctx.aten(torch.ops.aten.cumprod.default, [x], [t], dim=axis, dtype=t.dtype)
    if attrs.get("reverse", 0):
        y = ctx.aten(flip, [y], [t], dims=(axis,))
    return y
