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

    if runs_triton(backend, device):
        return tb.kernel_for(device)
    return None


def runs_triton(backend: str, device: Any) -> bool:
    """Whether `backend` on `device` (a torch.device, a name, or None) is the Triton backend:
    passes that only pay off with its kernels (fuse_prologues) ask this."""
    if backend == "triton":
        return True
    if backend != "auto" or device is None:
        return False
    import torch

    from . import triton as tb

    return torch.device(device).type == "cuda" and tb.available()


__all__ = ["kernel_hook", "runs_triton"]
