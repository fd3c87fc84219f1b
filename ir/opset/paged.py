"""Paged attention: attention over a block-paged KV cache, for the LLM engine.

`paged_attention` is what `passes.kv_cache.insert_kv_cache` puts where a model's `attention`
was. The model runs on a flat token batch `[1, T]` holding the new tokens of several sequences
back to back (vLLM's layout): sequence i owns tokens `query_start[i]:query_start[i + 1]`, its
keys and values live in the cache blocks `block_tables[i]`, and `seq_lens[i]` counts its tokens
including the new ones. The op (1) writes the new tokens' k and v into their cache slots
(`slot = block * block_size + offset`; a negative slot marks a padding token, never written),
then (2) lets each new token attend causally to its own sequence's cached keys: the t-th of a
sequence's n new tokens sits at position `seq_len - n + t` and sees keys at positions <= that.
Padding tokens (after the last sequence's range) get zeros.

With two more inputs, `cos` and `sin` (broadcasting to q and k), q and k are taken before their
rotary embedding and the op applies it (`rotary(q, cos, sin)`, `rotary(k, cos, sin)`, the
half-split form of `ir.opset.nn`) before writing and attending: kernels then rotate in
registers instead of running two more launches per layer.

Cache layout: `[num_blocks, block_size, kv_heads, head_dim]`: one token's heads are contiguous,
so writing a token is one contiguous store and a block is a dense `[block_size, kv_heads, D]`
tile for the kernels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..ops import Attr, AttrKind, Effect, InferenceError, declare
from ..types import TensorType
from ._infer import same_dim, tensors

_INPUTS = ["q", "k", "v", "k_cache", "v_cache", "slot_mapping", "block_tables", "seq_lens", "query_start", "*rope"]


def _infer(types, a):  # noqa: ANN001, ANN202
    ts = tensors(types)
    if len(ts) not in (9, 11):
        raise InferenceError(f"paged_attention takes 9 inputs, or 11 with rotary cos and sin, got {len(ts)}")
    q, k, v, kc, vc, slots, tables, lens, starts = ts[:9]
    for name, t in zip(("cos", "sin"), ts[9:]):
        d = q.shape[-1]
        fits = t.rank <= 4 and t.dtype is q.dtype and isinstance(d, int) and d % 2 == 0
        fits = fits and all(s == 1 or (same_dim(s, qs) and same_dim(s, ks)) for s, qs, ks in
                            zip(reversed(t.shape), reversed(q.shape), reversed(k.shape)))
        if not fits or not same_dim(t.shape[-1], d):
            raise InferenceError(f"paged_attention rotary {name} {t} must broadcast to q {q} and k {k} (last dim D, even)")
    if q.rank != 4 or k.rank != 4 or v.rank != 4 or not same_dim(q.shape[0], 1):
        raise InferenceError(f"paged_attention takes q, k, v as [1, heads, T, D], got {q}, {k}, {v}")
    if kc.rank != 4 or kc.shape != vc.shape:
        raise InferenceError(f"paged_attention caches must be [blocks, block_size, kv_heads, D] and equal, got {kc}, {vc}")
    if not (same_dim(kc.shape[2], k.shape[1]) and same_dim(kc.shape[3], k.shape[3]) and same_dim(v.shape[3], k.shape[3])):
        raise InferenceError(f"paged_attention cache {kc} does not hold k {k}")
    if kc.dtype is not k.dtype or k.dtype is not q.dtype or v.dtype is not q.dtype:
        raise InferenceError(f"paged_attention q, k, v and caches must share a dtype, got {q}, {k}, {kc}")
    if slots.rank != 1 or tables.rank != 2 or lens.rank != 1 or starts.rank != 1:
        raise InferenceError("paged_attention metadata: slot_mapping [T], block_tables [N, M], seq_lens [N], query_start [N + 1]")
    if any(t.dtype.kind != "int" for t in (slots, tables, lens, starts)):
        raise InferenceError("paged_attention metadata must be integer tensors")
    return (TensorType(q.dtype, q.shape),)


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> None:
    """Store the new tokens' k/v ([1, Hkv, T, D]) into their slots; negative slots are skipped."""
    nb, bs, hkv, d = k_cache.shape
    keep = slots >= 0
    idx = slots[keep]
    k_cache.view(nb * bs, hkv, d)[idx] = k[0].transpose(0, 1)[keep]
    v_cache.view(nb * bs, hkv, d)[idx] = v[0].transpose(0, 1)[keep]


def reference_paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slots: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start: torch.Tensor,
    scale: float | None,
) -> torch.Tensor:
    """The PyTorch implementation (any device; reads the metadata on the host, one SDPA call per
    sequence). Kernels are checked against this."""
    write_kv(k, v, k_cache, v_cache, slots)
    nb, bs, hkv, d = k_cache.shape
    h = q.shape[1]
    out = torch.zeros_like(q)
    lens = seq_lens.tolist()
    starts = query_start.tolist()
    for i, total in enumerate(lens):
        s0, s1 = starts[i], starts[i + 1]
        n = s1 - s0
        if n <= 0:
            continue
        blocks = block_tables[i, : -(-total // bs)].long()
        keys = k_cache[blocks].reshape(-1, hkv, d)[:total].transpose(0, 1)  # (Hkv, L, D)
        vals = v_cache[blocks].reshape(-1, hkv, d)[:total].transpose(0, 1)
        qpos = torch.arange(total - n, total, device=q.device)[:, None]
        mask = torch.arange(total, device=q.device)[None, :] <= qpos  # (n, L)
        o = F.scaled_dot_product_attention(
            q[:, :, s0:s1], keys[None], vals[None], mask, scale=scale, enable_gqa=h != hkv,
        )
        out[:, :, s0:s1] = o
    return out


def _impl(*args: Any) -> torch.Tensor:
    *tensors_, scale = args
    if len(tensors_) == 11:  # q and k arrive before the rotary embedding: apply it first
        from .nn import _rotary

        q, k, *rest, cos, sin = tensors_
        tensors_ = [_rotary(q, cos, sin), _rotary(k, cos, sin), *rest]
    return reference_paged_attention(*tensors_, scale)


declare(
    "paged_attention", _INPUTS, [Attr("scale", AttrKind.FLOAT, None, True)], infer=_infer, impl=_impl,
    effect=Effect.WRITE, category="attention",
    doc="write new k/v into cache slots, then causal attention of each new token over its sequence's paged cache",
)

__all__ = ["reference_paged_attention", "write_kv"]
