"""Triton kernel for kiln's `rotary` op: y = x * cos + rotate_half(x) * sin, one launch.

rotate_half(x)[d] = -x[d + D/2] for d < D/2, x[d - D/2] otherwise. PyTorch runs this as five
kernels per tensor (two products, a negation, a concatenation, a sum); here each program loads a
[BLOCK_R, D] tile of x (through its strides: q and k are usually permuted views of the fused
projection's output), the partner half of the same rows, and cos/sin through broadcast strides
(stride 0 over heads), and writes a contiguous result. Arithmetic in float32, rounded once.
Napkin math (decode, Llama-1.1B, batch 1): 32 x 64 bf16 elements of q = 4 KB: latency-bound, so
what counts is one launch instead of five.
"""

from __future__ import annotations

from typing import Any

import torch

from .cache import load_module

_SOURCE = '''import triton
import triton.language as tl


@triton.jit
def rotary(x, c, s, y, R, B, C, D, sx0, sx1, sx2, sx3, sc0, sc1, sc2, sc3, ss0, ss1, ss2, ss3,
           HALF: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    i2 = rows % C
    t = rows // C
    i1 = t % B
    i0 = t // B
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    first = cols < HALF
    partner = tl.where(first, cols + HALF, cols - HALF)
    xo = (i0 * sx0 + i1 * sx1 + i2 * sx2)[:, None]
    xv = tl.load(x + xo + cols[None, :] * sx3, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(x + xo + partner[None, :] * sx3, mask=mask, other=0.0).to(tl.float32)
    cv = tl.load(c + (i0 * sc0 + i1 * sc1 + i2 * sc2)[:, None] + cols[None, :] * sc3, mask=mask, other=0.0).to(tl.float32)
    sv = tl.load(s + (i0 * ss0 + i1 * ss1 + i2 * ss2)[:, None] + cols[None, :] * ss3, mask=mask, other=0.0).to(tl.float32)
    rot = tl.where(first[None, :], -xp, xp)
    out = xv * cv + rot * sv
    tl.store(y + rows[:, None] * D + cols[None, :], out.to(y.dtype.element_ty), mask=mask)
'''

_TILE = 2048  # elements per program


def _pad4(shape: tuple, strides: tuple) -> tuple[tuple, tuple]:
    k = 4 - len(shape)
    return (1,) * k + tuple(shape), (0,) * k + tuple(strides)


class RotaryLauncher:
    """Runs one `rotary` node (x, cos, sin) of rank <= 4; the output is contiguous."""

    __slots__ = ("_kernel",)
    writes_out = True  # the plan may pass a preallocated output (out=...), see runtime.arena

    def __init__(self) -> None:
        self._kernel = load_module(_SOURCE).rotary

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: tuple | None = None) -> torch.Tensor:
        y = out[0] if out is not None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
        d = x.shape[-1]
        rows = x.numel() // d if d else 0
        if rows == 0:
            return y
        shape, sx = _pad4(x.shape, x.stride())
        c, s = cos.expand(x.shape), sin.expand(x.shape)  # broadcast dims get stride 0
        _, sc = _pad4(c.shape, c.stride())
        _, ss = _pad4(s.shape, s.stride())
        block_d = max(16, 1 << (d - 1).bit_length())
        block_r = max(1, _TILE // block_d)
        self._kernel[(-(-rows // block_r),)](
            x, c, s, y, rows, shape[1], shape[2], d, *sx, *sc, *ss,
            HALF=d // 2, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
        )
        return y


def rotary_kernel(node: Any) -> RotaryLauncher | None:
    """A launcher for a `rotary` node of rank <= 4 in a float dtype, else None (PyTorch runs it)."""
    x = node.inputs[0].type
    if node.op.name != "rotary" or x.rank > 4 or x.dtype.torch not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    return RotaryLauncher()
