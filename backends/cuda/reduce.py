"""CUDA C for reduction fusion groups: an elementwise prologue closed by a reduction (sum, mean,
amax, amin) over the last dim.

One block per row (a grid-stride loop over rows when there are more rows than blocks): each
thread walks the row's columns with stride blockDim.x, computes the prologue per element, stores
any prologue value the group returns, and folds into a private accumulator (float for float
inputs, double for f64, int64 for integers: PyTorch's accumulation types); `kiln::block_reduce`
then combines the threads with warp shuffles and one shared-memory partial per warp. The strided
variant computes each input's row base offset once and steps by its last-dim stride.

Napkin math: bytes = inputs read once + full-shape outputs written once + one value per row;
memory-bound, the floor is bytes / bandwidth (rows much shorter than a block waste lanes).
"""

from __future__ import annotations

from ...ir import Graph, Node
from ...ir.dtypes import DType
from ..groups import reduction_form_error
from .codegen import (
    Body,
    Kernel,
    Unsupported,
    args_struct,
    check_prefix,
    emit_body,
    launch_stub,
    load_as,
    round_to,
    storage,
)

_COMBINE = {"sum": "add_op", "mean": "add_op", "amax": "max_op", "amin": "min_op"}
_INIT = {"sum": "(ACC)0", "mean": "(ACC)0", "amax": "kiln::lowest<ACC>()", "amin": "kiln::highest<ACC>()"}


def _acc(d: DType, op: str) -> str:
    """Accumulator C type for reducing values of dtype `d` into `op`."""
    if d.name == "f64":
        return "double"
    if d.is_float:
        return "float"
    if op == "mean":
        raise Unsupported("mean of integers")
    return "int64_t"


def generate_reduction(body: Graph, prefix: str = "k0") -> Kernel:
    """Kernel for a group whose last node reduces the last dim of the iteration shape."""
    why = reduction_form_error(body, _COMBINE)
    if why is not None:
        raise Unsupported(why)
    red = body.nodes[-1]
    src = red.inputs[0]
    rank = src.type.rank
    emit, names = emit_body(body, list(body.nodes[:-1]))
    acc = _acc(src.type.dtype, red.op.name)
    source = _kernels(check_prefix(prefix), body, emit, names, rank, red, acc)
    return Kernel(prefix, source, rank, len(body.inputs), len(body.outputs), tuple(emit.scalars),
                  tuple(v.type for v in body.outputs), reduces=True, keepdim=bool(red.attrs["keepdim"]))


def _kernels(prefix: str, body: Graph, emit: Body, names: dict, rank: int, red: Node, acc: str) -> str:
    lines = [f"namespace {prefix} {{", *args_struct(body, emit, rank, ["n", "rows"]), f"typedef {acc} ACC;", ""]
    lines += _row_kernel(body, emit, names, rank, red, strided=True)
    lines += _row_kernel(body, emit, names, rank, red, strided=False)
    lines += [f"}}  // namespace {prefix}", ""]
    calls = [f"{prefix}::strided<int64_t>", f"{prefix}::strided<int32_t>", f"{prefix}::dense<int64_t>"]
    return "\n".join(lines + launch_stub(prefix, body, emit, rank, calls)) + "\n"


def _row_kernel(body: Graph, emit: Body, names: dict, rank: int, red: Node, strided: bool) -> list[str]:
    op = red.op.name
    n_in, last = len(body.inputs), rank - 1
    lines = ["template <typename I>", f"__global__ void __launch_bounds__(1024) {'strided' if strided else 'dense'}(const Args a) {{",
             "  __shared__ ACC shm[32];",
             "  for (I row = blockIdx.x; row < (I)a.rows; row += gridDim.x) {"]
    if strided:  # row -> indices of the outer dims -> each input's row base offset
        if last:
            lines.append("    I rem = row;")
            for d in reversed(range(last)):
                lines.append(f"    const I i{d} = rem % (I)a.size[{d}];" if d else "    const I i0 = rem;")
                if d:
                    lines.append(f"    rem /= (I)a.size[{d}];")
        for i in range(n_in):
            base = " + ".join(f"i{d} * (I)a.st[{i}][{d}]" for d in range(last)) or "0"
            lines.append(f"    const I b{i} = {base};")
    lines += [f"    ACC acc = {_INIT[op]};", "    for (I c = threadIdx.x; c < (I)a.n; c += blockDim.x) {"]
    for i, v in enumerate(body.inputs):
        at = f"b{i} + c * (I)a.st[{i}][{last}]" if strided else "row * (I)a.n + c"
        lines.append(f"      const {storage(v.type.dtype)} x{i} = a.in{i}[{at}];")
    lines += [f"      {ln}" for ln in emit.lines]
    lines += [f"      a.out{i}[row * (I)a.n + c] = {names[v]};" for i, v in enumerate(body.outputs[:-1])]
    val = red.inputs[0]
    lines.append(f"      acc = kiln::{_COMBINE[op]}()(acc, {load_as(names[val], val.type.dtype, 'ACC')});")
    lines += ["    }", f"    acc = kiln::block_reduce(acc, kiln::{_COMBINE[op]}(), {_INIT[op]}, shm);"]
    final = "acc / (ACC)a.n" if op == "mean" else "acc"
    out = red.outputs[0].type.dtype
    lines += [f"    if (threadIdx.x == 0) a.out{len(body.outputs) - 1}[row] = {round_to(final, _acc(val.type.dtype, op), out)};",
              "  }", "}", ""]
    return lines

