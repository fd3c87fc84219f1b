"""Probe: batch-1 quantized matvecs with packed f16x2 arithmetic (decode + FMA two weights per op).

bench/int8_decode_probe.py (2026-11-22) showed that a cheaper int8 -> f16 decode alone does not
help: widening each weight to fp32 for the product costs as much as the old decode. Here nothing
is widened per weight. x is scaled by a power of two (max |x| in [8, 16)) and rounded to f16 once
per program; the codes become exact f16x2 integers with byte permutes, and `fma.rn.f16x2`
accumulates q * x in f16 for a few K steps per element before one widening to fp32 (bounded: at
most FLUSH * 2 * 128 * 16 < 65504, no overflow). Per four int8 weights: xor, two prmt, two
sub.f16x2, two fma.f16x2. int4 (symmetric, groups): per eight weights one prmt, one shift, four
lop3, two sub / two fma to exact values, four mul by the group scale (f16, the tensor's power of
two folded in), four fma.

    python3 bench/hgemv_probe.py [--shapes 1b-gate_up 1b-down]
"""

from __future__ import annotations

import argparse
import math

import torch
import triton
import triton.language as tl
from gemv_sweep import SHAPES

from kiln.backends.triton import autotune
from kiln.backends.triton.matmul import LinearLauncher
from kiln.backends.triton.quant_matmul import QuantLinearLauncher
from kiln.ir.opset.quant import dequantize_int4, dequantize_int8, quantize_int4_grouped, quantize_int8_per_channel


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
def fma_w4(byte, xe, xo, s, acc):
    # acc + s * (q - 8) . x for four bytes (eight int4 codes: low nibble even column, high odd):
    # prmt to bytes [b0 b2 b1 b3] so lop3 with 0x000f000f / 0x00f000f0 gives f16x2 pairs of
    # (even, even) / (odd, odd) columns as 1024 + c and 1024 + 16 c, matching x's even / odd pairs
    return tl.inline_asm_elementwise(
        "{\n.reg .b32 t, a, b, c, d, k8, k16, k72;\n"
        "mov.b32 k8, 0x64086408;\nmov.b32 k16, 0x2C002C00;\nmov.b32 k72, 0xD480D480;\n"
        "prmt.b32 t, $2, 0, 0x3120;\n"
        "lop3.b32 a, t, 0x000f000f, 0x64006400, 0xea;\nlop3.b32 b, t, 0x00f000f0, 0x64006400, 0xea;\n"
        "shr.u32 t, t, 8;\n"
        "lop3.b32 c, t, 0x000f000f, 0x64006400, 0xea;\nlop3.b32 d, t, 0x00f000f0, 0x64006400, 0xea;\n"
        "sub.f16x2 a, a, k8;\nfma.rn.f16x2 b, b, k16, k72;\nsub.f16x2 c, c, k8;\nfma.rn.f16x2 d, d, k16, k72;\n"
        "mul.f16x2 a, a, $7;\nmul.f16x2 b, b, $7;\nmul.f16x2 c, c, $7;\nmul.f16x2 d, d, $7;\n"
        "fma.rn.f16x2 $0, a, $3, $9;\nfma.rn.f16x2 $0, b, $5, $0;\n"
        "fma.rn.f16x2 $1, c, $4, $10;\nfma.rn.f16x2 $1, d, $6, $1;\n}",
        "=r,=r,r,r,r,r,r,r,r,r,r", [byte, xe, xo, s, acc], dtype=tl.float16, is_pure=True, pack=4)


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
def hgemv_w4(x, w, s16, y, N, K: tl.constexpr, KP: tl.constexpr, GS: tl.constexpr, SEXP: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FLUSH: tl.constexpr):
    # s16: the group scales times 2^SEXP in f16 [N, K / GS]; BLOCK_K columns per step = G groups
    G: tl.constexpr = BLOCK_K // GS
    HALF: tl.constexpr = GS // 2
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rg = tl.arange(0, G)
    rj = tl.arange(0, HALF)
    nmask = rn < N
    e = x_exponent(x, K, KP)
    inv = tl.exp2(-e)
    kx = rg[:, None] * GS + 2 * rj[None, :]  # (G, HALF) even columns of a step
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    h = tl.zeros((BLOCK_N, G, HALF), dtype=tl.float16)
    STEPS: tl.constexpr = K // BLOCK_K
    shape: tl.constexpr = (BLOCK_N, G, HALF)
    for i in tl.static_range(0, STEPS):
        k0 = i * BLOCK_K
        byte = tl.load(w + rn[:, None, None] * (K // 2) + (k0 // 2 + rg[:, None] * HALF + rj[None, :])[None, :, :],
                       mask=nmask[:, None, None], other=0)
        s = tl.load(s16 + rn[:, None] * (K // GS) + (k0 // GS + rg)[None, :], mask=nmask[:, None], other=0.0)
        xv = (tl.load(x + k0 + kx[:, :, None] + tl.arange(0, 2)[None, None, :]).to(tl.float32) * inv).to(tl.float16)
        xe, xo = tl.split(xv)  # (G, HALF) even / odd columns, from one contiguous load
        h = fma_w4(byte, tl.broadcast_to(xe[None, :, :], shape), tl.broadcast_to(xo[None, :, :], shape),
                   tl.broadcast_to(s[:, :, None], shape), h)
        if (i + 1) % FLUSH == 0:
            acc += tl.sum(tl.sum(h.to(tl.float32), axis=2), axis=1)
            h = tl.zeros((BLOCK_N, G, HALF), dtype=tl.float16)
    acc += tl.sum(tl.sum(h.to(tl.float32), axis=2), axis=1)
    tl.store(y + rn, (acc * tl.exp2(e - SEXP)).to(y.dtype.element_ty), mask=nmask)


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
    times = {}
    for bn, bk, warps in FLOOR_TILINGS:
        while kw % bk:
            bk //= 2
        go = lambda bn=bn, bk=bk, warps=warps: [read_floor[(triton.cdiv(n, bn),)](w, y, n, KW=kw, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps) for w in words]  # noqa: E731
        times[f"{bn}x{bk}w{warps}"] = autotune.time_ms(go, reps=2) * 1e3 / len(words)
    c = min(times, key=times.__getitem__)
    return times[c], c


W8_TILINGS = ((32, 256, 4, 8), (64, 256, 8, 8), (16, 512, 4, 4), (32, 512, 8, 4), (64, 128, 4, 8), (128, 256, 8, 8),
              (16, 256, 2, 8), (8, 512, 2, 4))
W4_TILINGS = ((32, 128, 4, 8), (32, 256, 4, 8), (64, 256, 8, 8), (16, 512, 4, 4), (64, 128, 4, 8), (16, 256, 2, 8),
              (128, 128, 8, 8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1b-qkv", "1b-o", "1b-gate_up", "1b-down"])
    ap.add_argument("--hgemv", action="store_true", help="also the f16x2 kernels (else: kiln's and the read floors)")
    args = ap.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    print(f"f16x2 quantized matvec probe | {torch.cuda.get_device_name()} | torch {torch.__version__} | "
          "M = 1, us per launch, weights rotated past L2")
    print("| shape | bf16 kiln | bf16 read floor | int8 kiln | int8 read floor | int8 hgemv (tiling) | int8 err | "
          "int4 kiln | int4 read floor | int4 hgemv (tiling) | int4 err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes:
        n, k = SHAPES[name]
        kp = triton.next_power_of_2(k)
        copies = [torch.randn(n, k, device=dev, dtype=dtype) / k**0.5 for _ in range(max(1, int(256 // (n * k * 2 / 1e6)) + 1))]
        x = torch.randn(1, k, device=dev, dtype=dtype) * 3
        y = torch.empty((1, n), device=dev, dtype=dtype)

        def best(cands: dict) -> tuple[float, str]:
            times = {c: autotune.time_ms(f, reps=2) * 1e3 / len(copies) for c, f in cands.items()}
            c = min(times, key=times.__getitem__)
            return times[c], c

        dense = LinearLauncher("none", False, False, constant_weights=True)
        t_bf16, _ = best({c: (lambda c=c: [dense.run(c, x, w, None, None) for w in copies]) for c in dense.candidates(1, copies[0]) if c != "torch"})
        row = [f"{t_bf16:.2f}", "%.2f (%s)" % floor_us([c.view(torch.int32) for c in copies])]
        for scheme in ("int8", "int4"):
            if scheme == "int8":
                qs = [quantize_int8_per_channel(w) for w in copies]
                quant = QuantLinearLauncher("linear_w8", {"activation": "none"}, False, constant_weights=True)
                ref = x.float() @ dequantize_int8(*qs[0], torch.float32).T
                args_of = lambda q: q  # noqa: E731
                kern, tilings = hgemv_w8, W8_TILINGS
            else:
                qs = [quantize_int4_grouped(w, 128) for w in copies]
                quant = QuantLinearLauncher("linear_w4", {"activation": "none", "group_size": 128}, False, constant_weights=True)
                ref = x.float() @ dequantize_int4(*qs[0], 128, torch.float32).T
                sexp = -math.floor(math.log2(max(s.abs().max().item() for _, s in qs)))  # max |s| * 2^sexp in [1, 2)
                s16 = [(s.float() * 2.0**sexp).half() for _, s in qs]
                args_of = lambda i: (qs[i][0], s16[i])  # noqa: E731
                kern, tilings = hgemv_w4, W4_TILINGS
            t_kiln, _ = best({c: (lambda c=c: [quant.run(c, (x, q, s)) for q, s in qs]) for c in quant.candidates(1, on_cuda=True) if c != "torch"})
            t_floor = "%.2f (%s)" % floor_us([q.view(torch.int32) for q, _ in qs])
            cands, errs = {}, []
            for bn, bk, warps, flush in tilings if args.hgemv else ():
                extra = {"SEXP": sexp, "GS": 128} if scheme == "int4" else {}

                def launch(a: tuple, bn: int = bn, bk: int = bk, warps: int = warps, flush: int = flush, extra: dict = extra) -> None:
                    kern[(triton.cdiv(n, bn),)](x, *a, y, n, K=k, KP=kp, BLOCK_N=bn, BLOCK_K=bk, FLUSH=flush, num_warps=warps, **extra)

                try:
                    launch(args_of(0) if scheme == "int4" else qs[0])
                    errs.append(((y.float() - ref).abs().max() / ref.abs().max()).item())
                    if scheme == "int8":
                        cands[f"{bn}x{bk}_w{warps}_f{flush}"] = lambda launch=launch: [launch(q) for q in qs]
                    else:
                        cands[f"{bn}x{bk}_w{warps}_f{flush}"] = lambda launch=launch: [launch(args_of(i)) for i in range(len(qs))]
                except Exception as e:  # noqa: BLE001 - a tiling that cannot compile here
                    print(f"<!-- {name} {scheme} {bn}x{bk}: {type(e).__name__}: {str(e)[:300]} -->")
            t, c = best(cands) if cands else (float("nan"), "-")
            row += [f"{t_kiln:.2f}", t_floor, f"{t:.2f} ({c})", f"{max(errs) if errs else float('nan'):.1e}"]
            qs.clear()
        print(f"| {name} | " + " | ".join(row) + " |", flush=True)
        copies.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
