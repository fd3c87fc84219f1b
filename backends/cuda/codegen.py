"""CUDA C source for elementwise fusion groups (the torch-free kernel part).

One group -> three `__global__` kernels in a namespace named by a kiln-made prefix, plus an
`extern "C" <prefix>_launch` host stub the binding calls:

* `strided<I>`: a grid-stride loop over the flat index of the output shape; each input is read at
  `sum_d idx_d * stride_d`, its strides being those of the input expanded to the output shape
  (0 on broadcast dims), so broadcasting and non-contiguous inputs need no copies. `I` is the
  index type: int32 when every offset fits (division by a 32-bit size is several times cheaper).
* `dense`: every operand contiguous and of the output shape: read at the flat index.
* `vec`: `dense` with VEC elements per thread moved as one aligned vector (16-byte loads for the
  narrowest type), taken when numel % VEC == 0 and every pointer is aligned.

Values follow PyTorch: each op computes in its "opmath" type (float for f16/bf16/f32, double for
f64, the integer type itself for ints) and the result is rounded to its IR dtype before the next
op reads it, so fused and eager results round identically. Scalars (attributes) travel in the
kernel's argument struct, never spliced into the source: the source holds kiln-made identifiers
and fixed numeric literals only, so nothing a user names can reach the compiler.

Napkin math (memory-bound): bytes = sum of input bytes + sum of output bytes, each touched once;
FLOPs are a handful per element, far under the ridge point, so the floor is bytes / bandwidth.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from ...ir import Graph, Node, Value
from ...ir.dtypes import DType
from .prelude import PRELUDE

_STORAGE = {
    "f32": "float", "f16": "__half", "bf16": "__nv_bfloat16", "f64": "double", "i64": "int64_t",
    "i32": "int32_t", "i16": "int16_t", "i8": "int8_t", "u8": "uint8_t", "b8": "bool",
}
_UNARY = {
    "neg": "(-{0})", "abs": "kiln::k_abs({0})", "exp": "kiln::k_exp({0})", "log": "kiln::k_log({0})",
    "log1p": "kiln::k_log1p({0})", "sqrt": "kiln::k_sqrt({0})", "rsqrt": "kiln::k_rsqrt({0})",
    "sin": "kiln::k_sin({0})", "cos": "kiln::k_cos({0})", "tanh": "kiln::k_tanh({0})",
    "sigmoid": "kiln::sigmoid({0})", "relu": "kiln::kmax({0}, ({t})0)", "silu": "kiln::silu({0})",
    "erf": "kiln::k_erf({0})", "reciprocal": "(({t})1 / {0})", "floor": "kiln::k_floor({0})",
    "ceil": "kiln::k_ceil({0})", "trunc": "kiln::k_trunc({0})", "exp2": "kiln::k_exp2({0})",
    "expm1": "kiln::k_expm1({0})", "sign": "kiln::sign({0})", "isnan": "({0} != {0})",
    "logical_not": "(!{0})",
}
_BINARY = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "maximum": "kiln::kmax({0}, {1})", "minimum": "kiln::kmin({0}, {1})", "atan2": "kiln::k_atan2({0}, {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})", "lt": "({0} < {1})", "le": "({0} <= {1})",
    "gt": "({0} > {1})", "ge": "({0} >= {1})", "bitwise_and": "({0} & {1})", "bitwise_or": "({0} | {1})",
    "bitwise_xor": "({0} ^ {1})", "logical_and": "({0} && {1})", "logical_or": "({0} || {1})",
}
_FLOAT_ONLY = {"exp", "log", "log1p", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "erf", "exp2",
               "expm1", "atan2", "div", "gelu", "pow", "reciprocal"}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}
_BOOL_RESULT = _COMPARE | {"logical_and", "logical_or", "logical_not", "isnan"}
_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
THREADS = 256  # elementwise block size (8 warps: enough in flight to saturate HBM with grid-stride loops)


class Unsupported(Exception):
    """This group holds an op (or dtype) the CUDA generator does not emit; keep it in PyTorch."""


@dataclass(frozen=True)
class Kernel:
    """One group's generated CUDA C (torch-free) and what its launcher needs to call it."""

    prefix: str  # namespace of the kernels and name stem of the `<prefix>_launch` stub
    source: str  # kernels + launch stub, without the shared prelude
    rank: int
    n_in: int
    n_out: int
    scalars: tuple  # runtime values of the scalar arguments, in order (float -> double, int -> int64)
    out_types: tuple  # TensorType of each output
    vec: int = 1  # elements per thread of the `vec` variant (elementwise only)
    reduces: bool = False  # the last output reduces the last dim (one block per row)
    keepdim: bool = False

    @property
    def full_source(self) -> str:
        """Prelude + this kernel: a translation unit `nvcc -c` compiles on its own."""
        return PRELUDE + self.source


