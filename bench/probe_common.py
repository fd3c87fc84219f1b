"""What the kernel probes share (bench/int8_decode_probe.py, hgemv_probe.py, tmv_probe.py): weight
copies past L2, autotune-style timing of candidates (kiln's own among them), trying tilings
against a reference, and the table of one row per shape; and `timed`, the median of calls between
CUDA events (gpu_forward.py, the megastep probes).

Each probe times one launch per weight copy in a CUDA graph, with enough copies (256 MB) that no
copy is still in L2 when its turn comes, exactly as `autotune.time_ms` times kiln's candidates.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import torch

from kiln.backends.triton import autotune
from kiln.backends.triton.matmul import TORCH, LinearLauncher
from kiln.backends.triton.quant_matmul import QuantLinearLauncher
from kiln.ir.opset.quant import dequantize_int4, dequantize_int8, quantize_int4_grouped, quantize_int8_per_channel

# the decode projections (N, K) of the Llama-2-7B shape at TP = 1 and 2 (column-parallel q/k/v and
# gate/up halve N, row-parallel o / down halve K) and of the 1.1B Llama
SHAPES = {  # name: (N, K)
    "7b-qkv": (12288, 4096), "7b-o": (4096, 4096), "7b-gate_up": (22016, 4096), "7b-down": (4096, 11008),
    "7b/2-qkv": (6144, 4096), "7b/2-o": (4096, 2048), "7b/2-gate_up": (11008, 4096), "7b/2-down": (4096, 5504),
    "1b-qkv": (2560, 2048), "1b-o": (2048, 2048), "1b-gate_up": (11264, 2048), "1b-down": (2048, 5632),
}


def weight_copies(n: int, k: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Random [n, k] weights (scaled 1 / sqrt(k)), as many as 256 MB needs (at least one)."""
    return [torch.randn(n, k, device=device, dtype=dtype) / k**0.5 for _ in range(max(1, int(256 // (n * k * 2 / 1e6)) + 1))]


def best(cands: dict[str, Callable[[], object]], launches: int) -> tuple[float, str]:
    """(us per launch, name) of the fastest candidate; each runs `launches` launches per call."""
    if not cands:
        return float("nan"), "-"
    times = {c: autotune.time_ms(f, reps=2) * 1e3 / launches for c, f in cands.items()}
    c = min(times, key=times.__getitem__)
    return times[c], c


def race(tilings: dict[str, Callable[[int], object]], copies: int, check: Callable[[], float], label: str) -> tuple[float, str, float]:
    """Tilings as name -> launch(i) of weight copy i: each is launched on copy 0 and checked
    (`check()` gives its max relative error), then all are timed over every copy; a tiling that
    fails to compile or run is reported as an HTML comment and left out. (us, best name, worst error)."""
    cands, errs = {}, []
    for name, launch in tilings.items():
        try:
            launch(0)
            errs.append(check())
            cands[name] = lambda launch=launch: [launch(i) for i in range(copies)]
        except Exception as e:  # noqa: BLE001 - a tiling that cannot compile or run here
            print(f"<!-- {label} {name}: {type(e).__name__}: {str(e)[:300]} -->")
    t, c = best(cands, copies)
    return t, c, max(errs) if errs else float("nan")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref|, in fp32."""
    return ((y.float() - ref).abs().max() / ref.abs().max()).item()


def quantized(scheme: str, copies: list[torch.Tensor]) -> tuple[list[tuple], QuantLinearLauncher, Callable]:
    """The copies as `scheme` ("int8" per channel, "w8a8": the same codes with x quantized per
    token, "fp8": e4m3 per channel with x per token, "int4" in groups of 128) codes and scales, kiln's launcher for them (constant weights)
    and the scheme's weight dequantize (codes, scales -> fp32 weight)."""
    if scheme == "fp8":
        from kiln.ir.opset.quant_fp8 import dequantize_fp8, quantize_fp8_per_channel

        return ([quantize_fp8_per_channel(w) for w in copies],
                QuantLinearLauncher("linear_fp8", {"activation": "none"}, False, constant_weights=True),
                lambda q, s: dequantize_fp8(q, s, torch.float32))
    if scheme in ("int8", "w8a8"):
        op = "linear_w8" if scheme == "int8" else "linear_w8a8"
        return ([quantize_int8_per_channel(w) for w in copies],
                QuantLinearLauncher(op, {"activation": "none"}, False, constant_weights=True),
                lambda q, s: dequantize_int8(q, s, torch.float32))
    return ([quantize_int4_grouped(w, 128) for w in copies],
            QuantLinearLauncher("linear_w4", {"activation": "none", "group_size": 128}, False, constant_weights=True),
            lambda q, s: dequantize_int4(q, s, 128, torch.float32))


def kiln_dense_us(x: torch.Tensor, copies: list[torch.Tensor]) -> float:
    """kiln's best dense (bf16) linear candidate for x over the copies, us per launch."""
    dense = LinearLauncher("none", False, False, constant_weights=True)
    return best({c: (lambda c=c: [dense.run(c, x, w, None, None) for w in copies])
                 for c in dense.candidates(x.shape[0], copies[0]) if c != TORCH}, len(copies))[0]


def kiln_quant_us(launcher: QuantLinearLauncher, x: torch.Tensor, qs: list[tuple]) -> float:
    """kiln's best quantized candidate for x over the quantized copies, us per launch."""
    return best({c: (lambda c=c: [launcher.run(c, (x, *q)) for q in qs])
                 for c in launcher.candidates(x.shape[0], on_cuda=True) if c != TORCH}, len(qs))[0]


def table(shapes: list[str], row: Callable[[str, int, int, list[torch.Tensor]], list[str]]) -> None:
    """One markdown row per shape: `row(name, N, K, bf16 weight copies)` gives the cells after the
    name; the copies are freed before the next shape."""
    for name in shapes:
        n, k = SHAPES[name]
        copies = weight_copies(n, k, torch.bfloat16, torch.device("cuda"))
        print(f"| {name} | " + " | ".join(row(name, n, k, copies)) + " |", flush=True)
        copies.clear()
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any], iters: int) -> float:
    """Median ms over `iters` calls, each between CUDA events."""
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)
