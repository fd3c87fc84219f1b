"""fuse_projections: linears that read the same input become one wider linear and a split."""

from __future__ import annotations

import torch

from ..ir import Effect, Graph, Node
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder


def _key(n: Node, g: Graph, written: set) -> tuple | None:
    """Linears can share one matmul when they read the same x and have constant weights
    (and biases) of one dtype and layout. Buffers the graph writes (copy_to) are state, not
    constants: a concatenated copy would miss the next call's update."""
    if n.op.name != "linear" or n.attrs["activation"] != "none" or any(v.kind != "const" or v in written or g.constant_data.get(v.name) is None for v in n.inputs[1:]):
        return None
    w = n.inputs[1]
    return (id(n.inputs[0]), len(n.inputs), w.type.dtype.name, w.type.shape[1])


@graph_pass("merge linears sharing an input (Q/K/V, gate/up) into one matmul plus a split")
def fuse_projections(g: Graph, ctx: PassContext) -> Graph:
    """Horizontal fusion of projections.

    Guarantees: only linears with constant weights (and all-or-none biases) of one dtype merge
    (never a buffer the graph writes);
    the concatenated weight is a new constant `_fused_weight<k>` (the originals stay with the
    model), and each original result is the matching piece of one split.

        %q = linear(%x, %wq) : f32[B, S, 128]        %0 = linear(%x, %_fused_weight0) : f32[B, S, 256]
        %k = linear(%x, %wk) : f32[B, S, 64]    ->   %q, %k, %v = split(%0) {sizes=[128, 64, 64], dim=2}
        %v = linear(%x, %wv) : f32[B, S, 64]
    """
    groups: dict[tuple, list[int]] = {}
    written = {v for n in g.nodes if n.op.effect is Effect.WRITE for v in (n.inputs[:1] if n.op.name == "copy_to" else n.inputs)}
    for i, n in enumerate(g.nodes):
        key = _key(n, g, written)
        if key is not None:
            groups.setdefault(key, []).append(i)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return g
    first = {idxs[0]: idxs for idxs in groups.values()}
    skip = {i for idxs in groups.values() for i in idxs[1:]}
    rb = Rebuilder(g)
    for i, n in enumerate(g.nodes):
        if i in skip:
            continue
        if i not in first:
            rb.copy(n)
            continue
        members = [g.nodes[j] for j in first[i]]
        params = []
        for slot in range(1, len(n.inputs)):
            data = torch.cat([g.constant_data[m.inputs[slot].name] for m in members], dim=0)
            params.append(rb.constant("_fused_weight" if slot == 1 else "_fused_bias", data))
        wide = rb.out.add_node("linear", [rb.get(n.inputs[0])] + params, source=n.source).output
        sizes = tuple(m.outputs[0].type.shape[-1] for m in members)
        parts = rb.out.add_node("split", [wide], {"sizes": sizes, "dim": wide.type.rank - 1}, source=n.source).outputs
        for m, part in zip(members, parts):
            rb.map[m.outputs[0]] = part
        ctx.count("linears_merged", len(members))
    ctx.count("groups", len(groups))
    from .dce import eliminate_dead_nodes

    return eliminate_dead_nodes(rb.finish(), ctx)
