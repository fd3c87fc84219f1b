"""Row kernels for kiln's norm and softmax ops: rms_norm, layer_norm, their residual-add forms
(add_rms_norm, add_layer_norm: the sum is an output too) and softmax/log_softmax, all over the
last dim.

One program per row, one block spanning it (BLOCK = row length rounded up to a power of two, a
compile-time constant). Statistics are computed in float32; results are rounded where the
reference rounds (rms_norm: the normalised row is rounded to x's dtype before the weight).
Napkin math: bytes = inputs read once + outputs written once; memory-bound.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import KilnError
from ...ir.opset import collective
from .cache import load_module
from .pdl import launch_flags, with_pdl

MAX_ROW = 1 << 16

_HEAD = "import triton\nimport triton.language as tl\n\n\n"

# The row, loaded (and for the residual forms added to `b`, the sum stored): shared by the norms.
_ROW = """    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < R
    x = tl.load(a + row * R + cols, mask=mask, other=0)
    if ADD:
        x = (x.to(tl.float32) + tl.load(b + row * R + cols, mask=mask, other=0).to(tl.float32)).to(x.dtype)
        tl.store(s_out + row * R + cols, x, mask=mask)
    xf = x.to(tl.float32)
"""

# RMSNorm of the loaded row `x` (`xf` in fp32) into y_out: also the tail of the fused all-reduce
# norm kernel (allreduce_norm.py), so both round alike
RMS_TAIL = """    ms = tl.sum(xf * xf, axis=0) / R
    y = (xf * tl.rsqrt(ms + eps)).to(x.dtype).to(tl.float32)
    wv = tl.load(w + cols, mask=mask, other=0).to(tl.float32)
    tl.store(y_out + row * R + cols, (y * wv).to(y_out.dtype.element_ty), mask=mask)
"""

_RMS = _HEAD + """@triton.jit
def kernel(a, b, w, s_out, y_out, R, eps, ADD: tl.constexpr, BLOCK: tl.constexpr):
""" + _ROW + RMS_TAIL

_LN = _HEAD + """@triton.jit
def kernel(a, b, w, bias, s_out, y_out, R, eps, ADD: tl.constexpr, BLOCK: tl.constexpr):
""" + _ROW + """    mean = tl.sum(xf, axis=0) / R
    d = tl.where(mask, xf - mean, 0.0)
    var = tl.sum(d * d, axis=0) / R
    wv = tl.load(w + cols, mask=mask, other=0).to(tl.float32)
    bv = tl.load(bias + cols, mask=mask, other=0).to(tl.float32)
    tl.store(y_out + row * R + cols, (d * tl.rsqrt(var + eps) * wv + bv).to(y_out.dtype.element_ty), mask=mask)
"""

_SOFTMAX = _HEAD + '''@triton.jit
def kernel(a, y_out, R, LOG: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < R
    x = tl.load(a + row * R + cols, mask=mask, other=float("-inf")).to(tl.float32)
    z = x - tl.max(x, axis=0)
    e = tl.where(mask, tl.exp(z), 0.0)
    total = tl.sum(e, axis=0)
    if LOG:
        y = z - tl.log(total)
    else:
        y = e / total
    tl.store(y_out + row * R + cols, y.to(y_out.dtype.element_ty), mask=mask)
'''


def _block(r: int) -> int:
    block = max(16, 1 << (max(r, 1) - 1).bit_length())
    if block > MAX_ROW:
        raise KilnError(f"a row of {r} elements exceeds the single-block kernel's {MAX_ROW}; use backend='reference'")
    return block


class RowLauncher:
    """Launches one row kernel for a norm/softmax node (inputs made contiguous, rows flattened)."""

    __slots__ = ("kind", "kernel", "eps", "out_dtype", "add", "pdl")
    writes_out = True  # the plan may pass preallocated outputs (out=...), see runtime.arena

    def __init__(self, kind: str, eps: float, out_dtype: torch.dtype):
        src = {"rms": _RMS, "ln": _LN, "softmax": _SOFTMAX, "log_softmax": _SOFTMAX}[kind.removeprefix("add_")]
        self.kernel = load_module(with_pdl(src, trigger=("kernel",), wait=("kernel",))).kernel  # PDL where it runs
        self.pdl = launch_flags()
        self.kind, self.eps, self.out_dtype = kind, eps, out_dtype
        self.add = kind.startswith("add_")

    def __call__(self, *ins: torch.Tensor, out: tuple | None = None) -> Any:
        x = ins[0].contiguous()
        r = x.shape[-1]
        rows = x.numel() // max(r, 1)
        y = out[-1] if out is not None else torch.empty(x.shape, dtype=self.out_dtype, device=x.device)
        block = _block(r)
        if self.kind in ("softmax", "log_softmax"):
            if rows:
                self.kernel[(rows,)](x, y, r, LOG=self.kind == "log_softmax", BLOCK=block, **self.pdl)
            return y
        b = ins[1].contiguous() if self.add else x
        s = (out[0] if out is not None else torch.empty_like(x)) if self.add else x
        params = [p.contiguous() for p in ins[2 if self.add else 1:]]
        if rows:
            self.kernel[(rows,)](x, b, *params, s, y, r, self.eps, ADD=self.add, BLOCK=block, **self.pdl)
        return (s, y) if self.add else y


class AllReduceNormLauncher:
    """`all_reduce_add_rms_norm`: the runtime's fused kernel where one is installed, else the
    all-reduce (NCCL, or the symmetric-memory one-shot) and then the add + RMSNorm row kernel:
    the same kernels the graph ran before fuse_collectives joined the two nodes."""

    __slots__ = ("group_size", "eps", "norm")

    def __init__(self, group_size: int, eps: float, out_dtype: torch.dtype):
        self.group_size, self.eps = group_size, eps
        self.norm = RowLauncher("add_rms", eps, out_dtype)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> Any:
        fused = collective.fused_all_reduce_add_rms_norm(x, residual, weight, self.group_size, self.eps)
        if fused is not None:
            return fused
        return self.norm(collective.all_reduce(x, self.group_size), residual, weight)


def row_kernel(node: Any) -> RowLauncher | AllReduceNormLauncher | None:
    """A launcher for a norm/softmax node over the last dim, or None when the form differs."""
    name = node.op.name
    if name == "all_reduce_add_rms_norm":
        return AllReduceNormLauncher(int(node.attrs["group_size"]), float(node.attrs["eps"]), node.outputs[-1].type.dtype.torch)
    kinds = {"rms_norm": "rms", "add_rms_norm": "add_rms", "layer_norm": "ln", "add_layer_norm": "add_ln"}
    if name not in kinds and name not in ("softmax", "log_softmax"):
        return None
    out_dtype = node.outputs[-1].type.dtype.torch
    if name in ("softmax", "log_softmax"):
        return RowLauncher(name, 0.0, out_dtype) if node.attrs["dim"] == node.inputs[0].type.rank - 1 else None
    if name.endswith("layer_norm") and len(node.attrs["shape"]) != 1:
        return None
    return RowLauncher(kinds[name], float(node.attrs["eps"]), out_dtype)
