"""CUDA-graph replay of whole plans for repeating input shapes.

A plan's host work (one Python call per node) dominates small-batch GPU inference. When the
same input signature (shapes, dtypes, devices) arrives a second time, the runner captures the
plan into a CUDA graph (capture records without executing; the first, uncaptured call was the
warm-up) and from then on copies the inputs into the graph's static buffers and replays it.

Invariants: outputs are cloned before they are returned, so a caller never holds memory the
next replay overwrites (unless built with `clone_outputs=False`, for a caller that is done with a
step's outputs before it calls again: the paged model runner's logits); buffer writes (`copy_to`) replay into the same module tensors; a plan
that cannot be captured (an op that syncs with the host) runs uncaptured from then on; cached
tensors and arena storage the plan held at capture stay referenced by the graph's entry; at most
`max_graphs` signatures keep a graph (oldest dropped). All captures share one memory pool: replays
run one at a time on one stream and outputs are cloned at once, so a graph may reuse memory another
graph's capture freed (the pool grows with the largest capture, not with their number).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import torch


class GraphRunner:
    """Calls `fn` (a plan function) directly, or replays its CUDA graph for a known signature."""

    def __init__(self, fn: Callable[..., tuple], max_graphs: int = 4, capture_after: int = 2,
                 retained: Callable[[], Any] | None = None, stable_inputs: bool = False, clone_outputs: bool = True):
        """`stable_inputs`: the caller passes the same device tensors for a signature every time
        (rewritten in place between calls); the capture then uses them as its static inputs and a
        replay copies nothing (a different tensor for a known signature is still copied in)."""
        self.fn = fn
        self.stable_inputs = stable_inputs
        self.clone_outputs = clone_outputs
        self._pool: Any = None  # one memory pool shared by every capture (replays never overlap)
        self.retained = retained  # what a capture may point to beyond its inputs/outputs (Plan.retained)
        self.max_graphs = max_graphs
        self.capture_after = capture_after
        self.graphs: dict[tuple, tuple] = {}  # signature -> (graph, static inputs, static outputs, kept)
        self.seen: dict[tuple, int] = {}
        self.disabled = False
        self.failure: str | None = None  # why capture was given up, if it was
        self.captures = 0
        self.capture_seconds = 0.0  # host time spent capturing (reports)

    def __call__(self, *inputs: Any) -> tuple:
        if self.disabled:
            return self.fn(*inputs)
        sig = tuple((x.shape, x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in inputs)
        entry = self.graphs.get(sig)
        if entry is not None:
            graph, static, outs, _ = entry
            for s, x in zip(static, inputs):
                if isinstance(s, torch.Tensor) and s is not x:
                    s.copy_(x)
            graph.replay()
            return tuple(o.clone() for o in outs) if self.clone_outputs else outs
        n = self.seen.get(sig, 0) + 1
        self.seen[sig] = n
        if n < self.capture_after:
            return self.fn(*inputs)
        return self._capture(sig, inputs)

    def release(self) -> None:
        """Destroy every captured graph and run uncaptured from now on. A process group whose
        collectives a live graph captured cannot be torn down (NCCL's communicator destroy waits
        for it, pytorch/pytorch#115388): the parallel runtimes call this before they destroy theirs."""
        if self.graphs:
            torch.cuda.synchronize()
        for graph, *_ in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        self.seen.clear()
        self._pool = None
        self.disabled = True

    def _capture(self, sig: tuple, inputs: tuple) -> tuple:
        t0 = time.perf_counter()
        try:
            return self._capture_now(sig, inputs)
        finally:
            self.capture_seconds += time.perf_counter() - t0

    def _capture_now(self, sig: tuple, inputs: tuple) -> tuple:
        static = inputs if self.stable_inputs else tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)
        try:
            # No extra warm-up run: earlier uncaptured calls of this signature already did the lazy
            # initialisation and filled the shape cache, and a warm-up would apply the plan's
            # buffer writes (a KV cache, a step counter) one time too many.
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # thread-local: other threads' CUDA calls (the NCCL watchdog polling its events during a
            # tensor-parallel capture) must not invalidate this thread's capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                outs = self.fn(*static)
        except Exception as e:  # an op that cannot be captured: run the plan as it is from now on
            self.failure = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            # a silent fallback would hide a several-fold slowdown of small steps: say it once
            warnings.warn(f"kiln: CUDA-graph capture failed, this plan now runs uncaptured (small batches become "
                          f"host-bound): {self.failure}", RuntimeWarning, stacklevel=3)
            self.disabled = True
            torch.cuda.synchronize()
            return self.fn(*inputs)
        if len(self.graphs) >= self.max_graphs:
            del self.graphs[next(iter(self.graphs))]
        # The plan's caches may drop tensors the graph reads (a shape-cache entry evicted by other
        # bindings): the entry holds them so a replay never reads freed memory.
        kept = self.retained() if self.retained is not None else None
        self.graphs[sig] = (graph, static, outs, kept)
        self.captures += 1
        return self(*inputs)
