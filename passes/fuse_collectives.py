"""fuse_collectives: a row-parallel projection's all-reduce into the residual add + RMSNorm after it."""

from __future__ import annotations

from ..ir import Graph
from ..ir.ops import Effect
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder


@graph_pass("fold each all-reduce into the residual add + RMSNorm that reads it")
def fuse_collectives(g: Graph, ctx: PassContext) -> Graph:
    """After tensor-parallel sharding and fuse_epilogues, every row-parallel projection (attention
    output, MLP down) ends in `all_reduce` whose sum is read once, by the `add_rms_norm` of the
    next residual step. The pair becomes one `all_reduce_add_rms_norm` at the norm's position:

        %1 = all_reduce(%p) {group_size=2}
        %2, %3 = add_rms_norm(%1, %h, %w)     ->   %2, %3 = all_reduce_add_rms_norm(%p, %h, %w)

    On GPUs a runtime may run it as one kernel (the partial sums exchanged, added, normed: one
    launch and one peer handshake instead of an all-reduce and a norm kernel); its reference is
    the two ops, so results are unchanged. Rank symmetry: the rewrite depends on the graph's
    structure alone, the same on every rank, and never reorders collectives (no other collective,
    and no write, may sit between the pair).
    """
    index = {n: i for i, n in enumerate(g.nodes)}
    readers, outputs = g.uses(), set(g.outputs)
    pairs: dict[int, tuple[int, int]] = {}  # norm index -> (all_reduce index, operand index of its sum)
    for i, n in enumerate(g.nodes):
        if n.op.name != "add_rms_norm":
            continue
        for k in (0, 1):
            v = n.inputs[k]
            src = v.node
            if src is None or src.op.name != "all_reduce" or len(readers[v]) != 1 or v in outputs:
                continue
            j = index[src]
            between = g.nodes[j + 1:i]
            if any(m.op.effect in (Effect.COLLECTIVE, Effect.WRITE) for m in between):
                continue
            pairs[i] = (j, k)
            break
    if not pairs:
        return g
    fused_reduces = {j for j, _ in pairs.values()}
    rb = Rebuilder(g)
    for i, n in enumerate(g.nodes):
        if i in fused_reduces:
            continue
        if i in pairs:
            j, k = pairs[i]
            ar = g.nodes[j]
            ins = [rb.get(v) for v in (ar.inputs[0], n.inputs[1 - k], n.inputs[2])]
            new = rb.out.add_node("all_reduce_add_rms_norm", ins, {"group_size": ar.attrs["group_size"], "eps": n.attrs["eps"]},
                                  source=n.source)
            rb.map[n.outputs[0]], rb.map[n.outputs[1]] = new.outputs
        else:
            rb.copy(n)
    ctx.count("all_reduces_fused", len(pairs))
    return rb.finish()
