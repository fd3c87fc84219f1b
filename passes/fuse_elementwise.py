"""fuse_elementwise: vertical fusion of elementwise chains (and a closing reduction) into
fusion groups, nodes owning a subgraph that a code generator can emit as one kernel."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Effect, Graph, Node, Value
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder


@dataclass
class _Group:
    first: int  # index of the first member: the group node is emitted there
    shape: tuple  # the iteration space: every elementwise member produces exactly this shape
    members: list[int] = field(default_factory=list)
    closed: bool = False  # a reduction ends the group
    shape_only: bool = False  # members depend on constants and shape symbols alone


def _kind(n: Node) -> str | None:
    if n.op.effect is not Effect.PURE or len(n.outputs) != 1 or n.subgraph is not None:
        return None
    return {"elementwise": "ew", "reduction": "red"}.get(n.op.category)


def _same_shape(a: tuple, b: tuple) -> bool:
    from ..ir.opset._infer import same_dim

    return len(a) == len(b) and all(same_dim(x, y) for x, y in zip(a, b))


def _shape_only_values(g: Graph) -> set[Value]:
    """Values computed from constants and shape symbols alone (the plan caches those per shape;
    a group mixing them with per-call values would have to recompute them every call)."""
    written = {v for n in g.nodes if n.op.effect is Effect.WRITE for v in n.inputs}
    static: set[Value] = set(g.constants.values()) - written  # a written buffer is state
    for n in g.nodes:
        if n.op.effect is Effect.PURE and all(v in static for v in n.inputs):
            static.update(n.outputs)
    return static


def _form_groups(g: Graph) -> list[_Group]:
    index = {n: i for i, n in enumerate(g.nodes)}
    static = _shape_only_values(g)
    group_of: dict[int, _Group] = {}
    groups: list[_Group] = []
    for i, n in enumerate(g.nodes):
        kind = _kind(n)
        if kind is None:
            continue
        shape_only = n.outputs[0] in static
        candidates = []
        for v in n.inputs:
            grp = group_of.get(index.get(v.node, -1))
            if grp is not None and not grp.closed and grp not in candidates:
                candidates.append(grp)
        for grp in reversed(candidates):
            shape = n.outputs[0].type.shape if kind == "ew" else n.inputs[0].type.shape
            members = set(grp.members)
            ready = all(index.get(v.node, -1) in members or index.get(v.node, -1) < grp.first for v in n.inputs)
            if _same_shape(shape, grp.shape) and ready and grp.shape_only == shape_only:
                grp.members.append(i)
                grp.closed = kind == "red"
                group_of[i] = grp
                break
        else:
            if kind == "ew":
                grp = _Group(i, n.outputs[0].type.shape, [i], shape_only=shape_only)
                groups.append(grp)
                group_of[i] = grp
    return [grp for grp in groups if len(grp.members) > 1]


def _body(g: Graph, grp: _Group, escaping: set[Value]) -> tuple[Graph, list[Value], list[Value]]:
    """The group's subgraph, its external inputs (outer values) and escaping outputs."""
    body = Graph()
    inner: dict[Value, Value] = {}
    ext: list[Value] = []
    outs: list[Value] = []
    for i in grp.members:
        n = g.nodes[i]
        for v in n.inputs:
            if v not in inner:
                inner[v] = body.add_input(f"x{len(ext)}", v.type)
                ext.append(v)
        m = body.add_node(n.op, [inner[v] for v in n.inputs], dict(n.attrs), [o.type for o in n.outputs], n.source)
        inner[n.outputs[0]] = m.outputs[0]
        if n.outputs[0] in escaping:
            outs.append(n.outputs[0])
    body.outputs = [inner[v] for v in outs]
    return body, ext, outs


@graph_pass("group elementwise chains (and a closing reduction) into fusion groups")
def fuse_elementwise(g: Graph, ctx: PassContext) -> Graph:
    """Vertical fusion into `fusion_group` nodes owning their subgraph.

    Guarantees: members are pure elementwise ops over one iteration shape, optionally ended by
    one reduction of that shape, and either all or none depend on runtime inputs; a group is placed at its first member, so every external input
    is defined before it; values read outside the group (or returned) become group outputs,
    everything else stays inside (a kernel never writes it to memory).

        %1 = mul(%x, %w) : f32[B, 64]            %1 = fusion_group(%x, %w) : f32[B, 64] {
        %2 = silu(%1) : f32[B, 64]        ->       graph(%x0: f32[B, 64], %x1: f32[64]) { ... }
        %3 = add(%2) {rhs=1.0} : f32[B, 64]       }
    """
    groups = _form_groups(g)
    if not groups:
        return g
    owner = {i: k for k, grp in enumerate(groups) for i in grp.members}
    grouped = set(owner)
    index = {n: i for i, n in enumerate(g.nodes)}
    escaping: set[Value] = set(g.outputs)  # returned, or read by a node outside the producer's group
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            if v.kind == "node" and owner.get(i, -1) != owner.get(index[v.node], -2):
                escaping.add(v)
    at_first = {grp.first: grp for grp in groups}
    rb = Rebuilder(g)
    for i, n in enumerate(g.nodes):
        if i in at_first:
            grp = at_first[i]
            body, ext, outs = _body(g, grp, escaping)
            kind = "reduction" if _kind(g.nodes[grp.members[-1]]) == "red" else "elementwise"
            node = rb.out.add_node("fusion_group", [rb.get(v) for v in ext], {"kind": kind}, source=n.source, subgraph=body)
            rb.map.update(zip(outs, node.outputs))
            ctx.count("groups")
            ctx.count("nodes_grouped", len(grp.members))
        elif i not in grouped:
            rb.copy(n)
    return rb.finish()


