"""The persistent decode step of `megastep_probe.py`, with the weight stream in shared memory.

`megastep_probe.py` keeps the next two tiles in registers, so at every grid barrier the weight
stream drains to two tiles per SM. Here (Gluon, CUDA sm80+ only) every program keeps NBUF - 1
tiles in flight through `cp.async` into a ring of shared-memory buffers: the copies run on while
the program waits at a barrier, so the DRAM stream need not stop at the five barriers of a layer.

Each stage's activation vector is read once per program, with coalesced loads, into shared memory
(the RMSNorm, and the SiLU-mul of the raw gate / up rows, applied there once); every tile then
reads its x chunk from shared memory. Same model, streams and reference as `megastep_probe.py`.
Variants: `full`; `sync` (barriers and the activation reads, no weights); `stream` (weights and the
activation reads, no barriers). The diagnosis variants that found the activation reads to be the
cost (x from L2 in registers, x constant, no scales) are in this file at commit 30a0ffc.

    python3 bench/megastep_gluon.py [--schemes bf16 int8 int4] [--nbuf 5] [--programs N]
"""

from __future__ import annotations

import torch
from megastep_probe import Model, StepState, build_streams, parse_args, report
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp


@gluon.jit
def grid_sync(bar, target, SYNC: gl.constexpr):
    if SYNC:
        gl.thread_barrier()
        gl.atomic_add(bar, 1, sem="release", scope="gpu")
        seen = gl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = gl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        gl.thread_barrier()


@gluon.jit
def issue(ring, sring, stream, sscale, t, t_end, offs, soffs, TILE: gl.constexpr, STILE: gl.constexpr,
          NBUF: gl.constexpr, HAS_S: gl.constexpr, LOAD: gl.constexpr):
    # start copying tile t (if this program has it) into its ring slot; one commit group per tile
    gl.thread_barrier()  # every thread has read the slot this copy overwrites
    ok = (t < t_end) & LOAD
    slot = (t % NBUF).to(gl.int32)
    cp.async_copy_global_to_shared(ring.index(slot), stream + t * TILE + offs, mask=(offs >= 0) & ok)
    if HAS_S:
        cp.async_copy_global_to_shared(sring.index(slot), sscale + t * STILE + soffs, mask=(soffs >= 0) & ok)
    cp.commit_group()


@gluon.jit
def take(ring, sring, t, NBUF: gl.constexpr, L3: gl.constexpr, HAS_S: gl.constexpr):
    cp.wait_group(NBUF - 1)  # tile t's group is done (NBUF - 1 younger ones may still run)
    gl.thread_barrier()
    slot = (t % NBUF).to(gl.int32)
    w = ring.index(slot).load(L3)
    if HAS_S:
        s = sring.index(slot).load(gl.SliceLayout(2, L3))
    else:
        s = 0.0
    return w, s


@gluon.jit
def tile_dot(w, s, xa, xb, QUANT: gl.constexpr):
    # (BN,) products of a [BN, G, GW] tile with its x chunk ([G, GW]; int4: even / odd columns)
    if QUANT == 0:
        return gl.sum(gl.sum(w.to(gl.float32) * xa[None, :, :], axis=2), axis=1)
    elif QUANT == 1:
        return gl.sum(gl.sum(w.to(gl.float32) * xa[None, :, :], axis=2) * s, axis=1)
    else:
        b = w.to(gl.int32) & 0xFF
        lo = (b & 0xF).to(gl.float32) - 8.0
        hi = (b >> 4).to(gl.float32) - 8.0
        return gl.sum(gl.sum(lo * xa[None, :, :] + hi * xb[None, :, :], axis=2) * s, axis=1)


@gluon.jit
def silu_mul(gu, k, K):
    g = gl.load(gu + 2 * k, mask=k < K, other=0.0, cache_modifier=".cg")
    u = gl.load(gu + 2 * k + 1, mask=k < K, other=0.0, cache_modifier=".cg")
    return g / (1.0 + gl.exp(-g)) * u


