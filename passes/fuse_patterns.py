"""fuse_patterns: transformer building blocks written out op by op become one fused op each.

Rules match on a pattern's last node and look back through producers; intermediates that lose
their last reader are removed by dead-node elimination. A rule fires only when the fused op's
inferred type equals the replaced node's type exactly.
"""

from __future__ import annotations

import math
from typing import Any

from ..ir import Graph, Node, Value
from ..ir.verifier import _types_equal
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder, Rule, rewrite_and_clean


def _prod(v: Value, *ops: str) -> Node | None:
    """v's producing node if it is one of `ops`."""
    n = v.node
    return n if n is not None and n.op.name in ops else None


def _scalar(n: Node, side: str = "rhs") -> Any:
    v = n.attrs.get(side)
    return v if type(v) in (int, float) else None


def _close(a: Any, b: float, rel: float = 1e-6) -> bool:
    return a is not None and abs(a - b) <= rel * abs(b)


def _fused(rb: Rebuilder, old: Node, op: str, inputs: list[Value], **attrs: Any) -> Value | None:
    """Add the fused node if its type equals the node it replaces; else add nothing."""
    try:
        types = rb.out.add_node(op, inputs, attrs, source=old.source)
    except Exception:  # the fused op rejects these operands: leave the pattern alone
        return None
    new = types.output
    if not _types_equal(new.type, old.outputs[0].type):
        rb.out.nodes.pop()
        return None
    return new


def _skip_cast(v: Value) -> Value:
    n = _prod(v, "cast")
    return n.inputs[0] if n is not None else v


# --- GELU, tanh approximation: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) ------------
def _gelu_tanh(n: Node, rb: Rebuilder) -> Value | None:
    if len(n.inputs) != 2:
        return None
    for half_v, one_v in (n.inputs, reversed(n.inputs)):
        half, plus1 = _prod(half_v, "mul"), _prod(one_v, "add")
        if half is None or plus1 is None or not _close(_scalar(half), 0.5) or not _close(_scalar(plus1), 1.0):
            continue
        x = half.inputs[0]
        th = _prod(plus1.inputs[0], "tanh")
        scaled = th and _prod(th.inputs[0], "mul")
        inner = scaled and _close(_scalar(scaled), math.sqrt(2 / math.pi)) and _prod(scaled.inputs[0], "add")
        if not inner or len(inner.inputs) != 2:
            continue
        for a, b in (inner.inputs, reversed(inner.inputs)):
            cube_scaled = _prod(b, "mul")
            cube = cube_scaled and _close(_scalar(cube_scaled), 0.044715) and _prod(cube_scaled.inputs[0], "pow")
            if a is x and cube and cube.inputs[0] is x and _close(_scalar(cube), 3.0):
                return _fused(rb, n, "gelu", [x], approximate="tanh")
    return None


# --- RMSNorm: w * (x * rsqrt(mean(x*x, -1, keepdim) + eps)) (optionally through fp32 casts) --------
def _rms_norm(n: Node, rb: Rebuilder) -> Value | None:
    if len(n.inputs) != 2:
        return None
    for w, y in (n.inputs, reversed(n.inputs)):
        if w.type.rank != 1:
            continue
        scaled = _prod(_skip_cast(y), "mul")
        if scaled is None or len(scaled.inputs) != 2:
            continue
        for xf, r in (scaled.inputs, reversed(scaled.inputs)):
            rs = _prod(r, "rsqrt")
            plus = rs and _prod(rs.inputs[0], "add")
            mean = plus and _prod(plus.inputs[0], "mean")
            if not mean or _scalar(plus) is None or not mean.attrs["keepdim"] or tuple(mean.attrs["dims"]) != (xf.type.rank - 1,):
                continue
            sq = mean.inputs[0].node
            is_square = sq is not None and (
                (sq.op.name == "mul" and len(sq.inputs) == 2 and sq.inputs[0] is xf and sq.inputs[1] is xf)
                or (sq.op.name == "pow" and sq.inputs[0] is xf and _close(_scalar(sq), 2.0))
            )
            x = _skip_cast(xf)
            # rms_norm normalises in fp32 and casts back to x's dtype: the written-out form must too
            # (a bf16 normalisation, or an fp32 result scaled without the cast back, differs)
            if is_square and xf.type.dtype.name == "f32" and y.type.dtype is x.type.dtype:
                return _fused(rb, n, "rms_norm", [x, w], eps=float(_scalar(plus)))
    return None


