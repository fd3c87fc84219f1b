"""Triton kernels for kiln's `paged_attention` op: the KV write, the paged attention (prefill,
chunked prefill and decode alike) with optional split-K, and the split-K reduction.

    write:   k_cache[slot] = k[:, :, t], v_cache[slot] = v[:, :, t]   for slot_mapping[t] >= 0
    attend:  o[t, h] = softmax(q[t, h] . K_i^T * scale, causal) @ V_i   (i = t's sequence)

Layouts (see `ir.opset.paged`): q, k, v `[1, heads, T, D]` (any strides: HF hands over
transposed views), caches `[num_blocks, block_size, kv_heads, D]`, output `[1, H, T, D]` stored
token-major (`[1, T, H, D]` memory), which is what the model's `transpose(1, 2).reshape` wants.

Launches per call (all on the current stream, none reads a device value on the host):
1. `write`: grid (T,). Token t stores its kv heads at its slot (skipped when the slot is < 0)
   and, when t lies outside [query_start[0], query_start[N]) (a padding token), zeroes its
   output row. No boolean indexing, no `.item()`: capture-safe.
2. `attend`: grid (query tiles, kv heads, splits). A tile is BLOCK_Q consecutive tokens of ONE
   sequence times the G = H // Hkv query heads sharing a kv head (rows = token-major,
   head-minor, G padded to a power of two), so each K/V element is loaded once per tile for all
   of its query heads (GQA). Tiles are numbered as in vLLM's unified kernel: sequence i owns
   tile ids [qs[i] // BLOCK_Q + i, qs[i + 1] // BLOCK_Q + i + 1), which is strictly increasing
   in i, always enough tiles for its tokens, and at most T // BLOCK_Q + N ids in all, so the
   grid comes from shapes alone; a program finds its sequence by counting the tile starts <=
   its id (one vector load of query_start) and exits when its tile is empty. It walks the
   sequence's keys through the block table in BLOCK_N-token chunks (a chunk may span several
   cache blocks: each key's block is looked up) up to the tile's causal limit, with an online
   softmax in fp32; chunks every row of the tile sees skip the causal compare. A sequence's n
   new tokens are the last n of its seq_len tokens (chunked prefill, prefix-cache hits).
3. With split-K (splits > 1) each program handles 1/splits of its tile's chunks and stores
   unnormalised partials (running max m, sum l, acc) in fp32; `combine` (grid (T, H)) merges
   them: o = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s.

Decode vs prefill. Which tokens belong to which sequence is only known on the device, so there
is one attention kernel, correct for any mix, and the host picks its tile shape and split count
from shapes (T = q.shape[2], N = seq_lens.shape[0], M = block_tables.shape[1]) only:
* decode tiles (BLOCK_M = max(16, G) rows, i.e. 16 // G tokens) when the batch averages fewer
  than 8 new tokens per sequence (T < 8 N): a one-token sequence wastes few rows of its tile;
* prefill tiles (BLOCK_M = 64 rows) otherwise: more query rows per K/V load;
* splits = enough programs to fill the GPU (4 per SM) when tiles x kv heads are few, capped by
  the longest possible context M * block_size (>= 256 keys per split) and 32.

Napkin math, decode (one new token per sequence, context L, bf16, Llama-1.1B: H 32, Hkv 4, D 64):
    KV bytes read = 2 (K, V) * L * Hkv * D * 2 B = 1 KiB per token of context (8 MiB at L 8192);
    FLOPs = 4 * H * L * D = 8 K per token of context: 8 FLOP/byte, far below the ~300
    FLOP/byte ridge: memory-bound, the floor is KV bytes / HBM bandwidth (~4.8 TB/s H200);
    q, output and the block table are < 1% of that. Batch 64 x L 8192: 512 MiB, ~0.11 ms floor.
Prefill (n new tokens, context L): FLOPs ~ 2 * H * n * L * D (causal), KV read once per tile
    (from L2 after the first tile of a kv head): compute-bound for n >> 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .cache import load_module
from .pdl import launch_flags, with_pdl

MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_SOURCE = '''import triton
import triton.language as tl


@triton.jit
def rotate(x, base, sd, c_base, s_base, cd, offs_d, mask, HALF: tl.constexpr):
    # x * cos + rotate_half(x) * sin for tiles whose last axis is offs_d (fp32, rounded once)
    partner = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
    xp = tl.load(base + partner[None, :] * sd, mask=mask, other=0).to(tl.float32)
    c = tl.load(c_base + offs_d[None, :] * cd, mask=mask, other=0).to(tl.float32)
    sv = tl.load(s_base + offs_d[None, :] * cd, mask=mask, other=0).to(tl.float32)
    rot = tl.where((offs_d < HALF)[None, :], -xp, xp)
    return (x.to(tl.float32) * c + rot * sv).to(x.dtype)


@triton.jit
def write(k, v, kc, vc, slots, qs, out, cs, sn, skh, skt, skd, svh, svt, svd, kcb, kco, kch, kcd, vcb, vco, vch, vcd,
          sot, soh, sod, crh, crt, crd, N, HKV, H, D, BS: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_H: tl.constexpr,
          BLOCK_D: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, BLOCK_HKV)
    d_ok = offs_d < D
    slot = tl.load(slots + t).to(tl.int64)
    ok = (offs_h[:, None] < HKV) & d_ok[None, :] & (slot >= 0)
    blk = tl.where(slot >= 0, slot, 0) // BS
    off = tl.where(slot >= 0, slot, 0) % BS
    kt = tl.load(k + t * skt + offs_h[:, None] * skh + offs_d[None, :] * skd, mask=ok, other=0)
    if ROPE:  # k arrives before its rotary embedding (cos/sin strides crh/crt/crd over k's shape)
        kt = rotate(kt, k + t * skt + offs_h[:, None] * skh, skd, cs + t * crt + offs_h[:, None] * crh,
                    sn + t * crt + offs_h[:, None] * crh, crd, offs_d, ok, HALF)
    tl.store(kc + blk * kcb + off * kco + offs_h[:, None] * kch + offs_d[None, :] * kcd, kt, mask=ok)
    vt = tl.load(v + t * svt + offs_h[:, None] * svh + offs_d[None, :] * svd, mask=ok, other=0)
    tl.store(vc + blk * vcb + off * vco + offs_h[:, None] * vch + offs_d[None, :] * vcd, vt, mask=ok)
    pad = (t < tl.load(qs)) | (t >= tl.load(qs + N))  # a padding token: its output row is zero
    hq = tl.arange(0, BLOCK_H)
    zero = tl.zeros([BLOCK_H, BLOCK_D], tl.float32).to(out.dtype.element_ty)
    tl.store(out + t * sot + hq[:, None] * soh + offs_d[None, :] * sod, zero, mask=(hq[:, None] < H) & d_ok[None, :] & pad)


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr, INTERPRETED: tl.constexpr):
    if INTERPRETED:  # the interpreter's tl.dot multiplies bf16 bit patterns: go through fp32
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def chunk(acc, l_i, m_i, qt, start, hi, pos, offs_n0, offs_d, d_ok, table, stm, kc, vc, kcb, kco, kcd,
          vcb, vco, vcd, qk_scale, CAUSAL: tl.constexpr, BS: tl.constexpr, IEEE: tl.constexpr,
          INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = start + offs_n0  # key positions of this chunk
    n_ok = offs_n < hi
    blk = tl.load(table + (offs_n // BS) * stm, mask=n_ok, other=0).to(tl.int64)
    kt = tl.load(kc + (blk * kcb + (offs_n % BS) * kco)[None, :] + offs_d[:, None] * kcd,
                 mask=n_ok[None, :] & d_ok[:, None], other=0)  # (BLOCK_D, BLOCK_N)
    s = dot(qt, kt, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE, INTERPRETED) * qk_scale  # log2 domain
    keep = n_ok[None, :]
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= pos[:, None])
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: no -inf - -inf
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    vt = tl.load(vc + (blk * vcb + (offs_n % BS) * vco)[:, None] + offs_d[None, :] * vcd,
                 mask=n_ok[:, None] & d_ok[None, :], other=0)  # (BLOCK_N, BLOCK_D)
    acc = dot(p.to(vt.dtype), vt, acc * alpha[:, None], IEEE, INTERPRETED)
    return acc, l_i, m_new


# Chunks [lo, hi). Triton 3.6's interpreter cannot take a runtime `range` bound under numpy
# >= 2.4 (triton-lang/triton#9171): interpreted runs use a while loop, compiled ones the for loop
# Triton software-pipelines.
@triton.jit
def span(acc, l_i, m_i, qt, lo, hi, pos, offs_n0, offs_d, d_ok, table, stm, kc, vc, kcb, kco, kcd, vcb, vco, vcd,
         qk_scale, CAUSAL: tl.constexpr, BS: tl.constexpr, IEEE: tl.constexpr, INTERPRETED: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    if INTERPRETED:
        start = lo
        while start < hi:
            acc, l_i, m_i = chunk(acc, l_i, m_i, qt, start, hi, pos, offs_n0, offs_d, d_ok, table, stm, kc, vc, kcb, kco,
                                  kcd, vcb, vco, vcd, qk_scale, CAUSAL, BS, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
            start += BLOCK_N
    else:
        for start in range(lo, hi, BLOCK_N):
            acc, l_i, m_i = chunk(acc, l_i, m_i, qt, start, hi, pos, offs_n0, offs_d, d_ok, table, stm, kc, vc, kcb, kco,
                                  kcd, vcb, vco, vcd, qk_scale, CAUSAL, BS, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
    return acc, l_i, m_i


@triton.jit
def attend(q, kc, vc, tables, lens, qs, out, pm, pl, pacc, cs, sn, sqh, sqt, sqd, kcb, kco, kch, kcd, vcb, vco, vch, vcd,
           stn, stm, sot, soh, sod, crh, crt, crd, N, T, H, G, D, qk_scale, BS: tl.constexpr, GP: tl.constexpr,
           BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
           BLOCK_SEQ: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr, INTERPRETED: tl.constexpr,
           ROPE: tl.constexpr, HALF: tl.constexpr):
    pid = tl.program_id(0)
    hk = tl.program_id(1)
    seqs = tl.arange(0, BLOCK_SEQ)
    starts = tl.load(qs + seqs, mask=seqs < N, other=0) // BLOCK_Q + seqs  # strictly increasing tile ids
    i = tl.sum(((starts <= pid) & (seqs < N)).to(tl.int32), 0) - 1  # this program's sequence
    if i < 0:
        return
    q_beg = tl.load(qs + i)
    q_end = tl.load(qs + i + 1)
    row0 = q_beg + (pid - (q_beg // BLOCK_Q + i)) * BLOCK_Q  # first token of this tile
    if row0 >= q_end:
        return
    past = tl.load(lens + i) - (q_end - q_beg)  # tokens cached before this step's new ones
    offs_m = tl.arange(0, BLOCK_M)
    tok = row0 + offs_m // GP
    g = offs_m % GP
    row_ok = (tok < q_end) & (g < G)
    head = hk * G + g
    pos = tl.where(row_ok, past + tok - q_beg, -1)  # each row's position; -1: sees nothing
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    io = tok.to(tl.int64)[:, None] * sqt + head[:, None] * sqh + offs_d[None, :] * sqd
    qt = tl.load(q + io, mask=row_ok[:, None] & d_ok[None, :], other=0)
    if ROPE:  # q arrives before its rotary embedding (cos/sin strides crh/crt/crd over q's shape)
        tq = tok.to(tl.int64)[:, None]
        qt = rotate(qt, q + tq * sqt + head[:, None] * sqh, sqd, cs + tq * crt + head[:, None] * crh,
                    sn + tq * crt + head[:, None] * crh, crd, offs_d, row_ok[:, None] & d_ok[None, :], HALF)
    kv_hi = past + tl.minimum(row0 + BLOCK_Q, q_end) - q_beg  # keys the tile's last row sees
    full = (past + row0 - q_beg + 1) // BLOCK_N * BLOCK_N  # keys before this every row sees
    split = tl.program_id(2)
    per = tl.cdiv(tl.cdiv(kv_hi, BLOCK_N), tl.num_programs(2)) * BLOCK_N
    lo = tl.minimum(split * per, kv_hi)
    hi = tl.minimum(lo + per, kv_hi)
    mid = tl.minimum(tl.maximum(full, lo), hi)
    table = tables + i.to(tl.int64) * stn
    kc = kc + hk * kch
    vc = vc + hk * vch
    offs_n0 = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = span(acc, l_i, m_i, qt, lo, mid, pos, offs_n0, offs_d, d_ok, table, stm, kc, vc, kcb, kco, kcd,
                         vcb, vco, vcd, qk_scale, False, BS, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = span(acc, l_i, m_i, qt, mid, hi, pos, offs_n0, offs_d, d_ok, table, stm, kc, vc, kcb, kco, kcd,
                         vcb, vco, vcd, qk_scale, True, BS, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
    ok = row_ok[:, None] & d_ok[None, :]
    if SPLIT:  # partials: [splits, T, H] for m and l, [splits, T, H, D] for acc, all fp32
        prow = (split * T + tok.to(tl.int64)) * H + head
        tl.store(pm + prow, m_i, mask=row_ok)
        tl.store(pl + prow, l_i, mask=row_ok)
        tl.store(pacc + prow[:, None] * D + offs_d[None, :], acc, mask=ok)
    else:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        oo = tok.to(tl.int64)[:, None] * sot + head[:, None] * soh + offs_d[None, :] * sod
        tl.store(out + oo, o.to(out.dtype.element_ty), mask=ok)


@triton.jit
def combine(qs, out, pm, pl, pacc, sot, soh, sod, N, T, H, D, S, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    if (t < tl.load(qs)) | (t >= tl.load(qs + N)):
        return  # a padding token: `write` zeroed its row
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < S
    prow = (offs_s * T + t) * H + h
    m = tl.load(pm + prow, mask=s_ok, other=float("-inf"))
    big = tl.max(m, 0)
    big = tl.where(big == float("-inf"), 0.0, big)
    w = tl.where(s_ok, tl.exp2(m - big), 0.0)  # m is in the log2 domain
    l_sum = tl.sum(w * tl.load(pl + prow, mask=s_ok, other=0), 0)
    a = tl.load(pacc + prow[:, None] * D + offs_d[None, :], mask=s_ok[:, None] & (offs_d[None, :] < D), other=0)
    o = tl.sum(w[:, None] * a, 0) / tl.where(l_sum > 0, l_sum, 1.0)
    tl.store(out + t * sot + h * soh + offs_d * sod, o.to(out.dtype.element_ty), mask=offs_d < D)
'''


@dataclass(frozen=True, slots=True)
class PagedConfig:
    """One attention launch shape: rows per tile (BLOCK_Q tokens x G padded heads), keys per
    chunk, split-K count (0: choose from shapes), warps and pipeline stages."""

    block_m: int
    block_n: int
    splits: int = 0
    num_warps: int = 4
    num_stages: int = 2


DECODE = PagedConfig(16, 64, 0, 4, 3)
PREFILL = PagedConfig(64, 64, 0, 4, 2)
MIN_SPLIT_KEYS = 256
MAX_SPLITS = 32
_SMS: dict[int, int] = {}


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a host property, no sync); 4 elsewhere."""
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


