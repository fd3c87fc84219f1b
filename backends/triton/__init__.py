"""The Triton backend: fusion groups in, generated Triton kernels out.

Takes a planned kiln Graph; gives, per fusion group it can emit, a launcher the plan calls in
place of the group's PyTorch ops (groups it cannot emit stay inlined PyTorch). Kernels compile
through Triton from a private on-disk cache keyed by content hash. On CPU tensors it needs
Triton's interpreter (TRITON_INTERPRET=1), which is how CI tests it.
"""

from __future__ import annotations

from typing import Any, Callable

from ... import debug
from ...errors import KilnError


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def kernel_for(device: Any) -> Callable[[Any], Any]:
    """A plan hook: node -> launcher for fusion groups and norm/softmax nodes Triton can run,
    else None (the node stays in PyTorch)."""
    import torch

    if not available():
        raise KilnError("backend='triton' needs the triton package (pip install triton)")
    if (device is None or torch.device(device).type != "cuda") and not debug.TRITON_INTERPRET:
        raise KilnError("backend='triton' runs on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 (Triton's interpreter)")
    from .codegen import Unsupported, generate
    from .launch import GroupLauncher
    from .norms import row_kernel
    from .reduce import generate_reduction

    def hook(node: Any) -> Any:
        if node.op.name == "paged_attention":
            from .paged import paged_attention_kernel

            return paged_attention_kernel(node)
        if node.op.name == "rotary":
            from .rotary import rotary_kernel

            return rotary_kernel(node)
        if node.op.name == "attention":
            from .attention import attention_kernel

            return attention_kernel(node)
        if node.op.name in ("linear", "linear_add"):
            from .matmul import linear_kernel

            return linear_kernel(node)
        if node.op.name in ("linear_w8", "linear_w4", "linear_w8a8", "linear_fp8"):
            from .quant_matmul import quant_linear_kernel

            return quant_linear_kernel(node)
        if node.subgraph is None:
            return row_kernel(node)
        if node.attrs.get("kind") == "prologue":  # a norm / SiLU-mul read by the linear's gemv
            from .prologue import prologue_kernel

            return prologue_kernel(node)
        gen = generate_reduction if node.attrs.get("kind") == "reduction" else generate
        try:
            return GroupLauncher(gen(node.subgraph))
        except Unsupported as e:
            debug.log.info("fusion group stays in PyTorch: %s", e)
            return None

    return hook
