"""Graph, Node and Value: kiln's IR containers.

A Graph holds inputs, named constants (parameters and buffers, with their tensors kept beside the
IR), a topologically ordered node list and outputs. Nodes are small values: an Op from the
registry, input Values, checked attributes and output Values. Use lists are derived on demand
(`graph.uses()`), never maintained by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .dtypes import from_torch
from .ops import Op, get_op
from .types import TensorType, ValueType


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where a node came from in the user's program (for errors, dumps and reports)."""

    file: str = ""
    line: int = 0
    module: str = ""  # nn.Module path, e.g. "transformer.h.0.attn"
    code: str = ""  # the source line's text
    aten: str = ""  # the ATen op it was converted from

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else ""
        return " ".join(p for p in (where, f"({self.module})" if self.module else "") if p)


class Value:
    """A typed SSA value: a graph input, a named constant, or output `index` of `node`."""

    __slots__ = ("type", "node", "index", "name", "kind")

    def __init__(self, type: ValueType, kind: str, node: "Node | None" = None, index: int = 0, name: str = ""):
        self.type = type
        self.kind = kind  # "input" | "const" | "node"
        self.node = node
        self.index = index
        self.name = name

    def __repr__(self) -> str:
        return f"Value({self.name or self.kind}: {self.type})"


class Node:
    __slots__ = ("op", "inputs", "attrs", "outputs", "source", "subgraph")

    def __init__(
        self, op: Op, inputs: Sequence[Value], attrs: dict[str, Any], out_types: Sequence[ValueType],
        source: SourceInfo | None = None, subgraph: "Graph | None" = None,
    ):
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = attrs
        self.outputs = tuple(Value(t, "node", self, i) for i, t in enumerate(out_types))
        self.source = source
        self.subgraph = subgraph  # the body of a fusion group (inputs/outputs match the node's)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op.name} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Node({self.op.name})"


class Graph:
    def __init__(self) -> None:
        self.inputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.constant_data: dict[str, torch.Tensor | None] = {}
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.memory_plan = None  # set by passes.plan_memory (a passes.memory.MemoryPlan)

    # --- building -------------------------------------------------------------------------
    def add_input(self, name: str, type: ValueType) -> Value:
        v = Value(type, "input", name=name)
        self.inputs.append(v)
        return v

    def add_constant(self, name: str, data: torch.Tensor | None = None, type: TensorType | None = None) -> Value:
        """A named constant; `type` defaults to the tensor's (data may be None in parsed IR)."""
        if name in self.constants:
            raise ValueError(f"constant {name!r} already exists")
        if type is None:
            if data is None:
                raise ValueError(f"constant {name!r} needs data or a type")
            type = TensorType(from_torch(data.dtype), tuple(data.shape))
        v = Value(type, "const", name=name)
        self.constants[name] = v
        self.constant_data[name] = data
        return v

    def add_node(
        self,
        op: Op | str,
        inputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        out_types: Sequence[ValueType] | None = None,
        source: SourceInfo | None = None,
        subgraph: "Graph | None" = None,
    ) -> Node:
        """Append a node; output types are inferred unless the op is opaque. A fusion group's
        types are its subgraph's output types."""
        op = get_op(op) if isinstance(op, str) else op
        op.check_arity(len(inputs))
        attrs = op.normalize_attrs(attrs or {})
        if out_types is None and subgraph is not None:
            out_types = [v.type for v in subgraph.outputs]
        if out_types is None:
            if op.infer is None:
                raise TypeError(f"opaque op {op.name} needs explicit output types")
            out_types = op.infer([v.type for v in inputs], attrs)
        node = Node(op, inputs, attrs, out_types, source, subgraph)
        self.nodes.append(node)
        return node

    def call(self, op: Op | str, *inputs: Value, source: SourceInfo | None = None, **attrs: Any) -> Value:
        """Add a single-output node and return its value (the builder's short form)."""
        return self.add_node(op, inputs, attrs, source=source).output

    # --- derived views ----------------------------------------------------------------------
    def uses(self) -> dict[Value, list[Node]]:
        """Which nodes read each value (graph outputs are not listed)."""
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v, []).append(n)
        return out

    def symbols(self) -> set:
        out: set = set()
        for v in self.inputs:
            out |= v.type.symbols
        return out

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def to_networkx(self):  # noqa: ANN201 - networkx is imported lazily
        from .nx import to_networkx

        return to_networkx(self)

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op.name] = counts.get(n.op.name, 0) + 1
        return counts
