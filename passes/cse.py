"""eliminate_common_subexpressions: one node per distinct pure computation."""

from __future__ import annotations

import math
from typing import Any

from ..ir import Effect, Graph, Value
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder


def attr_key(v: Any) -> Any:
    """A hashable key that tells apart values Python calls equal (1, 1.0, True; 0.0, -0.0; nan)."""
    if isinstance(v, float):
        return ("f", "nan" if math.isnan(v) else v, math.copysign(1.0, v))  # 1 / -0.0 is -inf
    if isinstance(v, (tuple, list)):
        return ("t", tuple(attr_key(x) for x in v))
    return (type(v).__name__, v)


@graph_pass("merge pure nodes with the same op, inputs and attributes")
def eliminate_common_subexpressions(g: Graph, ctx: PassContext) -> Graph:
    """Reuse the first of identical pure computations.

    Guarantees: only `pure` ops merge (random draws and writes never do); attributes compare
    by type and value (1 and 1.0 differ).

        %0 = arange() {end=S, dtype=i64} : i64[S]
        %1 = arange() {end=S, dtype=i64} : i64[S]    ->  %0 = arange() {end=S, dtype=i64} : i64[S]
        %2 = add(%0, %1) : i64[S]                         %1 = add(%0, %0) : i64[S]
    """
    rb = Rebuilder(g)
    seen: dict[tuple, tuple[Value, ...]] = {}
    merged = 0
    for n in g.nodes:
        ins = tuple(rb.get(v) for v in n.inputs)
        if n.op.effect is Effect.PURE and n.outputs:
            key = (n.op.name, tuple(id(v) for v in ins), tuple((k, attr_key(v)) for k, v in n.attrs.items()), id(n.subgraph))
            hit = seen.get(key)
            if hit is not None and all(a.type == b.type for a, b in zip(hit, n.outputs)):
                rb.map.update(zip(n.outputs, hit))
                merged += 1
                continue
            new = rb.copy(n)
            seen[key] = new.outputs
        else:
            rb.copy(n)
    if not merged:
        return g
    ctx.count("nodes_merged", merged)
    return rb.finish()
