"""The op registry: every op declared once, with typed attributes, shape/dtype inference,
effects and a PyTorch reference implementation.

Reference convention: `op.impl(*inputs, *attrs)`, attributes in declaration order, converted to
runtime values (DType -> torch.dtype, symbolic dims -> ints). The verifier, the frontend and the
shape tests all call the same `op.infer`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import sympy
import torch

from .dtypes import DType
from .types import ValueType


class Effect(enum.Enum):
    PURE = "pure"  # result depends only on inputs; may be folded, deduplicated, dropped if unused
    RANDOM = "random"  # reads an RNG: never folded or deduplicated
    WRITE = "write"  # writes one of its inputs in place (buffer/cache update): never dropped
    # talks to other ranks (ir.opset.collective): every rank must run it, in the same order, so it
    # is never folded, deduplicated, cached, fused or dropped
    COLLECTIVE = "collective"


class AttrKind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"
    SCALAR = "scalar"  # int | float | bool
    DTYPE = "dtype"
    DEVICE = "device"
    LAYOUT = "layout"
    MEMORY_FORMAT = "memory_format"
    INTS = "ints"  # tuple[int, ...]
    DIM = "dim"  # int | sympy.Expr
    DIMS = "dims"  # tuple[int | sympy.Expr, ...]
    FLOATS = "floats"
    ANY = "any"  # a literal the printer knows (opaque ops with unusual schemas)


_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    kind: AttrKind
    default: Any = _REQUIRED
    optional: bool = False  # None allowed

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any) -> Any:
        """Validate (and normalise lists to tuples); raise TypeError naming the attribute."""
        if value is None:
            if self.optional:
                return None
            raise TypeError(f"attribute {self.name!r} may not be none")
        ok = _KIND_CHECKS[self.kind](value)
        if not ok:
            raise TypeError(f"attribute {self.name!r} expects {self.kind.value}, got {value!r}")
        if self.kind is AttrKind.FLOAT and _is_int(value):
            return float(value)  # one stored form: eps=1 and eps=1.0 print (and round-trip) alike
        return tuple(value) if isinstance(value, list) else value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_dim(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, sympy.Expr) and v.is_integer is not False)


_KIND_CHECKS: dict[AttrKind, Callable[[Any], bool]] = {
    AttrKind.INT: _is_int,
    AttrKind.FLOAT: lambda v: isinstance(v, (float, int)) and not isinstance(v, bool),
    AttrKind.BOOL: lambda v: isinstance(v, bool),
    AttrKind.STR: lambda v: isinstance(v, str),
    AttrKind.SCALAR: lambda v: isinstance(v, (int, float, bool)) or _is_dim(v),
    AttrKind.DTYPE: lambda v: isinstance(v, DType),
    AttrKind.DEVICE: lambda v: isinstance(v, str),
    AttrKind.LAYOUT: lambda v: isinstance(v, str),
    AttrKind.MEMORY_FORMAT: lambda v: isinstance(v, str),
    AttrKind.INTS: lambda v: isinstance(v, (tuple, list)) and all(_is_int(x) for x in v),
    AttrKind.DIM: _is_dim,
    AttrKind.DIMS: lambda v: isinstance(v, (tuple, list)) and all(_is_dim(x) for x in v),
    AttrKind.FLOATS: lambda v: isinstance(v, (tuple, list)),
    AttrKind.ANY: lambda v: True,
}


def is_symbolic(value: Any) -> bool:
    """Whether an attribute value holds a dim expression that must be evaluated per call."""
    if isinstance(value, sympy.Expr):
        return not value.is_Integer
    if isinstance(value, (tuple, list)):
        return any(is_symbolic(v) for v in value)
    return False


def to_runtime(value: Any) -> Any:
    """An attribute value as PyTorch wants it (symbolic dims must already be evaluated)."""
    if isinstance(value, DType):
        return value.torch
    if isinstance(value, tuple):
        return [to_runtime(v) for v in value]
    if isinstance(value, sympy.Expr):
        if value.is_Integer:
            return int(value)
        raise ValueError(f"symbolic value {value} reached runtime unevaluated")
    return value


def runtime_attr(kind: AttrKind, value: Any) -> Any:
    if value is None:
        return None
    if kind is AttrKind.LAYOUT:
        return getattr(torch, value)
    if kind is AttrKind.MEMORY_FORMAT:
        return getattr(torch, value)
    if kind is AttrKind.DEVICE:
        return torch.device(value)
    return to_runtime(value)


Infer = Callable[[Sequence[ValueType], dict[str, Any]], tuple[ValueType, ...]]


class InferenceError(Exception):
    """Shape/dtype inference found the inputs illegal for the op."""


@dataclass(eq=False)
class Op:
    """An operation kind. Identity matters: ops are compared with `is`."""

    name: str
    inputs: tuple[str, ...]  # a trailing "*name" takes any number of tensors
    attrs: tuple[Attr, ...]
    infer: Infer | None  # None: opaque, output types come from the trace
    impl: Callable[..., Any] | None
    effect: Effect = Effect.PURE
    category: str = "misc"
    doc: str = ""
    num_outputs: int = 1
    lower: Callable[[Any], "Call"] | None = None  # custom lowering (see runtime.plan)
    # note_cached(input_index, tensor): called once per shape for inputs the plan caches (values
    # built from shapes alone), outside graph capture: a place to inspect them once (attention
    # checks whether its mask is exactly causal)
    note_cached: Callable[[int, Any], None] | None = None
    attr_index: dict[str, Attr] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.attr_index = {a.name: a for a in self.attrs}

    def __repr__(self) -> str:
        return f"Op({self.name})"

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].startswith("*")

    @property
    def is_opaque(self) -> bool:
        return self.infer is None

    def normalize_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Check names and kinds, fill defaults; the result is in declaration order."""
        unknown = set(attrs) - set(self.attr_index)
        if unknown:
            raise TypeError(f"op {self.name} has no attribute(s) {sorted(unknown)}")
        out = {}
        for a in self.attrs:
            if a.name in attrs:
                out[a.name] = a.check(attrs[a.name])
            elif a.required:
                raise TypeError(f"op {self.name} needs attribute {a.name!r}")
            else:
                out[a.name] = a.default
        return out

    def check_arity(self, n: int) -> None:
        fixed = len(self.inputs) - (1 if self.variadic else 0)
        if (self.variadic and n < fixed) or (not self.variadic and n != fixed):
            raise TypeError(f"op {self.name} takes {'at least ' if self.variadic else ''}{fixed} inputs, got {n}")


