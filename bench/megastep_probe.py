"""How short can a batch-1 decode step be when the whole layer stack is ONE persistent kernel?

The question behind issue 6's 1.1B bars: kiln's decode step is ~140-210 kernels, each paying a
few microseconds of launch, ramp-up and tail whatever its bytes, so the quantized schemes' halved
or quartered weight bytes buy little. This probe runs all decoder layers of a Llama-shaped model
in one launch: one program per SM; every program owns fixed row blocks of every projection; the
projections' weights are re-laid out offline as one contiguous stream per program, in the order
that program consumes them, so the next tile's address never depends on data and each program
keeps the next tiles' loads in flight across the grid barriers that separate the five dependent
stages of a layer (q/k/v -> attention -> o + residual -> norm, gate/up, SiLU-mul -> down + residual).

Variants: `full` (the step), `sync` (barriers and the activation traffic only: the dependency
chain's floor) and `stream` (weights only, no barriers: the streaming ceiling). Every scheme's
result is checked against a PyTorch fp32 reference of the same layer stack first.

    python3 bench/megastep_probe.py [--shape 1b] [--schemes bf16 int8 int4] [--programs N]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl
from probe_common import timed

SHAPES = {  # hidden, layers, heads, kv heads, intermediate
    "1b": (2048, 22, 32, 4, 5632),
    "tiny": (64, 2, 4, 2, 160),
}


@triton.jit
def grid_sync(bar, target, SYNC: tl.constexpr):
    # every program arrives once; all leave when `target` arrivals are counted (the counter only grows)
    if SYNC:
        tl.debug_barrier()  # this program's stores are issued before its arrival is released
        tl.atomic_add(bar, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()


@triton.jit
def load_tile(stream, sscale, t, t_end, rb, cb, cg, QUANT: tl.constexpr, BN: tl.constexpr, KB: tl.constexpr,
              LOAD: tl.constexpr):
    # tile t of this program's stream: [BN, KB] stored elements (bytes for int4), and its scales
    ok = (t < t_end) & LOAD
    w = tl.load(stream + t * (BN * KB) + rb[:, None] * KB + cb[None, :], mask=ok, other=0)
    if QUANT == 0:
        s = tl.zeros((BN, 1), dtype=tl.float32)
    elif QUANT == 1:
        s = tl.load(sscale + t * BN + rb, mask=ok, other=0.0)[:, None]
    else:
        s = tl.load(sscale + t * (BN * cg.shape[0]) + rb[:, None] * cg.shape[0] + cg[None, :], mask=ok, other=0.0)
    return w, s


@triton.jit
def tile_dot(w, s, x, xe, xo, QUANT: tl.constexpr, BN: tl.constexpr, KB: tl.constexpr, GS: tl.constexpr):
    # (BN,) partial products of one tile with its x chunk (fp32)
    if QUANT == 0:
        return tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    elif QUANT == 1:
        return tl.sum(w.to(tl.float32) * x[None, :], axis=1) * tl.reshape(s, (BN,))
    else:  # packed int4, two codes per byte (low nibble = even column), symmetric (code - 8)
        b = w.to(tl.int32) & 0xFF
        lo = (b & 0xF).to(tl.float32) - 8.0
        hi = (b >> 4).to(tl.float32) - 8.0
        p = lo * xe[None, :] + hi * xo[None, :]  # (BN, KB) byte-pairs
        g = tl.sum(tl.reshape(p, (BN, KB * 2 // GS, GS // 2)), axis=2)  # (BN, groups)
        return tl.sum(g * s, axis=1)


@triton.jit
def with_halves(x, QUANT: tl.constexpr):
    # (x, its even columns, its odd columns) for int4's packed pairs; x itself twice otherwise
    if QUANT == 2:
        xe, xo = tl.split(tl.reshape(x, (x.shape[0] // 2, 2)))
    else:
        xe = x
        xo = x
    return x, xe, xo


@triton.jit
def x_chunk(src, c, KC: tl.constexpr, K, QUANT: tl.constexpr):
    # chunk c of an fp32 activation vector (L2 reads: other programs wrote it), zero past K
    cols = c * KC + tl.arange(0, KC)
    return with_halves(tl.load(src + cols, mask=cols < K, other=0.0, cache_modifier=".cg"), QUANT)


@triton.jit
def rms(resid, nw, H: tl.constexpr, eps, QUANT: tl.constexpr):
    c = tl.arange(0, H)
    r = tl.load(resid + c, cache_modifier=".cg")
    return with_halves(r * tl.rsqrt(tl.sum(r * r) / H + eps) * tl.load(nw + c).to(tl.float32), QUANT)


@triton.jit
def stage(stream, sscale, t, t_end, w, s, wn, sn, rb, cb, cg, nblk, out, sink, pid, P, x0, xe0, xo0, x1, xe1, xo1,
          x2, xe2, xo2, x3, xe3, xo3, NCH: tl.constexpr, STORE: tl.constexpr, QUANT: tl.constexpr, BN: tl.constexpr,
          KB: tl.constexpr, GS: tl.constexpr, WORK: tl.constexpr, STREAM: tl.constexpr):
    # one projection: this program's nblk row blocks, each NCH tiles along K (x chunk c in x<c>);
    # STORE 0: out[rows] = y, 1: out[rows] += y, 2: out = silu(gate) * up of the interleaved rows.
    # w / wn hold the next two tiles; returns them and the next tile index after this stage's.
    j = 0
    while j < nblk:  # (a while: the interpreter cannot range over a loaded count)
        y = tl.zeros((BN,), dtype=tl.float32)
        for c in tl.static_range(NCH):
            w2, s2 = load_tile(stream, sscale, t + 2, t_end, rb, cb, cg, QUANT, BN, KB, STREAM)
            if WORK:
                if c == 0:
                    y += tile_dot(w, s, x0, xe0, xo0, QUANT, BN, KB, GS)
                elif c == 1:
                    y += tile_dot(w, s, x1, xe1, xo1, QUANT, BN, KB, GS)
                elif c == 2:
                    y += tile_dot(w, s, x2, xe2, xo2, QUANT, BN, KB, GS)
                else:
                    y += tile_dot(w, s, x3, xe3, xo3, QUANT, BN, KB, GS)
            else:
                y += tl.sum(w.to(tl.float32), axis=1)
            w, s, wn, sn, t = wn, sn, w2, s2, t + 1
        if WORK:
            if STORE == 2:
                gate, up = tl.split(tl.reshape(y, (BN // 2, 2)))
                tl.store(out + (pid + j * P) * (BN // 2) + tl.arange(0, BN // 2), gate / (1.0 + tl.exp(-gate)) * up)
            else:
                rows = (pid + j * P) * BN + rb
                if STORE == 1:
                    y += tl.load(out + rows, cache_modifier=".cg")
                tl.store(out + rows, y)
        elif STREAM:  # keep the loads alive: one sink slot per program
            tl.store(sink + pid * BN + rb, y)
        j += 1
    return t, w, s, wn, sn


@triton.jit
def megastep(stream, sscale, n_tiles, first_tile, resid, sink, qkv, attn, act, n1, n2, kc, vc, cos, sin, bar,
             bar_base, pos, eps, L: tl.constexpr, H: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, D: tl.constexpr,
             FF: tl.constexpr, TMAX: tl.constexpr, KC: tl.constexpr, BN: tl.constexpr, QUANT: tl.constexpr,
             GS: tl.constexpr, SYNC: tl.constexpr, WORK: tl.constexpr, STREAM: tl.constexpr):
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    KB: tl.constexpr = KC // 2 if QUANT == 2 else KC
    rb = tl.arange(0, BN)
    cb = tl.arange(0, KB)
    cg = tl.arange(0, KC // GS if QUANT == 2 else 1)
    QKV: tl.constexpr = (NH + 2 * NKV) * D
    NCD: tl.constexpr = (FF + KC - 1) // KC  # chunks of the down projection's K
    t = tl.load(first_tile + pid)
    t_end = t + tl.load(n_tiles + pid)
    # this program's row blocks of each projection: p, p + P, ...
    nq = tl.cdiv(tl.maximum(QKV // BN - pid, 0), P)
    no = tl.cdiv(tl.maximum(H // BN - pid, 0), P)
    ng = tl.cdiv(tl.maximum(2 * FF // BN - pid, 0), P)
    w, s = load_tile(stream, sscale, t, t_end, rb, cb, cg, QUANT, BN, KB, STREAM)
    wn, sn = load_tile(stream, sscale, t + 1, t_end, rb, cb, cg, QUANT, BN, KB, STREAM)
    nbar = 0
    for layer in range(L):
        # --- q/k/v = norm(resid) @ Wqkv
        x, xe, xo = rms(resid, n1 + layer * H, H, eps, QUANT)
        t, w, s, wn, sn = stage(stream, sscale, t, t_end, w, s, wn, sn, rb, cb, cg, nq, qkv, sink, pid, P, x, xe, xo,
                                x, xe, xo, x, xe, xo, x, xe, xo, 1, 0, QUANT, BN, KB, GS, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- attention: one program per query head (rotary on q and the new k, cache append)
        if WORK:
            h = pid
            while h < NH:
                g = h // (NH // NKV)
                d = tl.arange(0, D)
                dr = (d + D // 2) % D
                sign = tl.where(d < D // 2, -1.0, 1.0)
                cs = tl.load(cos + pos * (D // 2) + d % (D // 2))
                sn_ = tl.load(sin + pos * (D // 2) + d % (D // 2))
                q = tl.load(qkv + h * D + d, cache_modifier=".cg") * cs + sign * tl.load(qkv + h * D + dr, cache_modifier=".cg") * sn_
                kb = qkv + NH * D + g * D
                k = tl.load(kb + d, cache_modifier=".cg") * cs + sign * tl.load(kb + dr, cache_modifier=".cg") * sn_
                v = tl.load(qkv + (NH + NKV) * D + g * D + d, cache_modifier=".cg")
                base = (layer * NKV + g) * TMAX * D
                if h % (NH // NKV) == 0:
                    tl.store(kc + base + pos * D + d, k.to(kc.dtype.element_ty))
                    tl.store(vc + base + pos * D + d, v.to(vc.dtype.element_ty))
                tt = tl.arange(0, TMAX)
                km = (tt < pos)[:, None]
                kt = tl.load(kc + base + tt[:, None] * D + d[None, :], mask=km, other=0.0).to(tl.float32)
                vt = tl.load(vc + base + tt[:, None] * D + d[None, :], mask=km, other=0.0).to(tl.float32)
                scale = 1.0 / tl.sqrt(D * 1.0)
                sc = tl.where(tt < pos, tl.sum(kt * q[None, :], axis=1) * scale, float("-inf"))
                snew = tl.sum(k * q) * scale
                m = tl.maximum(tl.max(sc), snew)
                p = tl.exp(sc - m)
                pnew = tl.exp(snew - m)
                o = (tl.sum(p[:, None] * vt, axis=0) + pnew * v) / (tl.sum(p) + pnew)
                tl.store(attn + h * D + d, o)
                h += P
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- resid += attn @ Wo
        x, xe, xo = x_chunk(attn, 0, KC, H, QUANT)
        t, w, s, wn, sn = stage(stream, sscale, t, t_end, w, s, wn, sn, rb, cb, cg, no, resid, sink, pid, P, x, xe, xo,
                                x, xe, xo, x, xe, xo, x, xe, xo, 1, 1, QUANT, BN, KB, GS, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- act = silu(gate) * up of norm(resid); gate / up rows interleaved in the stream
        x, xe, xo = rms(resid, n2 + layer * H, H, eps, QUANT)
        t, w, s, wn, sn = stage(stream, sscale, t, t_end, w, s, wn, sn, rb, cb, cg, ng, act, sink, pid, P, x, xe, xo,
                                x, xe, xo, x, xe, xo, x, xe, xo, 1, 2, QUANT, BN, KB, GS, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- resid += act @ Wdown, K in NCD <= 4 chunks of KC (all read once, before the tiles)
        tl.static_assert(NCD <= 4)
        x0, xe0, xo0 = x_chunk(act, 0, KC, FF, QUANT)
        x1, xe1, xo1 = x0, xe0, xo0
        x2, xe2, xo2 = x0, xe0, xo0
        x3, xe3, xo3 = x0, xe0, xo0
        if NCD > 1:
            x1, xe1, xo1 = x_chunk(act, 1, KC, FF, QUANT)
        if NCD > 2:
            x2, xe2, xo2 = x_chunk(act, 2, KC, FF, QUANT)
        if NCD > 3:
            x3, xe3, xo3 = x_chunk(act, 3, KC, FF, QUANT)
        t, w, s, wn, sn = stage(stream, sscale, t, t_end, w, s, wn, sn, rb, cb, cg, no, resid, sink, pid, P, x0, xe0, xo0,
                                x1, xe1, xo1, x2, xe2, xo2, x3, xe3, xo3, NCD, 1, QUANT, BN, KB, GS, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)


@dataclass
class Model:
    """fp32 master weights of a Llama-shaped layer stack (gate / up separate), random."""
    H: int
    L: int
    NH: int
    NKV: int
    FF: int
    wqkv: torch.Tensor
    wo: torch.Tensor
    wg: torch.Tensor
    wu: torch.Tensor
    wd: torch.Tensor
    n1: torch.Tensor
    n2: torch.Tensor

    @classmethod
    def random(cls, shape: str, device: torch.device, seed: int = 0) -> Model:
        H, L, NH, NKV, FF = SHAPES[shape]
        D = H // NH
        g = torch.Generator(device="cpu").manual_seed(seed)

        def w(n: int, k: int) -> torch.Tensor:
            return (torch.randn(L, n, k, generator=g) / k**0.5).to(device)

        def nw() -> torch.Tensor:  # bf16-exact, as the kernel reads them
            return (1 + 0.1 * torch.randn(L, H, generator=g)).to(torch.bfloat16).float().to(device)

        return cls(H, L, NH, NKV, FF, w((NH + 2 * NKV) * D, H), w(H, H), w(FF, H), w(FF, H), w(H, FF), nw(), nw())


def quantize(w: torch.Tensor, scheme: str, gs: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(stored codes, scales, dequantized fp32) of [..., N, K] weights: bf16, int8 per row, int4 per group of gs."""
    if scheme == "bf16":
        q = w.to(torch.bfloat16)
        return q, None, q.float()
    if scheme == "int8":
        s = w.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
        q = torch.clamp(torch.round(w / s), -127, 127)
        return q.to(torch.int8), s.squeeze(-1), q * s
    *lead, n, k = w.shape
    wg = w.reshape(*lead, n, k // gs, gs)
    s = wg.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 7
    q = torch.clamp(torch.round(wg / s), -8, 7)
    deq = (q * s).reshape(w.shape)
    codes = (q + 8).to(torch.uint8).reshape(*lead, n, k)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return packed, s.squeeze(-1), deq


def pad_k(w: torch.Tensor, kc: int, per_byte: int) -> torch.Tensor:
    k = w.shape[-1]
    kp = -(-k * per_byte // kc) * kc // per_byte
    return torch.nn.functional.pad(w, (0, kp - k)) if kp != k else w


def build_streams(m: Model, scheme: str, P: int, KC: int, BN: int, GS: int):
    """Every program's tiles in consumption order: (stream [T, BN, KB], scales, n_tiles[P], first[P], deq weights)."""
    per_byte = 2 if scheme == "int4" else 1
    gate_up = torch.stack([m.wg, m.wu], dim=2).reshape(m.L, 2 * m.FF, m.H)  # rows interleaved gate, up
    projs = [m.wqkv, m.wo, gate_up, m.wd]
    tiles, scales, deq = [], [], []
    for w in projs:
        q, s, dq = quantize(w, scheme, GS)
        deq.append(dq)
        q = pad_k(q, KC, per_byte)
        L, N, KS = q.shape
        nc = KS * per_byte // KC
        kb = KC // per_byte
        tiles.append(q.reshape(L, N // BN, BN, nc, kb).permute(0, 1, 3, 2, 4))  # [L, NB, nc, BN, kb]
        if scheme == "int8":
            scales.append(s.reshape(L, N // BN, 1, BN).expand(L, N // BN, nc, BN))
        elif scheme == "int4":
            s = torch.nn.functional.pad(s, (0, KS * 2 // GS - s.shape[-1]))
            scales.append(s.reshape(L, N // BN, BN, nc, KC // GS).permute(0, 1, 3, 2, 4))
    order, sorder, counts = [], [], []
    for p in range(P):
        n = 0
        for layer in range(m.L):
            for i, tt in enumerate(tiles):
                nb = tt.shape[1]
                own = torch.arange(p, max(nb, p), P, device=tt.device)
                part = tt[layer, own].reshape(-1, BN, tt.shape[-1])
                order.append(part)
                n += part.shape[0]
                if scales:
                    sorder.append(scales[i][layer, own].reshape(part.shape[0], math.prod(scales[i].shape[3:])))
        counts.append(n)
    stream = torch.cat(order).contiguous()
    sscale = torch.cat(sorder).float().contiguous() if scales else torch.zeros(1, device=stream.device)
    n_tiles = torch.tensor(counts, dtype=torch.int64, device=stream.device)
    first = torch.cumsum(n_tiles, 0) - n_tiles
    return stream, sscale, n_tiles, first, deq


def reference(m: Model, deq, resid, kc, vc, cos, sin, pos, eps):
    """The same step in fp32 PyTorch: final residual, and the caches with the new position appended."""
    H, NH, NKV = m.H, m.NH, m.NKV
    D = H // NH
    r = resid.clone()
    kc, vc = kc.float().clone(), vc.float().clone()
    wqkv, wo, wgu, wd = deq

    def norm(v, w):
        return v * torch.rsqrt((v * v).mean() + eps) * w

    def rope(v):  # [heads, D]
        c, s = cos[pos].repeat(2), sin[pos].repeat(2)
        rot = torch.cat([-v[:, D // 2:], v[:, :D // 2]], dim=1)
        return v * c + rot * s

    for layer in range(m.L):
        y = wqkv[layer] @ norm(r, m.n1[layer])
        q = rope(y[:NH * D].reshape(NH, D))
        k = rope(y[NH * D:(NH + NKV) * D].reshape(NKV, D))
        v = y[(NH + NKV) * D:].reshape(NKV, D)
        kc[layer, :, pos] = k
        vc[layer, :, pos] = v
        kk = kc[layer, :, :pos + 1].repeat_interleave(NH // NKV, 0)  # [NH, T, D]
        vv = vc[layer, :, :pos + 1].repeat_interleave(NH // NKV, 0)
        a = torch.softmax((kk @ q[:, :, None]).squeeze(-1) / D**0.5, dim=-1)
        o = (a[:, None, :] @ vv).reshape(-1)
        r = r + wo[layer] @ o
        gu = wgu[layer] @ norm(r, m.n2[layer])
        g, u = gu[0::2], gu[1::2]
        r = r + wd[layer] @ (torch.nn.functional.silu(g) * u)
    return r, kc, vc


class StepState:
    """What both probes' steps share: the inputs (residual, caches, rotary tables), the barrier
    counter and its per-launch base, and the check against the fp32 reference."""

    def __init__(self, m: Model, P: int, KC: int, TMAX: int, pos: int):
        if m.H != KC:
            raise ValueError(f"the probe reads the hidden vector as one chunk: hidden {m.H} != --kc {KC}")
        self.m, self.P, self.KC, self.TMAX, self.pos = m, P, KC, TMAX, pos
        dev = m.wo.device
        H, NH, NKV = m.H, m.NH, m.NKV
        D = H // NH
        g = torch.Generator(device="cpu").manual_seed(1)
        self.resid0 = torch.randn(H, generator=g).to(dev)
        self.kc0 = (torch.randn(m.L, NKV, TMAX, D, generator=g) * 0.5).to(dev, torch.bfloat16)
        self.vc0 = torch.randn(m.L, NKV, TMAX, D, generator=g).to(dev, torch.bfloat16)
        ang = torch.arange(TMAX)[:, None].float() / (10000 ** (torch.arange(D // 2).float() * 2 / D))[None, :]
        self.cos, self.sin = ang.cos().to(dev), ang.sin().to(dev)
        self.qkv = torch.zeros((NH + 2 * NKV) * D, device=dev)
        self.attn = torch.zeros(H, device=dev)
        self.bar = torch.zeros(1, dtype=torch.int32, device=dev)
        self.launches = 0
        self.n1, self.n2 = m.n1.to(torch.bfloat16), m.n2.to(torch.bfloat16)
        self.deq: list[torch.Tensor] = []

    def barrier_base(self) -> int:
        """The counter's value at this launch's start (it only grows; reset before int32 overflows)."""
        per_launch = 5 * self.m.L * self.P
        base = self.launches * per_launch
        self.launches += 1
        if base + per_launch >= 2**31 - 1:
            self.bar.zero_()
            self.launches, base = 1, 0
        return base

    def launch(self, resid, kc, vc, variant: str = "full"):
        raise NotImplementedError

    def check(self) -> tuple[float, float]:
        resid, kc, vc = self.resid0.clone(), self.kc0.clone(), self.vc0.clone()
        self.launch(resid, kc, vc)
        r_ref, kc_ref, _ = reference(self.m, self.deq, self.resid0, self.kc0, self.vc0, self.cos, self.sin, self.pos, 1e-5)
        err = ((resid - r_ref).abs().max() / r_ref.abs().max()).item()
        kerr = ((kc.float() - kc_ref).abs().max() / kc_ref.abs().max()).item()
        arrivals = int(self.bar.item()) - (self.launches - 1) * 5 * self.m.L * self.P
        if arrivals != 5 * self.m.L * self.P:
            raise RuntimeError(f"grid barrier counted {arrivals} arrivals, expected {5 * self.m.L * self.P}")
        return err, kerr


class Step(StepState):
    """The Triton probe's step: streams with the next two tiles in registers."""

    def __init__(self, m: Model, scheme: str, P: int, KC: int, GS: int, TMAX: int, warps: int, pos: int, tile_rows: int):
        super().__init__(m, P, KC, TMAX, pos)
        self.scheme, self.GS, self.warps = scheme, GS, warps
        tile_bytes = KC * 2 * tile_rows  # a tile is the bytes of `tile_rows` bf16 rows of KC
        self.BN = tile_bytes // {"bf16": 2 * KC, "int8": KC, "int4": KC // 2}[scheme]
        self.quant = {"bf16": 0, "int8": 1, "int4": 2}[scheme]
        self.stream, self.sscale, self.n_tiles, self.first, self.deq = build_streams(m, scheme, P, KC, self.BN, GS)
        self.sink = torch.zeros(P * self.BN, device=m.wo.device)  # the stream variant's stores
        self.act = torch.zeros(m.FF, device=m.wo.device)

    def launch(self, resid, kc, vc, variant: str = "full"):
        m = self.m
        self.compiled = megastep[(self.P,)](
            self.stream, self.sscale, self.n_tiles, self.first, resid, self.sink, self.qkv, self.attn, self.act,
            self.n1, self.n2, kc, vc, self.cos, self.sin, self.bar, self.barrier_base(), self.pos, 1e-5, L=m.L, H=m.H,
            NH=m.NH, NKV=m.NKV, D=m.H // m.NH, FF=m.FF, TMAX=self.TMAX, KC=self.KC, BN=self.BN, QUANT=self.quant,
            GS=self.GS, SYNC=variant != "stream", WORK=variant == "full", STREAM=variant != "sync", num_warps=self.warps)


def parse_args(doc: str, extra: dict[str, int]) -> argparse.Namespace:
    """Both probes' options (`extra`: more integer options and their defaults)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--schemes", nargs="+", default=["bf16", "int8", "int4"])
    ap.add_argument("--programs", type=int, default=0, help="programs (default: one per SM)")
    ap.add_argument("--warps", type=int, default=8)
    ap.add_argument("--kc", type=int, default=2048)
    ap.add_argument("--tile-rows", type=int, default=8, help="a tile holds the bytes of this many bf16 rows of KC")
    ap.add_argument("--pos", type=int, default=144)
    ap.add_argument("--variants", nargs="+", default=["full", "sync", "stream"])
    for name, default in extra.items():
        ap.add_argument(f"--{name}", type=int, default=default)
    return ap.parse_args()


def report(title: str, args: argparse.Namespace, make_step: Callable[[Model, str, int, int], StepState]) -> None:
    """One table row per scheme: the check against the reference, then each variant's median step time
    (CUDA events after warm-up; no times without CUDA). make_step(model, scheme, programs, TMAX)."""
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    P = args.programs or (torch.cuda.get_device_properties(0).multi_processor_count if cuda else 1)
    m = Model.random(args.shape, dev)
    TMAX = triton.next_power_of_2(args.pos + 1)
    name = torch.cuda.get_device_name() if cuda else "cpu (interpreter)"
    print(f"{title} | {name} | torch {torch.__version__} | triton {triton.__version__} | shape {args.shape}, "
          f"{P} programs x {args.warps} warps, tile {args.tile_rows} bf16 rows of {args.kc}, position {args.pos}")
    print("| scheme | weight MB | regs / spills | rel err vs fp32 ref (residual / k cache) | "
          + " | ".join(f"{v} (us)" for v in args.variants) + " | GB/s (full) |")
    print("|---|---|---|---|" + "---|" * len(args.variants) + "---|")
    for scheme in args.schemes:
        st = make_step(m, scheme, P, TMAX)
        mb = (st.stream.numel() * st.stream.element_size() + st.sscale.numel() * 4) / 1e6
        err, kerr = st.check()
        regs = f"{getattr(st.compiled, 'n_regs', '-')} / {getattr(st.compiled, 'n_spills', '-')}"
        times = []
        for v in args.variants:
            if not cuda:
                times.append(float("nan"))
                continue
            resid, kc, vc = st.resid0.clone(), st.kc0.clone(), st.vc0.clone()

            def launch(v: str = v, step: StepState = st, resid=resid, kc=kc, vc=vc) -> None:
                step.launch(resid, kc, vc, v)

            for _ in range(5):
                launch()
            times.append(timed(launch, 50) * 1e3)
        gbs = mb * 1e3 / times[0] if times and not math.isnan(times[0]) else float("nan")
        print(f"| {scheme} | {mb:.1f} | {regs} | {err:.1e} / {kerr:.1e} | " + " | ".join(f"{t:.1f}" for t in times) + f" | {gbs:.0f} |")
        del st
        if cuda:
            torch.cuda.empty_cache()


def main() -> None:
    args = parse_args(__doc__, {})
    report("persistent decode step, tiles in registers", args, lambda m, scheme, P, TMAX: Step(
        m, scheme, P, args.kc, 128 if args.shape == "1b" else 32, TMAX, args.warps, args.pos, args.tile_rows))


if __name__ == "__main__":
    main()
