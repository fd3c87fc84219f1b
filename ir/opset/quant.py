"""Weight-only quantized matmuls (`linear_w8`, `linear_w4`), W8A8 (`linear_w8a8`) and the quantization arithmetic.

Formats (symmetric, round to nearest, scale = max|w| / qmax over the scaling block):

* int8 per output channel: `qweight` i8[N, K] in [-127, 127], `scale` [N] in the activation's
  float dtype; w ~= qweight * scale[:, None].
* int4 group-wise: `packed` u8[N, K/2], `scales` [N, K/group] in the activation's float dtype;
  each group of `group` consecutive k shares a scale; values in [-8, 7] (the quantizer produces
  [-7, 7]). Nibble order: byte j of a row holds column 2j in its LOW nibble and column 2j+1 in
  its HIGH nibble, each stored as q + 8 (an unsigned 0..15), so unpacking is a mask/shift and a
  subtraction, with no sign extension.

Asymmetric min-max formats (`asymmetric=True` on either op; unsigned codes, one zero point per
scaling block): over each block the range [lo, hi] = [min(min w, 0), max(max w, 0)] (widened to
hold 0, as GPTQ and PyTorch's min-max observers do, so 0 is exact and the zero point always lies
in the code range), scale = (hi - lo) / (2^b - 1) (0 for an all-zero block), zero =
clamp(round(-lo / scale), 0, 2^b - 1), q = clamp(round(w / scale) + zero, 0, 2^b - 1) and
w ~= (q - zero) * scale, within scale / 2 per element.

* int8 per output channel: `qweight` u8[N, K] in [0, 255], `scale` [N], `zeros` u8[N].
* int4 group-wise: `packed` u8[N, K/2] holding the codes 0..15 as they are (same nibble order as
  the symmetric format, no + 8), `scales` [N, K/group], `zeros` u8[N, K/group] in [0, 15].

The zero points are the first variadic input, before the optional bias: `linear_w8(x, qweight,
scale, zeros[, bias]) {asymmetric=true}`; without the flag the signature is the symmetric one.

The reference implementations are the CPU path: `linear_w8` calls PyTorch's own int8 weight
matmul (`aten._weight_int8pack_mm`, no float weight materialised) when it exists and fits (CPU,
f32/f16/bf16 activations with matching scale dtype), else dequantizes per call and runs F.linear.
`linear_w4` dequantizes per call, a block of output rows at a time, so at most
`_W4_BLOCK_ELEMENTS` float weights exist at once (PyTorch's CPU int4 kernel wants its own
pre-tiled layout and asymmetric scale/zero pairs; wiring it in is left to a later slice).
The asymmetric paths of both ops dequantize per call (the int8 kernel has no zero points).

W8A8 (`linear_w8a8(x, qweight i8[N, K], scale [N][, bias])`): the symmetric int8 weight format
above, and the activations quantized at run time per token (row of x): s = max|x_row| / 127 (in
f32; 0 for an all-zero row), x_q = clamp(round(x / s), -127, 127) as int8, then
y = (x_q @ qweight.T) * s * scale[None, :] (+ bias), in x's dtype. The integer product runs in
int32 through `torch._int_mm` where it fits, else in float over the same integer values.
Static W8A8: the attribute `act_scale` (f64 in the IR, used as f32; default 0.0 = dynamic) > 0
replaces the per-token s by that one calibrated per-tensor scale, x_q = clamp(round(x / act_scale),
-127, 127); the inputs are unchanged (`linear_w8a8(x, qweight, scale[, bias]) {act_scale=...}`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..ops import Attr, AttrKind, InferenceError, declare
from ..types import TensorType
from ._infer import same_dim, tensors
from .nn import ACTIVATIONS

INT8_QMAX = 127
INT4_QMAX = 7  # symmetric: [-7, 7] produced, [-8, 7] representable
INT8_UMAX = 255  # asymmetric codes: [0, 255]
INT4_UMAX = 15  # asymmetric codes: [0, 15]
INT4_GROUP_SIZES = (32, 64, 128)
_W4_BLOCK_ELEMENTS = 1 << 22  # float weights dequantized at once by the int4 reference (16 MiB in f32)


# --- quantization arithmetic ---------------------------------------------------------------


def _symmetric(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) along the last dim of `w`: scale = max|w| / qmax in w's dtype, q = round(w / scale).

    q is computed from the scale as stored (rounded to w's dtype), so dequantization uses the
    very scale the rounding assumed. All-zero blocks get scale 0 and q 0 (dequantize exactly).
    """
    amax = w.detach().abs().amax(dim=-1).float()
    scale = (amax / qmax).to(w.dtype)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
    q = torch.round(w.detach().float() / safe[..., None]).clamp_(-qmax - 1, qmax)
    return q, scale


