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
norms.py; the SiLU-mul group's generated kernel), then the linear's launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...passes.fuse_prologues import LINEARS
from .autotune import choose
from .norms import RowLauncher

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


UNFUSED = "unfused"  # the candidate that runs the prologue first, then the linear's own choice


class PrologueLinearLauncher:
    """Runs a "prologue" fusion group: inputs (x[, residual][, norm weight], the linear's other
    inputs in IR order), outputs ([sum,] y). `inner` is the linear's launcher (matmul.LinearLauncher
    or quant_matmul.QuantLinearLauncher): its gemv configs take a Prologue (`run_with_prologue`);
    `glu` launches the SiLU-mul group's generated kernel (the unfused path of a SiLU-mul).

    The first call per shape runs the prologue and then the linear (which autotunes itself on the
    prologue's output), then times the group whole: each gemv config that can read the prologue
    against UNFUSED (the prologue, then the linear's choice). The prologue is not free inside a
    gemv (every program reads all of x, and a norm's residual and weight with it), so small tiles
    may lose to the unfused pair. On CPU the first fused candidate wins untimed."""

    __slots__ = ("kind", "eps", "inner", "returns_sum", "chosen", "_prologue", "_by_shape")

    def __init__(self, kind: str, eps: float, inner: Any, returns_sum: bool, out_dtype: torch.dtype, glu: Any = None):
        self.kind, self.eps, self.inner, self.returns_sum = KINDS[kind], eps, inner, returns_sum
        self._prologue = glu if self.kind == PRO_GLU else RowLauncher("add_rms" if self.kind == PRO_ADD_RMS else "rms", eps, out_dtype)
        self.chosen: dict[str, str] = {}  # autotune key -> candidate name
        self._by_shape: dict[tuple, tuple[str, bool]] = {}  # (x shape, dtype) -> (candidate, whether it reads the prologue)

    def _split(self, ins: tuple) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple]:
        x = ins[0]
        if self.kind == PRO_GLU:
            return x, None, None, ins[1:]
        if self.kind == PRO_RMS:
            return x, None, ins[1], ins[2:]
        return x, ins[1], ins[2], ins[3:]

    def materialize(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None) -> tuple:
        """(sum or None, the linear's input): the prologue on its own, the kernel the unfused graph ran."""
        if self.kind == PRO_GLU:
            k = x.shape[-1] // 2
            return None, self._prologue(x[..., :k], x[..., k:])
        if self.kind == PRO_RMS:
            return None, self._prologue(x, weight)
        return self._prologue(x, residual, weight)

    def choices(self) -> dict[tuple, str]:
        """(x shape, dtype) -> the candidate each shape runs (UNFUSED: the prologue first)."""
        return {key: name if fused else UNFUSED for key, (name, fused) in self._by_shape.items()}

    def __call__(self, *ins: torch.Tensor) -> Any:
        parts = self._split(ins)
        x = parts[0]
        if self.inner.config is not None:  # pinned (tests, benchmarks)
            return self.run(self.inner.config, self.inner.takes_prologue(self.inner.config, x), *parts)
        hit = self._by_shape.get((x.shape, x.dtype)) or self._choose(*parts)
        return self.run(*hit, *parts)

    def run(self, name: str, fused: bool, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
            rest: tuple) -> Any:
        """One call: gemv config `name` reading the prologue where `fused` (the launcher's
        `takes_prologue`), else the prologue first and then the linear's own choice."""
        if fused:
            pro = Prologue(self.kind, weight.contiguous() if weight is not None else None,
                           residual.contiguous() if residual is not None else None, self.eps)
            if self.kind == PRO_ADD_RMS:
                pro.sum_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            y = self.inner.run_with_prologue(name, (x, *rest), pro)
            return (pro.sum_out, y) if self.returns_sum else y
        s, xin = self.materialize(x, residual, weight)
        y = self.inner(xin, *rest)  # the linear's own choice (or its pinned config)
        return (s, y) if self.returns_sum else y

    def _choose(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                rest: tuple) -> tuple[str, bool]:
        parts = (x, residual, weight, rest)
        unfused = (UNFUSED, False)
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return unfused  # never time inside graph capture; not remembered, so a later call tunes
        self.run(*unfused, *parts)  # the linear tunes itself on the prologue's output first
        fused = self.inner.prologue_candidates(x, rest[0])
        choice = UNFUSED
        if fused:
            m = x.numel() // max(x.shape[-1], 1)
            k = x.shape[-1] // 2 if self.kind == PRO_GLU else x.shape[-1]
            key = f"prologue|{self.kind}|" + self.inner.problem_key(m, k, x.dtype, rest[0])
            choice = self.chosen.get(key)
            if choice is None:
                cands = {name: (lambda name=name: self.run(name, name != UNFUSED, *parts)) for name in fused + [UNFUSED]}
                choice = self.chosen[key] = choose(key, cands, on_cuda=x.is_cuda)
        hit = self._by_shape[(x.shape, x.dtype)] = (choice, choice != UNFUSED)
        return hit


