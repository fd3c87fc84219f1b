"""Measurements shared by every stage: interleaved timing and numerical error vs eager."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

WARMUP_CALLS, WARMUP_S = 3, 0.25  # warm up every runner at least this many calls, all together this long
# Max relative error allowed vs eager, by the lowest-precision floating output dtype.
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
DEFAULT_TOLERANCE = 1e-5  # fp32 / fp64


def time_interleaved(runners: dict[str, Callable[[], Any]], iters: int, rounds: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds per call for each runner: warm all up (round-robin), then `rounds` rounds, each running every
    runner `iters` times in turn (round-robin), so machine drift hits all runners alike."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    with torch.no_grad():
        t0, n = time.perf_counter(), 0
        while n < WARMUP_CALLS or time.perf_counter() - t0 < WARMUP_S:  # round-robin warm-up
            for fn in runners.values():
                fn()
            n += 1
        sync()
        for _ in range(rounds):
            for key, fn in runners.items():
                for _ in range(iters):
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    samples[key].append(time.perf_counter() - t0)
    return samples


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def spread(samples: list[float]) -> float | None:
    """p90 / p10 of the timed calls (near 1 on a quiet machine); None with under 10 samples."""
    if len(samples) < 10:
        return None
    q = statistics.quantiles(samples, n=10)
    return q[-1] / q[0] if q[0] > 0 else None


def tolerance_for(outputs: list[Any]) -> float:
    """The relative tolerance of the lowest-precision floating tensor among `outputs`."""
    tols = [TOLERANCE.get(x.dtype, DEFAULT_TOLERANCE) for x in outputs if isinstance(x, torch.Tensor) and x.is_floating_point()]
    return max(tols, default=DEFAULT_TOLERANCE)


def max_errors(got: list[Any], ref: list[Any]) -> tuple[float, float]:
    """(max abs error, max relative error) over paired output leaves. Relative error of a leaf is
    max|got - ref| / max|ref| (normwise, so near-zero entries do not blow it up); non-tensor
    leaves must be equal (else inf)."""
    if len(got) != len(ref):
        return math.inf, math.inf
    worst_abs = worst_rel = 0.0
    for a, b in zip(got, ref):
        if not isinstance(b, torch.Tensor):
            if a != b:
                return math.inf, math.inf
            continue
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            return math.inf, math.inf
        a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
        err = (a64 - b64).abs().max().item() if b64.numel() else 0.0
        if math.isnan(err):
            return math.nan, math.nan
        scale = b64.abs().max().item() if b64.numel() else 0.0
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, err / max(scale, 1e-12))
    return worst_abs, worst_rel


def syncer(device: torch.device | None) -> Callable[[], None]:
    """What to call after each timed call so the clock sees finished work."""
    if device is not None and device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
