"""The CUDA C++ backend: fusion groups in, generated CUDA kernels out (`backend="cuda"`).

Takes a planned kiln Graph; gives, per fusion group it can emit (elementwise groups, and
reduction groups: an elementwise prologue closed by a last-dim sum/mean/amax/amin), a launcher
the plan calls in place of the group's PyTorch ops. `codegen.py`/`reduce.py` write plain CUDA C
(torch-free; `nvcc -c` compiles it alone), `build.py` adds a pybind11 binding over
torch::Tensors and compiles each plan's kernels as one PyTorch extension, cached by content hash
in a private directory under the kernel cache.

Everything else stays in PyTorch: groups or ops the generator does not emit, and norm, softmax,
matmul and attention nodes. (The Triton backend has row kernels for norms; `backend="cuda"` does
not borrow them, so it means exactly "kiln's CUDA C kernels + PyTorch" and the two backends can be
compared group for group.) Needs CUDA tensors, a CUDA build of PyTorch, nvcc and ninja.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ... import debug
from ...errors import KilnError


def missing() -> str | None:
    """Why this machine cannot build CUDA extensions, or None when it can."""
    import torch

    if not torch.cuda.is_available() or torch.version.cuda is None:
        return "a CUDA build of PyTorch and a CUDA device (this PyTorch has no usable CUDA)"
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return "the CUDA toolkit's nvcc (install the CUDA toolkit matching torch.version.cuda and set CUDA_HOME)"
    if not cpp_extension.is_ninja_available():
        return "ninja (pip install ninja)"
    return None


def available() -> bool:
    return missing() is None


def kernel_for(device: Any) -> Callable[[Any], Any]:
    """A plan hook: node -> launcher for the fusion groups this backend can emit, else None."""
    import torch

    if device is None or torch.device(device).type != "cuda":
        raise KilnError("backend='cuda' runs on CUDA tensors; move the inputs to a GPU or use backend='reference'")
    why = missing()
    if why is not None:
        raise KilnError(f"backend='cuda' needs {why}")
    from .build import KernelSet, Launcher
    from .codegen import Unsupported, generate
    from .reduce import generate_reduction

    kset = KernelSet()  # every group of this plan compiles into one extension, on first launch

    def hook(node: Any) -> Any:
        if node.subgraph is None or node.attrs.get("kind") not in ("elementwise", "reduction"):
            return None  # a "prologue" group (a linear inside) runs its body in PyTorch
        gen = generate_reduction if node.attrs.get("kind") == "reduction" else generate
        try:
            idx, k = kset.add(lambda prefix: gen(node.subgraph, prefix))
        except Unsupported as e:
            debug.log.info("fusion group stays in PyTorch: %s", e)
            return None
        return Launcher(kset, idx, k)

    return hook
