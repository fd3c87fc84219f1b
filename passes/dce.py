"""eliminate_dead_nodes: drop nodes and constants nothing live reads."""

from __future__ import annotations

from ..ir import Effect, Graph, Value
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder


@graph_pass("drop nodes whose results are never used and unused constants; keeps writes and RNG draws")
def eliminate_dead_nodes(g: Graph, ctx: PassContext) -> Graph:
    """Remove dead nodes and constants.

    Guarantees: graph outputs, `write` nodes (buffer/KV-cache updates) and `random` nodes (their
    RNG draws shift later ones) are never dropped, nor anything they read; inputs are kept.

        %0 = exp(%x) : f32[4]            (unused)
        %1 = neg(%x) : f32[4]        ->  %0 = neg(%x) : f32[4]
        return %1                        return %0
    """
    live: set[Value] = set(g.outputs)
    keep_node = [False] * len(g.nodes)
    for i in range(len(g.nodes) - 1, -1, -1):
        n = g.nodes[i]
        if n.op.effect is not Effect.PURE or any(o in live for o in n.outputs):
            keep_node[i] = True
            live.update(n.inputs)
    dead_consts = [name for name, v in g.constants.items() if v not in live]
    if all(keep_node) and not dead_consts:
        return g
    rb = Rebuilder(g, keep_constants=[name for name in g.constants if name not in dead_consts])
    for n, keep in zip(g.nodes, keep_node):
        if keep:
            rb.copy(n)
    ctx.count("nodes_removed", keep_node.count(False))
    ctx.count("constants_removed", len(dead_consts))
    return rb.finish()
