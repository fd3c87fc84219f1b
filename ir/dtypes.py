"""kiln's element types: one table, each with its torch dtype and short printed name."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class DType:
    """An element type. `torch` is None only for packed types with no torch counterpart."""

    name: str
    torch: torch.dtype | None
    bits: int
    kind: str  # "float" | "int" | "uint" | "bool" | "packed"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.name})"

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)


def _table() -> dict[str, DType]:
    rows = [
        ("f64", torch.float64, 64, "float"),
        ("f32", torch.float32, 32, "float"),
        ("f16", torch.float16, 16, "float"),
        ("bf16", torch.bfloat16, 16, "float"),
        ("f8e4m3", getattr(torch, "float8_e4m3fn", None), 8, "float"),
        ("f8e5m2", getattr(torch, "float8_e5m2", None), 8, "float"),
        ("i64", torch.int64, 64, "int"),
        ("i32", torch.int32, 32, "int"),
        ("i16", torch.int16, 16, "int"),
        ("i8", torch.int8, 8, "int"),
        ("u8", torch.uint8, 8, "uint"),
        ("b8", torch.bool, 8, "bool"),
        ("c64", torch.complex64, 64, "complex"),
        ("c128", torch.complex128, 128, "complex"),
    ]
    return {name: DType(name, td, bits, kind) for name, td, bits, kind in rows}


DTYPES: dict[str, DType] = _table()
_BY_TORCH: dict[torch.dtype, DType] = {d.torch: d for d in DTYPES.values() if d.torch is not None}

f64, f32, f16, bf16 = DTYPES["f64"], DTYPES["f32"], DTYPES["f16"], DTYPES["bf16"]
i64, i32, i8, u8, b8 = DTYPES["i64"], DTYPES["i32"], DTYPES["i8"], DTYPES["u8"], DTYPES["b8"]


def from_torch(dtype: torch.dtype) -> DType:
    """The kiln DType of a torch dtype; KeyError names the dtype if kiln has none."""
    try:
        return _BY_TORCH[dtype]
    except KeyError:
        raise KeyError(f"kiln has no element type for {dtype}") from None


def by_name(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise KeyError(f"unknown element type {name!r}; known: {', '.join(DTYPES)}") from None
