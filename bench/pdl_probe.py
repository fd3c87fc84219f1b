"""Does programmatic dependent launch (PDL) hide the per-kernel latency of decode matvecs?

At batch 1 a kiln decode step is ~90 small matvecs in a row, each ~6 us on the H200 whatever its
size (bench/quant_sweep.py), against ~1-2 us of weight bytes. Most of that is the gap between
kernels: launch, ramp-up, the first DRAM round trip. With PDL (Hopper; Triton's `launch_pdl=True`
plus `gdc_wait`) the next kernel starts while the previous one finishes and can load its weights
(which depend on nothing) before it waits for its input vector.

This probe chains L int8 weight-only matvecs y <- (W_i y) * s_i (dim x dim, like the 1.1B model's
square projections) inside one CUDA graph, four ways: F.linear on bf16 weights (cuBLAS), a
Triton int8 matvec launched normally, the same kernel with PDL waiting first, and with PDL and
the weight tile loaded before `gdc_wait`. It prints us per matvec (median over replays) and checks the results agree.

    python3 bench/pdl_probe.py [--dim 2048] [--layers 88] [--block-n 16]
Needs CUDA on sm90+ (not run in CI).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # older Triton: the probe reports PDL as unavailable
    gdc_wait = gdc_launch_dependents = None


@triton.jit
def mv_int8(x_ptr, w_ptr, s_ptr, y_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    # PDL 0: plain launch; 1: PDL, waiting first (only the launch overlaps the previous kernel);
    # 2: PDL, the weight tile loaded before the wait (the first DRAM round trip overlaps too)
    if PDL == 1:
        gdc_wait()
        gdc_launch_dependents()
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, K)
    nmask = rn < N
    w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=nmask[:, None], other=0)  # independent of x
    s = tl.load(s_ptr + rn, mask=nmask, other=0).to(tl.float32)
    if PDL == 2:
        gdc_wait()  # x is the previous kernel's output
        gdc_launch_dependents()  # the next matvec may start loading its weights now
    x = tl.load(x_ptr + rk).to(tl.float32)
    y = tl.sum(w.to(tl.float32) * x[None, :], 1) * s
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=nmask)


def time_graph(fn, reps: int = 50, ready=None) -> float:  # noqa: ANN001
    """Median ms of one replay of a graph of `fn` (bench/ar_norm_probe.py uses it too; `ready()`
    runs once between the warm-up replays and the timed ones, e.g. a barrier across ranks)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(5):
        g.replay()
    if ready is not None:
        torch.cuda.synchronize()
        ready()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--layers", type=int, default=88)
    p.add_argument("--block-n", type=int, default=16)
    p.add_argument("--warps", type=int, default=8)
    args = p.parse_args()
    d, L, bn = args.dim, args.layers, args.block_n
    torch.manual_seed(0)
    wf = [torch.randn(d, d, device="cuda", dtype=torch.bfloat16) / d**0.5 for _ in range(L)]
    scale = [w.abs().amax(1).float() / 127 for w in wf]
    wq = [torch.round(w.float() / s[:, None]).clamp(-127, 127).to(torch.int8) for w, s in zip(wf, scale)]
    wd = [(q.float() * s[:, None]).to(torch.bfloat16) for q, s in zip(wq, scale)]  # what int8 represents
    x0 = torch.randn(d, device="cuda", dtype=torch.bfloat16)
    bufs = [torch.empty(d, device="cuda", dtype=torch.bfloat16) for _ in range(L + 1)]
    grid = (triton.cdiv(d, bn),)

    def cublas() -> None:
        y = x0
        for w in wd:
            y = torch.nn.functional.linear(y, w)
        bufs[L].copy_(y)

    def triton_chain(pdl: int) -> None:
        bufs[0].copy_(x0)
        for i in range(L):
            mv_int8[grid](bufs[i], wq[i], scale[i], bufs[i + 1], d, K=d, BLOCK_N=bn, PDL=pdl,
                          num_warps=args.warps, launch_pdl=pdl > 0)

    rows = []
    cublas()
    want = bufs[L].float().clone()
    rows.append(("cuBLAS F.linear (bf16 weights)", time_graph(cublas), want))
    names = {0: "Triton int8 matvec", 1: "Triton int8 matvec + PDL (wait first)", 2: "Triton int8 matvec + PDL (weights before wait)"}
    for pdl, name in names.items():
        if pdl and gdc_wait is None:
            print("PDL: this Triton has no gdc_wait")
            continue
        try:
            triton_chain(pdl)
            got = bufs[L].float().clone()
            rows.append((name, time_graph(lambda: triton_chain(pdl)), got))
        except Exception as e:  # report and go on (a PDL launch the driver refuses, say)
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:200]}")
    wbytes = d * d  # int8
    floor_us = wbytes / 4.8e12 * 1e6
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"{L} chained {d}x{d} matvecs | int8 weight floor {floor_us:.2f} us each\n")
    print("| kernel | us per matvec | vs cuBLAS | max rel diff vs cuBLAS |")
    print("|---|---|---|---|")
    base = rows[0][1]
    for name, ms, out in rows:
        diff = ((out - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
        print(f"| {name} | {ms * 1e3 / L:.2f} | {base / ms:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
