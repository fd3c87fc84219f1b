"""ATen overload -> kiln op converters, one small function each.

A converter receives the FX node and its arguments with graph tensors already mapped to kiln
Values and SymInts to sympy dims. It returns the Value(s) standing for the node, or raises
Decline to leave the node opaque. Shapes the ATen call leaves implicit (-1 in a view, slice
bounds past the end) are resolved from the traced output type, which is exact.

This module holds matmul and transformer-block converters and imports the other families:
`convert_math` (elementwise, identity-like, reductions) and `convert_tensor` (views, data
movement, creation, in-place writes, indexing); shared helpers live in `convert_util`.
"""

from __future__ import annotations

import operator
from typing import Any

from ..ir import Value
from .convert_util import aten, is_value, plain
from .fx_import import Ctx, Decline, converter


# --- matmul and transformer blocks ----------------------------------------------------------------
@converter(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _matmul(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("matmul", [args[0], args[1]])


@converter(aten.linear.default)
def _linear(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return ctx.emit("linear", [args[0], args[1]] + ([bias] if bias is not None else []))


@converter(aten.addmm.default)
def _addmm(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("addmm", list(args[:3]), beta=kwargs.get("beta", 1), alpha=kwargs.get("alpha", 1))


@converter(aten.layer_norm.default, aten.native_layer_norm.default)
def _layer_norm(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Any:
    x, shape = args[0], args[1]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    b = args[3] if len(args) > 3 else kwargs.get("bias")
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    if w is None or b is None:
        raise Decline("layer_norm without weight and bias")
    native = "native" in node.target._schema.name
    if native and any(u.args[1] != 0 for u in node.users):
        raise Decline("native_layer_norm statistics are used")
    out = plain(ctx, "layer_norm", [x, w, b], shape=tuple(ctx.dim(d) for d in shape), eps=float(eps))
    return (out, None, None) if native else out


def _attention(ctx: Ctx, q: Value, k: Value, v: Value, mask: Any, dropout: float, causal: bool, scale: Any, gqa: bool) -> Value:
    if dropout:
        raise Decline("attention dropout")
    if mask is not None and not is_value(mask):
        raise Decline("attention mask is not a tensor")
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    return plain(ctx, "attention", inputs, causal=bool(causal), scale=None if scale is None else float(scale), gqa=bool(gqa))


@converter(aten.scaled_dot_product_attention.default)
def _sdpa(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    names = ["attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]
    opts = dict(zip(names, args[3:]))
    opts.update(kwargs)
    return _attention(ctx, *args[:3], opts.get("attn_mask"), opts.get("dropout_p", 0.0), opts.get("is_causal", False), opts.get("scale"), opts.get("enable_gqa", False))


def _only_first_output_used(node: Any) -> bool:
    return all(u.target is operator.getitem and u.args[1] == 0 for u in node.users)


@converter(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _sdpa_cpu(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> tuple:
    if not _only_first_output_used(node):
        raise Decline("attention statistics are used")
    dropout = args[3] if len(args) > 3 else kwargs.get("dropout_p", 0.0)
    causal = args[4] if len(args) > 4 else kwargs.get("is_causal", False)
    out = _attention(ctx, *args[:3], kwargs.get("attn_mask"), dropout, causal, kwargs.get("scale"), False)
    return (out, None)


@converter(aten._scaled_dot_product_efficient_attention.default)
def _sdpa_efficient(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> tuple:
    if not _only_first_output_used(node):
        raise Decline("attention statistics are used")
    bias = args[3] if len(args) > 3 else None
    dropout = args[5] if len(args) > 5 else 0.0
    causal = args[6] if len(args) > 6 else False
    out = _attention(ctx, *args[:3], bias, dropout, causal, kwargs.get("scale"), False)
    return (out, None, None, None)


@converter(aten._scaled_dot_product_flash_attention.default)
def _sdpa_flash(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> tuple:
    if not _only_first_output_used(node):
        raise Decline("attention statistics are used")
    dropout = args[3] if len(args) > 3 else 0.0
    causal = args[4] if len(args) > 4 else False
    out = _attention(ctx, *args[:3], None, dropout, causal, kwargs.get("scale"), False)
    return (out,) + (None,) * 8


# The other op families register their converters when imported.
from . import convert_math, convert_tensor  # noqa: E402, F401
