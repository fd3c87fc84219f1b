"""Shape and data-movement ops: reshape, permute, expand, squeeze/unsqueeze, slice, select,
cat, split, clone, index_select, gather, embedding.

Attributes hold symbolic dims where shapes are dynamic (`reshape {shape=[B, S, 12, 64]}`), so
one graph serves every sequence length. The frontend resolves -1 and clamps slice bounds.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch

from ..ops import Attr, AttrKind, Call, InferenceError, declare
from ..symbolic import simplify_dim
from ..types import TensorType
from ._infer import broadcast, norm_dim, same_dim, tensors


def _numel(shape: tuple) -> Any:
    n: Any = 1
    for d in shape:
        n = n * d
    return sympy.expand(n) if not isinstance(n, int) else n


def _reshape_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    shape = a["shape"]
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise InferenceError("reshape shape may not contain -1; the frontend resolves it")
    if not same_dim(_numel(t.shape), _numel(shape)):
        raise InferenceError(f"cannot reshape {t} to {[str(d) for d in shape]}: element counts differ")
    return (TensorType(t.dtype, shape),)


declare(
    "reshape", ["x"], [Attr("shape", AttrKind.DIMS)], infer=_reshape_infer,
    impl=torch.reshape, category="view", doc="reshape (a view when strides allow, else a copy)",
)


def _permute_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    dims = a["dims"]
    if sorted(norm_dim(d, t.rank) for d in dims) != list(range(t.rank)):
        raise InferenceError(f"permute dims {list(dims)} are not a permutation of {t.rank} dims")
    return (TensorType(t.dtype, tuple(t.shape[d] for d in dims)),)


declare(
    "permute", ["x"], [Attr("dims", AttrKind.INTS)], infer=_permute_infer,
    impl=torch.permute, category="view", doc="reorder dims (a view)",
)


def _expand_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    shape = a["shape"]
    if len(shape) < t.rank:
        raise InferenceError(f"cannot expand {t} to fewer dims {len(shape)}")
    out = broadcast(t.shape, shape)
    for got, want in zip(out, shape):
        if not same_dim(got, want):
            raise InferenceError(f"cannot expand {t} to {[str(d) for d in shape]}")
    return (TensorType(t.dtype, tuple(shape)),)


def _expand(x: torch.Tensor, shape: list) -> torch.Tensor:
    return x.expand(shape)


declare(
    "expand", ["x"], [Attr("shape", AttrKind.DIMS)], infer=_expand_infer, impl=_expand,
    category="view", doc="broadcast size-1 dims to `shape` without copying",
)


def _unsqueeze_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    d = norm_dim(a["dim"], t.rank + 1)
    return (TensorType(t.dtype, t.shape[:d] + (1,) + t.shape[d:]),)


declare(
    "unsqueeze", ["x"], [Attr("dim", AttrKind.INT)], infer=_unsqueeze_infer,
    impl=torch.unsqueeze, category="view", doc="insert a size-1 dim",
)


def _squeeze_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    ds = {norm_dim(d, t.rank) for d in a["dims"]}
    return (TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if not (i in ds and d == 1))),)


def _squeeze(x: torch.Tensor, dims: list) -> torch.Tensor:
    return torch.squeeze(x, dims) if dims else x


declare(
    "squeeze", ["x"], [Attr("dims", AttrKind.INTS)], infer=_squeeze_infer, impl=_squeeze,
    category="view", doc="drop the listed dims where they have size 1",
)


def _slice_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    d = norm_dim(a["dim"], t.rank)
    start, end, step = a["start"], a["end"], a["step"]
    if step < 1:
        raise InferenceError("slice step must be positive")
    span = end - start
    if isinstance(span, int):
        n: Any = max(0, -(-span // step))
    else:
        n = simplify_dim(span if step == 1 else sympy.floor((span + step - 1) / step))
    return (TensorType(t.dtype, t.shape[:d] + (n,) + t.shape[d + 1:]),)


def _slice(x: torch.Tensor, dim: int, start: int, end: int, step: int) -> torch.Tensor:
    return torch.ops.aten.slice.Tensor(x, dim, start, end, step)


declare(
    "slice", ["x"], [Attr("dim", AttrKind.INT), Attr("start", AttrKind.DIM), Attr("end", AttrKind.DIM), Attr("step", AttrKind.INT, 1)],
    infer=_slice_infer, impl=_slice, category="view",
    doc="x[start:end:step] along dim; bounds are normalised (0 <= start <= end <= size)",
)


def _select_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    d = norm_dim(a["dim"], t.rank)
    return (TensorType(t.dtype, t.shape[:d] + t.shape[d + 1:]),)


declare(
    "select", ["x"], [Attr("dim", AttrKind.INT), Attr("index", AttrKind.DIM)], infer=_select_infer,
    impl=torch.select, category="view", doc="x[..., index, ...] along dim (index non-negative)",
)


def _cat_infer(types, a):  # noqa: ANN001, ANN202
    ts = [t for t in tensors(types) if not (t.rank == 1 and t.shape[0] == 0)]
    if not ts:
        return (types[0],)
    d = norm_dim(a["dim"], ts[0].rank)
    total: Any = 0
    for t in ts:
        if t.rank != ts[0].rank or any(not same_dim(x, y) for i, (x, y) in enumerate(zip(t.shape, ts[0].shape)) if i != d):
            raise InferenceError(f"cat inputs disagree off dim {d}: {t} vs {ts[0]}")
        total = total + t.shape[d]
    from ._infer import meta_dtype

    dtype = meta_dtype(_cat, ts, [d], [AttrKind.INT])
    return (TensorType(dtype, ts[0].shape[:d] + (simplify_dim(total),) + ts[0].shape[d + 1:]),)


def _cat(*args: Any) -> torch.Tensor:
    return torch.cat(args[:-1], args[-1])


def _cat_lower(node: Any) -> Call:
    return Call(torch.cat, (("list", [("in", i) for i in range(len(node.inputs))]), ("const", node.attrs["dim"])))


declare(
    "cat", ["*xs"], [Attr("dim", AttrKind.INT)], infer=_cat_infer,
    impl=_cat, lower=_cat_lower, category="data",
    doc="concatenate along dim",
)


def _split_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    d = norm_dim(a["dim"], t.rank)
    sizes = a["sizes"]
    if not same_dim(sum(sizes), t.shape[d]):
        raise InferenceError(f"split sizes {[str(s) for s in sizes]} do not sum to dim {d} of {t}")
    return tuple(TensorType(t.dtype, t.shape[:d] + (s,) + t.shape[d + 1:]) for s in sizes)


def _split(x: torch.Tensor, sizes: list, dim: int) -> tuple:
    return torch.split(x, sizes, dim)


declare(
    "split", ["x"], [Attr("sizes", AttrKind.DIMS), Attr("dim", AttrKind.INT)], infer=_split_infer,
    impl=_split, category="view", num_outputs=-1, doc="split into pieces of the given sizes (views)",
)

declare(
    "clone", ["x"], infer=lambda ts, a: (tensors(ts)[0],), impl=lambda x: x.clone(memory_format=torch.contiguous_format),
    category="data", doc="a contiguous copy",
)


def _index_select_infer(types, a):  # noqa: ANN001, ANN202
    t, idx = tensors(types)
    d = norm_dim(a["dim"], t.rank)
    if idx.rank > 1:
        raise InferenceError("index_select takes a 0- or 1-dim index")
    n = idx.shape[0] if idx.rank == 1 else 1
    return (TensorType(t.dtype, t.shape[:d] + (n,) + t.shape[d + 1:]),)


def _index_select(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.index_select(x, dim, index)


declare(
    "index_select", ["x", "index"], [Attr("dim", AttrKind.INT)], infer=_index_select_infer,
    impl=_index_select, category="data", doc="rows of x along dim picked by index",
)


def _gather(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.gather(x, dim, index)


declare(
    "gather", ["x", "index"], [Attr("dim", AttrKind.INT)],
    infer=lambda ts, a: (TensorType(tensors(ts)[0].dtype, ts[1].shape),), impl=_gather,
    category="data", doc="torch.gather along dim",
)


def _embedding_infer(types, a):  # noqa: ANN001, ANN202
    w, idx = tensors(types)
    if w.rank != 2 or idx.dtype.kind not in ("int", "uint"):
        raise InferenceError(f"embedding needs a 2-dim weight and integer indices, got {w} and {idx}")
    return (TensorType(w.dtype, idx.shape + (w.shape[1],)),)


def _embedding(weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.embedding(indices, weight)


declare(
    "embedding", ["weight", "indices"], infer=_embedding_infer, impl=_embedding,
    category="data", doc="rows of weight picked by integer indices",
)


def _index_infer(types, a):  # noqa: ANN001, ANN202
    x, *idx = tensors(types)
    pos = a["positions"]
    if len(pos) != len(idx) or not idx or len(set(pos)) != len(pos) or any(not 0 <= p < x.rank for p in pos):
        raise InferenceError(f"index positions {list(pos)} do not match {len(idx)} index tensors on {x}")
    if any(t.dtype.kind not in ("int", "uint") or t.dtype.name == "u8" for t in idx):
        raise InferenceError("index takes integer index tensors (boolean masks make data-dependent shapes)")
    bshape = broadcast(*(t.shape for t in idx))
    rest = [d for i, d in enumerate(x.shape) if i not in pos]
    ordered = sorted(pos)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):  # adjacent: result dims go in place
        before = [d for i, d in enumerate(x.shape) if i < ordered[0]]
        after = [d for i, d in enumerate(x.shape) if i > ordered[-1]]
        return (TensorType(x.dtype, tuple(before) + bshape + tuple(after)),)
    return (TensorType(x.dtype, bshape + tuple(rest)),)


def _index_list(positions: Any) -> list:
    slots: list = [("const", None)] * (max(positions) + 1)
    for k, p in enumerate(positions):
        slots[p] = ("in", k + 1)
    return slots


def _index(x: torch.Tensor, *rest: Any) -> torch.Tensor:
    *idx, positions = rest
    slots: list = [None] * (max(positions) + 1)
    for t, p in zip(idx, positions):
        slots[p] = t
    return torch.ops.aten.index.Tensor(x, slots)


def _index_lower(node: Any) -> Call:
    return Call(torch.ops.aten.index.Tensor, (("in", 0), ("list", _index_list(node.attrs["positions"]))))


declare(
    "index", ["x", "*indices"], [Attr("positions", AttrKind.INTS)], infer=_index_infer, impl=_index,
    lower=_index_lower, category="data",
    doc="advanced indexing x[..., i0, ..., i1, ...]: integer tensors at dims `positions`, broadcast together",
)


def _tri(name: str, fn: Any) -> None:
    def impl(x: torch.Tensor, diagonal: int) -> torch.Tensor:
        return fn(x, diagonal)

    def infer(types, a):  # noqa: ANN001, ANN202
        (t,) = tensors(types)
        if t.rank < 2:
            raise InferenceError(f"{name} needs at least 2 dims, got {t}")
        return (t,)

    declare(name, ["x"], [Attr("diagonal", AttrKind.INT, 0)], infer=infer, impl=impl, category="elementwise",
            doc=f"{name}: zero the elements {'above' if name == 'tril' else 'below'} the diagonal")


_tri("tril", torch.tril)
_tri("triu", torch.triu)


def _roll_infer(types, a):  # noqa: ANN001, ANN202
    (t,) = tensors(types)
    if len(a["shifts"]) != len(a["dims"]) or not a["dims"]:
        raise InferenceError("roll needs one shift per dim")
    for d in a["dims"]:
        norm_dim(d, t.rank)
    return (t,)


def _roll(x: torch.Tensor, shifts: list, dims: list) -> torch.Tensor:
    return torch.roll(x, shifts, dims)


declare(
    "roll", ["x"], [Attr("shifts", AttrKind.DIMS), Attr("dims", AttrKind.INTS)], infer=_roll_infer, impl=_roll,
    category="data", doc="rotate elements along dims by shifts (wrapping around)",
)
