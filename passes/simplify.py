"""simplify: algebraic identities and canonical view chains, as rules for the shared rewriter."""

from __future__ import annotations

from typing import Any

from ..ir import Graph, Node, Value
from ..ir.verifier import _types_equal
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder, Rule, rewrite_and_clean


def _same(node: Node, v: Value) -> Value | None:
    """v stands for node's result when it has exactly the result's type (dtype and shape)."""
    return v if _types_equal(v.type, node.outputs[0].type) else None


def _identity_scalar(values: tuple, lhs_ok: bool) -> Any:
    def fn(n: Node, rb: Rebuilder) -> Value | None:
        rhs, lhs = n.attrs.get("rhs"), n.attrs.get("lhs")
        if rhs is not None and not isinstance(rhs, bool) and rhs in values and type(rhs) in (int, float):
            return _same(n, n.inputs[0])
        if lhs_ok and lhs is not None and not isinstance(lhs, bool) and lhs in values and type(lhs) in (int, float):
            return _same(n, n.inputs[0])
        return None

    return fn


def _noop(n: Node, rb: Rebuilder) -> Value | None:
    return _same(n, n.inputs[0])


def _reshape_chain(n: Node, rb: Rebuilder) -> Value | None:
    src = n.inputs[0]
    if src.node is not None and src.node.op.name == "reshape":
        return rb.out.add_node("reshape", [src.node.inputs[0]], {"shape": n.attrs["shape"]}, source=n.source).output
    return _same(n, src)


def _permute_chain(n: Node, rb: Rebuilder) -> Value | None:
    dims = tuple(n.attrs["dims"])
    src = n.inputs[0]
    if dims == tuple(range(len(dims))):
        return src
    if src.node is not None and src.node.op.name == "permute":
        inner = tuple(src.node.attrs["dims"])
        composed = tuple(inner[d] for d in dims)
        base = src.node.inputs[0]
        if composed == tuple(range(len(composed))):
            return base
        return rb.out.add_node("permute", [base], {"dims": composed}, source=n.source).output
    return None


def _double_neg(n: Node, rb: Rebuilder) -> Value | None:
    src = n.inputs[0]
    if src.node is not None and src.node.op.name == "neg":
        return _same(n, src.node.inputs[0])
    return None


def _squeeze_unsqueeze(n: Node, rb: Rebuilder) -> Value | None:
    src = n.inputs[0]
    if src.node is not None and src.node.op.name == "unsqueeze" and tuple(n.attrs["dims"]) == (src.node.attrs["dim"],):
        return _same(n, src.node.inputs[0])
    return _same(n, src)


def _square(n: Node, rb: Rebuilder) -> Value | None:
    rhs = n.attrs.get("rhs")
    if type(rhs) in (int, float) and rhs == 1:
        return _same(n, n.inputs[0])
    if type(rhs) in (int, float) and rhs == 2 and n.inputs[0].type.dtype.is_float:
        x = n.inputs[0]
        return rb.out.add_node("mul", [x, x], source=n.source).output
    return None


RULES = [
    Rule("add_zero", "add", _identity_scalar((0,), lhs_ok=True)),
    Rule("sub_zero", "sub", _identity_scalar((0,), lhs_ok=False)),
    Rule("mul_one", "mul", _identity_scalar((1,), lhs_ok=True)),
    Rule("div_one", "div", _identity_scalar((1,), lhs_ok=False)),
    Rule("cast_noop", "cast", _noop),
    Rule("expand_noop", "expand", _noop),
    Rule("slice_noop", "slice", _noop),
    Rule("reshape_chain", "reshape", _reshape_chain),
    Rule("permute_chain", "permute", _permute_chain),
    Rule("double_neg", "neg", _double_neg),
    Rule("squeeze_unsqueeze", "squeeze", _squeeze_unsqueeze),
    Rule("pow_small", "pow", _square),
]


@graph_pass("algebraic identities, no-op casts/views, and collapsed reshape/permute chains")
def simplify(g: Graph, ctx: PassContext) -> Graph:
    """Apply RULES to a fixed point.

    Guarantees: a node is replaced only by a value of exactly its type (dtype and shape), so
    promotion (`add(i64) {rhs=0.0}` makes f32) and broadcasting are never lost; identities are
    exact in floating point (x + 0 may differ from x only for -0.0, which x + 0 turns into +0.0).

        %0 = reshape(%x) {shape=[B*S, 64]} : f32[B*S, 64]
        %1 = reshape(%0) {shape=[B, S, 64]} : f32[B, S, 64]   ->  (uses of %1 read %x)
        %2 = mul(%1) {rhs=1} : f32[B, S, 64]
    """
    return rewrite_and_clean(g, RULES, ctx)
