"""Probe: batch-1 int8 matvecs in packed f16x2 arithmetic, and the read floor of each projection.

bench/int8_decode_probe.py (2026-11-22) showed that a cheaper int8 -> f16 decode alone does not
help: widening each weight to fp32 for the product costs as much as the old decode. Here nothing
is widened per weight. x is scaled by a power of two (max |x| in [8, 16)) and rounded to f16 once
per program; the codes become exact f16x2 integers with byte permutes, and `fma.rn.f16x2`
accumulates q * x in f16 for a few K steps per element before one widening to fp32 (bounded: at
most FLUSH * 2 * 128 * 16 < 65504, no overflow). Per four int8 weights: xor, two prmt, two
sub.f16x2, two fma.f16x2. (The int4 form of this idea won and is kiln's `hgemv_w4`; it is timed
among the int4 candidates here and in bench/gemv_sweep.py.)

The read floor: the same bytes read as 32-bit words and summed, best of a few tilings, no PDL.

    python3 bench/hgemv_probe.py [--shapes 1b-gate_up 1b-down] [--hgemv]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from probe_common import best, kiln_dense_us, kiln_quant_us, quantized, race, rel_err, table


@triton.jit
def fma_w8(code, xh, acc):
    # acc + q * x, four int8 codes per 32-bit word: xor makes them offset binary, prmt builds
    # f16x2 words 1152 + q (exact), sub leaves q, fma.f16x2 multiplies by x and accumulates
    return tl.inline_asm_elementwise(
        "{\n.reg .b32 t, a, b, c;\nxor.b32 t, $2, 0x80808080;\nmov.b32 c, 0x64806480;\n"
        "prmt.b32 a, t, 0x64646464, 0x4140;\nprmt.b32 b, t, 0x64646464, 0x4342;\n"
        "sub.f16x2 a, a, c;\nsub.f16x2 b, b, c;\n"
        "fma.rn.f16x2 $0, a, $3, $5;\nfma.rn.f16x2 $1, b, $4, $6;\n}",
        "=r,=r,r,r,r,r,r", [code, xh, acc], dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def x_exponent(x, K: tl.constexpr, KP: tl.constexpr):
    # e with max |x| / 2^e in [8, 16): x * 2^-e fits f16 with room for the f16 sums
    rk = tl.arange(0, KP)
    amax = tl.max(tl.abs(tl.load(x + rk, mask=rk < K, other=0.0).to(tl.float32)))
    return tl.maximum(tl.ceil(tl.log2(tl.maximum(amax, 1e-30))) - 4.0, -100.0)


@triton.jit
def hgemv_w8(x, w, sc, y, N, K: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             FLUSH: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < N
    e = x_exponent(x, K, KP)
    inv = tl.exp2(-e)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    h = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float16)
    STEPS: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    for i in tl.static_range(0, STEPS):
        k0 = i * BLOCK_K
        kin = (k0 + rk) < K
        if K % BLOCK_K == 0:
            code = tl.load(w + rn[:, None] * K + (k0 + rk)[None, :], mask=nmask[:, None], other=0)
        else:
            code = tl.load(w + rn[:, None] * K + (k0 + rk)[None, :], mask=nmask[:, None] & kin[None, :], other=0)
        xh = (tl.load(x + k0 + rk, mask=kin, other=0.0).to(tl.float32) * inv).to(tl.float16)
        h = fma_w8(code, tl.broadcast_to(xh[None, :], (BLOCK_N, BLOCK_K)), h)
        if (i + 1) % FLUSH == 0:
            acc += tl.sum(h.to(tl.float32), axis=1)
            h = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float16)
    acc += tl.sum(h.to(tl.float32), axis=1)
    s = tl.load(sc + rn, mask=nmask, other=0.0).to(tl.float32)
    tl.store(y + rn, (acc * s * tl.exp2(e)).to(y.dtype.element_ty), mask=nmask)


@triton.jit
def read_floor(w, y, N, KW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # the same bytes read as 32-bit words and summed (one add per four int8 weights): what a
    # matvec over them could take if its arithmetic were free
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.int32)
    STEPS: tl.constexpr = KW // BLOCK_K
    for i in tl.static_range(0, STEPS):
        acc += tl.load(w + rn[:, None] * KW + (i * BLOCK_K + rk)[None, :], mask=rn[:, None] < N, other=0)
    tl.store(y + rn, tl.sum(acc, axis=1), mask=rn < N)


FLOOR_TILINGS = ((8, 512, 4), (16, 512, 4), (16, 512, 8), (32, 256, 8), (4, 512, 2), (8, 256, 2), (64, 128, 8), (16, 256, 4))


def floor_us(words: list[torch.Tensor]) -> tuple[float, str]:
    """The fastest read of these [N, KW] int32 copies over FLOOR_TILINGS, us per launch."""
    n, kw = words[0].shape
    y = torch.empty(n, device=words[0].device, dtype=torch.int32)
    cands = {}
    for bn, bk, warps in FLOOR_TILINGS:
        while kw % bk:
            bk //= 2
        cands[f"{bn}x{bk}w{warps}"] = lambda bn=bn, bk=bk, warps=warps: [
            read_floor[(triton.cdiv(n, bn),)](w, y, n, KW=kw, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps) for w in words]
    return best(cands, len(words))


W8_TILINGS = ((32, 256, 4, 8), (64, 256, 8, 8), (16, 512, 4, 4), (32, 512, 8, 4), (64, 128, 4, 8), (128, 256, 8, 8),
              (16, 256, 2, 8), (8, 512, 2, 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1b-qkv", "1b-o", "1b-gate_up", "1b-down"])
    ap.add_argument("--hgemv", action="store_true", help="also the int8 f16x2 kernel (else: kiln's and the read floors)")
    args = ap.parse_args()
    print(f"f16x2 quantized matvec probe | {torch.cuda.get_device_name()} | torch {torch.__version__} | "
          "M = 1, us per launch, weights rotated past L2")
    print("| shape | bf16 kiln | bf16 read floor | int8 kiln | int8 read floor | int8 hgemv (tiling) | int8 err | int4 kiln | int4 read floor |")
    print("|---|---|---|---|---|---|---|---|---|")

    def row(name: str, n: int, k: int, copies: list[torch.Tensor]) -> list[str]:
        x = torch.randn(1, k, device=copies[0].device, dtype=copies[0].dtype) * 3
        y = torch.empty((1, n), device=x.device, dtype=x.dtype)
        cells = [f"{kiln_dense_us(x, copies):.2f}", "%.2f (%s)" % floor_us([c.view(torch.int32) for c in copies])]
        for scheme in ("int8", "int4"):
            qs, quant, dequant = quantized(scheme, copies)
            cells += [f"{kiln_quant_us(quant, x, qs):.2f}", "%.2f (%s)" % floor_us([q.view(torch.int32) for q, _ in qs])]
            if scheme == "int8":
                ref = x.float() @ dequant(*qs[0]).T
                tilings = {f"{bn}x{bk}_w{warps}_f{flush}": (
                    lambda i, bn=bn, bk=bk, warps=warps, flush=flush: hgemv_w8[(triton.cdiv(n, bn),)](
                        x, *qs[i], y, n, K=k, KP=triton.next_power_of_2(k), BLOCK_N=bn, BLOCK_K=bk, FLUSH=flush, num_warps=warps))
                    for bn, bk, warps, flush in (W8_TILINGS if args.hgemv else ())}
                t, c, err = race(tilings, len(qs), lambda ref=ref: rel_err(y, ref), f"{name} int8")
                cells += [f"{t:.2f} ({c})", f"{err:.1e}"]
        return cells

    table(args.shapes, row)


if __name__ == "__main__":
    main()
