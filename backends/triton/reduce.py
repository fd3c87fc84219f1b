"""Triton source for reduction fusion groups: an elementwise prologue closed by a reduction
(sum, mean, amax, amin) over the last dim.

One program per row, one block spanning the whole row (BLOCK = the row length rounded up to a
power of two, a compile-time constant: one compiled variant per size bucket, the usual shape of
Triton norm kernels): it computes the prologue per element, stores any prologue value the group
returns, and reduces in float32. Napkin math: bytes = inputs read once + full-shape outputs
written once + one value per row; memory-bound.
"""

from __future__ import annotations

from ...ir import Graph
from ..groups import reduction_form_error
from .codegen import Kernel, Unsupported, _Body, _tl

_INIT = {"sum": "0.0", "mean": "0.0", "amax": "float('-inf')", "amin": "float('inf')"}
_COMBINE = {"sum": "acc + {0}", "mean": "acc + {0}", "amax": "tl.maximum(acc, {0})", "amin": "tl.minimum(acc, {0})"}
_FINAL = {"sum": "tl.sum(acc, axis=0)", "mean": "tl.sum(acc, axis=0) / R", "amax": "tl.max(acc, axis=0)", "amin": "tl.min(acc, axis=0)"}


def generate_reduction(body: Graph) -> Kernel:
    """Kernel for a group whose last node reduces the last dim of the iteration shape."""
    why = reduction_form_error(body, _INIT)
    if why is not None:
        raise Unsupported(why)
    red = body.nodes[-1]
    src = red.inputs[0]
    rank = src.type.rank
    emit = _Body()
    names = {v: f"x{i}" for i, v in enumerate(body.inputs)}
    for k, n in enumerate(body.nodes[:-1]):
        emit.node(n, names, k)
        names[n.outputs[0]] = f"v{k}"
    source = _module(emit, names, body, rank, red)
    return Kernel(source, rank, len(body.inputs), len(body.outputs), tuple(emit.scalars), tuple(v.type for v in body.outputs),
                  reduces=True, keepdim=bool(red.attrs["keepdim"]))


def _module(emit: _Body, names: dict, body: Graph, rank: int, red) -> str:  # noqa: ANN001
    op = red.op.name
    ins = [f"in{i}" for i in range(len(body.inputs))]
    outs = [f"out{i}" for i in range(len(body.outputs))]
    scal = [f"s{i}" for i in range(len(emit.scalars))]
    sizes = [f"size{d}" for d in range(rank)]
    strides = [f"st{i}_{d}" for i in range(len(ins)) for d in range(rank)]
    val = names[red.inputs[0]]
    prologue = [f"    {ln}" for ln in emit.lines]
    stores = [f"    tl.store({o} + offs, {names[v]}.to({_tl(v.type.dtype)}), mask=mask)" for o, v in zip(outs, body.outputs[:-1])]
    out_red = outs[-1]
    lines = ["import triton", "import triton.language as tl", ""]
    for name, params, loads in (
        ("kernel", ins + outs + scal + sizes + strides, _loads(ins, rank, strided=True)),
        ("kernel_dense", ins + outs + scal, _loads(ins, rank, strided=False)),
    ):
        lines += ["", "@triton.jit", f"def {name}({', '.join(params)}, R, BLOCK: tl.constexpr):",
                  "    row = tl.program_id(0).to(tl.int64)",
                  f"    acc = tl.full([BLOCK], {_INIT[op]}, tl.float32)",
                  "    cols = tl.arange(0, BLOCK)",
                  "    mask = cols < R",
                  "    offs = row * R + cols"]
        lines += loads + prologue + stores
        combine = _COMBINE[op].format(f"{val}.to(tl.float32)")
        lines.append(f"    acc = tl.where(mask, {combine}, acc)")
        lines.append(f"    tl.store({out_red} + row, ({_FINAL[op]}).to({_tl(red.outputs[0].type.dtype)}))")
    return "\n".join(lines) + "\n"


def _loads(ins: list[str], rank: int, strided: bool) -> list[str]:
    if not strided:
        return [f"    x{i} = tl.load({p} + offs, mask=mask, other=0)" for i, p in enumerate(ins)]
    lines = ["    rem = offs"]
    for d in reversed(range(rank)):
        lines += [f"    i{d} = rem % size{d}", f"    rem = rem // size{d}"]
    for i, p in enumerate(ins):
        offset = " + ".join(f"i{d} * st{i}_{d}" for d in range(rank))
        lines.append(f"    x{i} = tl.load({p} + ({offset}), mask=mask, other=0)")
    return lines
