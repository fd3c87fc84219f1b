"""What the kernel probes share (bench/int8_decode_probe.py, hgemv_probe.py, tmv_probe.py): weight
copies past L2, autotune-style timing of candidates, and trying tilings against a reference.

Each probe times one launch per weight copy in a CUDA graph, with enough copies (256 MB) that no
copy is still in L2 when its turn comes, exactly as `autotune.time_ms` times kiln's candidates.
"""

from __future__ import annotations

from typing import Callable

import torch

from kiln.backends.triton import autotune


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
