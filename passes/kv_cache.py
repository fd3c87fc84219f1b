"""insert_kv_cache: turn a traced decoder (no cache) into a paged-KV model serving prefill and
decode from one graph.

The model is traced on a flat token batch: `input_ids [1, S]`, `position_ids [1, S]` (see
`ir.opset.paged` for the layout). Every `attention` the pattern passes normalised (SDPA, written
out softmax attention, repeated-KV GQA; rotary already applied to k, so the cache holds rotated
keys) becomes a `paged_attention` that writes the new tokens' k/v into the cache blocks and
attends over each sequence's own cached tokens. The model's own mask is checked, not trusted:
its cone is evaluated for one sequence at two lengths and must be exactly causal; the paged op
then supplies causality per sequence, and the mask's nodes die. The final projection (lm_head)
runs only on the tokens whose logits are wanted (`logits_indices`).

New graph inputs, in this order after the model's: slot_mapping i64[S], block_tables i32[N, M],
seq_lens i32[N], query_start i32[N + 1], logits_indices i64[L]. Caches are named constants
`kv.<layer>.k` / `kv.<layer>.v` (module state the op writes; nothing folds or caches them).

    %a = attention(%q, %k, %v, %mask) {scale=0.125, gqa=true} : bf16[1, 32, S, 64]
  becomes
    %a = paged_attention(%q, %k, %v, %kv.0.k, %kv.0.v, %slot_mapping, %block_tables,
                         %seq_lens, %query_start) {scale=0.125} : bf16[1, 32, S, 64]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import debug
from ..errors import KilnError
from ..ir import Graph, Node, Value
from ..ir.dtypes import i32, i64
from ..ir.interpret import run_graph
from ..ir.symbolic import symbol
from ..ir.types import TensorType
from .manager import Pass, PassContext
from .rewrite import Rebuilder

POSITIONS = "position_ids"


class KVCacheInsertionError(KilnError):
    """The model cannot be served with a paged KV cache (the message names the node)."""


@dataclass(frozen=True)
class AttentionSite:
    """One attention of the model: its kv heads, head dim and dtype (what its cache holds)."""

    node: Node
    layer: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype


def find_attention_sites(g: Graph) -> list[AttentionSite]:
    """The model's attentions in order, each checked convertible; raises KVCacheInsertionError
    naming the first that is not (bidirectional, non-causal mask, batch dim not 1, ...)."""
    sites = []
    names = {v: v.name for v in g.inputs}
    if POSITIONS not in names.values():
        raise KVCacheInsertionError(f"the model must be traced with an explicit {POSITIONS!r} input (got {list(names.values())})")
    for n in g.nodes:
        if n.op.name in ("paged_attention",):
            raise KVCacheInsertionError("the graph already has a paged KV cache")
        if n.op.name != "attention":
            continue
        q, k = n.inputs[0].type, n.inputs[1].type
        where = f"attention node {len(sites)} ({_where(n)})"
        if q.rank != 4 or q.shape[0] != 1 or not isinstance(k.shape[1], int) or not isinstance(k.shape[3], int):
            raise KVCacheInsertionError(f"{where}: expected q [1, heads, S, D] with static kv heads and head dim, got q {q}, k {k}")
        if len(n.inputs) == 4:
            _check_causal_mask(g, n, where)
        elif not n.attrs["causal"]:
            raise KVCacheInsertionError(f"{where}: attention is bidirectional (no mask, causal=false); only decoder (causal) attention can use a KV cache")
        sites.append(AttentionSite(n, len(sites), int(k.shape[1]), int(k.shape[3]), k.dtype.torch))
    if not sites:
        raise KVCacheInsertionError("no attention found in the traced model; is it a transformers decoder?")
    return sites


def _where(n: Node) -> str:
    s = n.source
    return f"module {s.module}" if s is not None and s.module else "no source module"


def _cone(g: Graph, v: Value) -> list[Node]:
    need = {v}
    picked = []
    for n in reversed(g.nodes):
        if any(o in need for o in n.outputs):
            picked.append(n)
            need.update(n.inputs)
    return picked[::-1]


def _check_causal_mask(g: Graph, n: Node, where: str) -> None:
    """Evaluate the mask's cone for one sequence (positions 0..T-1) at two lengths; it must be
    exactly causal (boolean lower triangle, or 0 / very negative additive)."""
    mask = n.inputs[3]
    cone = _cone(g, mask)
    used_inputs = {v for m in cone for v in m.inputs if v.kind == "input"}
    for v in used_inputs:
        if v.name != POSITIONS:
            raise KVCacheInsertionError(f"{where}: its mask depends on input {v.name!r}; trace the model with input_ids and position_ids only (no attention_mask)")
    rb = Rebuilder(g)
    for m in cone:
        rb.copy(m)
    sub = rb.out
    sub.outputs = [rb.get(mask)]
    device = next((d.device for d in g.constant_data.values() if isinstance(d, torch.Tensor)), torch.device("cpu"))
    for t in (3, 7):
        feeds = [_probe_input(v, t).to(device) for v in g.inputs]
        m = run_graph(sub, feeds)[0]
        got = m if m.dtype == torch.bool else (m == 0)
        if m.dtype != torch.bool and bool(((m != 0) & (m > -1e4)).any()):
            raise KVCacheInsertionError(f"{where}: its additive mask has values other than 0 and -inf; only causal masks are supported")
        want = torch.ones(t, t, dtype=torch.bool, device=got.device).tril()
        if got.shape[-2:] != (t, t) or not bool((got == want).all()):
            raise KVCacheInsertionError(
                f"{where}: its mask is not causal for one sequence of {t} tokens (sliding window or bidirectional?); "
                "kiln's paged attention supports full causal attention"
            )


def _probe_input(v: Value, t: int) -> torch.Tensor:
    t_type = v.type
    assert isinstance(t_type, TensorType)
    shape = [t if not isinstance(d, int) else d for d in t_type.shape]
    if v.name == POSITIONS:
        return torch.arange(t).expand(*shape).contiguous()
    return torch.zeros(shape, dtype=t_type.dtype.torch)


def insert_kv_cache(g: Graph, ctx: PassContext, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> Graph:
    """Rewrite every attention into paged attention over `caches` (one (k, v) pair per layer)."""
    sites = find_attention_sites(g)
    if len(caches) != len(sites):
        raise KVCacheInsertionError(f"{len(sites)} attention layers but {len(caches)} cache pairs")
    for s, (kc, vc) in zip(sites, caches):
        want = (s.kv_heads, s.head_dim)
        if kc.dim() != 4 or tuple(kc.shape[2:]) != want or kc.shape != vc.shape or kc.dtype != s.dtype:
            raise KVCacheInsertionError(f"layer {s.layer}: cache {tuple(kc.shape)} {kc.dtype} does not fit [blocks, block_size, {want[0]}, {want[1]}] {s.dtype}")
    seq = g.inputs[0].type.shape[1]
    n_seq, m_blk, n_out = symbol("N"), symbol("M"), symbol("L")
    rb = Rebuilder(g)
    slot = rb.out.add_input("slot_mapping", TensorType(i64, (seq,)))
    tables = rb.out.add_input("block_tables", TensorType(i32, (n_seq, m_blk)))
    lens = rb.out.add_input("seq_lens", TensorType(i32, (n_seq,)))
    starts = rb.out.add_input("query_start", TensorType(i32, (n_seq + 1,)))
    pick = rb.out.add_input("logits_indices", TensorType(i64, (n_out,)))
    consts = []
    for s, (kc, vc) in zip(sites, caches):
        consts.append((rb.out.add_constant(f"kv.{s.layer}.k", kc), rb.out.add_constant(f"kv.{s.layer}.v", vc)))
    by_node = {id(s.node): s for s in sites}
    head = _lm_head(g)
    uses, outputs = g.uses(), set(g.outputs)
    for n in g.nodes:
        s = by_node.get(id(n))
        if s is not None:
            q, k, v = (rb.get(x) for x in n.inputs[:3])
            rope = _shared_rotary(n.inputs[0], n.inputs[1], uses, outputs) if debug.PAGED_ROPE else None
            if rope is not None:  # the paged op applies the rotary embedding itself (no separate launches)
                q, k = rb.get(rope[0]), rb.get(rope[1])
                rope = [rb.get(rope[2]), rb.get(rope[3])]
            kc, vc = consts[s.layer]
            new = rb.out.add_node("paged_attention", [q, k, v, kc, vc, slot, tables, lens, starts, *(rope or [])],
                                  {"scale": n.attrs["scale"]}, source=n.source)
            rb.map[n.outputs[0]] = new.outputs[0]
        elif n is head:
            x = rb.out.call("index_select", rb.get(n.inputs[0]), pick, dim=1)
            new = rb.out.add_node(n.op, [x] + [rb.get(v) for v in n.inputs[1:]], dict(n.attrs), source=n.source)
            rb.map[n.outputs[0]] = new.outputs[0]
        else:
            rb.copy(n)
    out = rb.finish()
    if head is None:  # no recognisable head: pick rows of the logits themselves
        out.outputs[0] = out.call("index_select", out.outputs[0], pick, dim=1)
    ctx.count("paged_attentions", len(sites))
    from .dce import eliminate_dead_nodes

    return eliminate_dead_nodes(out, ctx)


def _shared_rotary(q: Value, k: Value, uses: dict[Value, list[Node]], outputs: set[Value]) -> tuple[Value, Value, Value, Value] | None:
    """(q before rotary, k before rotary, cos, sin) when q and k are `rotary` outputs of the same
    cos and sin whose only reader is this attention (then the paged op can rotate them itself)."""
    pq, pk = q.node, k.node
    if pq is None or pk is None or pq.op.name != "rotary" or pk.op.name != "rotary" or pq is pk:
        return None
    if pq.inputs[1] is not pk.inputs[1] or pq.inputs[2] is not pk.inputs[2]:
        return None
    if len(uses.get(q, ())) != 1 or len(uses.get(k, ())) != 1 or q in outputs or k in outputs:
        return None
    return pq.inputs[0], pk.inputs[0], pq.inputs[1], pq.inputs[2]


def _lm_head(g: Graph) -> Node | None:
    """The linear producing the first output (the logits) from per-token hidden states [1, S, D]."""
    if not g.outputs or g.outputs[0].node is None:
        return None
    n = g.outputs[0].node
    return n if n.op.name == "linear" and n.inputs[0].type.rank == 3 else None


def kv_cache_pass(caches: list[tuple[torch.Tensor, torch.Tensor]]) -> Pass:
    """The pass bound to the engine's cache tensors (a named pure function of the graph)."""
    return Pass("insert_kv_cache", lambda g, ctx: insert_kv_cache(g, ctx, caches), "attention -> paged attention over the KV cache blocks; logits only where wanted")


__all__ = ["AttentionSite", "KVCacheInsertionError", "find_attention_sites", "insert_kv_cache", "kv_cache_pass"]
