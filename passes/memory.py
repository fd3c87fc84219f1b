"""plan_memory: liveness intervals -> buffer reuse in one arena; peak bytes before/after.

Sizes are symbolic; the plan is laid out at the shapes the graph was traced with
(`PassContext.symbol_values`), which is also what the report quotes. Today's reference runtime
already frees each intermediate after its last use (PyTorch's allocator then reuses the block);
the arena layout is what the compiled-plan runtime will preallocate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..ir import Graph, Node, Value
from ..ir.symbolic import evaluate_dim
from ..ir.types import TensorType
from .manager import PassContext, graph_pass

ALIGN = 64  # bytes; every buffer starts on a cache-line boundary


@dataclass(frozen=True, slots=True)
class Buffer:
    value: int  # index of the value in graph order (node outputs only)
    nbytes: int
    start: int  # node index that defines it
    end: int  # last node index that reads it (len(nodes) for graph outputs)
    offset: int  # byte offset in the arena


@dataclass(frozen=True)
class MemoryPlan:
    """Arena layout for node results at the traced shapes. Invariant: buffers whose live
    intervals overlap never overlap in [offset, offset + nbytes)."""

    buffers: tuple[Buffer, ...]
    arena_bytes: int  # peak with reuse
    naive_bytes: int  # every intermediate in its own allocation
    symbol_values: dict = field(default_factory=dict)


def _nbytes(t: object, env: dict) -> int | None:
    if not isinstance(t, TensorType):
        return None
    try:
        n = 1
        for d in t.shape:
            n *= evaluate_dim(d, env)
    except (KeyError, ValueError):
        return None
    return -(-n * t.dtype.itemsize // ALIGN) * ALIGN


def liveness(g: Graph, may_alias: Callable[[Node], bool] | None = None) -> dict[Value, tuple[int, int]]:
    """Node-produced value -> (defining node index, last reading node index).

    A view (reshape, permute, slice, ...) may share its source's storage, so the source stays
    live as long as any view of it (walked backwards, so chains of views propagate).
    `may_alias(node)` widens "view" (default: the view category) for runtimes that must be
    conservative about what else can return its input's storage."""
    alias = may_alias or (lambda n: n.op.category == "view")
    start: dict[Value, int] = {}
    end: dict[Value, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            if v in start:
                end[v] = i
        for o in n.outputs:
            start[o] = end[o] = i
    for v in g.outputs:
        if v in start:
            end[v] = len(g.nodes)
    for n in reversed(g.nodes):
        if n.outputs and alias(n):
            for src in n.inputs:
                if src in start:
                    end[src] = max(end[src], *(end[o] for o in n.outputs))
    return {v: (start[v], end[v]) for v in start}


@graph_pass("lay out node results in one arena by liveness; reports peak bytes before/after")
def plan_memory(g: Graph, ctx: PassContext) -> Graph:
    """Greedy best-fit by size over liveness intervals (largest first).

    Guarantees: the graph's nodes are untouched; the returned graph carries `memory_plan`.
    Views (reshape, permute, ...) get bytes of their own and keep their source alive while they
    are read: conservative whether or not the runtime materialises them.

        %0 = exp(%x) : f32[256]     live [0, 1]  offset 0
        %1 = neg(%0) : f32[256]     live [1, 2]  offset 1024 (overlaps %0 at node 1)
        %2 = sin(%1) : f32[256]     live [2, 3]  offset 0    (reuses %0's bytes)
    """
    env = ctx.symbol_values
    order = {v: k for k, v in enumerate(v for n in g.nodes for v in n.outputs)}
    items = []
    for v, (s, e) in liveness(g).items():
        nb = _nbytes(v.type, env)
        if nb is None:
            return g  # unknown sizes: no plan
        items.append((v, nb, s, e))
    placed = assign_offsets([(order[v], nb, s, e) for v, nb, s, e in items])
    arena = max((b.offset + b.nbytes for b in placed), default=0)
    naive = sum(nb for _, nb, _, _ in items)
    out = _with_plan(g, MemoryPlan(tuple(sorted(placed, key=lambda b: b.value)), arena, naive, dict(env)))
    ctx.count("buffers", len(placed))
    ctx.count("naive_bytes", naive)
    ctx.count("arena_bytes", arena)
    return out


def assign_offsets(items: list[tuple[int, int, int, int]]) -> list[Buffer]:
    """(key, nbytes, start, end) -> Buffers: greedy best fit, largest first; buffers whose
    [start, end] intervals overlap never share bytes."""
    placed: list[Buffer] = []
    for key, nb, s, e in sorted(items, key=lambda it: (-it[1], it[2])):
        busy = sorted((b.offset, b.offset + b.nbytes) for b in placed if not (b.end < s or e < b.start))
        placed.append(Buffer(key, nb, s, e, _best_fit(busy, nb)))
    return placed


def _best_fit(busy: list[tuple[int, int]], size: int) -> int:
    """The smallest gap between busy ranges that fits `size`, else the end."""
    best, best_gap, cursor = None, None, 0
    for lo, hi in busy:
        gap = lo - cursor
        if gap >= size and (best_gap is None or gap < best_gap):
            best, best_gap = cursor, gap
        cursor = max(cursor, hi)
    return best if best is not None else cursor


def _with_plan(g: Graph, plan: MemoryPlan) -> Graph:
    from .rewrite import Rebuilder

    rb = Rebuilder(g)
    for n in g.nodes:
        rb.copy(n)
    out = rb.finish()
    out.memory_plan = plan
    return out