def storage(d: DType) -> str:
    """The C type a value of IR dtype `d` is stored (and rounded) in."""
    try:
        return _STORAGE[d.name]
    except KeyError:
        raise Unsupported(f"dtype {d.name}") from None


def opmath(d: DType) -> str:
    """The C type ops on `d` compute in (PyTorch's opmath type)."""
    return "float" if d.name in ("f16", "bf16", "f32") else storage(d)


def load_as(expr: str, src: DType, ctype: str) -> str:
    """`expr` (stored as `src`) converted to the C type `ctype`."""
    if src.name == "f16":
        expr, have = f"__half2float({expr})", "float"
    elif src.name == "bf16":
        expr, have = f"__bfloat162float({expr})", "float"
    else:
        have = storage(src)
    return expr if have == ctype else f"(({ctype})({expr}))"


def round_to(expr: str, ctype: str, out: DType) -> str:
    """`expr` (computed in `ctype`) rounded to the storage of `out` (round-to-nearest-even)."""
    if out.name in ("f16", "bf16"):
        kind = "half" if out.name == "f16" else "bfloat16"
        if ctype == "double":
            return f"__double2{kind}({expr})"
        return f"__float2{kind}_rn({expr if ctype == 'float' else f'((float)({expr}))'})"
    return expr if ctype == storage(out) else f"(({storage(out)})({expr}))"


_CATEGORY = {"bool": 0, "int": 1, "uint": 1, "float": 2}


def result_type(values: list[Value], scalars: list[Any]) -> DType:
    """PyTorch's type promotion of tensor operands and Python scalars: dimensioned tensors first,
    then 0-dim tensors, then scalars, a later level counting only when its category is higher."""
    import torch

    from ...ir.dtypes import from_torch

    def promote(ds: list[DType]) -> DType:
        return functools.reduce(lambda a, b: from_torch(torch.promote_types(a.torch, b.torch)), ds)

    default = {float: from_torch(torch.float32), int: from_torch(torch.int64)}
    levels = [[v.type.dtype for v in values if v.type.rank], [v.type.dtype for v in values if not v.type.rank],
              [default[type(s)] for s in scalars]]
    out: DType | None = None
    for level in filter(None, levels):
        t = promote(level)
        if out is None or _CATEGORY[t.kind] > _CATEGORY[out.kind]:
            out = t if out is None else promote([out, t])
    assert out is not None
    return out


