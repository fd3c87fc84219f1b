"""OnnxBuilder: the state of one export: node list, initializers, value names, and shape symbols.

Kiln dims are ints or sympy expressions over named symbols (`B`, `S`). In the exported graph a
symbol is read off the first graph input that has it alone as a dim (`Shape(x, start=1, end=2)`)
and expressions become int64 arithmetic (Add, Mul, Div, Mod, Max, Min) on those, built once per
expression. With `dynamic=False` every dim is evaluated at the example's symbol values instead.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import sympy
import torch
from onnx import NodeProto, TensorProto, helper

from ...ir.dtypes import DType
from ...ir.graph import Graph, Node, Value
from ...ir.symbolic import Dim, evaluate_dim
from ...ir.types import SymIntType, TensorType

# kiln element type name -> ONNX TensorProto data type
ONNX_DTYPES: dict[str, int] = {
    "f64": TensorProto.DOUBLE, "f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
    "f8e4m3": TensorProto.FLOAT8E4M3FN, "f8e5m2": TensorProto.FLOAT8E5M2, "i64": TensorProto.INT64,
    "i32": TensorProto.INT32, "i16": TensorProto.INT16, "i8": TensorProto.INT8, "u8": TensorProto.UINT8,
    "b8": TensorProto.BOOL,
}
_NP: dict[str, Any] = {
    "f64": np.float64, "f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "i16": np.int16,
    "i8": np.int8, "u8": np.uint8, "b8": np.bool_,
}
MS_DOMAIN = "com.microsoft"


def onnx_dtype(dt: DType) -> int:
    try:
        return ONNX_DTYPES[dt.name]
    except KeyError:
        raise ValueError(f"element type {dt.name} has no ONNX counterpart") from None


def tensor_proto(name: str, t: torch.Tensor) -> TensorProto:
    """A TensorProto holding `t`'s bytes as raw_data (every dtype alike, bf16 and fp8 included)."""
    from ...ir.dtypes import from_torch

    t = t.detach().cpu().contiguous()
    p = TensorProto()
    p.name = name
    p.data_type = onnx_dtype(from_torch(t.dtype))
    p.dims.extend(int(d) for d in t.shape)
    p.raw_data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return p


