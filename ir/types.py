"""Value types: tensors with symbolic shapes, and symbolic integer scalars."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .dtypes import DType
from .symbolic import Dim, dim_symbols, format_dim, simplify_dim


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor's element type and shape; each dim an int or a sympy expression.

    Prints like `f32[B, S, 768]`; a 0-dim tensor prints as `f32[]`.
    """

    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(simplify_dim(d) for d in self.shape))

    def __str__(self) -> str:
        return f"{self.dtype.name}[{', '.join(format_dim(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            out |= dim_symbols(d)
        return out

    def numel(self) -> Dim:
        n: Dim = 1
        for d in self.shape:
            n = n * d
        return simplify_dim(sympy.expand(n) if not isinstance(n, int) else n)

    def nbytes(self) -> Dim:
        return simplify_dim(self.numel() * self.dtype.itemsize)

    def with_shape(self, shape: tuple[Dim, ...]) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)


@dataclass(frozen=True, slots=True)
class SymIntType:
    """A host integer whose value is the expression `expr` (a graph input that binds symbols)."""

    expr: Dim

    def __str__(self) -> str:
        return f"sym({format_dim(self.expr)})"

    @property
    def symbols(self) -> set[sympy.Symbol]:
        return dim_symbols(self.expr)


ValueType = TensorType | SymIntType
