"""What the code generators accept as a reduction group, shared by the Triton and CUDA backends."""

from __future__ import annotations

from typing import Iterable

from ..ir import Graph


def reduction_form_error(body: Graph, reductions: Iterable[str]) -> str | None:
    """Why `body` is not an elementwise prologue closed by a last-dim reduction (one of
    `reductions`) that the group returns last, over the inputs' broadcast shape; None when it is."""
    from ..ir.opset._infer import broadcast, same_dim

    red = body.nodes[-1] if body.nodes else None
    if red is None or red.op.name not in set(reductions):
        return f"reduction {red.op.name if red else None}"
    src = red.inputs[0]
    rank = src.type.rank
    if rank == 0 or tuple(red.attrs["dims"]) != (rank - 1,) or body.outputs[-1] is not red.outputs[0]:
        return "only a last-dim reduction that the group returns last"
    shape = broadcast(*(v.type.shape for v in body.inputs))
    if len(shape) != rank or not all(same_dim(a, b) for a, b in zip(shape, src.type.shape)):
        return "the reduced value is not the inputs' broadcast shape"
    if any(v.type.shape != src.type.shape for v in body.outputs[:-1]) or any(n.op.category != "elementwise" for n in body.nodes[:-1]):
        return "prologue outputs must be elementwise values of the iteration shape"
    return None
