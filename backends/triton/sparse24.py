"""2:4 semi-structured sparse linears on PyTorch's sparse tensor-core kernels (CUDA only).

A weight W [N, K] with at most 2 nonzeros in every group of 4 consecutive K values (what
`passes/prune.py`'s 2:4 pattern leaves) compresses to its kept half plus 2-bit position metadata,
which Ampere/Hopper sparse tensor cores multiply directly. `LinearLauncher` offers this as the
"sparse24" candidate next to its Triton configs and cuBLAS, so it runs only where it measured
faster. Backend: cuSPARSELt when this torch build has it, else PyTorch's CUTLASS kernels.

Napkin math (bf16): a GEMM does half the tensor-core FLOPs (2*M*N*K / 2), so compute-bound shapes
can approach 2x dense; a decode matvec reads N*K/2 kept values (N*K bytes) + N*K/8 bytes of
metadata (4 bits per group of 4) instead of 2*N*K bytes, 0.56x, so memory-bound M = 1 could
approach 1.8x, but the library pads M to its minimum (8 or 16 rows) and its small-M tiles are
not tuned for decode: hence the measurement before use.

Structure is read from the weight values once per weight, not from pass metadata: it is what the
kernel needs, and it survives `fuse_projections` (concatenation along N keeps every row's groups)
and any other rewrite that keeps the zeros.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

SPARSE24 = "sparse24"  # the launcher's candidate name
_DTYPES = (torch.float16, torch.bfloat16)  # fp32 would run as TF32 on the CUTLASS path: not exact
# (sparse min rows, sparse min cols, dense min rows, dense min cols) if torch's table is missing
_FALLBACK_LIMITS = (32, 64, 16, 16)


def is_two_four(w: torch.Tensor) -> bool:
    """True if the 2-dim `w` has at most 2 nonzeros in every group of 4 consecutive values along
    its last dim (K must be a multiple of 4). One pass over the weight; a dense weight almost
    always fails on its first row, which is checked alone first (no weight-sized temporaries)."""
    if w.dim() != 2 or w.shape[1] % 4 or w.numel() == 0:
        return False
    return all(bool(((part.reshape(-1, 4) != 0).sum(-1) <= 2).all()) for part in (w[:1], w))


def backend() -> Any:
    """The SparseSemiStructuredTensor subclass this torch build can use, or None."""
    sparse = getattr(torch, "sparse", None)
    cusparselt = getattr(sparse, "SparseSemiStructuredTensorCUSPARSELT", None)
    cutlass = getattr(sparse, "SparseSemiStructuredTensorCUTLASS", None)
    lt = getattr(torch.backends, "cusparselt", None)
    if cusparselt is not None and lt is not None and lt.is_available():
        return cusparselt
    return cutlass


def limits(cls: Any, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(sparse min rows, sparse min cols, dense min rows, dense min cols) of `cls` for `dtype`:
    the sparse operand's dims must be multiples of the first two (torch validates, never pads)."""
    table = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", None) or {}
    c = table.get(dtype)
    return tuple(c) if c is not None else _FALLBACK_LIMITS  # type: ignore[return-value]


def fits(shape: tuple, dtype: torch.dtype, cls: Any) -> bool:
    """Whether a weight of this shape and dtype meets `cls`'s shape and dtype constraints."""
    if cls is None or dtype not in _DTYPES or len(shape) != 2:
        return False
    (n, k), (rows, cols, dense_rows, _) = shape, limits(cls, dtype)
    return n >= rows and n % rows == 0 and k >= cols and k % cols == 0 and k % dense_rows == 0


def eligible(w: torch.Tensor) -> bool:
    """A CUDA fp16/bf16 weight with 2:4 structure along K that the sparse kernels accept."""
    return w.is_cuda and fits(tuple(w.shape), w.dtype, backend()) and is_two_four(w)


class SparseWeight:
    """The 2:4-compressed form of the one weight a launcher multiplies, built once.

    Invariant: `_key` names the weight (`data_ptr`, shape, strides, dtype, device) that `_ok` and
    `_packed` describe, and `_w` holds that tensor, so its address cannot be reused by another
    tensor while cached. Weights are plan constants, so the key changes at most once per plan
    (a new weight is re-checked and re-compressed, never silently reused). The compressed copy
    (half the values plus metadata, ~0.56x the dense bytes) lives beside the dense one.
    """

    __slots__ = ("_key", "_w", "_ok", "_packed")

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._w: torch.Tensor | None = None
        self._ok = False
        self._packed: Any = None

    @property
    def packed(self) -> Any:
        """The compressed SparseSemiStructuredTensor, once built (None before)."""
        return self._packed

    def release(self) -> None:
        """Drop the compressed copy (rebuilt on the next sparse launch outside a capture)."""
        self._packed = None

    def usable(self, w: torch.Tensor) -> bool:
        """Whether `w` can run on the sparse kernels (checked once per weight)."""
        key = (w.data_ptr(), tuple(w.shape), w.stride(), w.dtype, w.device)
        if key != self._key:
            if w.is_cuda and torch.cuda.is_current_stream_capturing():
                return False  # the check syncs the device: not now, and not remembered
            self._key, self._w, self._packed = key, w, None
            self._ok = eligible(w)
        return self._ok

    def linear(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """x [..., K] @ w.T (+ bias) on the sparse kernels, or None where they cannot run now
        (the weight is not usable, or it is not compressed yet and the stream is capturing)."""
        if not self.usable(w):
            return None
        cls = backend()
        if self._packed is None:
            if torch.cuda.is_current_stream_capturing():
                return None  # compressing launches kernels and allocates: never inside a capture
            self._packed = cls.from_dense(w.detach().contiguous())
        k, n = x.shape[-1], w.shape[0]
        x2 = x.reshape(-1, k)
        m = x2.shape[0]
        if m == 0:
            return None
        # x.T is the dense operand [K, M]: pad M up to the kernel's minimum (decode M = 1 -> 8/16)
        # ourselves, so every torch version sees an aligned operand
        _, _, dense_rows, dense_cols = limits(cls, x.dtype)
        pad = -m % max(dense_rows, dense_cols)
        x2 = F.pad(x2, (0, 0, 0, pad)) if pad else x2.contiguous()
        fused_bias = bias is not None and bias.dtype == x.dtype
        y = F.linear(x2, self._packed, bias if fused_bias else None)  # (M + pad, N)
        y = y[:m] if pad else y
        if bias is not None and not fused_bias:
            y = y + bias
        return y.contiguous().view(*x.shape[:-1], n)
