"""Decode matvecs on one GPU: kiln's dense linear candidates vs PyTorch (cuBLAS) per model shape.

Shapes: the projections of the Llama-2-7B shape at TP=1 and TP=2 (column-parallel Q/K/V and
gate/up halve N, row-parallel o / down halve K) and of the 1.1B Llama, bf16, M = 1 and 2. Every
candidate `LinearLauncher.candidates` offers (the CUDA-core `gemv` tilings, PDL variants on sm90,
the split-K `matvec`, the 16-row GEMM tile, "torch") is timed as autotune times it: launches
captured in a CUDA graph and replayed, CUDA events, median of rounds. Each graph chains one
launch per weight copy (enough copies for 256 MB, so L2 (50 MB) never holds the weights) and
the time is per launch (autotune also reads 2 x L2 before each call and subtracts that read's
time). GB/s counts the weight, x and y bytes.

    python3 bench/gemv_sweep.py [--m 1 2]
"""

from __future__ import annotations

import argparse

import torch

from kiln.backends.triton import autotune
from kiln.backends.triton.matmul import LinearLauncher

SHAPES = {  # name: (N, K)
    "7b-qkv": (12288, 4096), "7b-o": (4096, 4096), "7b-gate_up": (22016, 4096), "7b-down": (4096, 11008),
    "7b/2-qkv": (6144, 4096), "7b/2-o": (4096, 2048), "7b/2-gate_up": (11008, 4096), "7b/2-down": (4096, 5504),
    "1b-qkv": (2560, 2048), "1b-o": (2048, 2048), "1b-gate_up": (11264, 2048), "1b-down": (2048, 5632),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    args = ap.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    print(f"kiln gemv sweep | {torch.cuda.get_device_name()} | torch {torch.__version__} | bf16, per launch, "
          "CUDA-graph replay, weights rotated past L2")
    print("| shape | M | N x K | MB | best kiln | us | GB/s | torch us | GB/s | torch / best | chosen by autotune |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes:
        n, k = SHAPES[name]
        mb = n * k * 2 / 1e6
        copies = [torch.randn(n, k, device=dev, dtype=dtype) / k**0.5 for _ in range(max(1, int(256 // mb) + 1))]
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
        copies.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
