"""fp8 e4m3 linears (`linear_fp8`): fp8 weights per output channel, fp8 activations per token.

Format: `qweight` f8e4m3[N, K] (torch.float8_e4m3fn, finite max 448), `scale` [N] in the
activation's float dtype, scale = max|w_row| / 448 (0 for an all-zero row),
w ~= qweight.float() * scale[:, None]. At run time each token (row of x) is scaled the same way:
s = max|x_row| / 448 in f32, x_q = fp8(x / s); y = (x_q @ qweight.T) * s * scale[None, :] (+ bias),
in x's dtype. Products of two e4m3 values are exact in f32, so the float reference and
`torch._scaled_mm` differ only in accumulation order.

Reference: the same arithmetic in f32 over the fp8 values (any device). On CUDA with compute
capability >= 8.9 and K, N multiples of 16 the product runs through `torch._scaled_mm` (unit
per-tensor scales, f32 out; the token and channel scales are applied afterwards, which every
PyTorch since 2.4 accepts); if that call is refused the reference runs instead.

torch.float8_e4m3fn exists since PyTorch 2.1; without it `fp8_e4m3_dtype()` raises
QuantizationError.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ...errors import QuantizationError
from ..ops import Attr, AttrKind, InferenceError, declare
from ..types import TensorType
from ._infer import same_dim, tensors
from .nn import ACTIVATIONS

FP8_E4M3_MAX = 448.0


def fp8_e4m3_dtype() -> torch.dtype:
    """torch.float8_e4m3fn, or QuantizationError when this PyTorch build has no fp8 dtype."""
    dt = getattr(torch, "float8_e4m3fn", None)
    if dt is None:
        raise QuantizationError(
            f"fp8 e4m3 needs torch.float8_e4m3fn (PyTorch >= 2.1); this is torch {torch.__version__}. "
            "Upgrade PyTorch or use quantization='int8'."
        )
    return dt


def _to_fp8(xf: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 codes of xf / s, s = amax / 448 in f32) with s broadcasting over the last dim of xf."""
    s = amax / FP8_E4M3_MAX
    safe = torch.where(s == 0, torch.ones_like(s), s)
    return (xf / safe).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(fp8_e4m3_dtype()), s


def quantize_fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (qweight f8e4m3[N, K], scale [N] in w's dtype), scale = max|w_row| / 448.

    The codes are computed from the scale as stored (rounded to w's dtype)."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"fp8 weight quantization needs a 2-dim float weight, got {tuple(w.shape)} {w.dtype}")
    scale = (w.detach().abs().amax(dim=-1).float() / FP8_E4M3_MAX).to(w.dtype)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
    q = (w.detach().float() / safe[:, None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(fp8_e4m3_dtype())
    return q, scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """qweight f8e4m3[N, K], scale [N] -> w [N, K] in `dtype` (default: the scale's)."""
    return (q.float() * scale.float()[:, None]).to(dtype or scale.dtype)


def quantize_activations_fp8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (x_q f8e4m3[..., K], s [..., 1] f32), s = max|x_row| / 448 per token."""
    xf = x.detach().float()
    return _to_fp8(xf, xf.abs().amax(dim=-1, keepdim=True))


@functools.lru_cache(maxsize=16)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _scaled_mm_fits(xq: torch.Tensor, q: torch.Tensor) -> bool:
    if xq.device.type != "cuda" or not hasattr(torch, "_scaled_mm") or q.device != xq.device:
        return False
    k, n = q.shape[1], q.shape[0]
    return k % 16 == 0 and n % 16 == 0 and _capability(xq.device.index or 0) >= (8, 9)


def _scaled_mm(xq: torch.Tensor, q: torch.Tensor) -> torch.Tensor | None:
    """xq f8[M, K] @ q.T (column-major [K, N]) -> f32[M, N] via torch._scaled_mm, or None if refused."""
    one = torch.ones((), device=xq.device, dtype=torch.float32)
    try:
        out = torch._scaled_mm(xq.contiguous(), q.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    except RuntimeError:  # a build or shape this PyTorch's fp8 GEMM does not take: use the reference
        return None
    return out[0] if isinstance(out, tuple) else out  # torch < 2.4 returned (out, amax)


def _linear_fp8_infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    if len(ts) not in (3, 4):
        raise InferenceError(f"linear_fp8 takes x, qweight, scale and an optional bias, got {len(ts)} inputs")
    if a["activation"] not in ("none", *ACTIVATIONS):
        raise InferenceError(f"activation must be one of none, {', '.join(ACTIVATIONS)}; got {a['activation']!r}")
    x, q, scale = ts[:3]
    if not x.dtype.is_float or x.rank < 1:
        raise InferenceError(f"linear_fp8 needs a float x[..., K], got {x}")
    if q.dtype.name != "f8e4m3" or q.rank != 2 or not same_dim(x.shape[-1], q.shape[1]):
        raise InferenceError(f"linear_fp8 needs x[..., K] and qweight f8e4m3[N, K], got {x} and {q}")
    if scale.rank != 1 or not same_dim(scale.shape[0], q.shape[0]) or scale.dtype is not x.dtype:
        raise InferenceError(f"linear_fp8 scale must be {x.dtype}[{q.shape[0]}], got {scale}")
    for b in ts[3:]:
        if b.dtype is not x.dtype or b.rank != 1 or not same_dim(b.shape[0], q.shape[0]):
            raise InferenceError(f"linear_fp8 bias must be {x.dtype}[{q.shape[0]}], got {b}")
    return (TensorType(x.dtype, x.shape[:-1] + (q.shape[0],)),)


def _linear_fp8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, *rest: Any) -> torch.Tensor:
    *bias, activation = rest
    n, k = q.shape
    xq, s = quantize_activations_fp8_per_token(x.reshape(-1, k))  # (M, K) f8, (M, 1) f32
    work = torch.float64 if x.dtype is torch.float64 else torch.float32
    acc = _scaled_mm(xq, q) if _scaled_mm_fits(xq, q) else None
    if acc is None:  # reference: exact fp8 products, accumulated in f32
        acc = xq.to(work) @ q.to(work).t()
    y = (acc.to(work) * s.to(work) * scale.to(work)[None, :]).to(x.dtype).reshape(*x.shape[:-1], n)
    if bias:
        y = y + bias[0]
    return y if activation == "none" else ACTIVATIONS[activation](y)


declare(
    "linear_fp8", ["x", "qweight", "scale", "*bias"], [Attr("activation", AttrKind.STR, "none")],
    infer=_linear_fp8_infer, impl=_linear_fp8, category="matmul",
    doc="act((fp8(x / s) @ qweight.T) * s * scale[None, :] (+ bias)); qweight f8e4m3[N, K], scale [N] = "
    "max|w_row| / 448; s = max|x_row| / 448 per token at run time. torch._scaled_mm on CUDA sm >= 8.9 "
    "with K, N multiples of 16, else the f32 reference",
)