@gluon.jit
def fill_x(xs, src, nw, eps, c, K, MODE: gl.constexpr, KC: gl.constexpr, NPAR: gl.constexpr, L1: gl.constexpr):
    # chunk c of a stage's activation vector into shared memory, read once per program with plain
    # coalesced loads: MODE 0 src itself, 1 the RMSNorm of src (one chunk) times nw, 2 the SiLU-mul of
    # the interleaved gate / up rows in src. int4 (NPAR 2) keeps even and odd columns apart.
    i = gl.arange(0, KC // NPAR, L1)
    k0 = c * KC + i * NPAR
    if MODE == 2:
        v0 = silu_mul(src, k0, K)
    else:
        v0 = gl.load(src + k0, mask=k0 < K, other=0.0, cache_modifier=".cg")
    if NPAR == 2:
        if MODE == 2:
            v1 = silu_mul(src, k0 + 1, K)
        else:
            v1 = gl.load(src + k0 + 1, mask=k0 + 1 < K, other=0.0, cache_modifier=".cg")
    if MODE == 1:
        ss = gl.sum(v0 * v0, axis=0)
        if NPAR == 2:
            ss += gl.sum(v1 * v1, axis=0)
        inv = gl.rsqrt(ss / K + eps)
        v0 = v0 * inv * gl.load(nw + k0).to(gl.float32)
        if NPAR == 2:
            v1 = v1 * inv * gl.load(nw + k0 + 1).to(gl.float32)
    xs.index(0).store(v0)
    if NPAR == 2:
        xs.index(1).store(v1)


@gluon.jit
def read_x(xs, G: gl.constexpr, GW: gl.constexpr, XL: gl.constexpr, NPAR: gl.constexpr):
    xa = xs.index(0).reshape([G, GW]).load(XL)
    if NPAR == 2:
        xb = xs.index(1).reshape([G, GW]).load(XL)
    else:
        xb = xa
    return xa, xb


@gluon.jit
def stage(ring, sring, stream, sscale, t, t_end, offs, soffs, nblk, out, sink, xs0, xs1, xs2, xs3, pid, P,
          NCH: gl.constexpr, ADD: gl.constexpr, TILE: gl.constexpr, STILE: gl.constexpr, NBUF: gl.constexpr,
          HAS_S: gl.constexpr, L3: gl.constexpr, G: gl.constexpr, GW: gl.constexpr, NPAR: gl.constexpr,
          QUANT: gl.constexpr, BN: gl.constexpr, WORK: gl.constexpr, STREAM: gl.constexpr):
    # one projection: this program's nblk row blocks of BN rows, each NCH tiles along K (x chunk c in
    # xs<c>); out[rows] = y, or out[rows] += y (ADD). Returns the next tile of the stream.
    XL: gl.constexpr = gl.SliceLayout(0, L3)
    RL: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, L3))
    rb = gl.arange(0, BN, RL)
    if NCH == 1:
        xa, xb = read_x(xs0, G, GW, XL, NPAR)
    j = 0
    while j < nblk:
        y = gl.zeros([BN], gl.float32, RL)
        for c in gl.static_range(NCH):
            issue(ring, sring, stream, sscale, t + NBUF - 1, t_end, offs, soffs, TILE, STILE, NBUF, HAS_S, STREAM)
            w, s = take(ring, sring, t, NBUF, L3, HAS_S)
            if WORK:
                if NCH > 1:
                    if c == 0:
                        xa, xb = read_x(xs0, G, GW, XL, NPAR)
                    elif c == 1:
                        xa, xb = read_x(xs1, G, GW, XL, NPAR)
                    elif c == 2:
                        xa, xb = read_x(xs2, G, GW, XL, NPAR)
                    else:
                        xa, xb = read_x(xs3, G, GW, XL, NPAR)
                y += tile_dot(w, s, xa, xb, QUANT)
            else:
                y += gl.sum(gl.sum(w.to(gl.float32), axis=2), axis=1)
            t += 1
        if WORK:
            rows = (pid + j * P) * BN + rb
            if ADD:
                y += gl.load(out + rows, cache_modifier=".cg")
            gl.store(out + rows, y)
        elif STREAM:  # keep the loads alive: one sink slot per program
            gl.store(sink + pid * BN + rb, y)
        j += 1
    return t


