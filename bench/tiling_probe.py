"""Whole-K quantized gemv tilings at batch 1: do one-step tiles (every weight load issued before the
PDL wait) beat kiln's offered tilings on the 1.1B projections?

For each projection: kiln's best bf16 candidate, kiln's best int8 / int4 candidate (what the
launcher offers today), and extra `hgemv_w4` / `gemv_w8` tilings given as BLOCK_N x BLOCK_K x
warps (PDL; timed as autotune times them: L2 flushed, behind a short kernel that triggers early).
us per launch, weights rotated past L2.

    python3 bench/tiling_probe.py [--shapes 1b-qkv 1b-o 1b-gate_up 1b-down]
"""

from __future__ import annotations

import argparse

import torch
from probe_common import best, kiln_dense_us, kiln_quant_us, quantized, table

from kiln.backends.triton import quant_matmul
from kiln.backends.triton.matmul import GemvConfig
from kiln.backends.triton.quant_matmul import HalfGemvConfig

HGEMV_EXTRA = ((8, 2048, 4), (16, 2048, 4), (16, 2048, 8), (4, 2048, 2), (8, 4096, 4), (8, 8192, 8), (4, 8192, 4))
W8_EXTRA = ((4, 8192, 4), (8, 8192, 8), (2, 8192, 2), (8, 2048, 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1b-qkv", "1b-o", "1b-gate_up", "1b-down"])
    args = ap.parse_args()
    extra_h = [HalfGemvConfig(n, k, w, 4, True) for n, k, w in HGEMV_EXTRA]
    extra_w = [GemvConfig(n, k, w, True) for n, k, w in W8_EXTRA]
    for c in extra_h + extra_w:
        quant_matmul.CONFIGS[c.name] = c  # runnable by name (launcher.run looks configs up there)
    print(f"whole-K gemv tilings | {torch.cuda.get_device_name()} | torch {torch.__version__} | M = 1, us per launch")
    print("| shape | bf16 kiln | int8 kiln | int8 extra best (tiling) | int4 kiln | int4 hgemv extra best (tiling) |")
    print("|---|---|---|---|---|---|")

    def row(name: str, n: int, k: int, copies: list[torch.Tensor]) -> list[str]:
        x = torch.randn(1, k, device=copies[0].device, dtype=copies[0].dtype) * 3
        cells = [f"{kiln_dense_us(x, copies):.2f}"]
        for scheme, extra in (("int8", extra_w), ("int4", extra_h)):
            qs, launcher, _ = quantized(scheme, copies)
            cells.append(f"{kiln_quant_us(launcher, x, qs):.2f}")
            cands = {c.name: (lambda c=c: [launcher.run(c.name, (x, *q)) for q in qs]) for c in extra if c.block_k <= 2 * k}
            t, c = best(cands, len(qs))
            cells.append(f"{t:.2f} ({c})")
        return cells

    table(args.shapes, row)


if __name__ == "__main__":
    main()
