"""pad_matmul_dims: on CUDA, pad a linear's output dim to a multiple of 64.

cuBLAS picks far slower kernels when N is not a multiple of 8 (GPT-2's lm_head, N = 50257, runs
an sm75 kernel on an H200: 68% of a 16 x 512 forward). Padding the constant weight with zero rows
and slicing the result back costs one extra (folded) weight copy and N'/N more FLOPs.
"""

from __future__ import annotations

import torch

from ..ir import Graph
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

MULTIPLE = 64
MIN_N = 1024  # small projections are not worth a weight copy


@graph_pass("on CUDA, pad large linear output dims to a multiple of 64 (then slice the result)")
def pad_matmul_dims(g: Graph, ctx: PassContext) -> Graph:
    """Pad N of `linear(x, W[N, K])` with a constant weight when N % 64 != 0 and N >= 1024.

    Guarantees: only on CUDA targets; the padded rows are zeros (and the bias padded with zeros),
    so the first N columns are the original result (up to the GEMM's summation order, which may
    change with N); the slice returns them.

        %1 = linear(%x, %w) : bf16[B, S, 50257]   ->  %1 = linear(%x, %_padded_weight0) : bf16[B, S, 50304]
                                                      %2 = slice(%1) {dim=2, start=0, end=50257}
    """
    if ctx.device is None or torch.device(ctx.device).type != "cuda":
        return g
    written = {v for n in g.nodes if n.op.effect.value == "write" for v in n.inputs}
    targets = [n for n in g.nodes if _paddable(n, g, written)]
    if not targets:
        return g
    rb = Rebuilder(g)
    for n in g.nodes:
        if n not in targets:
            rb.copy(n)
            continue
        w = n.inputs[1]
        big_n = w.type.shape[0]
        pad = -big_n % MULTIPLE
        data = g.constant_data[w.name]
        params = [rb.constant("_padded_weight", torch.cat([data, data.new_zeros(pad, data.shape[1])]))]
        if len(n.inputs) == 3:
            b = g.constant_data[n.inputs[2].name]
            params.append(rb.constant("_padded_bias", torch.cat([b, b.new_zeros(pad)])))
        wide = rb.out.add_node("linear", [rb.get(n.inputs[0])] + params, dict(n.attrs), source=n.source).output
        last = wide.type.rank - 1
        rb.map[n.outputs[0]] = rb.out.add_node("slice", [wide], {"dim": last, "start": 0, "end": big_n}, source=n.source).output
        ctx.count("linears_padded")
    return rb.finish()


def _paddable(n, g: Graph, written: set) -> bool:  # noqa: ANN001
    if n.op.name != "linear" or n.attrs["activation"] != "none":
        return False
    consts = n.inputs[1:]
    if any(v.kind != "const" or g.constant_data.get(v.name) is None or v in written for v in consts):
        return False
    big_n = n.inputs[1].type.shape[0]
    return isinstance(big_n, int) and big_n >= MIN_N and big_n % MULTIPLE != 0
