"""Autotuning: time a few candidate launches once, remember the winner on disk.

A kernel family (matmul, attention, ...) names its candidates (Triton configs, and usually the
PyTorch op itself as "torch", so kiln never picks something slower than what it replaces) and
calls `choose(key, candidates)` the first time it sees a problem key (op, dtypes, shape bucket,
device). Each candidate is a zero-argument callable that runs the work once on real inputs.
Timing: CUDA events around `reps` calls (captured in a CUDA graph, as decode runs them, each
after an L2 flush whose own time is subtracted) after one warm-up, median of `rounds` rounds. The winner
is kept in memory and in `<kernel cache>/autotune.json` (a private directory, see cache.py),
keyed by the problem key and the GPU's name, so later processes skip the timing.

On CPU (Triton's interpreter) nothing is timed: the first candidate wins, which keeps CI
deterministic and fast.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
from typing import Callable

import torch

from ... import debug
from .cache import cache_dir
from .pdl import lead_kernel

_MEMO: dict[str, str] = {}
_DISK: dict[str, str] | None = None
_FILE = "autotune.json"


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _load() -> dict[str, str]:
    global _DISK
    if _DISK is None:
        try:
            with open(os.path.join(cache_dir(), _FILE)) as f:
                data = json.load(f)
            _DISK = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _DISK = {}  # missing or unreadable: retune, never fail a compile over a cache file
    return _DISK


def _save(key: str, choice: str) -> None:
    disk = _load()
    disk[key] = choice
    path = os.path.join(cache_dir(), _FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(disk, f, indent=0, sort_keys=True)
    os.replace(tmp, path)


def time_ms(fn: Callable[[], object], reps: int = 10, rounds: int = 3) -> float:
    """Median over `rounds` of the mean CUDA-event time of `reps` calls, after one warm-up.

    Each call follows a read of a buffer twice the size of L2, and the reads' own time (timed
    alone) is subtracted: a decode step streams gigabytes of weights, so no kernel ever finds
    its weights in L2, and timing the same weight back to back (a 33 MB projection fits the
    H200's 50 MB L2) would pick the kernel that is fastest from L2 instead of from HBM.
    The calls are captured in one CUDA graph and replayed where they can be: that is how kiln
    runs decode, and eager timing would measure the host's launch cost instead of the kernel
    (a Triton launch from Python costs more than a small matvec runs). A candidate that cannot
    be captured is timed eagerly. Where PDL runs, a short latency-bound kernel that lets its
    successor launch early (pdl.lead_kernel) sits between the flush and the call: in a decode
    step a projection follows a norm, an all-reduce or the attention, and a PDL candidate loads
    its weights while that kernel finishes, which it is credited for here as in the model."""
    flush, lead = _l2_flush(), lead_kernel()

    def before() -> None:
        flush()
        if lead is not None:
            lead()

    before()  # the lead kernel compiles and loads here, never inside a capture
    fn()
    torch.cuda.synchronize()
    with_fn, captured = _replayable(lambda: (before(), fn()), reps)
    alone, _ = _replayable(before, reps, capture=captured)  # the flush timed the same way
    times = []
    for _ in range(rounds):
        times.append(max(_elapsed_ms(with_fn) - _elapsed_ms(alone), 0.0) / reps)
    return statistics.median(times)


def _l2_flush() -> Callable[[], object]:
    """A read of twice L2's size on the current GPU: evicts whatever a candidate left there. The
    buffer lives as long as the timing (its values never matter); the allocator keeps the block."""
    buf = torch.empty(_flush_elements(torch.cuda.current_device()), dtype=torch.float32, device="cuda")
    return buf.sum


@functools.cache
def _flush_elements(device: int) -> int:
    l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    return 2 * max(l2, 8 << 20) // 4


def _elapsed_ms(run: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def _replayable(step: Callable[[], object], reps: int, capture: bool = True) -> tuple[Callable[[], object], bool]:
    """`reps` calls of `step` as one callable, and whether it is a CUDA-graph replay: captured
    where they can be (and `capture`), else the eager loop (a host sync inside, say)."""

    def eager() -> None:
        for _ in range(reps):
            step()

    if not capture:
        return eager, False
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            eager()
    except Exception as e:  # noqa: BLE001 - not capturable: time it eagerly
        debug.log.info("autotune: timing eagerly, capture failed: %s", e)
        torch.cuda.synchronize()
        return eager, False
    graph.replay()  # the first replay uploads the graph
    return graph.replay, True


def choose(key: str, candidates: dict[str, Callable[[], object]], on_cuda: bool) -> str:
    """The name of the fastest candidate for `key` (cached in memory and on disk).

    A candidate that raises (too much shared memory for this GPU, say) is skipped; if all raise
    the first one's error propagates. Not on CUDA: the first candidate, untimed.
    """
    names = list(candidates)
    if not on_cuda or len(names) == 1:
        return names[0]
    full = f"{key}|{_device_name()}"
    hit = _MEMO.get(full) or _load().get(full)
    if hit in candidates:
        _MEMO[full] = hit
        return hit
    timings: dict[str, float] = {}
    first_error: Exception | None = None
    for name in names:
        try:
            timings[name] = time_ms(candidates[name])
        except Exception as e:  # noqa: BLE001 - a config that cannot run here just loses
            first_error = first_error or e
            debug.log.info("autotune %s: candidate %s failed: %s", key, name, e)
    if not timings:
        raise first_error  # type: ignore[misc]
    best = min(timings, key=timings.__getitem__)
    debug.log.info("autotune %s: %s (%s)", key, best, ", ".join(f"{n} {t:.4f} ms" for n, t in timings.items()))
    _MEMO[full] = best
    _save(full, best)
    return best


def bucket(n: int) -> int:
    """A shape bucket for keys: n rounded up to a power of two (dynamic dims share a choice)."""
    return 1 << max(int(n) - 1, 0).bit_length()
