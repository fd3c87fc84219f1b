"""Launching generated elementwise kernels from a plan."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import KilnError
from .cache import load_module
from .codegen import Kernel
from .pdl import launch_flags, with_pdl

BLOCK = 1024
MAX_ROW = 1 << 16  # longest row a single-block reduction kernel takes


class GroupLauncher:
    """Calls one generated kernel: allocates outputs at the inputs' broadcast shape and picks the
    dense variant when every input is contiguous and already of that shape."""

    __slots__ = ("kernel", "kernel_dense", "scalars", "out_dtypes", "n_out", "reduces", "keepdim", "pdl")
    writes_out = True  # the plan may pass preallocated outputs (out=...), see runtime.arena

    def __init__(self, k: Kernel):
        # PDL where it runs: each kernel waits for the previous one and lets the next one launch
        names = ("kernel", "kernel_dense")
        mod = load_module(with_pdl(k.source, trigger=names, wait=names))
        self.pdl = launch_flags()
        self.kernel, self.kernel_dense = mod.kernel, mod.kernel_dense
        self.scalars = k.scalars
        self.out_dtypes = [t.dtype.torch for t in k.out_types]
        self.n_out = k.n_out
        self.reduces, self.keepdim = k.reduces, k.keepdim

    def __call__(self, *ins: torch.Tensor, out: tuple | None = None) -> Any:
        shape = torch.broadcast_shapes(*(x.shape for x in ins))
        if self.reduces:
            return self._reduce(ins, shape, out)
        device = ins[0].device
        outs = list(out) if out is not None else [torch.empty(shape, dtype=d, device=device) for d in self.out_dtypes]
        n = outs[0].numel()
        if n:
            grid = ((n + BLOCK - 1) // BLOCK,)
            if all(x.shape == shape and x.is_contiguous() for x in ins):
                self.kernel_dense[grid](*ins, *outs, *self.scalars, n, BLOCK=BLOCK, **self.pdl)
            else:
                strides = [s for x in ins for s in x.expand(shape).stride()]
                self.kernel[grid](*ins, *outs, *self.scalars, *shape, *strides, n, BLOCK=BLOCK, **self.pdl)
        return outs[0] if self.n_out == 1 else tuple(outs)

    def _reduce(self, ins: tuple, shape: torch.Size, out: tuple | None) -> Any:
        """One program per row of the last dim; prologue outputs first, the reduction last."""
        device = ins[0].device
        rows_shape = shape[:-1] + ((1,) if self.keepdim else ())
        if out is not None:
            outs = list(out)
        else:
            outs = [torch.empty(shape, dtype=d, device=device) for d in self.out_dtypes[:-1]]
            outs.append(torch.empty(rows_shape, dtype=self.out_dtypes[-1], device=device))
        r = shape[-1]
        rows = outs[-1].numel()
        block = max(16, 1 << (max(r, 1) - 1).bit_length())  # one block spans the row
        if block > MAX_ROW:
            raise KilnError(f"a reduction row of {r} elements exceeds the single-block kernel's {MAX_ROW}; use backend='reference'")
        if rows and r:
            if all(x.shape == shape and x.is_contiguous() for x in ins):
                self.kernel_dense[(rows,)](*ins, *outs, *self.scalars, r, BLOCK=block, **self.pdl)
            else:
                strides = [s for x in ins for s in x.expand(shape).stride()]
                self.kernel[(rows,)](*ins, *outs, *self.scalars, *shape, *strides, r, BLOCK=block, **self.pdl)
        return outs[0] if self.n_out == 1 else tuple(outs)
