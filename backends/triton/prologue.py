"""Linears that read their input through a prologue: SiLU-mul, RMSNorm or add + RMSNorm.

`passes/fuse_prologues.py` wraps `rms_norm -> linear`, `add_rms_norm -> linear` and the
SwiGLU `split -> silu * mul -> linear` of an MLP into one `fusion_group` of kind "prologue".
At batch-1 decode the norm or SiLU-mul kernel before each projection is a launch of its own, a
few microseconds of latency for a few KB of data; here the batch-1 gemv kernels (dense, int8,
int4, fp8: `load_x` in matmul.GEMV_COMMON) compute it as they read x, so it costs no launch:

* SiLU-mul (PRO_GLU): x is the [M, 2K] gate/up output; the gemv reads silu(x[:, :K]) * x[:, K:].
* RMSNorm (PRO_RMS): the gemv multiplies x by the norm weight as it reads it and sums x * x per
  row alongside; 1 / rms(x) scales the reduced products (it is one factor per row).
* add + RMSNorm (PRO_ADD_RMS): as RMSNorm on x + residual, which program 0 also stores: the
  residual stream's next value, an output of the group.

Every other case (more rows than a gemv takes, a config that is not a gemv, a backend choice of
PyTorch) runs the prologue first, with the same kernels the unfused graph ran (the row kernel of
norms.py; `silu_mul` here, the generated SiLU-mul group's arithmetic), then the linear's launcher.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ...passes.fuse_prologues import LINEARS
from .autotune import choose
from .cache import load_module
from .norms import RowLauncher
from .pdl import launch_flags, with_pdl

PRO_NONE, PRO_GLU, PRO_RMS, PRO_ADD_RMS = 0, 1, 2, 3
KINDS = {"glu": PRO_GLU, "rms_norm": PRO_RMS, "add_rms_norm": PRO_ADD_RMS}


@dataclass(slots=True)
class Prologue:
    """One call's prologue: its kind (PRO_*), the norm weight, the residual ([M, K], contiguous),
    eps, and the sum's output (add + RMSNorm)."""

    kind: int
    weight: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    eps: float = 0.0
    sum_out: torch.Tensor | None = None

    def args(self, y: torch.Tensor) -> tuple:
        """The gemv kernels' (r, g, s, eps) arguments (`y` stands in for the pointers not read)."""
        return (self.residual if self.residual is not None else y, self.weight if self.weight is not None else y,
                self.sum_out if self.sum_out is not None else y, self.eps)


def no_prologue(y: torch.Tensor) -> tuple:
    """(r, g, s, eps) of a gemv without a prologue: unused pointers."""
    return (y, y, y, 0.0)


_SILU_MUL = """import triton
import triton.language as tl


@triton.jit
def silu_mul(x, y, K, BLOCK: tl.constexpr):
    # y[row] = silu(x[row, :K]) * x[row, K:] in fp32, rounded once (x [rows, 2K], y [rows, K])
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    a = tl.load(x + row * 2 * K + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x + row * 2 * K + K + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y + row * K + cols, (a * tl.sigmoid(a) * u).to(y.dtype.element_ty), mask=mask)
"""