def choose_config(t: int, n: int, m: int, block_size: int, hkv: int, group: int, device: torch.device) -> tuple[PagedConfig, int]:
    """(tile config, splits) from shapes alone: T flat tokens, N sequences, M table width."""
    cfg = DECODE if t < 8 * n else PREFILL
    block_q = max(1, cfg.block_m // _pow2(group))
    tiles = max(n, -(-t // block_q))  # tiles that have work (upper bound T // BLOCK_Q + N incl. empty ones)
    want = -(-4 * _sm_count(device) // (tiles * hkv))
    splits = max(1, min(want, (m * block_size) // MIN_SPLIT_KEYS, MAX_SPLITS))
    return cfg, splits


class PagedAttentionLauncher:
    """Runs one `paged_attention` node: write kernel, attention kernel, and (split-K) combine.

    `config` forces a tile shape (tests use small tiles so several chunks and tiles run in the
    interpreter); its `splits` > 0 forces the split count. Calls the kernel cannot take (head
    dims > 128, other dtypes, GQA ratios that do not divide) run the op's reference.
    """

    __slots__ = ("mod", "scale", "reference", "config", "pdl")

    def __init__(self, scale: float | None, reference: Callable[..., Any], config: PagedConfig | None = None):
        kernels = ("write", "attend", "combine")  # PDL where it runs: wait for the previous kernel, let the next launch
        self.mod = load_module(with_pdl(_SOURCE, trigger=kernels, wait=kernels))
        self.pdl = launch_flags()
        self.scale, self.reference, self.config = scale, reference, config

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slots: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor, starts: torch.Tensor,
                 *rope: torch.Tensor) -> torch.Tensor:
        _, h, t, d = q.shape
        hkv = k.shape[1]
        if (q.dtype not in _DTYPES or d > MAX_HEAD_DIM or h % hkv or k_cache.shape[2:] != (hkv, d) or t == 0
                or not (q.dtype == k.dtype == v.dtype == k_cache.dtype == v_cache.dtype)
                or not all(x.is_contiguous() for x in (slots, lens, starts))
                or (rope and (d % 2 or rope[0].dtype != q.dtype or rope[1].dtype != q.dtype))):
            return self.reference(q, k, v, k_cache, v_cache, slots, tables, lens, starts, *rope, self.scale)
        n, m = lens.shape[0], tables.shape[1]
        bs = k_cache.shape[1]
        block_d = max(16, _pow2(d))
        out = torch.empty((1, t, h, d), dtype=q.dtype, device=q.device).transpose(1, 2)  # (1, H, T, D), token-major
        qs = starts
        # rotary cos/sin read through broadcast strides (head, token, d) over k's and q's shapes
        cs, sn, k_rs, q_rs = self._rope(rope, q, k)
        self.mod.write[(t,)](
            k, v, k_cache, v_cache, slots, qs, out, cs, sn, *k.stride()[1:], *v.stride()[1:], *k_cache.stride(), *v_cache.stride(),
            out.stride(2), out.stride(1), out.stride(3), *k_rs, n, hkv, h, d,
            BS=bs, BLOCK_HKV=max(2, _pow2(hkv)), BLOCK_H=max(2, _pow2(h)), BLOCK_D=block_d, ROPE=bool(rope), HALF=d // 2, **self.pdl,
        )
        if n == 0:
            return out
        self._attend(q, k_cache, v_cache, tables, lens, qs, out, n, m, bs, block_d, cs, sn, q_rs, bool(rope))
        return out

    @staticmethod
    def _rope(rope: tuple, q: torch.Tensor, k: torch.Tensor) -> tuple:
        """(cos, sin, their (head, token, d) strides over k's shape, over q's shape); cos and sin
        are brought to one layout when theirs differ. Without rope: unused dummies."""
        if not rope:
            return q, q, (0, 0, 0), (0, 0, 0)
        cos, sin = rope
        if cos.shape != sin.shape or cos.stride() != sin.stride():
            shape = torch.broadcast_shapes(cos.shape, sin.shape)
            cos, sin = cos.expand(shape).contiguous(), sin.expand(shape).contiguous()
        return cos, sin, tuple(cos.expand(k.shape).stride()[1:]), tuple(cos.expand(q.shape).stride()[1:])

    def _attend(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
                qs: torch.Tensor, out: torch.Tensor, n: int, m: int, bs: int, block_d: int,
                cs: torch.Tensor, sn: torch.Tensor, q_rs: tuple, rope: bool) -> None:
        _, h, t, d = q.shape
        hkv = kc.shape[2]
        group = h // hkv
        cfg, splits = choose_config(t, n, m, bs, hkv, group, q.device)
        if self.config is not None:
            cfg, splits = self.config, self.config.splits or splits
        gp = _pow2(group)
        block_q = max(1, cfg.block_m // gp)
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(d)
        if splits > 1:
            pm = torch.empty((splits, t, h), dtype=torch.float32, device=q.device)
            pl = torch.empty_like(pm)
            pacc = torch.empty((splits, t, h, d), dtype=torch.float32, device=q.device)
        else:
            pm = pl = pacc = out  # unused
        grid = (t // block_q + n, hkv, splits)
        self.mod.attend[grid](
            q, kc, vc, tables, lens, qs, out, pm, pl, pacc, cs, sn, *q.stride()[1:], *kc.stride(), *vc.stride(),
            *tables.stride(), out.stride(2), out.stride(1), out.stride(3), *q_rs, n, t, h, group, d, scale * LOG2E,
            BS=bs, GP=gp, BLOCK_Q=block_q, BLOCK_M=block_q * gp, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
            BLOCK_SEQ=max(16, _pow2(n)),
            SPLIT=splits > 1, IEEE=q.dtype == torch.float32, INTERPRETED=not q.is_cuda, ROPE=rope, HALF=d // 2,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **self.pdl,
        )
        if splits > 1:
            self.mod.combine[(t, h)](
                qs, out, pm, pl, pacc, out.stride(2), out.stride(1), out.stride(3), n, t, h, d, splits,
                BLOCK_S=_pow2(splits), BLOCK_D=block_d, **self.pdl,
            )


def paged_attention_kernel(node: Any, config: PagedConfig | None = None) -> PagedAttentionLauncher | None:
    """A launcher for a `paged_attention` node, or None when it should stay in PyTorch (head
    dims known to exceed 128, dtypes other than fp16/bf16/fp32)."""
    if node.op.name != "paged_attention":
        return None
    q = node.inputs[0].type
    if q.dtype.torch not in _DTYPES or q.rank != 4:
        return None
    d = q.shape[-1]
    if isinstance(d, int) and d > MAX_HEAD_DIM:
        return None
    return PagedAttentionLauncher(node.attrs["scale"], node.op.impl, config)
