"""SmoothQuant-style smoothing: move activation outliers into the weights before quantizing.

For a linear input x [..., K] and the weights W_i [N_i, K] of every linear reading it, one factor
per input channel j,

    s_j = max|X_j|^alpha / max_i max|W_i[:, j]|^(1 - alpha)      (1 where either max is 0)

makes x / s and W * s (columns) exact substitutes, x @ W.T == (x / s) @ (W * s).T, with the
activation's outlier channels flattened (alpha = 0.5 splits the difficulty evenly). The division
is folded into the norm that produces x when it can be (`rms_norm`, `layer_norm` and their
fused `add_*` forms with constant weight / bias: gamma / s, beta / s), which needs every reader
of the normalised value to be one of the smoothed linears (after fuse_projections a layer's QKV
or gate-up projection is one linear, so this is the common case); otherwise an explicit
`mul(x, 1/s)` is inserted for the smoothed linears only.

Called by `quantize_weights` (scheme `smoothing=alpha`) with the calibration statistics; the
smoothed graph computes the same function up to float rounding.
"""

from __future__ import annotations

import torch

from ..ir import Effect, Graph, Node, Value
from .calibrate import ActivationStats
from .manager import PassContext
from .rewrite import Rebuilder, fresh_constant_name

# norm op -> (weight input, bias input or None, index of the normalised output)
NORMS = {"rms_norm": (1, None, 0), "add_rms_norm": (2, None, 1), "layer_norm": (1, 2, 0), "add_layer_norm": (2, 3, 1)}
_S_MIN, _S_MAX = 1e-5, 1e5