class Body:
    """Emits one C declaration per body node over kiln-made names (`x<i>` inputs, `v<k>` values)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scalars: list[Any] = []

    def scalar(self, v: Any, ctype: str) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Unsupported(f"scalar {v!r}")
        self.scalars.append(v)
        return f"(({ctype})a.s{len(self.scalars) - 1})"

    def node(self, n: Node, names: dict, k: int) -> None:
        op, out = n.op.name, n.outputs[0].type.dtype
        ctype = self._ctype(n)
        if op in _FLOAT_ONLY and ctype not in ("float", "double"):
            raise Unsupported(f"{op} computing in {ctype}")
        args = [load_as(names[v], v.type.dtype, "bool" if self._is_mask(n, i) else ctype) for i, v in enumerate(n.inputs)]
        expr = self._expr(n, op, args, ctype)
        result = "bool" if op in _BOOL_RESULT else ctype  # the C type `expr` evaluates to
        self.lines.append(f"const {storage(out)} v{k} = {round_to(expr, result, out)};")

    @staticmethod
    def _is_mask(n: Node, i: int) -> bool:
        op = n.op.name
        return (op == "where" and i == 0) or (op == "masked_fill" and i == 1) or op.startswith("logical")

    def _ctype(self, n: Node) -> str:
        """The C type the op's operands are converted to before it computes."""
        op, out = n.op.name, n.outputs[0].type.dtype
        if op in _COMPARE:
            scal = [s for s in (n.attrs.get("lhs"), n.attrs.get("rhs")) if s is not None]
            if any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in scal):
                raise Unsupported(f"scalar {scal!r}")
            return opmath(result_type(list(n.inputs), scal))
        if op == "isnan":
            return opmath(n.inputs[0].type.dtype)
        if op == "cast" and n.inputs[0].type.dtype.name == "f64":
            return "double"  # f64 -> f16/bf16 rounds once, like PyTorch
        return opmath(out)

    def _expr(self, n: Node, op: str, args: list[str], ctype: str) -> str:
        if op in _UNARY:
            return _UNARY[op].format(*args, t=ctype)
        if op == "bitwise_not" and len(args) == 1:
            return f"(!{args[0]})" if ctype == "bool" else f"(~{args[0]})"
        if op in _BINARY:
            lhs, rhs = n.attrs.get("lhs"), n.attrs.get("rhs")
            if lhs is not None:
                args = [self.scalar(lhs, ctype)] + args
            elif rhs is not None:
                args = args + [self.scalar(rhs, ctype)]
            return _BINARY[op].format(*args)
        if op == "pow":
            return self._pow(n, args, ctype)
        if op == "where":
            return f"({args[0]} ? {args[1]} : {args[2]})"
        if op == "masked_fill":
            return f"({args[1]} ? {self.scalar(n.attrs['value'], ctype)} : {args[0]})"
        if op == "cast":
            return args[0]
        if op == "clamp":
            expr = args[0]
            if n.attrs["min"] is not None:
                expr = f"kiln::kmax({expr}, {self.scalar(n.attrs['min'], ctype)})"
            if n.attrs["max"] is not None:
                expr = f"kiln::kmin({expr}, {self.scalar(n.attrs['max'], ctype)})"
            return expr
        if op == "gelu":
            return f"kiln::{'gelu_tanh' if n.attrs['approximate'] == 'tanh' else 'gelu'}({args[0]})"
        if op == "addcmul":
            return f"({args[0]} + {self.scalar(n.attrs['value'], ctype)} * {args[1]} * {args[2]})"
        raise Unsupported(f"op {op}")

    def _pow(self, n: Node, args: list[str], ctype: str) -> str:
        """PyTorch's special cases (x*x, x*x*x, sqrt, 1/x) for scalar exponents, powf otherwise."""
        lhs, rhs = n.attrs.get("lhs"), n.attrs.get("rhs")
        if rhs is not None and not isinstance(rhs, bool) and rhs in (2, 3, 0.5, -1):
            x = args[0]
            return {2: f"({x} * {x})", 3: f"({x} * {x} * {x})", 0.5: f"kiln::k_sqrt({x})", -1: f"(({ctype})1 / {x})"}[rhs]
        if lhs is not None:
            return f"kiln::k_pow({self.scalar(lhs, ctype)}, {args[0]})"
        if rhs is not None:
            return f"kiln::k_pow({args[0]}, {self.scalar(rhs, ctype)})"
        return f"kiln::k_pow({args[0]}, {args[1]})"


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"kernel prefix {prefix!r} must match {_PREFIX.pattern}")
    return prefix


def emit_body(body: Graph, nodes: list[Node]) -> tuple[Body, dict]:
    """Declarations for `nodes`; names maps every body value to its C variable."""
    if body.constants:
        raise Unsupported("group bodies with constants")
    for v in list(body.inputs) + list(body.outputs):
        storage(v.type.dtype)
    emit = Body()
    names: dict = {v: f"x{i}" for i, v in enumerate(body.inputs)}
    for k, n in enumerate(nodes):
        emit.node(n, names, k)
        names[n.outputs[0]] = f"v{k}"
    return emit, names