@functools.cache
def _silu_mul_kernel() -> Any:
    return load_module(with_pdl(_SILU_MUL, trigger=("silu_mul",), wait=("silu_mul",))).silu_mul


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :K]) * x[..., K:] for x [..., 2K] as one kernel (PDL where it runs)."""
    x = x.contiguous()
    k = x.shape[-1] // 2
    y = torch.empty((*x.shape[:-1], k), dtype=x.dtype, device=x.device)
    rows = x.numel() // max(x.shape[-1], 1)
    block = min(1024, max(16, 1 << (k - 1).bit_length()))
    if rows and k:
        _silu_mul_kernel()[(rows, -(-k // block))](x, y, k, BLOCK=block, **launch_flags())
    return y


UNFUSED = "unfused"  # the candidate that runs the prologue first, then the linear's own choice


class PrologueLinearLauncher:
    """Runs a "prologue" fusion group: inputs (x[, residual][, norm weight], the linear's other
    inputs in IR order), outputs ([sum,] y). `inner` is the linear's launcher (matmul.LinearLauncher
    or quant_matmul.QuantLinearLauncher): its gemv configs take a Prologue (`run_with_prologue`).

    The first call per shape runs the prologue and then the linear (which autotunes itself on the
    prologue's output), then times the group whole: each gemv config that can read the prologue
    against UNFUSED (the prologue, then the linear's choice). The prologue is not free inside a
    gemv (every program reads all of x, and a norm's residual and weight with it), so small tiles
    may lose to the unfused pair. On CPU the first fused candidate wins untimed."""

    __slots__ = ("kind", "eps", "inner", "returns_sum", "chosen", "_norm", "_by_shape")

    def __init__(self, kind: str, eps: float, inner: Any, returns_sum: bool, out_dtype: torch.dtype):
        self.kind, self.eps, self.inner, self.returns_sum = KINDS[kind], eps, inner, returns_sum
        self._norm = RowLauncher("add_rms" if self.kind == PRO_ADD_RMS else "rms", eps, out_dtype) \
            if self.kind != PRO_GLU else None
        self.chosen: dict[str, str] = {}  # autotune key -> candidate name
        self._by_shape: dict[tuple, str] = {}  # (x shape, dtype) -> candidate name

    def _split(self, ins: tuple) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple]:
        x = ins[0]
        if self.kind == PRO_GLU:
            return x, None, None, ins[1:]
        if self.kind == PRO_RMS:
            return x, None, ins[1], ins[2:]
        return x, ins[1], ins[2], ins[3:]

    def materialize(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None) -> tuple:
        """(sum or None, the linear's input): the prologue on its own, one kernel as the unfused
        graph ran it (the norm's row kernel; SiLU-mul in one pass, rounded once)."""
        if self.kind == PRO_GLU:
            return None, silu_mul(x)
        if self.kind == PRO_RMS:
            return None, self._norm(x, weight)
        return self._norm(x, residual, weight)

    def __call__(self, *ins: torch.Tensor) -> Any:
        parts = self._split(ins)
        x = parts[0]
        name = self.inner.config or self._by_shape.get((x.shape, x.dtype)) or self._choose(*parts)
        return self.run(name, *parts)

    def run(self, name: str, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
            rest: tuple) -> Any:
        """One call with candidate `name`: a gemv config reading the prologue, or UNFUSED (any
        other name, and a config that cannot read it here: the prologue first)."""
        if name != UNFUSED and self.inner.takes_prologue(name, x):
            pro = Prologue(self.kind, weight.contiguous() if weight is not None else None,
                           residual.contiguous() if residual is not None else None, self.eps)
            if self.kind == PRO_ADD_RMS:
                pro.sum_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            y = self.inner.run_with_prologue(name, (x, *rest), pro)
            return (pro.sum_out, y) if self.returns_sum else y
        s, xin = self.materialize(x, residual, weight)
        y = self.inner(xin, *rest)  # the linear's own choice (or its pinned config)
        return (s, y) if self.returns_sum else y

    def _choose(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None, rest: tuple) -> str:
        parts = (x, residual, weight, rest)
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return UNFUSED  # never time inside graph capture; not remembered, so a later call tunes
        self.run(UNFUSED, *parts)  # the linear tunes itself on the prologue's output first
        fused = self.inner.prologue_candidates(x, rest[0])
        if not fused:
            choice = UNFUSED
        else:
            m = x.numel() // max(x.shape[-1], 1)
            k = x.shape[-1] // 2 if self.kind == PRO_GLU else x.shape[-1]
            key = f"prologue|{self.kind}|" + self.inner.problem_key(m, k, x.dtype, rest[0])
            choice = self.chosen.get(key)
            if choice is None:
                cands = {name: (lambda name=name: self.run(name, *parts)) for name in fused + [UNFUSED]}
                choice = self.chosen[key] = choose(key, cands, on_cuda=x.is_cuda)
        self._by_shape[(x.shape, x.dtype)] = choice
        return choice


def prologue_form(body: Any) -> tuple[str, int] | None:
    """(prologue kind, how many group inputs the prologue takes) of a "prologue" group's body as
    fuse_prologues builds it, else None: the prologue's nodes, then one linear whose x is their
    result and whose other operands are the group's last inputs, in order."""
    nodes = body.nodes
    if len(nodes) < 2 or nodes[-1].op.name not in LINEARS:
        return None
    lin, first = nodes[-1], nodes[0].op.name
    kind = "glu" if first == "split" else first
    if kind not in KINDS:
        return None
    taken = {"glu": 1, "rms_norm": 2, "add_rms_norm": 3}[kind]
    if list(lin.inputs[1:]) != list(body.inputs[taken:]) or lin.inputs[0].node is not nodes[-2]:
        return None
    if nodes[-2].outputs[-1] is not lin.inputs[0] or body.outputs[-1] is not lin.outputs[0]:
        return None
    return kind, taken


def prologue_kernel(node: Any, config: str | None = None) -> PrologueLinearLauncher | None:
    """A launcher for a fusion group of kind "prologue" (passes/fuse_prologues.py), or None where
    its linear has no Triton launcher (the group then runs its body in PyTorch); `config` pins
    the linear's kernel config (tests, benchmarks)."""
    from .matmul import linear_kernel
    from .quant_matmul import quant_linear_kernel

    form = prologue_form(node.subgraph)
    if form is None:
        return None
    kind, taken = form
    lin = node.subgraph.nodes[-1]
    inner = linear_kernel(lin, config) if lin.op.name in ("linear", "linear_add") else quant_linear_kernel(lin, config)
    if inner is None:
        return None
    # the body's operands are group inputs: whether they are graph constants (PDL may read them
    # before the wait) is the outer node's to say; a linear_add's residual is never one
    operands = node.inputs[taken:]
    residual = 2 if lin.op.name == "linear_add" else None  # (x, weight, residual[, bias])
    inner.constant_weights = all(v.kind == "const" for i, v in enumerate(operands, 1) if i != residual)
    eps = float(node.subgraph.nodes[0].attrs.get("eps", 0.0)) if kind != "glu" else 0.0
    return PrologueLinearLauncher(kind, eps, inner, len(node.outputs) == 2, node.outputs[-1].type.dtype.torch)
