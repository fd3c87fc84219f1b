"""Triton source for elementwise fusion groups.

One group -> one 1-D kernel over the group's iteration space (numel of its output shape). Each
input is read at `sum_d idx_d * stride_d`, its strides being those of the input expanded to the
output shape (0 on broadcast dims), so broadcasting and non-contiguous inputs need no copies; a
second variant for all-contiguous, same-shape operands reads at the flat index. Float16/bfloat16
values are computed in float32 and rounded to their IR dtype after every op, as PyTorch does.
Scalars (attributes) are kernel arguments, never spliced into the source.

Napkin math (memory-bound): bytes = sum of input bytes + sum of output bytes, each touched once;
FLOPs are a handful per element, far under the ridge point, so the floor is bytes / bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ir import Graph, Node
from ...ir.dtypes import DType

_TL = {
    "f32": "tl.float32", "f16": "tl.float16", "bf16": "tl.bfloat16", "f64": "tl.float64", "i64": "tl.int64",
    "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8", "b8": "tl.int1",
}
_UNARY = {
    "neg": "-{0}", "abs": "tl.abs({0})", "exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt({0})",
    "rsqrt": "tl.rsqrt({0})", "sin": "tl.sin({0})", "cos": "tl.cos({0})", "sigmoid": "tl.sigmoid({0})",
    "tanh": "(2.0 * tl.sigmoid(2.0 * {0}) - 1.0)", "relu": "tl.maximum({0}, 0.0)", "silu": "({0} * tl.sigmoid({0}))",
    "erf": "tl.erf({0})", "reciprocal": "(1.0 / {0})", "floor": "tl.floor({0})", "ceil": "tl.ceil({0})",
    "exp2": "tl.exp2({0})",
}
_BINARY = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "maximum": "tl.maximum({0}, {1})", "minimum": "tl.minimum({0}, {1})", "eq": "({0} == {1})", "ne": "({0} != {1})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "bitwise_and": "({0} & {1})", "bitwise_or": "({0} | {1})", "bitwise_xor": "({0} ^ {1})",
    "logical_and": "({0} & {1})", "logical_or": "({0} | {1})",
}
_MATH_FLOAT = {"exp", "log", "sqrt", "rsqrt", "sin", "cos", "sigmoid", "tanh", "silu", "erf", "reciprocal", "exp2", "gelu"}


class Unsupported(Exception):
    """This group holds an op (or dtype) the Triton generator does not emit; keep it in PyTorch."""


@dataclass(frozen=True)
class Kernel:
    source: str  # a module defining `kernel` (strided) and `kernel_dense`
    rank: int
    n_in: int
    n_out: int
    scalars: tuple  # runtime values of the scalar arguments, in order
    out_types: tuple  # TensorType of each output
    reduces: bool = False  # the last output reduces the last dim (one program per row)
    keepdim: bool = False


def _tl(d: DType) -> str:
    try:
        return _TL[d.name]
    except KeyError:
        raise Unsupported(f"dtype {d.name}") from None


class _Body:
    """Emits one expression line per body node over kiln-made names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scalars: list[Any] = []

    def scalar(self, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Unsupported(f"scalar {v!r}")
        self.scalars.append(v)
        return f"s{len(self.scalars) - 1}"

    def compute(self, names: list[str], dtypes: list[DType], out: DType, op: str) -> list[str]:
        """Operands as they enter the math: half floats widened to fp32."""
        wide = op in _MATH_FLOAT or out.bits < 32 and out.is_float
        return [f"{n}.to(tl.float32)" if wide and d.is_float and d.bits < 32 else n for n, d in zip(names, dtypes)]

    def node(self, n: Node, names: dict, k: int) -> None:
        op = n.op.name
        out = n.outputs[0].type.dtype
        ins = [names[v] for v in n.inputs]
        args = self.compute(ins, [v.type.dtype for v in n.inputs], out, op)
        if op in _UNARY and len(args) == 1:
            expr = _UNARY[op].format(*args)
        elif op in _BINARY:
            lhs, rhs = n.attrs.get("lhs"), n.attrs.get("rhs")
            if lhs is not None:
                args = [self.scalar(lhs)] + args
            elif rhs is not None:
                args = args + [self.scalar(rhs)]
            expr = _BINARY[op].format(*args)
        elif op == "where":
            expr = f"tl.where({args[0]}, {args[1]}, {args[2]})"
        elif op == "masked_fill":
            expr = f"tl.where({args[1]}, {self.scalar(n.attrs['value'])}, {args[0]})"
        elif op == "cast":
            expr = args[0]
        elif op == "clamp":
            expr = args[0]
            if n.attrs["min"] is not None:
                expr = f"tl.maximum({expr}, {self.scalar(n.attrs['min'])})"
            if n.attrs["max"] is not None:
                expr = f"tl.minimum({expr}, {self.scalar(n.attrs['max'])})"
        elif op == "gelu":
            x = args[0]
            if n.attrs["approximate"] == "tanh":
                inner = f"0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})"
                expr = f"(0.5 * {x} * (1.0 + (2.0 * tl.sigmoid(2.0 * ({inner})) - 1.0)))"
            else:
                expr = f"(0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476)))"
        elif op == "pow" and n.attrs.get("rhs") in (2, 2.0, 3, 3.0) and len(args) == 1:
            expr = "*".join([args[0]] * int(n.attrs["rhs"]))
        elif op == "addcmul" and n.attrs["value"] == 1:
            expr = f"({args[0]} + {args[1]} * {args[2]})"
        else:
            raise Unsupported(f"op {op}")
        self.lines.append(f"v{k} = ({expr}).to({_tl(out)})")


def generate(body: Graph) -> Kernel:
    """The kernel module for a fusion group's body (raises Unsupported for ops it cannot emit)."""
    if not body.outputs or any(len(n.outputs) != 1 or n.op.category != "elementwise" for n in body.nodes):
        raise Unsupported("only elementwise groups")
    from ...ir.opset._infer import broadcast, same_dim

    shape = broadcast(*(v.type.shape for v in body.inputs))  # what the launcher allocates
    rank = len(shape)
    for v in body.outputs:
        if len(v.type.shape) != rank or not all(same_dim(a, b) for a, b in zip(v.type.shape, shape)):
            raise Unsupported(f"output {v.type} is not the inputs' broadcast shape")
    for v in list(body.inputs) + list(body.outputs):
        _tl(v.type.dtype)
    emit = _Body()
    names = {v: f"x{i}" for i, v in enumerate(body.inputs)}
    for k, n in enumerate(body.nodes):
        emit.node(n, names, k)
        names[n.outputs[0]] = f"v{k}"
    n_in, n_out = len(body.inputs), len(body.outputs)
    source = _module(emit, names, body, rank)
    return Kernel(source, rank, n_in, n_out, tuple(emit.scalars), tuple(v.type for v in body.outputs))


def _module(emit: _Body, names: dict, body: Graph, rank: int) -> str:
    ins = [f"in{i}" for i in range(len(body.inputs))]
    outs = [f"out{i}" for i in range(len(body.outputs))]
    scal = [f"s{i}" for i in range(len(emit.scalars))]
    sizes = [f"size{d}" for d in range(rank)]
    strides = [f"st{i}_{d}" for i in range(len(ins)) for d in range(rank)]
    compute = [f"    {ln}" for ln in emit.lines]
    stores = [f"    tl.store({o} + offs, {names[v]}.to({_tl(v.type.dtype)}), mask=mask)" for o, v in zip(outs, body.outputs)]
    head = ["import triton", "import triton.language as tl", ""]
    strided = ["@triton.jit", f"def kernel({', '.join(ins + outs + scal + sizes + strides)}, n, BLOCK: tl.constexpr):",
               "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)", "    mask = offs < n"]
    strided += _strided_loads(ins, rank) + compute + stores
    dense = ["", "", "@triton.jit", f"def kernel_dense({', '.join(ins + outs + scal)}, n, BLOCK: tl.constexpr):",
             "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)", "    mask = offs < n"]
    dense += [f"    x{i} = tl.load({p} + offs, mask=mask)" for i, p in enumerate(ins)] + compute + stores
    return "\n".join(head + strided + dense) + "\n"


def _strided_loads(ins: list[str], rank: int) -> list[str]:
    lines = ["    rem = offs"]
    for d in reversed(range(rank)):  # flat index -> per-dim indices, innermost first
        lines.append(f"    i{d} = rem % size{d}")
        lines.append(f"    rem = rem // size{d}")
    for i, p in enumerate(ins):
        offset = " + ".join(f"i{d} * st{i}_{d}" for d in range(rank)) or "0"
        lines.append(f"    x{i} = tl.load({p} + ({offset}), mask=mask)")
    return lines