# --- attention written out: softmax(q @ k^T * scale + mask) @ v ----------------------------------
def _scores(s: Value, rb: Rebuilder) -> tuple[Value, Value, float] | None:
    """(q, k, scale) when s = (q @ k^T) [* scale | / d], k^T a permute swapping k's last two dims
    (possibly composed with an earlier head permute, which is then rebuilt for k)."""
    scale = 1.0
    sc = _prod(s, "mul", "div")
    if sc is not None and len(sc.inputs) == 1 and _scalar(sc):
        scale = _scalar(sc) if sc.op.name == "mul" else 1.0 / _scalar(sc)
        s = sc.inputs[0]
    mm = _prod(s, "matmul")
    kt = mm and _prod(mm.inputs[1], "permute")
    if not kt:
        return None
    dims = tuple(kt.attrs["dims"])
    k_dims = dims[:-2] + (dims[-1], dims[-2])  # k = permute(base, k_dims); k^T swaps its last two
    base = kt.inputs[0]
    if k_dims == tuple(range(len(k_dims))):
        k = base
    else:
        k = rb.out.add_node("permute", [base], {"dims": k_dims}, source=kt.source).output
    return mm.inputs[0], k, scale


def _logits_and_mask(s: Value, rb: Rebuilder) -> tuple[tuple[Value, Value, float], Value | None] | None:
    """Split softmax's input into scores and an additive float or boolean keep-mask."""
    plain = _scores(s, rb)
    if plain is not None:
        return plain, None
    add = _prod(s, "add")
    if add is not None and len(add.inputs) == 2:
        for a, m in (add.inputs, reversed(add.inputs)):
            if not m.type.dtype.is_float:
                continue
            sc = _scores(a, rb)
            if sc is not None:
                return sc, m
    fill = _prod(s, "masked_fill")
    if fill is not None and fill.attrs["value"] == float("-inf"):
        inv = _prod(fill.inputs[1], "logical_not", "bitwise_not")
        sc = _scores(fill.inputs[0], rb) if inv is not None and inv.inputs[0].type.dtype.kind == "bool" else None
        if sc is not None:
            return sc, inv.inputs[0]  # masked_fill(s, ~keep, -inf): keep is SDPA's boolean mask
    return None


def _softmax_attention(n: Node, rb: Rebuilder) -> Value | None:
    probs, v = n.inputs
    sm = _prod(_skip_cast(probs), "softmax")
    if sm is None or sm.attrs["dim"] != sm.outputs[0].type.rank - 1 or probs.type.rank < 3:
        return None
    found = _logits_and_mask(_skip_cast(sm.inputs[0]), rb)
    if found is None:
        return None
    (q, k, scale), mask = found
    return _fused(rb, n, "attention", [q, k, v] + ([mask] if mask is not None else []), scale=scale)


# --- GQA: attention over K/V heads repeated with unsqueeze -> expand -> reshape -------------------
def _unrepeated(v: Value) -> tuple[Value, int] | None:
    rs = _prod(v, "reshape")
    ex = rs and _prod(rs.inputs[0], "expand")
    un = ex and _prod(ex.inputs[0], "unsqueeze")
    if not un or un.attrs["dim"] != 2 or un.inputs[0].type.rank != 4:
        return None
    base = un.inputs[0]
    shape = ex.attrs["shape"]
    reps = shape[2]
    if not isinstance(reps, int) or not _types_equal(rs.outputs[0].type, base.type.with_shape(base.type.shape[:1] + (shape[1] * reps,) + base.type.shape[2:])):
        return None
    return base, reps


def _gqa(n: Node, rb: Rebuilder) -> Value | None:
    if n.attrs["gqa"]:
        return None
    q, k, v, *mask = n.inputs
    kr, vr = _unrepeated(k), _unrepeated(v)
    if kr is None or vr is None or kr[1] != vr[1]:
        return None
    return _fused(rb, n, "attention", [q, kr[0], vr[0], *mask], causal=n.attrs["causal"], scale=n.attrs["scale"], gqa=True)


