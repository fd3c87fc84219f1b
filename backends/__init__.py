"""Backends: kiln IR in, something executable out.

`reference` lowers every node to its op's PyTorch implementation inside one generated plan
function (runs on any device; the default on CPU). Triton and CUDA code generation come later.
"""

from .reference import compile_reference

__all__ = ["compile_reference"]
