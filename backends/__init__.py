"""Backends: kiln IR in, something executable out.

The reference backend is the plan's default lowering (runtime.plan): every node runs its op's
PyTorch implementation, on any device. `triton` generates kernels for fusion groups, norms and
softmax; `cuda` generates CUDA C++ for fusion groups; `kernel_hook` picks what the plan asks per
node.
"""

from __future__ import annotations

from typing import Any


def kernel_hook(backend: str, device: Any) -> Any:
    """The plan hook for `backend` ("auto" | "reference" | "triton" | "cuda") on `device`, or None
    for the reference lowering. auto: Triton on CUDA inputs when Triton is installed."""
    if backend == "cuda":
        from . import cuda

        return cuda.kernel_for(device)
    from . import triton as tb

    on_cuda = device is not None and device.type == "cuda"
    if backend == "triton" or (backend == "auto" and on_cuda and tb.available()):
        return tb.kernel_for(device)
    return None


__all__ = ["kernel_hook"]
