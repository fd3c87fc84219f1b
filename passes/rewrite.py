"""The shared rewriter: rebuild a graph node by node, applying local rules.

Passes never mutate their input. A rewrite walks the old graph in order and builds a new one;
each node is either copied or replaced by a Value of the new graph that a rule returns. When no
rule fired the old graph itself is returned, so "unchanged" is `result is graph`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..ir import Graph, Node, Value
from .manager import PassContext


class Rebuilder:
    """Copies a graph incrementally: inputs and constants first, then nodes as the caller says."""

    def __init__(self, src: Graph, keep_constants: Iterable[str] | None = None):
        self.src = src
        self.out = Graph()
        self.map: dict[Value, Value] = {}
        for v in src.inputs:
            self.map[v] = self.out.add_input(v.name, v.type)
        names = set(src.constants) if keep_constants is None else set(keep_constants)
        for name, v in src.constants.items():
            if name in names:
                self.map[v] = self.out.add_constant(name, src.constant_data[name], v.type)

    def get(self, v: Value) -> Value:
        return self.map[v]

    def copy(self, n: Node) -> Node:
        new = self.out.add_node(n.op, [self.map[v] for v in n.inputs], dict(n.attrs), [o.type for o in n.outputs], n.source, n.subgraph)
        self.map.update(zip(n.outputs, new.outputs))
        return new

    def constant(self, name_hint: str, data, type=None) -> Value:  # noqa: ANN001 - torch.Tensor
        """A new constant with a fresh kiln-made name."""
        k = 0
        while f"{name_hint}{k}" in self.out.constants:
            k += 1
        return self.out.add_constant(f"{name_hint}{k}", data, type)

    def finish(self) -> Graph:
        self.out.outputs = [self.map[v] for v in self.src.outputs]
        return self.out


@dataclass(frozen=True)
class Rule:
    """A local rewrite: for nodes of `op`, `fn(node, rb)` returns a replacement Value in the new
    graph (already built from `rb`), or None to leave the node alone."""

    name: str
    op: str
    fn: Callable[[Node, Rebuilder], Value | None]


def apply_rules(g: Graph, rules: Iterable[Rule], stats: dict[str, int], max_rounds: int = 8) -> Graph:
    """Run rules to a fixed point (at most `max_rounds` sweeps); counts firings per rule name."""
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        by_op.setdefault(r.op, []).append(r)
    current = g
    for _ in range(max_rounds):
        rb = Rebuilder(current)
        fired = False
        for n in current.nodes:
            repl = None
            for rule in by_op.get(n.op.name, ()):
                probe = _Probe(n, rb)
                repl = rule.fn(probe.node, rb)
                if repl is not None:
                    stats[rule.name] = stats.get(rule.name, 0) + 1
                    break
            if repl is None:
                rb.copy(n)
            else:
                rb.map[n.outputs[0]] = repl
                fired = True
        if not fired:
            return current
        current = rb.finish()
    return current


def rewrite_and_clean(g: Graph, rules: Iterable[Rule], ctx: PassContext) -> Graph:
    """apply_rules, then drop what the replacements left dead (the same graph when nothing fired)."""
    out = apply_rules(g, rules, ctx.stats)
    if out is g:
        return g
    from .dce import eliminate_dead_nodes

    return eliminate_dead_nodes(out, ctx)


class _Probe:
    """A view of an old node whose inputs are already mapped into the new graph."""

    def __init__(self, n: Node, rb: Rebuilder):
        self.node = _MappedNode(n, [rb.map[v] for v in n.inputs])


class _MappedNode:
    __slots__ = ("op", "inputs", "attrs", "outputs", "source", "subgraph")

    def __init__(self, n: Node, inputs: list[Value]):
        self.op, self.inputs, self.attrs, self.outputs, self.source = n.op, tuple(inputs), n.attrs, n.outputs, n.source
        self.subgraph = n.subgraph


def fresh_constant_name(g: Graph, name: str) -> str:
    """`name`, or `name1`, `name2`, ... : the first that is not yet a constant of `g`."""
    k, cand = 0, name
    while cand in g.constants:
        k += 1
        cand = f"{name}{k}"
    return cand
