"""Generated Triton kernels alone vs their PyTorch equivalents, against the measured copy ceiling.

Napkin math: every case is memory-bound (a few FLOPs per element), so the floor is
bytes / copy bandwidth, bytes = every input read once + every output written once. Timing is
`triton.testing.do_bench` (CUDA events, warm-up, median), inputs random (never zeros), several
input sets rotated so the L2 cannot hold them. Run on a GPU machine:

    python3 bench/gpu_kernels.py        (needs CUDA and triton)
"""

from __future__ import annotations

import datetime

import torch
import triton

from kiln import ir
from kiln.backends.triton.codegen import generate
from kiln.backends.triton.launch import GroupLauncher
from kiln.backends.triton.reduce import generate_reduction
from kiln.ir.dtypes import from_torch


def median_ms(fn, sets: list) -> float:  # noqa: ANN001
    k = [0]

    def step() -> None:
        fn(*sets[k[0] % len(sets)])
        k[0] += 1

    return triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")


def copy_ceiling(nbytes: int) -> float:
    """GB/s of a device-to-device copy, counting bytes read plus bytes written."""
    srcs = [torch.randn(nbytes // 4, device="cuda") for _ in range(2)]
    dst = torch.empty_like(srcs[0])
    ms = median_ms(lambda s: dst.copy_(s), [(s,) for s in srcs])
    return 2 * nbytes / ms / 1e6


def elementwise_case(n: int, d: int, dtype: torch.dtype) -> tuple[str, float, float, int]:
    """out = silu(x * w) + y  (x, y: [n, d]; w: [d])"""
    g = ir.Graph()
    kd = from_torch(dtype)
    x, w, y = (g.add_input(k, ir.TensorType(kd, s)) for k, s in (("x", (n, d)), ("w", (d,)), ("y", (n, d))))
    g.outputs = [g.call("add", g.call("silu", g.call("mul", x, w)), y)]
    kern = GroupLauncher(generate(g))
    sets = [(torch.randn(n, d, device="cuda", dtype=dtype), torch.randn(d, device="cuda", dtype=dtype),
             torch.randn(n, d, device="cuda", dtype=dtype)) for _ in range(3)]
    eager = lambda a, b, c: torch.nn.functional.silu(a * b) + c  # noqa: E731
    nbytes = 3 * n * d * dtype.itemsize + d * dtype.itemsize
    torch.testing.assert_close(kern(*sets[0]), eager(*sets[0]), rtol=2e-2, atol=2e-2)
    return f"silu(x*w)+y {dtype} [{n}x{d}]", median_ms(kern, sets), median_ms(eager, sets), nbytes


def reduction_case(n: int, d: int, dtype: torch.dtype) -> tuple[str, float, float, int]:
    """h = x * w; returns h and mean(h*h, -1): an RMSNorm-style statistic with its prologue."""
    g = ir.Graph()
    kd = from_torch(dtype)
    x, w = g.add_input("x", ir.TensorType(kd, (n, d))), g.add_input("w", ir.TensorType(kd, (d,)))
    h = g.call("mul", x, w)
    g.outputs = [h, g.call("mean", g.call("mul", h, h), dims=[1], keepdim=True)]
    kern = GroupLauncher(generate_reduction(g))
    sets = [(torch.randn(n, d, device="cuda", dtype=dtype), torch.randn(d, device="cuda", dtype=dtype)) for _ in range(3)]

    def eager(a: torch.Tensor, b: torch.Tensor) -> tuple:
        hh = a * b
        return hh, (hh * hh).mean(-1, keepdim=True)

    nbytes = 2 * n * d * dtype.itemsize + d * dtype.itemsize + n * dtype.itemsize
    got, ref = kern(*sets[0]), eager(*sets[0])
    torch.testing.assert_close(got[1].float(), ref[1].float(), rtol=2e-2, atol=2e-2)
    return f"x*w, mean((x*w)^2) {dtype} [{n}x{d}]", median_ms(kern, sets), median_ms(eager, sets), nbytes


def norm_case(op: str, n: int, d: int, dtype: torch.dtype) -> tuple[str, float, float, int]:
    """rms_norm (HF Llama's eager formula as the peer) or add_layer_norm (a + b, then F.layer_norm)."""
    from kiln.backends.triton.norms import RowLauncher

    if op == "rms_norm":
        kern = RowLauncher("rms", 1e-6, dtype)
        sets = [(torch.randn(n, d, device="cuda", dtype=dtype), torch.randn(d, device="cuda", dtype=dtype)) for _ in range(3)]

        def eager(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            h = x.float()
            return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)

        nbytes = 2 * n * d * dtype.itemsize + d * dtype.itemsize
    else:
        kern = RowLauncher("add_ln", 1e-5, dtype)
        sets = [tuple(torch.randn(*s, device="cuda", dtype=dtype) for s in ((n, d), (n, d), (d,), (d,))) for _ in range(3)]

        def eager(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> tuple:
            s_ = a + b
            return s_, torch.nn.functional.layer_norm(s_, (d,), w, bias, 1e-5)

        nbytes = 4 * n * d * dtype.itemsize + 2 * d * dtype.itemsize
    got, ref = kern(*sets[0]), eager(*sets[0])
    got, ref = (got if isinstance(got, tuple) else (got,)), (ref if isinstance(ref, tuple) else (ref,))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2)
    return f"{op} {dtype} [{n}x{d}]", median_ms(kern, sets), median_ms(eager, sets), nbytes


def main() -> None:
    print(f"kiln gpu kernels | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} | "
          f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    ceil = copy_ceiling(1 << 30)
    print(f"copy ceiling (read + write): {ceil:.0f} GB/s\n")
    print("| kernel | kiln ms | eager ms | eager/kiln | kiln GB/s | % of copy |")
    print("|---|---|---|---|---|---|")
    cases = [elementwise_case(8192, 8192, torch.bfloat16), elementwise_case(8192, 8192, torch.float32),
             reduction_case(16384, 4096, torch.bfloat16), reduction_case(16384, 2048, torch.float32),
             norm_case("rms_norm", 16384, 4096, torch.bfloat16), norm_case("add_layer_norm", 16384, 4096, torch.bfloat16),
             norm_case("rms_norm", 16384, 2048, torch.float32)]
    for name, k_ms, e_ms, nbytes in cases:
        gbs = nbytes / k_ms / 1e6
        print(f"| {name} | {k_ms:.3f} | {e_ms:.3f} | {e_ms / k_ms:.2f}x | {gbs:.0f} | {100 * gbs / ceil:.0f}% |")


if __name__ == "__main__":
    main()
