"""fuse_epilogues: activations into the linear before them; residual adds into the norm after."""

from __future__ import annotations

from ..ir import Graph, Node, Value
from ..ir.verifier import _types_equal
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

_ACT = {"relu": "relu", "silu": "silu"}


def _activation(n: Node) -> str | None:
    if n.op.name == "gelu":
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(n.attrs["approximate"])
    return _ACT.get(n.op.name)


def _uses(g: Graph) -> dict[Value, int]:
    out: dict[Value, int] = {v: 1 for v in g.outputs}
    for n in g.nodes:
        for v in n.inputs:
            out[v] = out.get(v, 0) + 1
    return out


def _plan(g: Graph) -> tuple[dict[int, int], dict[int, int]]:
    """(activation index -> linear index, add index -> norm index) of fusible pairs."""
    index = {n: i for i, n in enumerate(g.nodes)}
    uses = _uses(g)
    acts: dict[int, int] = {}
    norms: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        src = n.inputs[0].node if n.inputs else None
        if src is None:
            continue
        if _activation(n) and src.op.name == "linear" and src.attrs["activation"] == "none" and uses[n.inputs[0]] == 1:
            acts[i] = index[src]
        elif n.op.name in ("layer_norm", "rms_norm") and src.op.name == "add" and len(src.inputs) == 2:
            a, b = src.inputs
            j = index[src]
            params_ready = all(v.node is None or index[v.node] < j for v in n.inputs[1:])
            if params_ready and _types_equal(a.type, b.type) and _types_equal(a.type, src.outputs[0].type) and j not in norms:
                norms[j] = i
    return acts, norms


@graph_pass("fold activations into the preceding linear and residual adds into the following norm")
def fuse_epilogues(g: Graph, ctx: PassContext) -> Graph:
    """Epilogue and prologue fusion for matmul and norm kernels.

    Guarantees: a linear absorbs an activation only when the activation is its sole reader (so
    nothing recomputes it); a residual add fuses into the norm reading it, and its sum stays
    available as the fused op's first output for the other readers (the next residual).

        %1 = linear(%x, %w, %b) : f32[B, 256]
        %2 = gelu(%1) : f32[B, 256]           ->   %1 = linear(%x, %w, %b) {activation="gelu"}
        %3 = add(%h, %a) : f32[B, 64]
        %4 = layer_norm(%3, %g, %be)          ->   %3, %4 = add_layer_norm(%h, %a, %g, %be)
    """
    acts, norms = _plan(g)
    if not acts and not norms:
        return g
    # the fused linear stays where the linear was: emitting it at the activation could move its
    # reads past a copy_to into one of its inputs
    act_of = {j: i for i, j in acts.items()}
    fused_norms = set(norms.values())
    rb = Rebuilder(g)
    for i, n in enumerate(g.nodes):
        if i in acts or i in fused_norms:
            continue
        if i in act_of:
            act = g.nodes[act_of[i]]
            new = rb.out.add_node("linear", [rb.get(v) for v in n.inputs], {"activation": _activation(act)}, source=n.source)
            rb.map[act.outputs[0]] = new.output
        elif i in norms:
            norm = g.nodes[norms[i]]
            op = "add_" + norm.op.name
            new = rb.out.add_node(op, [rb.get(v) for v in n.inputs + norm.inputs[1:]], dict(norm.attrs), source=norm.source)
            rb.map[n.outputs[0]], rb.map[norm.outputs[0]] = new.outputs
        else:
            rb.copy(n)
    ctx.count("activations_fused", len(acts))
    ctx.count("residual_norms_fused", len(norms))
    return rb.finish()
