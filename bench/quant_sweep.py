"""Sweep of decode (M <= 16) weight-only int8/int4 matvec designs on one GPU: which one to ship.

Variant "dot": a split-K tensor-core kernel (x rows padded to 16, weight tile dequantized in
registers to x's dtype, tl.dot, fp32 partials summed by a second launch when split). Variant
"kiln": the shipped kernels (backends/triton/quant_kernels.py) over a grid of matvec configs.
Variant "gemv": the shipped CUDA-core decode kernels (`gemv_w8` / `gemv_w4`) over a grid of
GemvConfig tilings, each plain and, where PDL runs (sm90+), with programmatic dependent launch:
the timed CUDA graph chains one launch per weight copy, so PDL overlaps them as in a decode step.
Shapes: the 1.1B Llama's projections at M=2 (kiln pads a batch-1 decode to two rows). Prints, per
shape, the best config of each variant: time (median of CUDA-event timings over rotating weight
copies), GB/s of the quantized bytes, and bf16 F.linear (cuBLAS) on the same shape.

    python3 bench/quant_sweep.py
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def qmv(x, w, sc, y, part, M, N, K, K_SPLIT, sxm, swn, ssn, ssg,
        W4: tl.constexpr, GS: tl.constexpr, SPLIT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ln = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)
    k_lo = pid_k * K_SPLIT
    k_hi = min(k_lo + K_SPLIT, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    mrow = rm[:, None] < M
    if not W4:
        rk = tl.arange(0, BLOCK_K)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            wq = tl.load(w + ln[:, None] * swn + (k0 + rk)[None, :])
            xv = tl.load(x + rm[:, None] * sxm + (k0 + rk)[None, :], mask=mrow, other=0.0)
            acc = tl.dot(xv, tl.trans(wq.to(xv.dtype)), acc)
        acc = acc * tl.load(sc + ln).to(tl.float32)[None, :]
    else:
        HALF: tl.constexpr = BLOCK_K // 2
        rj = tl.arange(0, HALF)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            byte = tl.load(w + ln[:, None] * swn + (k0 // 2 + rj)[None, :]).to(tl.int32)
            s = tl.load(sc + ln * ssn + (k0 // GS) * ssg).to(tl.float32)[:, None]
            xe = tl.load(x + rm[:, None] * sxm + (k0 + 2 * rj)[None, :], mask=mrow, other=0.0)
            xo = tl.load(x + rm[:, None] * sxm + (k0 + 2 * rj + 1)[None, :], mask=mrow, other=0.0)
            lo = (((byte & 15) - 8).to(tl.float32) * s).to(xe.dtype)
            hi = (((byte >> 4) - 8).to(tl.float32) * s).to(xe.dtype)
            acc = tl.dot(xe, tl.trans(lo), acc)
            acc = tl.dot(xo, tl.trans(hi), acc)
    mask = mrow & (rn[None, :] < N)
    if SPLIT == 1:
        tl.store(y + rm[:, None] * N + rn[None, :], acc.to(y.dtype.element_ty), mask=mask)
    else:
        tl.store(part + pid_k * M * N + rm[:, None] * N + rn[None, :], acc, mask=mask)


@triton.jit
def qfinish(part, y, M, N, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for s in tl.static_range(SPLIT):
        acc += tl.load(part + s * M * N + rm[:, None] * N + rn[None, :], mask=mask, other=0.0)
    tl.store(y + rm[:, None] * N + rn[None, :], acc.to(y.dtype.element_ty), mask=mask)


def run_dot(x, q, sc, w4, gs, bn, bk, split, warps, stages):  # noqa: ANN001, ANN201
    m, k = x.shape
    n = q.shape[0]
    steps = k // bk
    split = min(split, steps)
    k_split = -(-steps // split) * bk
    split = -(-k // k_split)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    part = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else y
    ssn, ssg = (sc.stride(0), sc.stride(1)) if w4 else (0, 0)
    qmv[(-(-n // bn), split)](x, q, sc, y, part, m, n, k, k_split, x.stride(0), q.stride(0), ssn, ssg,
                              W4=w4, GS=gs, SPLIT=split, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk,
                              num_warps=warps, num_stages=stages)
    if split > 1:
        qfinish[(-(-n // 128),)](part, y, m, n, SPLIT=split, BLOCK_M=16, BLOCK_N=128)
    return y


def time_fn(fn, copies: int, reps: int = 7) -> float:  # noqa: ANN001
    """Median over `reps` replays of a CUDA graph holding one pass over all weight copies (no
    launch gaps; copies rotate so weights come from HBM, not L2), per call."""
    for i in range(copies):
        fn(i)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(copies):
            fn(i)
    g.replay()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / copies)
    ts.sort()
    return ts[len(ts) // 2] * 1e3  # us


def main() -> None:
    from kiln.backends.triton.matmul import MatvecConfig
    from kiln.backends.triton.quant_matmul import GemvConfig, QuantLinearLauncher, pdl_available
    from kiln.ir.opset.quant import dequantize_int4, dequantize_int8, quantize_int4_grouped, quantize_int8_per_channel

    torch.manual_seed(0)
    dt = torch.bfloat16
    shapes = [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632), (32000, 2048)]
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}\n")
    print("| fmt | N x K | bf16 F.linear us | dot best us | GB/s | dot config | kiln best us | kiln config | rel err dot | "
          "gemv best us | GB/s | gemv config | rel err gemv |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for fmt, (n, k) in itertools.product(("int8", "int4"), shapes):
        copies = max(3, -(-256_000_000 // (n * k * 2)))  # >= 256 MB of bf16 weights per pass
        x = torch.randn(2, k, device="cuda", dtype=dt)
        ws = [torch.randn(n, k, device="cuda", dtype=dt) * 0.02 for _ in range(copies)]
        if fmt == "int8":
            qs = [quantize_int8_per_channel(w) for w in ws]
            ref = F.linear(x.float(), dequantize_int8(*qs[0]).float())
            nbytes = n * k + n * 2
        else:
            qs = [quantize_int4_grouped(w, 128) for w in ws]
            ref = F.linear(x.float(), dequantize_int4(*qs[0], 128).float())
            nbytes = n * k // 2 + n * (k // 128) * 2
        qs = [(q.cuda(), s.to("cuda", dt)) for q, s in qs]
        dense = time_fn(lambda i: F.linear(x, ws[i % copies]), copies)
        best = (float("inf"), "", float("nan"))
        w4 = fmt == "int4"
        for bn, bk, split, warps, stages in itertools.product((32, 64, 128), (128, 256), (1, 2, 4, 8), (4,), (3, 4)):
            if w4 and bk > 128:
                continue
            try:
                got = run_dot(x, *qs[0], w4, 128, bn, bk, split, warps, stages)
                err = ((got.float() - ref).norm() / ref.norm()).item()
                t = time_fn(lambda i: run_dot(x, *qs[i % copies], w4, 128, bn, bk, split, warps, stages), copies)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
                print(f"<!-- dot {bn}x{bk} s{split} w{warps} st{stages}: {type(e).__name__} -->")
                continue
            if t < best[0]:
                best = (t, f"{bn}x{bk} split{split} w{warps} st{stages}", err)
        op = "linear_w4" if w4 else "linear_w8"
        attrs = {"activation": "none", "group_size": 128, "asymmetric": False} if w4 else {"activation": "none", "asymmetric": False}
        launcher = QuantLinearLauncher(op, attrs, False)
        kbest = (float("inf"), "")
        zeros = qs[0][1]
        for bn, bk, split, warps in itertools.product((16, 32), (128, 256), (2, 4, 8), (4,)):
            cfg = MatvecConfig(bn, bk, split, warps)
            try:
                def call(i: int, cfg: MatvecConfig = cfg) -> None:
                    q, s = qs[i % copies]
                    y = torch.empty((2, n), dtype=dt, device="cuda")
                    launcher._matvec(cfg, x, q, s, zeros, None, y)
                t = time_fn(call, copies)
            except Exception as e:  # noqa: BLE001
                print(f"<!-- kiln {cfg.name}: {type(e).__name__}: {str(e)[:60]} -->")
                continue
            if t < kbest[0]:
                kbest = (t, cfg.name)
        gbest = (float("inf"), "", float("nan"))
        pdl_modes = (False, True) if pdl_available() else (False,)
        for bn, bk, warps, pdl in itertools.product((8, 16, 32), (512, 2048, 4096), (4, 8), pdl_modes):
            cfg = GemvConfig(bn, bk, warps, pdl)
            try:
                def gemv(i: int, cfg: GemvConfig = cfg) -> torch.Tensor:
                    q, s = qs[i % copies]
                    y = torch.empty((2, n), dtype=dt, device="cuda")
                    launcher._gemv(cfg, x, q, s, s, None, y, cfg.pdl)
                    return y
                err = ((gemv(0).float() - ref).norm() / ref.norm()).item()
                t = time_fn(gemv, copies)
            except Exception as e:  # noqa: BLE001
                print(f"<!-- gemv {cfg.name}: {type(e).__name__}: {str(e)[:60]} -->")
                continue
            if t < gbest[0]:
                gbest = (t, cfg.name, err)
        print(f"| {fmt} | {n} x {k} | {dense:.1f} | {best[0]:.1f} | {nbytes / best[0] / 1e3:.0f} | {best[1]} | "
              f"{kbest[0]:.1f} | {kbest[1]} | {best[2]:.1e} | {gbest[0]:.1f} | {nbytes / gbest[0] / 1e3:.0f} | "
              f"{gbest[1]} | {gbest[2]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