def args_struct(body: Graph, emit: Body, rank: int, extra: list[str]) -> list[str]:
    """`struct Args`: operand pointers, scalars, sizes and per-input strides, passed by value."""
    lines = ["struct Args {"]
    lines += [f"  const {storage(v.type.dtype)}* in{i};" for i, v in enumerate(body.inputs)]
    lines += [f"  {storage(v.type.dtype)}* out{i};" for i, v in enumerate(body.outputs)]
    lines += [f"  {'double' if isinstance(s, float) else 'int64_t'} s{j};" for j, s in enumerate(emit.scalars)]
    lines += [f"  int64_t {e};" for e in extra]
    r, m = max(rank, 1), max(len(body.inputs), 1)
    lines += [f"  int64_t size[{r}];", f"  int64_t st[{m}][{r}];", "};"]
    return lines


def launch_stub(prefix: str, body: Graph, emit: Body, rank: int, calls: list[str]) -> list[str]:
    """`extern "C" int <prefix>_launch(ptrs, fs, is, meta, variant, stream)`: fills Args, launches
    variant `calls[variant]`, returns the cudaError_t. meta = [n, rows, grid, threads, sizes..., strides...]."""
    n_in = len(body.inputs)
    lines = [f'extern "C" int {prefix}_launch(void* const* p, const double* fs, const int64_t* is, '
             "const int64_t* meta, int variant, void* stream) {",
             f"  {prefix}::Args a;"]
    lines += [f"  a.in{i} = (const {storage(v.type.dtype)}*)p[{i}];" for i, v in enumerate(body.inputs)]
    lines += [f"  a.out{i} = ({storage(v.type.dtype)}*)p[{n_in + i}];" for i, v in enumerate(body.outputs)]
    nf = ni = 0
    for j, s in enumerate(emit.scalars):
        if isinstance(s, float):
            lines.append(f"  a.s{j} = fs[{nf}];")
            nf += 1
        else:
            lines.append(f"  a.s{j} = is[{ni}];")
            ni += 1
    lines += ["  a.n = meta[0];", "  a.rows = meta[1];"]
    lines += ["  const dim3 grid((unsigned)meta[2]), block((unsigned)meta[3]);",
              "  cudaStream_t s = (cudaStream_t)stream;",
              f"  if (variant < 2) for (int d = 0; d < {rank}; ++d) {{",
              "    a.size[d] = meta[4 + d];",
              f"    for (int k = 0; k < {n_in}; ++k) a.st[k][d] = meta[4 + {rank} + k * {rank} + d];",
              "  }"]
    lines += [f"  {'if' if v == 0 else 'else if'} (variant == {v}) {call}<<<grid, block, 0, s>>>(a);" for v, call in enumerate(calls)]
    lines += ["  else return (int)cudaErrorInvalidValue;", "  return (int)cudaGetLastError();", "}"]
    return lines