# --- x @ W + b on flattened tokens (GPT-2's Conv1D): reshape -> addmm -> reshape ---------------
def _addmm_linear(n: Node, rb: Rebuilder) -> Value | None:
    mm = _prod(n.inputs[0], "addmm")
    if mm is None or mm.attrs["beta"] != 1 or mm.attrs["alpha"] != 1:
        return None
    bias, x2, w = mm.inputs
    flat = _prod(x2, "reshape")
    if flat is None or bias.type.rank != 1 or w.type.rank != 2:
        return None
    x = flat.inputs[0]
    if x.type.rank < 2 or tuple(n.attrs["shape"][:-1]) != tuple(x.type.shape[:-1]):
        return None
    wt = rb.out.add_node("permute", [w], {"dims": (1, 0)}, source=mm.source).output  # a view
    return _fused(rb, n, "linear", [x, wt, bias])


# --- rotary embedding: x*cos + cat(-x[..., h:], x[..., :h])*sin  ->  rotary(x, cos, sin) -------------
def _rotate_half_of(v: Value) -> Value | None:
    """x when v = cat(neg(x[..., h:]), x[..., :h]) along the last dim with h = D/2."""
    cat = _prod(v, "cat")
    if cat is None or len(cat.inputs) != 2 or cat.attrs["dim"] != v.type.rank - 1:
        return None
    neg, lo = _prod(cat.inputs[0], "neg"), _prod(cat.inputs[1], "slice")
    hi = neg and _prod(neg.inputs[0], "slice")
    if not hi or not lo or hi.inputs[0] is not lo.inputs[0]:
        return None
    x = lo.inputs[0]
    d, last = x.type.shape[-1], x.type.rank - 1
    if not isinstance(d, int) or d % 2 or {hi.attrs["dim"], lo.attrs["dim"]} != {last}:
        return None
    h = d // 2
    ok = (lo.attrs["start"], lo.attrs["end"], hi.attrs["start"], hi.attrs["end"]) == (0, h, h, d)
    return x if ok and lo.attrs["step"] == 1 and hi.attrs["step"] == 1 else None


def _rotary(n: Node, rb: Rebuilder) -> Value | None:
    if len(n.inputs) != 2:
        return None
    for a, b in (n.inputs, reversed(n.inputs)):
        xc, rs = _prod(a, "mul"), _prod(b, "mul")
        if not xc or not rs or len(xc.inputs) != 2 or len(rs.inputs) != 2:
            continue
        for rot, sin in (rs.inputs, reversed(rs.inputs)):
            x = _rotate_half_of(rot)
            if x is None or x not in xc.inputs:
                continue
            cos = xc.inputs[1] if xc.inputs[0] is x else xc.inputs[0]
            return _fused(rb, n, "rotary", [x, cos, sin])
    return None


RULES = [
    Rule("gelu_tanh", "mul", _gelu_tanh),
    Rule("rms_norm", "mul", _rms_norm),
    Rule("softmax_attention", "matmul", _softmax_attention),
    Rule("gqa_attention", "attention", _gqa),
    Rule("addmm_linear", "reshape", _addmm_linear),
    Rule("rotary", "add", _rotary),
]


@graph_pass("fuse GELU-tanh chains, RMSNorm, written-out softmax attention and repeated-KV GQA")
def fuse_patterns(g: Graph, ctx: PassContext) -> Graph:
    """Pattern fusion of transformer blocks into kiln's fused ops.

    Guarantees: a match is replaced only by an op whose inferred type equals the original's;
    masks keep their meaning (a `masked_fill(s, ~keep, -inf)` becomes a boolean keep-mask).

        %1 = mul(%x, %x); %2 = mean(%1) {dims=[2], keepdim=true}; %3 = add(%2) {rhs=1e-06}
        %4 = rsqrt(%3); %5 = mul(%x, %4); %6 = mul(%w, %5)   ->   %6 = rms_norm(%x, %w) {eps=1e-06}
    """
    return rewrite_and_clean(g, RULES, ctx)