@gluon.jit
def megastep_g(stream, sscale, n_tiles, first_tile, resid, qkv, attn, gu, sink, n1, n2, kc, vc, cos, sin, bar,
               bar_base, pos, eps, L: gl.constexpr, H: gl.constexpr, NH: gl.constexpr, NKV: gl.constexpr, D: gl.constexpr,
               FF: gl.constexpr, TMAX: gl.constexpr, KC: gl.constexpr, BN: gl.constexpr, G: gl.constexpr,
               GW: gl.constexpr, QUANT: gl.constexpr, NBUF: gl.constexpr, NW: gl.constexpr, WB: gl.constexpr, SYNC: gl.constexpr,
               WORK: gl.constexpr, STREAM: gl.constexpr):
    pid = gl.program_id(0)
    P = gl.num_programs(0)
    dt: gl.constexpr = stream.dtype.element_ty
    V: gl.constexpr = 16 // dt.primitive_bitwidth * 8  # elements per 16-byte copy
    TW: gl.constexpr = GW // V
    # warps split between rows (WB) and groups (NW // WB): x chunks spread over the warps, not copied in each
    L3: gl.constexpr = gl.BlockedLayout([1, 1, V], [1, 32 // TW, TW], [WB, NW // WB, 1], [2, 1, 0])
    SL: gl.constexpr = gl.BlockedLayout([1, 1], [32 // G, G], [NW, 1], [1, 0])  # [BN, G] scale copies
    SM3: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])
    SM2: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    SM1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    TILE: gl.constexpr = BN * G * GW
    STILE: gl.constexpr = BN * G
    HAS_S: gl.constexpr = QUANT != 0
    ring = gl.allocate_shared_memory(dt, [NBUF, BN, G, GW], SM3)
    NPAR: gl.constexpr = 2 if QUANT == 2 else 1
    L1: gl.constexpr = gl.BlockedLayout([4], [32], [NW], [0])
    NCD: gl.constexpr = (FF + KC - 1) // KC  # chunks of the down projection's K
    # one [NPAR, KC / NPAR] buffer per chunk of the longest activation (shapes must be powers of two)
    xs0 = gl.allocate_shared_memory(gl.float32, [NPAR, KC // NPAR], SM1)
    xs1 = xs0
    xs2 = xs0
    xs3 = xs0
    if NCD > 1:
        xs1 = gl.allocate_shared_memory(gl.float32, [NPAR, KC // NPAR], SM1)
    if NCD > 2:
        xs2 = gl.allocate_shared_memory(gl.float32, [NPAR, KC // NPAR], SM1)
    if NCD > 3:
        xs3 = gl.allocate_shared_memory(gl.float32, [NPAR, KC // NPAR], SM1)
    sring = gl.allocate_shared_memory(gl.float32, [NBUF, BN, G], SM2)
    rb = gl.arange(0, BN, gl.SliceLayout(1, gl.SliceLayout(2, L3)))
    rg = gl.arange(0, G, gl.SliceLayout(0, gl.SliceLayout(2, L3)))
    rw = gl.arange(0, GW, gl.SliceLayout(0, gl.SliceLayout(1, L3)))
    offs = (rb[:, None, None] * G + rg[None, :, None]) * GW + rw[None, None, :]
    sb = gl.arange(0, BN, gl.SliceLayout(1, SL))
    sg = gl.arange(0, G, gl.SliceLayout(0, SL))
    soffs = sb[:, None] * G + sg[None, :]
    QKV: gl.constexpr = (NH + 2 * NKV) * D
    t = gl.load(first_tile + pid)
    t_end = t + gl.load(n_tiles + pid)
    nq = gl.cdiv(gl.maximum(QKV // BN - pid, 0), P)
    no = gl.cdiv(gl.maximum(H // BN - pid, 0), P)
    ng = gl.cdiv(gl.maximum(2 * FF // BN - pid, 0), P)
    for i in gl.static_range(NBUF - 1):
        issue(ring, sring, stream, sscale, t + i, t_end, offs, soffs, TILE, STILE, NBUF, HAS_S, STREAM)
    nbar = 0
    for layer in range(L):
        # --- q/k/v = norm(resid) @ Wqkv. Each stage's x is read once per program into shared memory.
        gl.thread_barrier()
        fill_x(xs0, resid, n1 + layer * H, eps, 0, H, 1, KC, NPAR, L1)
        gl.thread_barrier()
        t = stage(ring, sring, stream, sscale, t, t_end, offs, soffs, nq, qkv, sink, xs0, xs1, xs2, xs3, pid, P,
                  1, False, TILE, STILE, NBUF, HAS_S, L3, G, GW, NPAR, QUANT, BN, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- attention, one query head per program at a time
        if WORK:
            LA: gl.constexpr = gl.BlockedLayout([1, D // 8], [4, 8], [NW, 1], [1, 0])
            h = pid
            while h < NH:
                g = h // (NH // NKV)
                d = gl.arange(0, D, gl.SliceLayout(0, LA))
                dr = (d + D // 2) % D
                sign = gl.where(d < D // 2, -1.0, 1.0)
                cs = gl.load(cos + pos * (D // 2) + d % (D // 2))
                sn = gl.load(sin + pos * (D // 2) + d % (D // 2))
                q = gl.load(qkv + h * D + d, cache_modifier=".cg") * cs + sign * gl.load(qkv + h * D + dr, cache_modifier=".cg") * sn
                kb = qkv + NH * D + g * D
                k = gl.load(kb + d, cache_modifier=".cg") * cs + sign * gl.load(kb + dr, cache_modifier=".cg") * sn
                v = gl.load(qkv + (NH + NKV) * D + g * D + d, cache_modifier=".cg")
                base = (layer * NKV + g) * TMAX * D
                if h % (NH // NKV) == 0:
                    gl.store(kc + base + pos * D + d, k.to(kc.dtype.element_ty))
                    gl.store(vc + base + pos * D + d, v.to(vc.dtype.element_ty))
                tt = gl.arange(0, TMAX, gl.SliceLayout(1, LA))
                km = (tt < pos)[:, None]
                kt = gl.load(kc + base + tt[:, None] * D + d[None, :], mask=km, other=0.0).to(gl.float32)
                vt = gl.load(vc + base + tt[:, None] * D + d[None, :], mask=km, other=0.0).to(gl.float32)
                scale = 1.0 / gl.sqrt(D * 1.0)
                sc = gl.where(tt < pos, gl.sum(kt * q[None, :], axis=1) * scale, float("-inf"))
                snew = gl.sum(k * q, axis=0) * scale
                m = gl.maximum(gl.max(sc, axis=0), snew)
                p = gl.exp(sc - m)
                pnew = gl.exp(snew - m)
                o = (gl.sum(p[:, None] * vt, axis=0) + pnew * v) / (gl.sum(p, axis=0) + pnew)
                gl.store(attn + h * D + d, o)
                h += P
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- resid += attn @ Wo
        gl.thread_barrier()
        fill_x(xs0, attn, n1, eps, 0, H, 0, KC, NPAR, L1)
        gl.thread_barrier()
        t = stage(ring, sring, stream, sscale, t, t_end, offs, soffs, no, resid, sink, xs0, xs1, xs2, xs3, pid, P,
                  1, True, TILE, STILE, NBUF, HAS_S, L3, G, GW, NPAR, QUANT, BN, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- gate / up rows of norm(resid), stored raw (interleaved)
        gl.thread_barrier()
        fill_x(xs0, resid, n2 + layer * H, eps, 0, H, 1, KC, NPAR, L1)
        gl.thread_barrier()
        t = stage(ring, sring, stream, sscale, t, t_end, offs, soffs, ng, gu, sink, xs0, xs1, xs2, xs3, pid, P,
                  1, False, TILE, STILE, NBUF, HAS_S, L3, G, GW, NPAR, QUANT, BN, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
        # --- resid += silu(gate) * up @ Wdown, K in NCD <= 4 chunks
        gl.static_assert(NCD <= 4)
        gl.thread_barrier()
        fill_x(xs0, gu, n1, eps, 0, FF, 2, KC, NPAR, L1)
        if NCD > 1:
            fill_x(xs1, gu, n1, eps, 1, FF, 2, KC, NPAR, L1)
        if NCD > 2:
            fill_x(xs2, gu, n1, eps, 2, FF, 2, KC, NPAR, L1)
        if NCD > 3:
            fill_x(xs3, gu, n1, eps, 3, FF, 2, KC, NPAR, L1)
        gl.thread_barrier()
        t = stage(ring, sring, stream, sscale, t, t_end, offs, soffs, no, resid, sink, xs0, xs1, xs2, xs3, pid, P,
                  NCD, True, TILE, STILE, NBUF, HAS_S, L3, G, GW, NPAR, QUANT, BN, WORK, STREAM)
        nbar += 1
        grid_sync(bar, bar_base + nbar * P, SYNC)
    cp.wait_group(0)


class GluonStep(StepState):
    """One scheme's shared-memory-ring persistent step."""

    GW = {"bf16": 64, "int8": 128, "int4": 64}  # stored elements per group column (int4: bytes, one group)

    def __init__(self, m: Model, scheme: str, P: int, KC: int, TMAX: int, warps: int, pos: int, tile_rows: int, nbuf: int):
        super().__init__(m, P, KC, TMAX, pos)
        self.scheme, self.warps, self.nbuf = scheme, warps, nbuf
        per_byte = 2 if scheme == "int4" else 1
        esize = 2 if scheme == "bf16" else 1
        self.BN = KC * 2 * tile_rows // (KC // per_byte * esize)
        kb = KC // per_byte
        self.GWv = min(self.GW[scheme], kb)
        self.G = kb // self.GWv
        self.GS = 2 * self.GWv if scheme == "int4" else self.GWv  # scale group (int8: its channel scale repeated)
        self.quant = {"bf16": 0, "int8": 1, "int4": 2}[scheme]
        tw = self.GWv // (16 // esize)  # threads of a warp along a group's columns
        self.WB = warps // max(1, min(warps, self.G // (32 // tw)))
        self.stream, sscale, self.n_tiles, self.first, self.deq = build_streams(m, scheme, P, KC, self.BN, self.GS)
        if scheme == "int8":  # one scale per row and tile -> per (row, group) as the kernel reads it
            sscale = sscale.reshape(-1, self.BN, 1).expand(-1, self.BN, self.G).contiguous()
        self.sscale = sscale
        self.gu = torch.zeros(2 * m.FF, device=m.wo.device)
        self.sink = torch.zeros(P * self.BN, device=m.wo.device)  # the stream variant's stores

    def launch(self, resid, kc, vc, variant: str = "full"):
        m = self.m
        self.compiled = megastep_g[(self.P,)](
            self.stream, self.sscale, self.n_tiles, self.first, resid, self.qkv, self.attn, self.gu, self.sink, self.n1, self.n2,
            kc, vc, self.cos, self.sin, self.bar, self.barrier_base(), self.pos, 1e-5, L=m.L, H=m.H, NH=m.NH,
            NKV=m.NKV, D=m.H // m.NH, FF=m.FF, TMAX=self.TMAX, KC=self.KC, BN=self.BN, G=self.G, GW=self.GWv,
            QUANT=self.quant, NBUF=self.nbuf, NW=self.warps, WB=self.WB, SYNC=variant != "stream",
            WORK=variant == "full", STREAM=variant != "sync", num_warps=self.warps)


def main() -> None:
    args = parse_args(__doc__, {"nbuf": 5})
    report(f"persistent decode step, cp.async ring of {args.nbuf}", args, lambda m, scheme, P, TMAX: GluonStep(
        m, scheme, P, args.kc, TMAX, args.warps, args.pos, args.tile_rows, args.nbuf))


if __name__ == "__main__":
    main()
