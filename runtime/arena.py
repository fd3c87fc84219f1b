"""The plan's memory arena: kernel outputs laid out by liveness in one preallocated buffer.

Kernels kiln generates can write into tensors they are given (`launcher.writes_out`). For each
binding of the shape symbols the plan lays those outputs into one byte range with the same
best-fit-by-liveness layout as `passes.plan_memory` (`assign_offsets`) and keeps a tuple of
typed views into it; a steady-state call then allocates nothing for them (one dict lookup).
PyTorch fallback calls keep using PyTorch's allocator.

Invariants (why this is safe):
* Never in the arena: graph outputs, anything a graph output may alias, values the shape cache
  keeps, values a write (`copy_to`) reads. Callers and caches therefore never hold arena memory
  the next call overwrites.
* A node that may return (part of) an input's storage (views, casts, opaque ATen ops, inlined
  fusion groups, ...: everything outside a whitelist of categories that always allocate) keeps
  its inputs alive as long as its outputs live, so a buffer is reused only when no alias of it
  can still be read.
* Storage only grows (1.5x steps) and old storages are kept: a CUDA graph captured over an older
  storage stays valid. `retained()` hands everything a capture may point to to the graph runner.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch

from ..ir.graph import Graph, Node, Value
from ..ir.symbolic import evaluate_dim
from ..ir.types import TensorType

# Categories whose reference implementations always return fresh tensors.
_FRESH = {"elementwise", "matmul", "norm", "attention", "reduction", "data", "creation"}
ALIGN = 256  # bytes: every buffer starts where vectorised kernel loads want it


def may_alias(n: Node) -> bool:
    """Whether n's outputs may share storage with its inputs when it runs as PyTorch ops
    (conservative: anything outside the always-allocating categories; a fusion group inlined
    as PyTorch ops when its body may alias or passes an input through)."""
    if n.subgraph is not None:
        body = n.subgraph
        return any(may_alias(m) for m in body.nodes) or any(o in body.inputs for o in body.outputs)
    return n.op.category not in _FRESH or n.op.name == "cast"


def alias_rule(launched: set[int]):  # noqa: ANN201
    """may_alias for a plan: nodes run by kiln's kernels (ids in `launched`) always allocate."""
    return lambda n: id(n) not in launched and may_alias(n)


def arena_values(g: Graph, writers: list[int], excluded_nodes: set[int], launched: set[int] | None = None) -> list[Value]:
    """Outputs of nodes `writers` (indices of nodes whose launcher writes into given tensors)
    that may live in the arena: not graph outputs or aliased by one, not read by writes.
    `launched`: ids of nodes run by generated kernels (fresh outputs, never aliases)."""
    alias = alias_rule(launched or set())
    escaping: set[Value] = set(g.outputs)
    for n in reversed(g.nodes):  # outputs' alias sources escape too
        if alias(n) and any(o in escaping for o in n.outputs):
            escaping.update(n.inputs)
    for n in g.nodes:
        if n.op.effect.name == "WRITE":
            escaping.update(n.inputs)
    out = []
    for i in writers:
        if i in excluded_nodes:
            continue
        vals = g.nodes[i].outputs
        if all(isinstance(v.type, TensorType) and v not in escaping for v in vals):
            out.extend(vals)
    return out


class Arena:
    """Per-binding views into one growing byte storage for the values `values` of `g`."""

    def __init__(
        self, g: Graph, values: list[Value], symbols: list[sympy.Symbol], device: torch.device,
        launched: set[int] | None = None, max_bindings: int = 8,
    ):
        from ..passes.memory import liveness

        self.values = values
        self.symbols = symbols
        self.device = device
        self.max_bindings = max_bindings
        live = liveness(g, alias_rule(launched or set()))
        self.intervals = [live[v] for v in values]
        self.types: list[TensorType] = [v.type for v in values]  # type: ignore[misc]
        self.storages: list[torch.Tensor] = []
        self.views: dict[tuple, tuple] = {}
        self.nbytes = 0  # the largest layout so far (bytes in use by the current storage)

    def __call__(self, *binding: int) -> tuple:
        """The views for this binding of the symbols (made once per binding)."""
        views = self.views.get(binding)
        if views is None:
            views = self._make(binding)
        return views

    def _make(self, binding: tuple) -> tuple:
        from ..passes.memory import assign_offsets

        env = dict(zip(self.symbols, binding))
        shapes = [tuple(evaluate_dim(d, env) for d in t.shape) for t in self.types]
        items = []
        for k, (t, shape, (s, e)) in enumerate(zip(self.types, shapes, self.intervals)):
            n = t.dtype.itemsize
            for d in shape:
                n *= d
            items.append((k, -(-max(n, 1) // ALIGN) * ALIGN, s, e))
        placed = sorted(assign_offsets(items), key=lambda b: b.value)
        total = max((b.offset + b.nbytes for b in placed), default=0)
        storage = self.storages[-1] if self.storages else None
        if storage is None or storage.numel() < total:
            size = max(total, int(storage.numel() * 1.5) if storage is not None else 0)
            storage = torch.empty(size, dtype=torch.uint8, device=self.device)
            self.storages.append(storage)
        self.nbytes = max(self.nbytes, total)
        views = tuple(
            _typed(storage, b.offset, t.dtype.torch, shape) for b, t, shape in zip(placed, self.types, shapes)
        )
        if len(self.views) >= self.max_bindings:
            del self.views[next(iter(self.views))]
        self.views[binding] = views
        return views

    def retained(self) -> tuple:
        return tuple(self.storages)


def _typed(storage: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple) -> Any:
    n = 1
    for d in shape:
        n *= d
    size = n * torch.empty((), dtype=dtype).element_size()
    return storage[offset:offset + size].view(dtype).view(shape)