def _minmax(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scale, zero) along the last dim of `w`, asymmetric min-max over [min(w, 0), max(w, 0)].

    scale is stored in w's dtype, rounded up where rounding to nearest would shrink it (so the
    range still fits the qmax + 1 codes), and q and zero are computed from the stored scale.
    All-zero blocks get scale 0, zero 0 and q 0 (dequantize exactly).
    """
    work = torch.float64 if w.dtype is torch.float64 else torch.float32
    wf = w.detach().to(work)
    lo, hi = wf.amin(dim=-1).clamp(max=0), wf.amax(dim=-1).clamp(min=0)
    exact = (hi - lo) / qmax
    scale = exact.to(w.dtype)
    short = scale.to(work) < exact
    if bool(short.any()):  # (1 + eps) * exact rounds to a representable value >= exact
        scale = torch.where(short, (exact * (1 + torch.finfo(w.dtype).eps)).to(w.dtype), scale)
    s = scale.to(work)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    zero = torch.round(-lo / safe).clamp_(0, qmax)
    q = (torch.round(wf / safe[..., None]) + zero[..., None]).clamp_(0, qmax)
    return q, scale, zero


def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (qweight i8[N, K], scale [N] in w's dtype), one scale per output row."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"int8 quantization needs a 2-dim float weight, got {tuple(w.shape)} {w.dtype}")
    q, scale = _symmetric(w, INT8_QMAX)
    return q.to(torch.int8), scale


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """qweight i8[N, K], scale [N] -> w [N, K] in `dtype` (default: the scale's)."""
    dtype = dtype or scale.dtype
    return qweight.to(dtype) * scale.to(dtype)[:, None]


def quantize_int8_minmax(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (qweight u8[N, K] in [0, 255], scale [N] in w's dtype, zeros u8[N]): asymmetric per row."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"int8 quantization needs a 2-dim float weight, got {tuple(w.shape)} {w.dtype}")
    q, scale, zero = _minmax(w, INT8_UMAX)
    return q.to(torch.uint8), scale, zero.to(torch.uint8)


def dequantize_int8_minmax(qweight: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """qweight u8[N, K], scale [N], zeros u8[N] -> w = (qweight - zeros) * scale [N, K] in `dtype` (default: the scale's)."""
    dtype = dtype or scale.dtype
    return (qweight.to(dtype) - zeros.to(dtype)[:, None]) * scale.to(dtype)[:, None]


def pack_uint4(u: torch.Tensor) -> torch.Tensor:
    """u integer [N, K] in [0, 15], K even -> u8[N, K/2]: column 2j in the low nibble, 2j+1 in the high."""
    u = u.to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_uint4(packed: torch.Tensor) -> torch.Tensor:
    """u8[N, K/2] -> u8[N, K] in [0, 15] (inverse of pack_uint4)."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q integer [N, K] in [-8, 7], K even -> u8[N, K/2]: column 2j low nibble, 2j+1 high, each q + 8."""
    return pack_uint4(q.to(torch.int16) + 8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """u8[N, K/2] -> i8[N, K] in [-8, 7] (inverse of pack_int4)."""
    return unpack_uint4(packed).to(torch.int8) - 8


def quantize_int4_grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float, K % group_size == 0 -> (packed u8[N, K/2], scales [N, K/group_size] in w's dtype)."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"int4 quantization needs a 2-dim float weight, got {tuple(w.shape)} {w.dtype}")
    n, k = w.shape
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"int4 group size {group_size} must be even and divide K = {k}")
    q, scales = _symmetric(w.reshape(n, k // group_size, group_size), INT4_QMAX)  # (N, G, g), (N, G)
    return pack_int4(q.reshape(n, k)), scales


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """packed u8[N, K/2], scales [N, K/group] -> w [N, K] in `dtype` (default: the scales')."""
    dtype = dtype or scales.dtype
    q = unpack_int4(packed)
    n, k = q.shape
    w = q.to(dtype).reshape(n, k // group_size, group_size) * scales.to(dtype)[..., None]  # (N, G, g)
    return w.reshape(n, k)


def quantize_int4_minmax(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] float, K % group_size == 0 -> (packed u8[N, K/2] of codes 0..15, scales [N, K/group] in w's
    dtype, zeros u8[N, K/group] in [0, 15]): asymmetric per group."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"int4 quantization needs a 2-dim float weight, got {tuple(w.shape)} {w.dtype}")
    n, k = w.shape
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"int4 group size {group_size} must be even and divide K = {k}")
    q, scales, zeros = _minmax(w.reshape(n, k // group_size, group_size), INT4_UMAX)  # (N, G, g), (N, G), (N, G)
    return pack_uint4(q.reshape(n, k)), scales, zeros.to(torch.uint8)


def dequantize_int4_minmax(
    packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """packed u8[N, K/2] (codes 0..15), scales [N, K/group], zeros u8[N, K/group] -> w [N, K] in `dtype`
    (default: the scales'), w = (code - zero) * scale per group."""
    dtype = dtype or scales.dtype
    u = unpack_uint4(packed)
    n, k = u.shape
    w = (u.to(dtype).reshape(n, k // group_size, group_size) - zeros.to(dtype)[..., None]) * scales.to(dtype)[..., None]
    return w.reshape(n, k)


# --- ops ------------------------------------------------------------------------------------


def _check_activation(a: dict) -> None:
    if a["activation"] not in ("none", *ACTIVATIONS):
        raise InferenceError(f"activation must be one of none, {', '.join(ACTIVATIONS)}; got {a['activation']!r}")


def _check_x_bias(name: str, x: TensorType, n_dim: Any, extra: list[TensorType]) -> None:
    if not x.dtype.is_float or x.rank < 1:
        raise InferenceError(f"{name} needs a float x[..., K], got {x}")
    for s in extra[:1]:  # the scale(s)
        if s.dtype is not x.dtype:
            raise InferenceError(f"{name} scales must have x's dtype {x.dtype}, got {s}")
    for b in extra[1:]:
        if b.dtype is not x.dtype or b.rank != 1 or not same_dim(b.shape[0], n_dim):
            raise InferenceError(f"{name} bias must be {x.dtype}[{n_dim}], got {b}")


def _operands(name: str, ts: list[TensorType], asymmetric: bool, what: str) -> tuple[TensorType | None, list[TensorType]]:
    """Split the inputs after x, weight, scale into (zeros or None, [bias]) and check the count."""
    fixed = 4 if asymmetric else 3
    if len(ts) not in (fixed, fixed + 1):
        zeros = ", zeros (asymmetric=true)" if asymmetric else ""
        raise InferenceError(f"{name} takes x, {what}{zeros} and an optional bias, got {len(ts)} inputs")
    return (ts[3] if asymmetric else None), ts[fixed:]


def _check_zeros(name: str, zeros: TensorType | None, scale: TensorType) -> None:
    if zeros is None:
        return
    if zeros.dtype.name != "u8" or zeros.rank != scale.rank or not all(same_dim(a, b) for a, b in zip(zeros.shape, scale.shape)):
        raise InferenceError(f"{name} zeros must be u8 shaped like the scales {scale}, got {zeros}")


def _split_rest(rest: tuple) -> tuple[list[torch.Tensor], list[Any]]:
    """`*rest` of an impl call -> (tensor inputs after the scale, attributes in declaration order).

    The trailing `asymmetric` attribute may be left off by direct callers (it defaults to False).
    """
    k = next((i for i, r in enumerate(rest) if not isinstance(r, torch.Tensor)), len(rest))
    return list(rest[:k]), list(rest[k:])


def _linear_w8_infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    asym = bool(a.get("asymmetric", False))
    if len(ts) < 3:
        raise InferenceError("linear_w8 takes x, qweight, scale and an optional bias")
    zeros, bias = _operands("linear_w8", ts, asym, "qweight, scale")
    _check_activation(a)
    x, q, scale = ts[:3]
    qdt = "u8" if asym else "i8"
    if q.dtype.name != qdt or q.rank != 2 or not same_dim(x.shape[-1] if x.rank else -1, q.shape[1]):
        raise InferenceError(f"linear_w8 needs x[..., K] and qweight {qdt}[N, K], got {x} and {q}")
    if scale.rank != 1 or not same_dim(scale.shape[0], q.shape[0]):
        raise InferenceError(f"linear_w8 scale must be [N] for qweight {q}, got {scale}")
    _check_zeros("linear_w8", zeros, scale)
    _check_x_bias("linear_w8", x, q.shape[0], [scale, *bias])
    return (TensorType(x.dtype, x.shape[:-1] + (q.shape[0],)),)


def _int8pack_fits(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> bool:
    # torch 2.13's CPU kernel segfaults on bf16 activations when K is not a multiple of 16
    # (measured: K = 1, 2, 3, 8, 17, 24, 40 crash; 16, 32, 48, 64, 80, 96, 128 run); f32 and f16 ran
    # every K tried. bf16 takes the kernel only for K % 32 == 0, a margin over what was measured.
    if x.dtype is torch.bfloat16 and q.shape[1] % 32:
        return False
    return (
        x.device.type == "cpu" and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and q.dtype is torch.int8 and scale.dtype == x.dtype and q.is_contiguous()
        and hasattr(torch.ops.aten, "_weight_int8pack_mm")
    )


def _linear_w8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, *rest: Any) -> torch.Tensor:
    ts, (activation, *flag) = _split_rest(rest)
    asymmetric = bool(flag and flag[0])
    zeros, bias = (ts[0], ts[1:]) if asymmetric else (None, ts)
    b = bias[0] if bias else None
    if zeros is not None:  # asymmetric: dequantize per call (the int8 kernel takes no zero points)
        y = F.linear(x, dequantize_int8_minmax(q, scale, zeros, x.dtype), b)
    elif _int8pack_fits(x, q, scale):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (M, K): the kernel takes 2-dim, unit-stride rows
        y = torch.ops.aten._weight_int8pack_mm(x2, q, scale).reshape(*x.shape[:-1], q.shape[0])
        if b is not None:
            y = y.add_(b)
    else:  # dequantize per call (reference path: a float copy of the weight lives during the call)
        y = F.linear(x, dequantize_int8(q, scale, x.dtype), b)
    return y if activation == "none" else ACTIVATIONS[activation](y)


declare(
    "linear_w8", ["x", "qweight", "scale", "*zeros_bias"],
    [Attr("activation", AttrKind.STR, "none"), Attr("asymmetric", AttrKind.BOOL, False)],
    infer=_linear_w8_infer, impl=_linear_w8, category="matmul",
    doc="act(x @ (qweight * scale[:, None]).T (+ bias)); qweight i8[N, K], scale [N] per output channel. "
    "asymmetric=true: linear_w8(x, qweight u8[N, K], scale [N], zeros u8[N][, bias]), "
    "w = (qweight - zeros[:, None]) * scale[:, None]",
)


def _linear_w4_infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    asym = bool(a.get("asymmetric", False))
    if len(ts) < 3:
        raise InferenceError("linear_w4 takes x, packed, scales and an optional bias")
    zeros, bias = _operands("linear_w4", ts, asym, "packed, scales")
    _check_activation(a)
    g = a["group_size"]
    x, p, s = ts[:3]
    if g <= 0 or g % 2:
        raise InferenceError(f"linear_w4 group_size must be a positive even number, got {g}")
    if p.dtype.name != "u8" or p.rank != 2 or x.rank < 1 or not same_dim(x.shape[-1], 2 * p.shape[1]):
        raise InferenceError(f"linear_w4 needs x[..., K] and packed u8[N, K/2], got {x} and {p}")
    k = x.shape[-1]
    if not isinstance(k, int) or k % g:
        raise InferenceError(f"linear_w4 needs K divisible by group_size {g}, got K = {k}")
    if s.rank != 2 or not same_dim(s.shape[0], p.shape[0]) or not same_dim(s.shape[1], k // g):
        raise InferenceError(f"linear_w4 scales must be [{p.shape[0]}, {k // g}], got {s}")
    _check_zeros("linear_w4", zeros, s)
    _check_x_bias("linear_w4", x, p.shape[0], [s, *bias])
    return (TensorType(x.dtype, x.shape[:-1] + (p.shape[0],)),)


def _linear_w4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, *rest: Any) -> torch.Tensor:
    ts, (group_size, activation, *flag) = _split_rest(rest)
    asymmetric = bool(flag and flag[0])
    zeros, bias = (ts[0], ts[1:]) if asymmetric else (None, ts)
    b = bias[0] if bias else None

    def weight(r0: int, r1: int) -> torch.Tensor:
        if zeros is None:
            return dequantize_int4(packed[r0:r1], scales[r0:r1], group_size, x.dtype)
        return dequantize_int4_minmax(packed[r0:r1], scales[r0:r1], zeros[r0:r1], group_size, x.dtype)

    n, k = packed.shape[0], packed.shape[1] * 2
    rows = max(1, _W4_BLOCK_ELEMENTS // k)
    if rows >= n:
        y = F.linear(x, weight(0, n), b)
    else:  # blocks of output rows, so no full float weight exists at once
        y = x.new_empty(*x.shape[:-1], n)
        for r in range(0, n, rows):
            y[..., r:r + rows] = F.linear(x, weight(r, r + rows), None if b is None else b[r:r + rows])
    return y if activation == "none" else ACTIVATIONS[activation](y)


declare(
    "linear_w4", ["x", "packed", "scales", "*zeros_bias"],
    [Attr("group_size", AttrKind.INT), Attr("activation", AttrKind.STR, "none"), Attr("asymmetric", AttrKind.BOOL, False)],
    infer=_linear_w4_infer, impl=_linear_w4, category="matmul",
    doc="act(x @ dequant(packed, scales).T (+ bias)); packed u8[N, K/2] (low nibble = even column, q + 8), "
    "scales [N, K/group_size]. asymmetric=true: linear_w4(x, packed, scales, zeros u8[N, K/group_size][, bias]), "
    "codes 0..15 stored as they are, w = (code - zero) * scale per group",
)


# --- W8A8: int8 weights and dynamically quantized int8 activations ---------------------------


def quantize_activations_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (x_q i8[..., K] in [-127, 127], s [..., 1] f32): one dynamic scale per
    token (row), s = max|x_row| / 127 computed in f32; all-zero rows get s = 0 and x_q = 0."""
    xf = x.detach().float()
    s = xf.abs().amax(dim=-1, keepdim=True) / INT8_QMAX
    safe = torch.where(s == 0, torch.ones_like(s), s)
    return torch.round(xf / safe).clamp_(-INT8_QMAX, INT8_QMAX).to(torch.int8), s


def _int_mm_fits(a: torch.Tensor, q: torch.Tensor) -> bool:
    """Whether torch._int_mm takes a i8[M, K] @ q.T i8[K, N]: on CUDA it needs M > 16 and K, N
    multiples of 8; on CPU (torch 2.13) it ran every shape tried, M = 1 and odd K, N included."""
    if not hasattr(torch, "_int_mm") or a.device != q.device:
        return False
    m, k = a.shape
    n = q.shape[0]
    if a.device.type == "cuda":
        return m > 16 and k % 8 == 0 and n % 8 == 0
    return a.device.type == "cpu" and m > 0 and k > 0 and n > 0


def _linear_w8a8_infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    if len(ts) not in (3, 4):
        raise InferenceError(f"linear_w8a8 takes x, qweight, scale and an optional bias, got {len(ts)} inputs")
    _check_activation(a)
    x, q, scale = ts[:3]
    if q.dtype.name != "i8" or q.rank != 2 or not same_dim(x.shape[-1] if x.rank else -1, q.shape[1]):
        raise InferenceError(f"linear_w8a8 needs x[..., K] and qweight i8[N, K], got {x} and {q}")
    if scale.rank != 1 or not same_dim(scale.shape[0], q.shape[0]):
        raise InferenceError(f"linear_w8a8 scale must be [N] for qweight {q}, got {scale}")
    _check_x_bias("linear_w8a8", x, q.shape[0], [scale, *ts[3:]])
    return (TensorType(x.dtype, x.shape[:-1] + (q.shape[0],)),)


def quantize_activations_static(x: torch.Tensor, act_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (x_q i8[..., K] in [-127, 127], s f32[1, 1]) with one calibrated scale
    for the whole tensor: x_q = clamp(round(x / act_scale), -127, 127) (values beyond the
    calibrated range saturate)."""
    s = torch.tensor([[act_scale]], dtype=torch.float32, device=x.device)
    return torch.round(x.detach().float() / s).clamp_(-INT8_QMAX, INT8_QMAX).to(torch.int8), s


def _linear_w8a8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, *rest: Any) -> torch.Tensor:
    ts, (activation, *more) = _split_rest(rest)
    act_scale = float(more[0]) if more else 0.0
    b = ts[0] if ts else None
    n, k = q.shape
    if act_scale > 0:  # static: one calibrated per-tensor scale
        xq, s = quantize_activations_static(x.reshape(-1, k), act_scale)  # (M, K) i8, (1, 1) f32
    else:
        xq, s = quantize_activations_per_token(x.reshape(-1, k))  # (M, K) i8, (M, 1) f32
    work = torch.float64 if x.dtype is torch.float64 else torch.float32
    if _int_mm_fits(xq, q):
        acc = torch._int_mm(xq, q.t()).to(work)  # exact int32 accumulation
    else:  # float path over the integer values (exact while partial sums stay below 2^24 in f32)
        acc = xq.to(work) @ q.to(work).t()
    y = (acc * s.to(work) * scale.to(work)[None, :]).to(x.dtype).reshape(*x.shape[:-1], n)
    if b is not None:
        y = y + b
    return y if activation == "none" else ACTIVATIONS[activation](y)


declare(
    "linear_w8a8", ["x", "qweight", "scale", "*bias"],
    [Attr("activation", AttrKind.STR, "none"), Attr("act_scale", AttrKind.FLOAT, 0.0)],
    infer=_linear_w8a8_infer, impl=_linear_w8a8, category="matmul",
    doc="act((q8(x) @ qweight.T) * s * scale[None, :] (+ bias)); qweight i8[N, K], scale [N] per output "
    "channel; x quantized per token at run time: s = max|x_row| / 127, q8(x) = clamp(round(x / s), -127, 127); "
    "act_scale > 0 (static, calibrated): s = act_scale for every token. "
    "int32 accumulation via torch._int_mm where it fits (CUDA: M > 16, K and N multiples of 8; CPU: any), "
    "else in float",
)
