"""Probe: quantized decode matvecs on tensor cores with the weights as the A operand.

y^T [N, 16] = W [N, K] @ x^T [K, 16]: the weight tile is decoded in registers where the MMA reads
its A operand (on sm90 wgmma takes A from registers), x^T (M <= 16 rows, zero-padded) is the
small B operand every program shares. int8: codes -> bf16 exactly, channel scale on the fp32
result. int4 (groups of GS): one dot per group step, its [BLOCK_N, 16] product scaled by the
group's scales, (q - 8) exact in bf16.

    python3 bench/tmv_probe.py [--shapes 1b-gate_up 7b-gate_up]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from probe_common import kiln_dense_us, kiln_quant_us, quantized, race, rel_err, table


@triton.jit
def tmv_w8(x, w, sc, y, N, M, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rm = tl.arange(0, 16)
    nmask = rn < N
    acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
    STEPS: tl.constexpr = K // BLOCK_K
    for i in tl.range(0, STEPS):
        k0 = i * BLOCK_K
        code = tl.load(w + rn[:, None] * K + (k0 + rk)[None, :], mask=nmask[:, None], other=0)
        xt = tl.load(x + rm[None, :] * K + (k0 + rk)[:, None], mask=rm[None, :] < M, other=0.0)  # (BLOCK_K, 16)
        acc = tl.dot(code.to(tl.bfloat16), xt, acc)
    s = tl.load(sc + rn, mask=nmask, other=0.0).to(tl.float32)
    out = acc * s[:, None]
    tl.store(y + rm[None, :] * N + rn[:, None], out.to(y.dtype.element_ty), mask=nmask[:, None] & (rm[None, :] < M))


@triton.jit
def tmv_w4(x, w, sc, y, N, M, K: tl.constexpr, GS: tl.constexpr, BLOCK_N: tl.constexpr):
    HALF: tl.constexpr = GS // 2
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, HALF)
    rm = tl.arange(0, 16)
    nmask = rn < N
    acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
    STEPS: tl.constexpr = K // GS
    for i in tl.range(0, STEPS):
        byte = tl.load(w + rn[:, None] * (K // 2) + (i * HALF + rj)[None, :], mask=nmask[:, None], other=0).to(tl.int32)
        lo = ((byte & 15) - 8).to(tl.bfloat16)
        hi = ((byte >> 4) - 8).to(tl.bfloat16)
        xe = tl.load(x + rm[None, :] * K + (i * GS + 2 * rj)[:, None], mask=rm[None, :] < M, other=0.0)  # (HALF, 16)
        xo = tl.load(x + rm[None, :] * K + (i * GS + 2 * rj + 1)[:, None], mask=rm[None, :] < M, other=0.0)
        part = tl.dot(lo, xe, tl.dot(hi, xo))
        s = tl.load(sc + rn * (K // GS) + i, mask=nmask, other=0.0).to(tl.float32)
        acc += part * s[:, None]
    tl.store(y + rm[None, :] * N + rn[:, None], acc.to(y.dtype.element_ty), mask=nmask[:, None] & (rm[None, :] < M))


W8_TILINGS = ((64, 128, 4, 3), (64, 256, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 256, 8, 2), (64, 128, 4, 1))
W4_TILINGS = ((64, 4, 3), (128, 8, 3), (64, 4, 4), (64, 4, 1), (128, 4, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1b-qkv", "1b-gate_up", "1b-down", "7b-qkv", "7b-gate_up", "7b-down"])
    ap.add_argument("--m", type=int, default=1)
    args = ap.parse_args()
    m = args.m
    print(f"tensor-core (W as A) quantized matvec probe | {torch.cuda.get_device_name()} | torch {torch.__version__} | "
          f"M = {m}, us per launch, weights rotated past L2")
    print("| shape | bf16 kiln | int8 kiln | int8 tmv (tiling) | err | int4 kiln | int4 tmv (tiling) | err |")
    print("|---|---|---|---|---|---|---|---|")

    def row(name: str, n: int, k: int, copies: list[torch.Tensor]) -> list[str]:
        x = torch.randn(m, k, device=copies[0].device, dtype=copies[0].dtype)
        y = torch.empty((m, n), device=x.device, dtype=x.dtype)
        cells = [f"{kiln_dense_us(x, copies):.2f}"]
        for scheme in ("int8", "int4"):
            qs, quant, dequant = quantized(scheme, copies)
            ref = x.float() @ dequant(*qs[0]).T
            if scheme == "int8":
                tilings = {f"{bn}x{bk}_w{warps}_s{stages}": (
                    lambda i, bn=bn, bk=bk, warps=warps, stages=stages: tmv_w8[(triton.cdiv(n, bn),)](
                        x, *qs[i], y, n, m, K=k, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages))
                    for bn, bk, warps, stages in W8_TILINGS}
            else:
                tilings = {f"{bn}_w{warps}_s{stages}": (
                    lambda i, bn=bn, warps=warps, stages=stages: tmv_w4[(triton.cdiv(n, bn),)](
                        x, *qs[i], y, n, m, K=k, GS=128, BLOCK_N=bn, num_warps=warps, num_stages=stages))
                    for bn, warps, stages in W4_TILINGS}
            t, c, err = race(tilings, len(qs), lambda ref=ref: rel_err(y, ref), f"{name} {scheme}")
            cells += [f"{kiln_quant_us(quant, x, qs):.2f}", f"{t:.2f} ({c})", f"{err:.1e}"]
        return cells

    table(args.shapes, row)


if __name__ == "__main__":
    main()