def generate(body: Graph, prefix: str = "k0") -> Kernel:
    """The CUDA C for an elementwise group's body (raises Unsupported for what it cannot emit)."""
    if not body.outputs or any(len(n.outputs) != 1 or n.op.category != "elementwise" for n in body.nodes):
        raise Unsupported("only elementwise groups")
    from ...ir.opset._infer import broadcast, same_dim

    shape = broadcast(*(v.type.shape for v in body.inputs))  # what the launcher allocates
    rank = len(shape)
    for v in body.outputs:
        if len(v.type.shape) != rank or not all(same_dim(a, b) for a, b in zip(v.type.shape, shape)):
            raise Unsupported(f"output {v.type} is not the inputs' broadcast shape")
    emit, names = emit_body(body, list(body.nodes))
    sizes = [v.type.dtype.itemsize for v in list(body.inputs) + list(body.outputs)]
    vec = max(1, min(8, 16 // min(sizes), 32 // max(sizes)))
    src = _kernels(check_prefix(prefix), body, emit, names, rank, vec)
    return Kernel(prefix, src, rank, len(body.inputs), len(body.outputs), tuple(emit.scalars),
                  tuple(v.type for v in body.outputs), vec=vec)


def _kernels(prefix: str, body: Graph, emit: Body, names: dict, rank: int, vec: int) -> str:
    ins = [(f"x{i}", storage(v.type.dtype)) for i, v in enumerate(body.inputs)]
    outs = [(f"out{i}", storage(v.type.dtype), names[v]) for i, v in enumerate(body.outputs)]
    compute = [f"    {ln}" for ln in emit.lines]
    loop = "for ({I} i = ({I})blockIdx.x * blockDim.x + threadIdx.x; i < ({I})a.n; i += ({I})gridDim.x * blockDim.x) {{"
    lines = [f"namespace {prefix} {{", *args_struct(body, emit, rank, ["n", "rows"]), ""]
    lines += ["template <typename I>", f"__global__ void __launch_bounds__({THREADS}) strided(const Args a) {{",
              "  " + loop.format(I="I")]
    lines += strided_index(rank, "i", "    ")
    for i, (x, t) in enumerate(ins):
        lines.append(f"    const {t} {x} = a.in{i}[{offset(i, rank)}];")
    lines += compute + [f"    a.{o}[i] = {val};" for o, _, val in outs] + ["  }", "}", ""]
    lines += [f"__global__ void __launch_bounds__({THREADS}) dense(const Args a) {{", "  " + loop.format(I="int64_t")]
    lines += [f"    const {t} {x} = a.in{i}[i];" for i, (x, t) in enumerate(ins)]
    lines += compute + [f"    a.{o}[i] = {val};" for o, _, val in outs] + ["  }", "}", ""]
    lines += _vec_kernel(ins, outs, compute, vec)
    lines += [f"}}  // namespace {prefix}", ""]
    calls = [f"{prefix}::strided<int64_t>", f"{prefix}::strided<int32_t>", f"{prefix}::dense", f"{prefix}::vec"]
    return "\n".join(lines + launch_stub(prefix, body, emit, rank, calls)) + "\n"


def _vec_kernel(ins: list, outs: list, compute: list[str], vec: int) -> list[str]:
    """`dense`, VEC elements per thread: one aligned vector load/store per operand."""
    lines = [f"__global__ void __launch_bounds__({THREADS}) vec(const Args a) {{",
             f"  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < a.n / {vec}; "
             "j += (int64_t)gridDim.x * blockDim.x) {"]
    lines += [f"    const kiln::vec<{t}, {vec}> b{i} = reinterpret_cast<const kiln::vec<{t}, {vec}>*>(a.in{i})[j];"
              for i, (_, t) in enumerate(ins)]
    lines += [f"    kiln::vec<{t}, {vec}> r{i};" for i, (_, t, _) in enumerate(outs)]
    lines += ["#pragma unroll", f"    for (int u = 0; u < {vec}; ++u) {{"]
    lines += [f"      const {t} {x} = b{i}.v[u];" for i, (x, t) in enumerate(ins)]
    lines += ["  " + ln for ln in compute]
    lines += [f"      r{i}.v[u] = {val};" for i, (_, _, val) in enumerate(outs)] + ["    }"]
    lines += [f"    reinterpret_cast<kiln::vec<{t}, {vec}>*>(a.{o})[j] = r{i};" for i, (o, t, _) in enumerate(outs)]
    return lines + ["  }", "}", ""]


def strided_index(rank: int, flat: str, indent: str) -> list[str]:
    """Flat index -> per-dim indices `i<d>` (innermost first), in index type I."""
    if rank == 0:
        return []
    lines = [f"{indent}I rem = {flat};"]
    for d in reversed(range(1, rank)):
        lines += [f"{indent}const I i{d} = rem % (I)a.size[{d}];", f"{indent}rem /= (I)a.size[{d}];"]
    return lines + [f"{indent}const I i0 = rem;"]


def offset(i: int, rank: int) -> str:
    """Input i's element offset from the per-dim indices."""
    return " + ".join(f"i{d} * (I)a.st[{i}][{d}]" for d in range(rank)) or "0"
