"""fuse_epilogues: activations and residual adds into the linear before them; residual adds into the norm after."""

from __future__ import annotations

from ..ir import Graph, Node, Value
from ..ir.verifier import _types_equal
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

_ACT = {"relu": "relu", "silu": "silu"}


# linears that carry an `activation` attribute (weight-only quantized ones included)
_TAKES_ACTIVATION = ("linear", "linear_w8", "linear_w4", "linear_w8a8")


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
        if _activation(n) and src.op.name in _TAKES_ACTIVATION and src.attrs["activation"] == "none" and uses[n.inputs[0]] == 1:
            acts[i] = index[src]
        elif n.op.name in ("layer_norm", "rms_norm") and src.op.name == "add" and len(src.inputs) == 2:
            a, b = src.inputs
            j = index[src]
            params_ready = all(v.node is None or index[v.node] < j for v in n.inputs[1:])
            if params_ready and _types_equal(a.type, b.type) and _types_equal(a.type, src.outputs[0].type) and j not in norms:
                norms[j] = i
    return acts, norms


def _plan_residuals(g: Graph, acts: dict[int, int], norms: dict[int, int]) -> dict[int, tuple[int, int]]:
    """add index -> (linear index, index of the add's operand the linear chain produces).

    The add must be an exact-type add of two tensors (no broadcast, no promotion) that no norm
    fusion takes (an add feeding a norm is worth more as add_*_norm: its sum is needed anyway);
    the linear's (or its fused activation's) result must be read by the add alone; and no write
    may sit between the linear and the add, since the fused op is emitted at the add.
    """
    index = {n: i for i, n in enumerate(g.nodes)}
    uses = _uses(g)
    out: dict[int, tuple[int, int]] = {}
    for i, n in enumerate(g.nodes):
        if n.op.name != "add" or len(n.inputs) != 2 or i in norms:
            continue
        if not all(_types_equal(v.type, n.outputs[0].type) for v in n.inputs):
            continue
        for k, v in enumerate(n.inputs):
            src = v.node
            if src is None or uses[v] != 1:
                continue
            j = acts.get(index[src],  # a fused activation stands for its linear
                          index[src] if src.op.name == "linear" else None)
            if j is None or any(m.op.effect.value == "write" for m in g.nodes[j + 1:i]):
                continue
            out[i] = (j, k)
            break
    return out


@graph_pass("fold activations and residual adds into the preceding linear, residual adds into the following norm")
def fuse_epilogues(g: Graph, ctx: PassContext) -> Graph:
    """Epilogue and prologue fusion for matmul and norm kernels.

    Guarantees: a linear absorbs an activation only when the activation is its sole reader (so
    nothing recomputes it); a residual add fuses into the norm reading it, and its sum stays
    available as the fused op's first output for the other readers (the next residual). A
    residual add no norm takes fuses into the linear (or linear + activation) that is its
    operand's sole producer and reader, as `linear_add` emitted at the add's position.

        %1 = linear(%x, %w, %b) : f32[B, 256]
        %2 = gelu(%1) : f32[B, 256]           ->   %1 = linear(%x, %w, %b) {activation="gelu"}
        %3 = add(%h, %a) : f32[B, 64]
        %4 = layer_norm(%3, %g, %be)          ->   %3, %4 = add_layer_norm(%h, %a, %g, %be)
        %5 = linear(%4, %w2) : f32[B, 64]
        %6 = add(%5, %3) : f32[B, 64]         ->   %6 = linear_add(%4, %w2, %3)
    """
    acts, norms = _plan(g)
    residuals = _plan_residuals(g, acts, norms)
    if not acts and not norms and not residuals:
        return g
    # the fused linear stays where the linear was: emitting it at the activation could move its
    # reads past a copy_to into one of its inputs (linear_add checks there is no write between)
    act_of = {j: i for i, j in acts.items()}
    into_add = {j for j, _ in residuals.values()}
    fused_norms = set(norms.values())
    rb = Rebuilder(g)
    for i, n in enumerate(g.nodes):
        if i in acts or i in fused_norms or i in into_add:
            continue
        if i in residuals:
            j, k = residuals[i]
            lin = g.nodes[j]
            act = _activation(g.nodes[act_of[j]]) if j in act_of else lin.attrs["activation"]
            ins = [rb.get(v) for v in (*lin.inputs[:2], n.inputs[1 - k], *lin.inputs[2:])]
            new = rb.out.add_node("linear_add", ins, {"activation": act}, source=lin.source)
            rb.map[n.outputs[0]] = new.output
        elif i in act_of:
            act = g.nodes[act_of[i]]
            new = rb.out.add_node(n.op, [rb.get(v) for v in n.inputs], {**n.attrs, "activation": _activation(act)}, source=n.source)
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
    ctx.count("residual_linears_fused", len(residuals))
    return rb.finish()
