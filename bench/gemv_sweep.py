"""Decode matvecs on one GPU: kiln's dense linear candidates vs PyTorch (cuBLAS) per model shape.

Shapes: the projections of the Llama-2-7B shape at TP=1 and TP=2 (column-parallel Q/K/V and
gate/up halve N, row-parallel o / down halve K) and of the 1.1B Llama, bf16, M = 1 and 2. Every
candidate `LinearLauncher.candidates` offers (the CUDA-core `gemv` tilings, PDL variants on sm90,
the split-K `matvec`, the 16-row GEMM tile, "torch") is timed as autotune times it: launches
captured in a CUDA graph and replayed, CUDA events, median of rounds. Each graph chains one
launch per weight copy (enough copies for 256 MB, so L2 (50 MB) never holds the weights) and
the time is per launch (autotune also reads 2 x L2 before each call and subtracts that read's
time). GB/s counts the weight, x and y bytes.

`--quant int8 int4 w8a8 fp8` adds, per shape, the quantized linears (`QuantLinearLauncher`:
int8 per channel, int4 groups of 128, W8A8: the int8 codes with x quantized per token, fp8 e4m3
per channel with x per token) from the same bf16 copies: every candidate the launcher
offers plus `--extra` gemv tilings (BLOCK_N x BLOCK_K x warps, PDL; an `i` prefix for the
integer gemvs) that it does not, the GB/s of
the quantized bytes, and the time against the best bf16 kiln kernel (the decode speed-up the
scheme can give at that projection).

    python3 bench/gemv_sweep.py [--m 1 2] [--quant int8 int4 w8a8] [--extra 32x2048x8 16x2048x4]
"""

from __future__ import annotations

import argparse

import torch
from probe_common import SHAPES, quantized, weight_copies

from kiln.backends.triton import autotune
from kiln.backends.triton.matmul import GemvConfig, LinearLauncher
from kiln.backends.triton.quant_matmul import IntGemvConfig, TensorGemvConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--quant", nargs="*", default=[], choices=["int8", "int4", "w8a8", "fp8"])
    ap.add_argument("--extra", nargs="*", default=[],
                    help="extra quantized gemv tilings, NxKxWARPS (iNxKxWARPS: the integer gemv_i8 / gemv_i4; "
                         "tNxKxWARPSxSTAGESxIMPRECISE[xSPLIT]: fp8's tgemv_f8)")
    args = ap.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    print(f"kiln gemv sweep | {torch.cuda.get_device_name()} | torch {torch.__version__} | bf16, per launch, "
          "CUDA-graph replay, weights rotated past L2")
    print("| shape | M | N x K | MB | best kiln | us | GB/s | torch us | GB/s | torch / best | chosen by autotune |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes:
        n, k = SHAPES[name]
        mb = n * k * 2 / 1e6
        copies = weight_copies(n, k, dtype, dev)
        for m in args.m:
            x = torch.randn(m, k, device=dev, dtype=dtype)
            launcher = LinearLauncher("none", False, False, constant_weights=True)
            times: dict[str, float] = {}
            for cand in launcher.candidates(m, copies[0]):
                def chain(cand: str = cand) -> None:
                    for w in copies:
                        launcher.run(cand, x, w, None, None)
                try:
                    times[cand] = autotune.time_ms(chain, reps=2) * 1e3 / len(copies)
                except Exception as e:  # noqa: BLE001 - a config that cannot run here
                    print(f"<!-- {name} M{m} {cand}: {type(e).__name__}: {str(e)[:120]} -->")
            kiln = {c: t for c, t in times.items() if c != "torch"}
            best = min(kiln, key=kiln.__getitem__)
            gbs = lambda us: (n * k + m * k + m * n) * 2 / (us * 1e3)  # noqa: E731
            t_torch = times["torch"]
            print(f"| {name} | {m} | {n} x {k} | {mb:.1f} | {best} | {kiln[best]:.2f} | {gbs(kiln[best]):.0f} | "
                  f"{t_torch:.2f} | {gbs(t_torch):.0f} | {t_torch / kiln[best]:.2f}x | "
                  f"{min(times, key=times.__getitem__)} |", flush=True)
            for scheme in args.quant:
                quant_rows(name, scheme, m, x, copies, kiln[best], args.extra)
        copies.clear()
        torch.cuda.empty_cache()


def quant_rows(name: str, scheme: str, m: int, x: torch.Tensor, copies: list, bf16_us: float, extra: list[str]) -> None:
    """One row per scheme: the best quantized candidate (and each extra tiling) against bf16's best."""
    n, k = copies[0].shape
    qs, launcher, _ = quantized(scheme, copies)
    nbytes = qs[0][0].numel() + qs[0][1].numel() * qs[0][1].element_size() + (m * k + m * n) * 2
    times: dict[str, float] = {}
    for cand in launcher.candidates(m, on_cuda=True):
        def chain(cand: str = cand) -> None:
            for q, s in qs:
                launcher.run(cand, (x, q, s))
        times[cand] = autotune.time_ms(chain, reps=2) * 1e3 / len(qs)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    for spec in extra if m <= 4 else []:
        if spec.startswith("t"):
            bn, bk, w, st, acc, *sp = (int(v) for v in spec[1:].split("x"))
            cfg = TensorGemvConfig(bn, bk, w, True, st, acc, *sp)
        else:
            bn, bk, w = (int(v) for v in spec.lstrip("i").split("x"))
            cfg = (IntGemvConfig if spec.startswith("i") else GemvConfig)(bn, bk, w, True)

        def chain_extra(cfg: GemvConfig = cfg) -> None:
            for q, s in qs:
                launcher._gemv(cfg, x, q, s, s, None, y, launcher._pdl_ok(True))
        try:
            times[f"extra {cfg.name}"] = autotune.time_ms(chain_extra, reps=2) * 1e3 / len(qs)
        except Exception as e:  # noqa: BLE001 - a tiling that cannot compile or run here
            print(f"<!-- {name} {scheme} {spec}: {type(e).__name__}: {str(e)[:120]} -->")
    kiln = {c: t for c, t in times.items() if c != "torch"}
    ranked = sorted(kiln, key=kiln.__getitem__)
    best = ranked[0]
    print(f"| {name} {scheme} | {m} | {n} x {k} | {nbytes / 1e6:.1f} | {best} | {kiln[best]:.2f} | "
          f"{nbytes / (kiln[best] * 1e3):.0f} | vs bf16 {bf16_us / kiln[best]:.2f}x | next: "
          + ", ".join(f"{c} {kiln[c]:.2f}" for c in ranked[1:6]) + " |", flush=True)
    qs.clear()


if __name__ == "__main__":
    main()