def smoothing_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s [K] f32 = x_absmax^alpha / w_absmax^(1 - alpha), 1 where either is 0, clamped to [1e-5, 1e5]."""
    xa, wa = x_absmax.float().cpu(), w_absmax.float().cpu()
    s = xa.pow(alpha) / wa.pow(1.0 - alpha)
    s = torch.where((xa > 0) & (wa > 0), s, torch.ones_like(s))
    return s.clamp_(_S_MIN, _S_MAX)


def _foldable(x: Value, g: Graph, members: set[int], uses: dict[Value, list[tuple[Node, int]]], written: set[Value]) -> Node | None:
    """The norm producing x if the smoothing can be folded into its weight (and bias), else None."""
    n = x.node
    if n is None or n.op.name not in NORMS or x in g.outputs:
        return None
    wi, bi, oi = NORMS[n.op.name]
    if n.outputs[oi] is not x or not all(id(m) in members and k == 0 for m, k in uses.get(x, [])):
        return None
    k = x.type.shape[-1]
    for i in (wi, bi):
        if i is None:
            continue
        c = n.inputs[i]
        if c.kind != "const" or c in written or g.constant_data.get(c.name) is None or tuple(c.type.shape) != (k,):
            return None
    return n


def smooth_linears(
    g: Graph, todo: dict[Value, list[Node]], stats: dict[str, ActivationStats], alpha: float, ctx: PassContext,
) -> Graph:
    """Smooth the linears of `todo` (weight -> its readers, all linears) with factors from `stats`.

    Guarantees: each smoothed weight keeps its name with columns scaled by s; a folded norm reads
    new constants `<weight>.smoothed` (and `<bias>.smoothed`); otherwise the smoothed linears read
    `mul(x, <first weight>.smooth_inv)`. Weights whose readers read different inputs, or with no
    statistics, are left alone (counted). Returns `g` itself when nothing is smoothed.

        %h = rms_norm(%x, %g)                      %h = rms_norm(%x, %g.smoothed)
        %y = linear(%h, %w)                   ->   %y = linear(%h, %w)      (%w columns * s, %g / s)
    """
    by_x: dict[Value, list[Value]] = {}
    for w, readers in todo.items():
        if len({id(n.inputs[0]) for n in readers}) != 1 or w.name not in stats:
            ctx.count("linears_not_smoothed")
            continue
        by_x.setdefault(readers[0].inputs[0], []).append(w)
    if not by_x:
        return g
    uses: dict[Value, list[tuple[Node, int]]] = {}
    for n in g.nodes:
        for k, v in enumerate(n.inputs):
            uses.setdefault(v, []).append((n, k))
    written = {v for n in g.nodes if n.op.effect is Effect.WRITE for v in n.inputs}
    new_w: dict[Value, torch.Tensor] = {}
    folds: dict[int, dict[int, torch.Tensor]] = {}  # id(norm node) -> {input index: new data}
    inv: dict[Value, tuple[torch.Tensor, str]] = {}  # x -> (1 / s, constant name)
    for x, ws in by_x.items():
        w_absmax = torch.stack([g.constant_data[w.name].detach().float().abs().amax(dim=0).cpu() for w in ws]).amax(dim=0)
        s = smoothing_scales(stats[ws[0].name].channel_absmax, w_absmax, alpha)  # (K,)
        for w in ws:
            data = g.constant_data[w.name]
            new_w[w] = (data.float() * s.to(data.device)).to(data.dtype)
        members = {id(m) for w in ws for m in todo[w]}
        norm = _foldable(x, g, members, uses, written)
        if norm is not None:
            wi, bi, _ = NORMS[norm.op.name]
            folds[id(norm)] = {
                i: (g.constant_data[norm.inputs[i].name].float() / s.to(g.constant_data[norm.inputs[i].name].device)).to(norm.inputs[i].type.dtype.torch)
                for i in (wi, bi) if i is not None
            }
            ctx.count("smoothing_folded_into_norm")
        else:
            inv[x] = ((1.0 / s).to(x.type.dtype.torch), f"{ws[0].name}.smooth_inv")
            ctx.count("smoothing_explicit_mul")
        ctx.count("linears_smoothed", sum(len(todo[w]) for w in ws))
    return _rebuild(g, todo, new_w, folds, inv, uses)


def _rebuild(
    g: Graph, todo: dict[Value, list[Node]], new_w: dict[Value, torch.Tensor], folds: dict[int, dict[int, torch.Tensor]],
    inv: dict[Value, tuple[torch.Tensor, str]], uses: dict[Value, list[tuple[Node, int]]],
) -> Graph:
    replaced = set(new_w)
    folded_nodes = {id(n): n for n in g.nodes if id(n) in folds}
    for nid, repl in folds.items():  # a norm constant leaves only when the folded norms were its readers
        for i in repl:
            c = folded_nodes[nid].inputs[i]
            if all(id(m) in folds and k in folds[id(m)] for m, k in uses[c]):
                replaced.add(c)
    rb = Rebuilder(g, keep_constants=[name for name, v in g.constants.items() if v not in replaced])
    for w, data in new_w.items():
        rb.map[w] = rb.out.add_constant(w.name, data, w.type)
    smoothed = {id(m) for w in new_w for m in todo[w]}
    scaled: dict[Value, Value] = {}
    for n in g.nodes:
        if id(n) in folds:
            repl = folds[id(n)]
            ins = [
                rb.out.add_constant(fresh_constant_name(rb.out, f"{v.name}.smoothed"), repl[i], v.type) if i in repl else rb.get(v)
                for i, v in enumerate(n.inputs)
            ]
            new = rb.out.add_node(n.op, ins, dict(n.attrs), [o.type for o in n.outputs], n.source, n.subgraph)
            rb.map.update(zip(n.outputs, new.outputs))
        elif id(n) in smoothed and n.inputs[0] in inv:
            x = n.inputs[0]
            if x not in scaled:
                data, name = inv[x]
                c = rb.out.add_constant(fresh_constant_name(rb.out, name), data)
                scaled[x] = rb.out.add_node("mul", [rb.get(x), c], source=n.source).output
            new = rb.out.add_node(n.op, [scaled[x], *(rb.get(v) for v in n.inputs[1:])], dict(n.attrs), [o.type for o in n.outputs], n.source)
            rb.map.update(zip(n.outputs, new.outputs))
        else:
            rb.copy(n)
    return rb.finish()

