"""fold_constants: evaluate deterministic nodes whose inputs are all constants at compile time."""

from __future__ import annotations

import torch

from ..ir import Effect, Graph
from ..ir.interpret import run_node
from ..ir.ops import is_symbolic
from ..ir.types import TensorType
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

# Deterministic op categories whose reference results are safe to precompute.
FOLDABLE = frozenset({"elementwise", "reduction", "view", "data", "creation", "matmul", "norm"})


@graph_pass("precompute deterministic nodes whose inputs are constants (size-capped)")
def fold_constants(g: Graph, ctx: PassContext) -> Graph:
    """Replace constant subcomputations by new constants `_folded<k>`.

    Guarantees: only `pure` ops of the allow-listed categories fold (random ops and writes
    never); buffers the graph writes (`copy_to` destinations) are not constant, so reads of
    them never fold (the next call sees the written data); results with symbolic shapes or more
    than `options.fold_max_elements` elements are left alone; folded results are contiguous
    copies (never views of parameters).

        const %w : f32[4, 8]
        %0 = permute(%w) {dims=[1, 0]} : f32[8, 4]   ->  const %_folded0 : f32[8, 4]
        %1 = matmul(%x, %0) : f32[B, 4]                   %0 = matmul(%x, %_folded0) : f32[B, 4]
    Shape arithmetic needs no folding here: dims are sympy expressions, simplified on creation.
    """
    written = {v for n in g.nodes if n.op.effect is Effect.WRITE for v in (n.inputs[:1] if n.op.name == "copy_to" else n.inputs)}
    const_data = {v: g.constant_data[name] for name, v in g.constants.items() if v not in written}
    rb = Rebuilder(g)
    folded = 0
    cap = ctx.options.fold_max_elements
    for n in g.nodes:
        if not _foldable(n, const_data, cap):
            rb.copy(n)
            continue
        with torch.no_grad():
            outs = run_node(n, [const_data[v] for v in n.inputs], {})
        for o, t in zip(n.outputs, outs):
            t = t.clone(memory_format=torch.contiguous_format)
            const_data[o] = t
            rb.map[o] = rb.constant("_folded", t, o.type)
        folded += 1
    if not folded:
        return g
    ctx.count("nodes_folded", folded)
    from .dce import eliminate_dead_nodes

    return eliminate_dead_nodes(rb.finish(), ctx)


def _foldable(n, const_data: dict, cap: int) -> bool:  # noqa: ANN001
    if n.op.effect is not Effect.PURE or n.op.category not in FOLDABLE or not n.outputs:
        return False
    if any(v not in const_data or const_data[v] is None for v in n.inputs):
        return False
    if any(is_symbolic(v) for v in n.attrs.values()):  # e.g. full {value=B}: differs per call
        return False
    for o in n.outputs:
        if not isinstance(o.type, TensorType) or not o.type.is_static or o.type.numel() > cap:
            return False
    return True