class OnnxBuilder:
    """Collects ONNX nodes and initializers for one exported graph.

    Invariant: every ONNX tensor name is made here (`fresh`) or is a sanitized kiln input or
    constant name, and each is defined once.
    """

    def __init__(self, target: str, opset: int, env: dict | None):
        self.target = target
        self.opset = opset
        self.env = env  # symbol -> int when exporting static shapes, else None
        self.nodes: list[NodeProto] = []
        self.initializers: list[tuple[str, torch.Tensor]] = []  # (onnx name, tensor)
        self.names: dict[Value, str] = {}
        self.used: set[str] = set()
        self.domains: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self._dims: dict[Any, str] = {}
        self._sym_source: dict[sympy.Symbol, tuple[str, int | None]] = {}
        self._n = 0

    # --- names ---------------------------------------------------------------------------------
    def fresh(self, hint: str = "t") -> str:
        while True:
            self._n += 1
            name = f"{hint}_{self._n}"
            if name not in self.used:
                self.used.add(name)
                return name

    def claim(self, wanted: str) -> str:
        """`wanted` (sanitized) if free, else a numbered variant."""
        base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", wanted) or "v"
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}__{k}"
        self.used.add(name)
        return name

    # --- emitting --------------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", **attrs: Any) -> Any:
        """Append a node; returns its output name (or a list when outputs != 1). An input name ""
        is an omitted optional input; an output count may include omitted outputs via `skip`."""
        outs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self._node(op_type, list(inputs), outs, domain, attrs)
        return outs[0] if outputs == 1 else outs

    def op_into(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], domain: str = "", **attrs: Any) -> None:
        self._node(op_type, list(inputs), list(outputs), domain, attrs)

    def _node(self, op_type: str, inputs: list, outputs: list, domain: str, attrs: dict) -> None:
        if domain:
            self.domains.add(domain)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, outputs, domain=domain or None, **attrs))

    def initializer(self, hint: str, t: torch.Tensor) -> str:
        name = self.claim(hint)
        self.initializers.append((name, t))
        return name

    def const(self, value: Any, dtype: DType) -> str:
        """A small constant (scalar or nested list) of kiln dtype `dtype`, shared by value."""
        arr = np.asarray(value)
        key = (dtype.name, arr.shape, arr.tobytes() if dtype.name != "bf16" else str(arr.tolist()))
        name = self._consts.get(key)
        if name is None:
            t = torch.tensor(arr.tolist(), dtype=dtype.torch)
            name = self.initializer("c", t)
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        from ...ir.dtypes import i64

        return self.const([int(v) for v in values], i64)

    def cast(self, name: str, src: DType, dst: DType) -> str:
        return name if src is dst else self.op("Cast", name, to=onnx_dtype(dst))

    # --- symbols and dims -------------------------------------------------------------------------
    def bind_inputs(self, g: Graph) -> None:
        """Record where each shape symbol can be read: the first input with it alone as a dim."""
        for v in g.inputs:
            name = self.names[v]
            if isinstance(v.type, SymIntType):
                if isinstance(v.type.expr, sympy.Symbol):
                    self._sym_source.setdefault(v.type.expr, (name, None))
                continue
            for axis, d in enumerate(v.type.shape):
                if isinstance(d, sympy.Symbol):
                    self._sym_source.setdefault(d, (name, axis))

    def static(self, d: Dim) -> Dim:
        """`d` evaluated when exporting static shapes, else as it is."""
        if self.env is not None and not isinstance(d, int):
            return evaluate_dim(d, self.env)
        return d

    def dim(self, d: Dim) -> str:
        """An i64[1] tensor holding dim `d`."""
        d = self.static(d)
        if isinstance(d, int) or (isinstance(d, sympy.Expr) and d.is_Integer):
            return self.ints([int(d)])
        name = self._dims.get(d)
        if name is None:
            name = self._dim_expr(d)
            self._dims[d] = name
        return name

    def dim_scalar(self, d: Dim) -> str:
        """An i64[] scalar holding dim `d`."""
        d = self.static(d)
        if isinstance(d, int):
            from ...ir.dtypes import i64

            return self.const(int(d), i64)
        return self.op("Squeeze", self.dim(d), self.ints([0]))

    def shape(self, dims: Sequence[Dim]) -> str:
        """An i64[len(dims)] tensor holding the shape `dims` (an initializer when static)."""
        dims = [self.static(d) for d in dims]
        if all(isinstance(d, int) for d in dims):
            return self.ints(dims)  # type: ignore[arg-type]
        key = ("shape", tuple(dims))
        name = self._dims.get(key)
        if name is None:
            name = self.op("Concat", *(self.dim(d) for d in dims), axis=0)
            self._dims[key] = name
        return name

    def _dim_expr(self, e: sympy.Expr) -> str:
        if e.is_Integer:
            return self.ints([int(e)])
        if e.is_Symbol:
            src = self._sym_source.get(e)
            if src is None:
                raise ValueError(f"shape symbol {e} is not a dim of any graph input")
            name, axis = src
            if axis is None:
                return self.op("Reshape", name, self.ints([1]))
            return self.op("Shape", name, start=axis, end=axis + 1)
        if isinstance(e, sympy.Add):
            terms = [self.dim(a) for a in e.args]
            return _fold(self, "Add", terms)
        if isinstance(e, sympy.Mul):
            return _fold(self, "Mul", [self.dim(a) for a in e.args])
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and int(e.exp) > 0:
            return _fold(self, "Mul", [self.dim(e.base)] * int(e.exp))
        if isinstance(e, sympy.floor):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            return self.op("Div", self.dim(num), self.dim(den))  # dims are positive: truncation == floor
        if isinstance(e, sympy.Mod):
            return self.op("Mod", self.dim(e.args[0]), self.dim(e.args[1]))
        if isinstance(e, (sympy.Max, sympy.Min)):
            return self.op("Max" if isinstance(e, sympy.Max) else "Min", *(self.dim(a) for a in e.args))
        raise ValueError(f"dim expression {e} has no ONNX form")


def _fold(b: OnnxBuilder, op: str, names: list[str]) -> str:
    out = names[0]
    for n in names[1:]:
        out = b.op(op, out, n)
    return out


def value_info(b: OnnxBuilder, name: str, t: TensorType | SymIntType) -> Any:
    """ValueInfo with symbolic dims as dim_params named in kiln's grammar (`S`, `S + 1`)."""
    from ...ir.symbolic import format_dim

    if isinstance(t, SymIntType):
        return helper.make_tensor_value_info(name, TensorProto.INT64, [])
    dims = [b.static(d) for d in t.shape]
    return helper.make_tensor_value_info(name, onnx_dtype(t.dtype), [d if isinstance(d, int) else format_dim(d) for d in dims])


def node_label(node: Node, index: int) -> str:
    """How errors name a node: its index, op, source module and line."""
    s = node.source
    where = f" at {s}" if s is not None and str(s) else ""
    return f"node %{index} ({node.op.name}{where})"
