"""Matmul family and transformer building blocks: matmul, linear(_add), addmm, layer_norm, attention.

These are kiln's fusion targets: the frontend maps ATen's linear/addmm/layer_norm/SDPA forms onto
them so later passes and kernels see one op per concept.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

from ..dtypes import from_torch
from ..ops import Attr, AttrKind, Call, InferenceError, declare
from ..types import TensorType
from ._infer import broadcast, same_dim, tensors


def _check_float_same(name: str, ts: list[TensorType]) -> None:
    if any(t.dtype is not ts[0].dtype for t in ts):
        raise InferenceError(f"{name} inputs must share a dtype, got {', '.join(str(t) for t in ts)}")


def _matmul_infer(types, a):  # noqa: ANN001, ANN202
    x, w = tensors(types)
    _check_float_same("matmul", [x, w])
    if x.rank == 0 or w.rank == 0:
        raise InferenceError("matmul inputs must have at least one dim")
    xs, ws = x.shape, w.shape
    k1 = xs[-1]
    k2 = ws[0] if w.rank == 1 else ws[-2]
    if not same_dim(k1, k2):
        raise InferenceError(f"matmul contraction dims differ: {x} @ {w}")
    if x.rank == 1 and w.rank == 1:
        return (TensorType(x.dtype, ()),)
    if w.rank == 1:
        return (TensorType(x.dtype, xs[:-1]),)
    if x.rank == 1:
        return (TensorType(x.dtype, ws[:-2] + ws[-1:]),)
    batch = broadcast(xs[:-2], ws[:-2])
    return (TensorType(x.dtype, batch + (xs[-2], ws[-1])),)


declare("matmul", ["a", "b"], infer=_matmul_infer, impl=torch.matmul, category="matmul", doc="torch.matmul semantics (batched, broadcasting)")


def _linear_infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    if len(ts) not in (2, 3):
        raise InferenceError("linear takes x, weight and an optional bias")
    x, w = ts[0], ts[1]
    _check_float_same("linear", ts)
    if w.rank != 2 or x.rank < 1 or not same_dim(x.shape[-1], w.shape[1]):
        raise InferenceError(f"linear needs x[..., K] and weight[N, K], got {x} and {w}")
    if len(ts) == 3 and (ts[2].rank != 1 or not same_dim(ts[2].shape[0], w.shape[0])):
        raise InferenceError(f"linear bias must be [N], got {ts[2]}")
    return (TensorType(x.dtype, x.shape[:-1] + (w.shape[0],)),)


ACTIVATIONS: dict[str, Any] = {
    "relu": torch.relu, "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
}


def _linear(x: torch.Tensor, w: torch.Tensor, *rest: Any) -> torch.Tensor:
    *bias, activation = rest
    y = F.linear(x, w, bias[0] if bias else None)
    return y if activation == "none" else ACTIVATIONS[activation](y)


def _linear_lower(node: Any) -> Call:
    ins = tuple(("in", i) for i in range(len(node.inputs)))
    if node.attrs["activation"] == "none":
        return Call(F.linear, ins)  # the common case calls PyTorch directly
    return Call(_linear, ins + (("const", node.attrs["activation"]),))


def _linear_act_infer(types, a):  # noqa: ANN001, ANN202
    if a["activation"] not in ("none", *ACTIVATIONS):
        raise InferenceError(f"linear activation must be one of none, {', '.join(ACTIVATIONS)}; got {a['activation']!r}")
    return _linear_infer(types, a)


declare(
    "linear", ["x", "weight", "*bias"], [Attr("activation", AttrKind.STR, "none")], infer=_linear_act_infer,
    impl=_linear, lower=_linear_lower, category="matmul",
    doc="act(x @ weight.T (+ bias)); weight is [N, K]; activation: none | relu | silu | gelu | gelu_tanh",
)


def _linear_add_infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    if len(ts) not in (3, 4):
        raise InferenceError("linear_add takes x, weight, residual and an optional bias")
    out = _linear_act_infer([ts[0], ts[1], *ts[3:]], a)[0]
    r = ts[2]
    if r.dtype is not out.dtype or r.rank != out.rank or not all(same_dim(p, q) for p, q in zip(r.shape, out.shape)):
        raise InferenceError(f"linear_add residual must have the result's type {out}, got {r}")
    return (out,)


def _linear_add(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor, *rest: Any) -> torch.Tensor:
    # One op more than linear: the add runs in place on linear's fresh result (same type, no
    # broadcast), so the CPU reference costs what the unfused pair did minus one allocation.
    *bias, activation = rest
    y = F.linear(x, w, bias[0] if bias else None)
    return (y if activation == "none" else ACTIVATIONS[activation](y)).add_(residual)


declare(
    "linear_add", ["x", "weight", "residual", "*bias"], [Attr("activation", AttrKind.STR, "none")],
    infer=_linear_add_infer, impl=_linear_add, category="matmul",
    doc="act(x @ weight.T (+ bias)) + residual; residual has the result's exact type (a fused epilogue)",
)


def _addmm_infer(types, a):  # noqa: ANN001, ANN202
    bias, x, w = tensors(types)
    out = _matmul_infer([x, w], {})[0]
    broadcast(bias.shape, out.shape)
    return (out,)


def _addmm(bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    return torch.addmm(bias, x, w, beta=beta, alpha=alpha)


declare(
    "addmm", ["bias", "a", "b"], [Attr("beta", AttrKind.SCALAR, 1), Attr("alpha", AttrKind.SCALAR, 1)],
    infer=_addmm_infer, impl=_addmm, category="matmul", doc="beta * bias + alpha * (a @ b), 2-dim a and b",
)


def _layer_norm_infer(types, a):  # noqa: ANN001, ANN202
    x, w, b = tensors(types)
    n = len(a["shape"])
    if x.rank < n or any(not same_dim(p, q) for p, q in zip(x.shape[x.rank - n:], a["shape"])):
        raise InferenceError(f"layer_norm over {list(a['shape'])} does not fit {x}")
    return (x,)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, shape: list, eps: float) -> torch.Tensor:
    return F.layer_norm(x, shape, w, b, eps)


declare(
    "layer_norm", ["x", "weight", "bias"], [Attr("shape", AttrKind.DIMS), Attr("eps", AttrKind.FLOAT, 1e-5)],
    infer=_layer_norm_infer, impl=_layer_norm, category="norm", doc="LayerNorm over the trailing `shape` dims",
)


def _attention_infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    if len(ts) not in (3, 4):
        raise InferenceError("attention takes q, k, v and an optional mask")
    q, k, v = ts[:3]
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise InferenceError(f"attention needs q, k, v of equal rank >= 2, got {q}, {k}, {v}")
    if not same_dim(q.shape[-1], k.shape[-1]) or not same_dim(k.shape[-2], v.shape[-2]):
        raise InferenceError(f"attention shapes disagree: q {q}, k {k}, v {v}")
    if len(ts) == 4:
        mask = ts[3]
        if mask.rank < 2 or mask.rank > q.rank:
            raise InferenceError(f"attention mask must have rank 2..{q.rank}, got {mask}")
        broadcast(mask.shape, q.shape[:-1] + (k.shape[-2],))
    return (TensorType(q.dtype, q.shape[:-1] + (v.shape[-1],)),)


# Masks known to be exactly causal (top-left aligned lower triangle over the last two dims),
# noted once per mask tensor by the plan's shape cache; keyed by id with a weak reference so a
# recycled id never matches a different tensor.
_CAUSAL: dict[int, Any] = {}


def note_causal_mask(mask: torch.Tensor) -> None:
    """Record whether a (cached) boolean mask is exactly causal; runs outside graph capture."""
    if mask.dtype is not torch.bool or mask.dim() < 2:
        return
    sq, sk = mask.shape[-2], mask.shape[-1]
    causal = sq == sk and bool(torch.equal(mask, torch.ones(sq, sk, dtype=torch.bool, device=mask.device).tril().expand(mask.shape)))
    key = id(mask)
    _CAUSAL[key] = (weakref.ref(mask, lambda _: _CAUSAL.pop(key, None)), causal)


def _is_causal_mask(mask: torch.Tensor) -> bool:
    entry = _CAUSAL.get(id(mask))
    return entry is not None and entry[0]() is mask and entry[1]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: Any) -> torch.Tensor:
    *mask, causal, scale, gqa = rest
    kw: dict[str, Any] = {"enable_gqa": True} if gqa else {}
    m = mask[0] if mask else None
    if m is not None and not causal and _is_causal_mask(m):  # same function, the causal kernel path
        m, causal = None, True
    return F.scaled_dot_product_attention(q, k, v, m, 0.0, causal, scale=scale, **kw)


declare(
    "attention", ["q", "k", "v", "*mask"],
    [Attr("causal", AttrKind.BOOL, False), Attr("scale", AttrKind.FLOAT, None, True), Attr("gqa", AttrKind.BOOL, False)],
    infer=_attention_infer, impl=_attention, category="attention",
    note_cached=lambda index, t: note_causal_mask(t) if index == 3 else None,
    doc="softmax(q @ k.T * scale + mask) @ v over (..., heads, seq, dim); gqa repeats kv heads",
)


def _rms_norm_infer(types, a):  # noqa: ANN001, ANN202
    x, w = tensors(types)
    if w.rank != 1 or x.rank < 1 or not same_dim(x.shape[-1], w.shape[0]):
        raise InferenceError(f"rms_norm needs x[..., D] and weight[D], got {x} and {w}")
    if not x.dtype.is_float:
        raise InferenceError(f"rms_norm needs a floating-point input, got {x}")
    return (TensorType(from_torch(torch.promote_types(x.dtype.torch, w.dtype.torch)), x.shape),)


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalised in fp32 like HF's Llama RMSNorm, then scaled in the promoted dtype of x and w.
    return w * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


declare(
    "rms_norm", ["x", "weight"], [Attr("eps", AttrKind.FLOAT, 1e-6)], infer=_rms_norm_infer, impl=_rms_norm,
    category="norm", doc="x / sqrt(mean(x^2, -1) + eps) * weight over the last dim, accumulated in fp32",
)



def _add_norm_infer(norm: str):  # noqa: ANN202
    def infer(types, a):  # noqa: ANN001, ANN202
        ts = tensors(types)
        a_, b_ = ts[0], ts[1]
        if a_.dtype is not b_.dtype or not all(same_dim(x, y) for x, y in zip(a_.shape, b_.shape)) or a_.rank != b_.rank:
            raise InferenceError(f"add_{norm} needs two same-typed operands, got {a_} and {b_}")
        inner = _layer_norm_infer([a_, *ts[2:]], a) if norm == "layer_norm" else _rms_norm_infer([a_, *ts[2:]], a)
        return (a_, inner[0])

    return infer


def _add_layer_norm(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, shape: list, eps: float) -> tuple:
    s = a + b
    return s, F.layer_norm(s, shape, w, bias, eps)


def _add_rms_norm(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, eps: float) -> tuple:
    s = a + b
    return s, _rms_norm(s, w, eps)


declare(
    "add_layer_norm", ["a", "b", "weight", "bias"], [Attr("shape", AttrKind.DIMS), Attr("eps", AttrKind.FLOAT, 1e-5)],
    infer=_add_norm_infer("layer_norm"), impl=_add_layer_norm, category="norm", num_outputs=2,
    doc="residual add fused with LayerNorm: (a + b, layer_norm(a + b))",
)
declare(
    "add_rms_norm", ["a", "b", "weight"], [Attr("eps", AttrKind.FLOAT, 1e-6)],
    infer=_add_norm_infer("rms_norm"), impl=_add_rms_norm, category="norm", num_outputs=2,
    doc="residual add fused with RMSNorm: (a + b, rms_norm(a + b))",
)


def _rotary_infer(types, a):  # noqa: ANN001, ANN202
    x, cos, sin = tensors(types)
    _check_float_same("rotary", [x, cos, sin])
    d = x.shape[-1] if x.rank else None
    if not isinstance(d, int) or d % 2:
        raise InferenceError(f"rotary needs x[..., D] with a static even D, got {x}")
    for name, t in (("cos", cos), ("sin", sin)):
        dims = list(zip(reversed(t.shape), reversed(x.shape)))
        if t.rank > x.rank or not all(s == 1 or same_dim(s, xs) for s, xs in dims) or not same_dim(t.shape[-1], d):
            raise InferenceError(f"rotary {name} must broadcast to x {x} without expanding it (last dim D), got {t}")
    return (x,)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


declare(
    "rotary", ["x", "cos", "sin"], infer=_rotary_infer, impl=_rotary, category="norm",
    doc="rotary position embedding, half-split form: x * cos + cat(-x[..., D/2:], x[..., :D/2]) * sin "
        "(cos/sin broadcast to x)",
)