@dataclass(frozen=True, slots=True)
class Call:
    """How the reference backend calls an op: a callable and an argument template.

    Template items: ("in", i) the i-th node input; ("const", v) a runtime value;
    ("dims", tuple) dims to evaluate per call; ("list", [items]) a list of items.
    """

    fn: Callable[..., Any]
    args: tuple
    kwargs: tuple = ()  # ((name, item), ...)


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name} is declared twice")
    REGISTRY[op.name] = op
    return op


def declare(
    name: str,
    inputs: Sequence[str],
    attrs: Sequence[Attr] = (),
    *,
    infer: Infer,
    impl: Callable[..., Any],
    effect: Effect = Effect.PURE,
    category: str = "misc",
    doc: str = "",
    num_outputs: int = 1,
    lower: Callable[[Any], Call] | None = None,
    note_cached: Callable[[int, Any], None] | None = None,
) -> Op:
    """Declare a kiln op once: the only way ops enter the registry besides opaque ATen ops."""
    return register(
        Op(name, tuple(inputs), tuple(attrs), infer, impl, effect, category, doc, num_outputs, lower, note_cached)
    )


def get_op(name: str) -> Op:
    """The op called `name`; `aten.<op>.<overload>` names an opaque ATen op made on demand."""
    op = REGISTRY.get(name)
    if op is not None:
        return op
    if name.startswith("aten."):
        from .aten import opaque_op_by_name

        return opaque_op_by_name(name)
    raise KeyError(f"unknown op {name!r}")
