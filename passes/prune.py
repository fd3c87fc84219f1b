"""prune_weights: magnitude pruning of linear weights, unstructured or 2:4 semi-structured.

Configured by `CompileOptions(pruning=PruneScheme(...))` (or "2:4" / a float sparsity); a no-op
otherwise. Runs before `fuse_projections`, so every original projection gets its own magnitude
threshold (fused QKV would otherwise share one across q, k and v) and the fused weight is built
from the pruned parts. Each pruned weight becomes a new constant `<name>.pruned`; the dense
weight leaves the graph. The IR stays a dense `linear` on a weight with zeros: unstructured
pruning is about size and accuracy trade-offs, not speed. A 2:4 weight (fp16/bf16, on CUDA) also
gets PyTorch's semi-structured sparse kernels as an autotuned candidate of the Triton backend's
linear launcher (`backends/triton/sparse24.py`), used only where it measures faster than the
dense kernels; the launcher reads the 2:4 structure from the weight values, so it survives
`fuse_projections` and needs no marking here.

    const %w : f32[8, 16]                      const %w.pruned : f32[8, 16]   (half of it zeros)
    %0 = linear(%x, %w) : f32[B, 8]     ->     %0 = linear(%x, %w.pruned) : f32[B, 8]

Unstructured: the `sparsity` fraction of smallest-|w| entries of each weight are zeroed (ties
broken by position, so exactly round(sparsity * numel) zeros). 2:4: in every group of 4
consecutive weights along K the 2 smallest are zeroed (K must be a multiple of 4).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch

from ..ir import Graph, Value
from ..ir.ops import Effect
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

PATTERNS = ("unstructured", "2:4")


@dataclass(frozen=True)
class PruneScheme:
    """What to prune: `sparsity` (unstructured only; 2:4 is always 50%), `pattern`, and fnmatch
    `skip` patterns over module paths / weight names and their dotted parts."""

    sparsity: float = 0.5
    pattern: str = "unstructured"
    skip: tuple[str, ...] = ("lm_head", "embed*")

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip", (self.skip,) if isinstance(self.skip, str) else tuple(self.skip))
        if self.pattern not in PATTERNS:
            raise ValueError(f"PruneScheme.pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 < self.sparsity < 1:
            raise ValueError(f"PruneScheme.sparsity must be a fraction in (0, 1), got {self.sparsity!r}")
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError("the 2:4 pattern prunes exactly half the weights; leave sparsity at 0.5")

    @classmethod
    def parse(cls, spec: "str | float | PruneScheme") -> "PruneScheme":
        """A scheme from itself, "2:4", or a float sparsity (unstructured)."""
        if isinstance(spec, PruneScheme):
            return spec
        if spec == "2:4":
            return cls(pattern="2:4")
        if isinstance(spec, float):
            return cls(sparsity=spec)
        raise ValueError(f"unknown pruning {spec!r}; use a sparsity in (0, 1), '2:4' or a PruneScheme")

    def skips(self, *names: str) -> bool:
        parts = {c for name in names if name for c in (name, *name.split("."))}
        return any(fnmatch.fnmatchcase(c, p) for c in parts for p in self.skip)


def prune_tensor(w: torch.Tensor, scheme: PruneScheme) -> torch.Tensor:
    """A copy of `w` [N, K] with the scheme's zeros (see the module docstring)."""
    if scheme.pattern == "2:4":
        n, k = w.shape
        groups = w.reshape(n, k // 4, 4)
        drop = groups.abs().argsort(dim=-1, stable=True)[..., :2]  # the 2 smallest of every 4
        return groups.scatter(-1, drop, 0).reshape(n, k)
    flat = w.reshape(-1)
    zeros = round(scheme.sparsity * flat.numel())
    out = flat.clone()
    out[flat.abs().argsort(stable=True)[:zeros]] = 0
    return out.reshape(w.shape)


def _prunable(g: Graph, scheme: PruneScheme, ctx: PassContext) -> set[Value]:
    """Float 2-dim weight constants read only as linear weights, never written, not skipped."""
    written = {v for n in g.nodes if n.op.effect is Effect.WRITE for v in n.inputs}
    readers: dict[Value, list[tuple[str, int, str]]] = {}
    for n in g.nodes:
        module = n.source.module if n.source is not None else ""
        for k, v in enumerate(n.inputs):
            if v.kind == "const":
                readers.setdefault(v, []).append((n.op.name, k, module))
    picked = set()
    for w, uses in readers.items():
        if not all(op == "linear" and k == 1 for op, k, _ in uses):
            continue
        if w in written or w in g.outputs or g.constant_data.get(w.name) is None or not w.type.dtype.is_float:
            ctx.count("linears_kept_not_constant_float")
        elif any(scheme.skips(module, w.name) for _, _, module in uses):
            ctx.count("linears_skipped")
        elif scheme.pattern == "2:4" and w.type.shape[1] % 4:
            ctx.count("linears_kept_k_not_multiple_of_4")
        else:
            picked.add(w)
    return picked


@graph_pass("zero the smallest-magnitude linear weights (unstructured or 2:4) when pruning is configured")
def prune_weights(g: Graph, ctx: PassContext) -> Graph:
    """Guarantees: node types and the graph's structure are unchanged; only weights that are
    plain constants read by linears alone are replaced (module state and tied weights stay)."""
    spec = getattr(ctx.options, "pruning", None)
    if spec is None:
        return g
    scheme = PruneScheme.parse(spec)
    targets = _prunable(g, scheme, ctx)
    if not targets:
        return g
    rb = Rebuilder(g, keep_constants=[name for name, v in g.constants.items() if v not in targets])
    zeros = total = 0
    for w in [v for v in g.constants.values() if v in targets]:  # graph order: stable names
        data = prune_tensor(g.constant_data[w.name], scheme)
        zeros += int((data == 0).sum())
        total += data.numel()
        name, k = f"{w.name}.pruned", 0
        while name in rb.out.constants:
            k += 1
            name = f"{w.name}.pruned{k}"
        rb.map[w] = rb.out.add_constant(name, data, w.type)
    for n in g.nodes:
        rb.copy(n)
    ctx.count("linears_pruned", len(targets))
    ctx.count("weight_zeros", zeros)
    ctx.count("weight_elements", total)
    return rb.finish()