def prologue_form(body: Any) -> tuple[str, int] | None:
    """(prologue kind, how many group inputs the prologue takes) of a "prologue" group's body as
    fuse_prologues builds it, else None: the norm (or the split and the SiLU-mul's nodes), then one
    linear whose x is their result and whose other operands are the group's last inputs, in order."""
    nodes = body.nodes
    if len(nodes) < 2 or nodes[-1].op.name not in LINEARS:
        return None
    lin, first = nodes[-1], nodes[0].op.name
    kind = "glu" if first == "split" else first
    if kind not in KINDS or (kind != "glu" and len(nodes) != 2):
        return None
    taken = {"glu": 1, "rms_norm": 2, "add_rms_norm": 3}[kind]
    if list(lin.inputs[1:]) != list(body.inputs[taken:]) or nodes[-2].outputs[-1] is not lin.inputs[0]:
        return None
    if body.outputs[-1] is not lin.outputs[0]:
        return None
    return kind, taken


def _glu_body(nodes: list) -> Any:
    """The SiLU-mul between a prologue body's split and its linear as an elementwise graph over
    the split's two halves (gate, up): what fuse_elementwise had grouped, for its generated kernel."""
    from ...ir import Graph

    split, members = nodes[0], nodes[1:-1]
    sub = Graph()
    local = {v: sub.add_input(f"x{i}", v.type) for i, v in enumerate(split.outputs)}
    for n in members:
        m = sub.add_node(n.op, [local[v] for v in n.inputs], dict(n.attrs), [o.type for o in n.outputs], n.source)
        local.update(zip(n.outputs, m.outputs))
    sub.outputs = [local[members[-1].outputs[0]]]
    return sub


def prologue_kernel(node: Any, config: str | None = None) -> PrologueLinearLauncher | None:
    """A launcher for a fusion group of kind "prologue" (passes/fuse_prologues.py), or None where
    its linear (or its SiLU-mul) has no Triton kernel (the group then runs its body in PyTorch);
    `config` pins the linear's kernel config (tests, benchmarks)."""
    from .codegen import Unsupported, generate
    from .launch import GroupLauncher
    from .matmul import linear_kernel
    from .quant_matmul import quant_linear_kernel

    form = prologue_form(node.subgraph)
    if form is None:
        return None
    kind, taken = form
    nodes = node.subgraph.nodes
    lin = nodes[-1]
    inner = linear_kernel(lin, config) if lin.op.name in ("linear", "linear_add") else quant_linear_kernel(lin, config)
    if inner is None:
        return None
    glu = None
    if kind == "glu":
        try:
            glu = GroupLauncher(generate(_glu_body(nodes)))
        except (Unsupported, KeyError):  # KeyError: a member reads something but the halves
            return None
    # the body's operands are group inputs: whether they are graph constants (PDL may read them
    # before the wait) is the outer node's to say; a linear_add's residual is never one
    operands = node.inputs[taken:]
    residual = 2 if lin.op.name == "linear_add" else None  # (x, weight, residual[, bias])
    inner.constant_weights = all(v.kind == "const" for i, v in enumerate(operands, 1) if i != residual)
    eps = float(nodes[0].attrs.get("eps", 0.0)) if kind != "glu" else 0.0
    return PrologueLinearLauncher(kind, eps, inner, len(node.outputs) == 2, node.outputs[-1].type.dtype.torch, glu)
