"""fuse_prologues: a norm or SwiGLU's SiLU-mul into the linear that reads it."""

from __future__ import annotations

from ..ir import Graph, Node, Value
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

# linears whose batch-1 gemv kernels read x through a prologue (backends/triton/prologue.py);
# W8A8's `gemv_a8` does where its scale is dynamic (a static scale is absolute: a norm's 1 / rms
# would change the codes), so a static-scale group always runs unfused
LINEARS = ("linear", "linear_add", "linear_w8", "linear_w4", "linear_w8a8", "linear_fp8")


def _uses(g: Graph) -> dict[Value, list[int]]:
    """value -> indices of the nodes reading it; a returned value is read after every node."""
    out: dict[Value, list[int]] = {v: [len(g.nodes)] for v in g.outputs}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            out.setdefault(v, []).append(i)
    return out


def _glu_split(group: Node, index: dict[Node, int], uses: dict) -> Node | None:
    """The split before a SwiGLU SiLU-mul that fuse_elementwise grouped: the group reads the two
    equal halves of one last-dim split, each once, and computes silu(first) * second."""
    body = group.subgraph
    if group.attrs.get("kind") != "elementwise" or len(group.inputs) != 2 or len(body.nodes) != 2:
        return None
    silu, mul = body.nodes
    if silu.op.name != "silu" or mul.op.name != "mul" or len(mul.inputs) != 2 or list(body.outputs) != [mul.outputs[0]]:
        return None
    if silu.inputs[0] is not body.inputs[0] or set(mul.inputs) != {silu.outputs[0], body.inputs[1]}:
        return None
    first, second = group.inputs
    split = first.node
    if split is None or split.op.name != "split" or second.node is not split or list(split.outputs) != [first, second]:
        return None
    sizes, dim = tuple(split.attrs["sizes"]), split.attrs["dim"]
    rank = split.inputs[0].type.rank
    if len(sizes) != 2 or sizes[0] != sizes[1] or dim not in (rank - 1, -1):
        return None
    if any(uses.get(v, []) != [index[group]] for v in split.outputs):
        return None
    return split


def _plan(g: Graph, uses: dict[Value, list[int]]) -> dict[int, tuple[str, list[int]]]:
    """linear index -> (prologue kind, indices of the outer nodes the group absorbs)."""
    index = {n: i for i, n in enumerate(g.nodes)}
    plan: dict[int, tuple[str, list[int]]] = {}
    for i, n in enumerate(g.nodes):
        if n.op.name not in LINEARS or n.subgraph is not None:
            continue
        x = n.inputs[0]
        src = x.node
        if src is None or uses.get(x, []) != [i] or x.type.dtype is not n.outputs[0].type.dtype:
            continue
        if src.op.name == "rms_norm" and src.outputs[0] is x:
            plan[i] = ("rms_norm", [index[src]])
        elif src.op.name == "add_rms_norm" and src.outputs[1] is x:
            # emitted at the linear: the sum's other readers must all come after it
            if all(u > i for u in uses.get(src.outputs[0], [])):
                plan[i] = ("add_rms_norm", [index[src]])
        elif src.op.name == "fusion_group" and list(src.outputs) == [x]:
            split = _glu_split(src, index, uses)
            if split is not None:
                plan[i] = ("glu", [index[split], index[src]])
    return plan


def _group(rb: Rebuilder, kind: str, lin: Node, absorbed: list[Node], uses: dict) -> Node:
    """The "prologue" fusion group of `lin` and the nodes it absorbs: inputs (x[, residual]
    [, norm weight], the linear's other operands), outputs ([sum,] y)."""
    body = Graph()
    inner: dict[Value, Value] = {}
    ext = list(absorbed[0].inputs) + list(lin.inputs[1:])  # the split's or the norm's inputs, then the linear's operands
    for k, v in enumerate(ext):
        inner[v] = body.add_input(f"x{k}", v.type)
    for n in absorbed + [lin]:  # the absorbed nodes, then the linear
        if n.subgraph is not None:  # the SiLU-mul group, flattened (a group's body holds no groups)
            local = dict(zip(n.subgraph.inputs, (inner[v] for v in n.inputs)))
            for e in n.subgraph.nodes:
                m = body.add_node(e.op, [local[v] for v in e.inputs], dict(e.attrs), [o.type for o in e.outputs], e.source)
                local.update(zip(e.outputs, m.outputs))
            inner[n.outputs[0]] = local[n.subgraph.outputs[0]]
            continue
        m = body.add_node(n.op, [inner[v] for v in n.inputs], dict(n.attrs), [o.type for o in n.outputs], n.source)
        inner.update(zip(n.outputs, m.outputs))
    outs = [lin.outputs[0]]
    if kind == "add_rms_norm" and uses.get(absorbed[0].outputs[0]):  # the sum, read after the linear
        outs.insert(0, absorbed[0].outputs[0])
    body.outputs = [inner[v] for v in outs]
    node = rb.out.add_node("fusion_group", [rb.get(v) for v in ext], {"kind": "prologue"}, source=lin.source, subgraph=body)
    rb.map.update(zip(outs, node.outputs))
    return node


@graph_pass("read a norm or SwiGLU's SiLU-mul inside the linear after it (batch-1 gemv prologues)")
def fuse_prologues(g: Graph, ctx: PassContext) -> Graph:
    """A linear whose only input producer is an RMSNorm, an add + RMSNorm or a SwiGLU SiLU-mul
    becomes one `fusion_group` of kind "prologue" with it, emitted at the linear: at batch-1
    decode the gemv computes the prologue as it reads x (backends/triton/prologue.py), one kernel
    where there were two. Elsewhere the group runs the same two steps as before. Only for the
    Triton backend (backends.runs_triton): the reference and CUDA backends gain nothing from it,
    and their graphs keep every linear at the top level for the reports.

    Guarantees: the absorbed nodes' results are read by the linear alone, except the sum of an
    add + RMSNorm, which becomes a group output and whose readers all come after the linear; the
    SiLU-mul is exactly silu(first half) * second half of one last-dim split into equal halves.

        %s, %h = add_rms_norm(%a, %r, %w)          %s, %y = fusion_group(%a, %r, %w, %wq) {kind=prologue} {
        %y = linear(%h, %wq)               ->        graph(...) { add_rms_norm; linear }
                                                   }
    """
    from ..backends import runs_triton  # lazily: backends import passes' modules

    if not runs_triton(ctx.options.backend, ctx.device):
        return g  # the grouped pair would run the same two PyTorch ops: keep the graph as it is
    uses = _uses(g)
    plan = _plan(g, uses)
    if not plan:
        return g
    absorbed = {j for _, members in plan.values() for j in members}
    rb = Rebuilder(g)
    for i, n in enumerate(g.nodes):
        if i in plan:
            kind, members = plan[i]
            _group(rb, kind, n, [g.nodes[j] for j in members], uses)
            ctx.count(f"{kind}_into_linear")
        elif i not in absorbed:
            rb.copy(n)
    return rb.finish()
