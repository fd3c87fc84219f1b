"""Probe: does a cheaper int8 -> float decode make the batch-1 int8 matvec faster?

kiln's `gemv_w8` decodes each weight on CUDA cores with sign extension, an offset, the 2^23
mantissa trick and an fp32 multiply (bench/RESULTS.md, 2026-11-22: int8 streams 1.4-2.6 TB/s
against bf16's 2.7-3.9 at the 1.1B shapes, so the decode, not DRAM, bounds it). Here the codes
are decoded four at a time: xor 0x80808080 makes them offset binary, two `prmt` with 0x64646464
build f16x2 words holding 1152 + q (exact), and `sub.f16x2` leaves q. Two variants:

* `xgemv`: CUDA cores, the f16 weights widened to fp32 and multiplied by x (fp32 accumulate);
* `xdot`: tensor cores, x (one row, padded to 16) in fp16 times the f16 weight tile (fp32
  accumulate); x is scaled by a power of two first so it cannot overflow fp16 (exact for bf16 x).

Each is checked against the dequantized reference, then timed as autotune times kiln's kernels
(CUDA graph of one launch per weight copy, weights rotated past L2), beside bf16 and kiln's int8.

    python3 bench/int8_decode_probe.py [--shapes 1b-gate_up 1b-down]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from probe_common import kiln_dense_us, kiln_quant_us, quantized, race, rel_err, table


@triton.jit
def i8_to_f16(q):
    # four int8 codes per 32-bit word -> four exact f16 values
    return tl.inline_asm_elementwise(
        "{\n.reg .b32 t, c;\nxor.b32 t, $2, 0x80808080;\nmov.b32 c, 0x64806480;\n"
        "prmt.b32 $0, t, 0x64646464, 0x4140;\nprmt.b32 $1, t, 0x64646464, 0x4342;\n"
        "sub.f16x2 $0, $0, c;\nsub.f16x2 $1, $1, c;\n}",
        "=r,=r,r", [q], dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def xgemv(x, w, sc, y, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        kin = (k0 + rk) < K
        code = tl.load(w + rn[:, None] * K + (k0 + rk)[None, :], mask=nmask[:, None] & kin[None, :], other=0)
        xv = tl.load(x + k0 + rk, mask=kin, other=0.0).to(tl.float32)
        acc += tl.sum(i8_to_f16(code).to(tl.float32) * xv[None, :], axis=1)
    s = tl.load(sc + rn, mask=nmask, other=0.0).to(tl.float32)
    tl.store(y + rn, (acc * s).to(y.dtype.element_ty), mask=nmask)


@triton.jit
def xdot(x, w, sc, y, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rm = tl.arange(0, 16)
    nmask = rn < N
    # x's power-of-two scale: |x| / 2^e < 2^14 (fp16 holds it; bf16's 8-bit mantissa stays exact)
    amax = 0.0
    for k0 in tl.static_range(0, K, BLOCK_K):
        amax = tl.maximum(amax, tl.max(tl.abs(tl.load(x + k0 + rk, mask=(k0 + rk) < K, other=0.0).to(tl.float32))))
    e = tl.maximum(tl.ceil(tl.log2(tl.maximum(amax, 1e-30))) - 14.0, 0.0)
    inv = tl.exp2(-e)
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        kin = (k0 + rk) < K
        code = tl.load(w + rn[:, None] * K + (k0 + rk)[None, :], mask=nmask[:, None] & kin[None, :], other=0)
        xv = tl.load(x + rm[:, None] * 0 + (k0 + rk)[None, :], mask=(rm[:, None] < 1) & kin[None, :], other=0.0)
        xh = (xv.to(tl.float32) * inv).to(tl.float16)
        acc = tl.dot(xh, tl.trans(i8_to_f16(code)), acc)
    s = tl.load(sc + rn, mask=nmask, other=0.0).to(tl.float32)
    out = tl.sum(tl.where(rm[:, None] == 0, acc, 0.0), axis=0) * s * tl.exp2(e)
    tl.store(y + rn, out.to(y.dtype.element_ty), mask=nmask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1b-qkv", "1b-o", "1b-gate_up", "1b-down"])
    args = ap.parse_args()
    print(f"int8 decode probe | {torch.cuda.get_device_name()} | torch {torch.__version__} | M = 1, us per launch")
    print("| shape | bf16 kiln | int8 kiln | xgemv (tiling) | xdot (tiling) | max rel err xgemv / xdot |")
    print("|---|---|---|---|---|---|")

    def row(name: str, n: int, k: int, copies: list[torch.Tensor]) -> list[str]:
        qs, quant, dequant = quantized("int8", copies)
        x = torch.randn(1, k, device=copies[0].device, dtype=copies[0].dtype)
        y = torch.empty((1, n), device=x.device, dtype=x.dtype)
        ref = x.float() @ dequant(*qs[0]).T
        rows = {}
        for kern, tilings in ((xgemv, ((8, 2048, 4), (16, 1024, 4), (32, 512, 4), (16, 2048, 8))),
                              (xdot, ((32, 256, 4), (64, 256, 4), (32, 512, 4), (64, 128, 4), (128, 128, 8)))):
            launches = {f"{bn}x{bk}_w{warps}": (lambda i, bn=bn, bk=bk, warps=warps, kern=kern: kern[(triton.cdiv(n, bn),)](
                x, *qs[i], y, n, K=k, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)) for bn, bk, warps in tilings}
            rows[kern.fn.__name__] = race(launches, len(qs), lambda: rel_err(y, ref), f"{name} {kern.fn.__name__}")
        (tg, cg, eg), (td, cd, ed) = rows["xgemv"], rows["xdot"]
        return [f"{kiln_dense_us(x, copies):.2f}", f"{kiln_quant_us(quant, x, qs):.2f}", f"{tg:.2f} ({cg})", f"{td:.2f} ({cd})", f"{eg:.1e} / {ed:.1e}"]

    table(args.shapes, row)


if __name__ == "__main__":
    main()
