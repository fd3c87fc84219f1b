"""Converters for views and data movement, tensor creation, in-place writes and indexing."""

from __future__ import annotations

from typing import Any

import torch

from ..ir import Value
from ..ir.dtypes import from_torch
from .convert_util import aten, is_value, out_type, plain, scalar
from .fx_import import Ctx, Decline, converter, write_back


# --- shapes -----------------------------------------------------------------------------------
@converter(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _reshape(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("reshape", [args[0]], shape=out_type(ctx, node).shape)


@converter(aten.permute.default)
def _permute(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    rank = args[0].type.rank
    return ctx.emit("permute", [args[0]], dims=tuple(d % rank for d in args[1]))


@converter(aten.transpose.int)
def _transpose(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    rank = args[0].type.rank
    dims = list(range(rank))
    a, b = args[1] % rank, args[2] % rank
    dims[a], dims[b] = dims[b], dims[a]
    return ctx.emit("permute", [args[0]], dims=tuple(dims))


@converter(aten.t.default, aten.numpy_T.default)
def _t(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    rank = args[0].type.rank
    if rank < 2:
        return args[0]
    return ctx.emit("permute", [args[0]], dims=tuple(reversed(range(rank))))


@converter(aten.expand.default)
def _expand(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("expand", [args[0]], shape=out_type(ctx, node).shape)


@converter(aten.unsqueeze.default)
def _unsqueeze(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("unsqueeze", [args[0]], dim=args[1] % (args[0].type.rank + 1))


@converter(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    rank = x.type.rank
    dims = args[1] if len(args) > 1 else [i for i, d in enumerate(x.type.shape) if d == 1]
    dims = [dims] if isinstance(dims, int) else dims
    return ctx.emit("squeeze", [x], dims=tuple(sorted(d % max(rank, 1) for d in dims)))


@converter(aten.slice.Tensor)
def _slice(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    rank = x.type.rank
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % rank
    start = args[2] if len(args) > 2 else kwargs.get("start")
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    size = x.type.shape[dim]
    n = out_type(ctx, node).shape[dim]
    start = 0 if start is None else start
    if isinstance(start, int) and start < 0:
        start = start + size
        if isinstance(start, int):
            start = max(start, 0)
    if n == 0:
        start = 0
    end = start + (n - 1) * step + 1 if n != 0 else 0
    if step == 1 and not isinstance(n, int):
        end = start + n
    if start == 0 and n == size and step == 1:
        return x
    return ctx.emit("slice", [x], dim=dim, start=start, end=end, step=step)


@converter(aten.select.int)
def _select(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x, dim, index = args
    dim = dim % x.type.rank
    if isinstance(index, int) and index < 0:
        index = index + x.type.shape[dim]
    return ctx.emit("select", [x], dim=dim, index=index)


@converter(aten.cat.default)
def _cat(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    xs = list(args[0])
    if len(xs) == 1:
        return xs[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return ctx.emit("cat", xs, dim=dim % max(xs[0].type.rank, 1))


@converter(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
def _split(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.type.rank
    sizes = tuple(t.shape[dim] for t in ctx.out_types(node))
    return tuple(ctx.emit("split", [x], dim=dim, sizes=sizes))


@converter(aten.index_select.default)
def _index_select(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("index_select", [args[0], args[2]], dim=args[1] % args[0].type.rank)


@converter(aten.gather.default)
def _gather(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("gather", [args[0], args[2]], dim=args[1] % args[0].type.rank)


@converter(aten.embedding.default)
def _embedding(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("embedding", [args[0], args[1]])


# --- creation ---------------------------------------------------------------------------------
def _full_like_trace(ctx: Ctx, node: Any, value: Any) -> Value:
    val = node.meta["val"]
    return ctx.emit("full", [], shape=out_type(ctx, node).shape, value=scalar(value), dtype=from_torch(val.dtype), device=str(val.device))


@converter(aten.full.default, aten.new_full.default, aten.full_like.default)
def _full(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    value = args[2] if node.target is aten.new_full.default else args[1]
    return _full_like_trace(ctx, node, value)


@converter(aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default, aten.empty.memory_format, aten.new_empty.default, aten.empty_like.default)
def _zeros(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return _full_like_trace(ctx, node, False if node.meta["val"].dtype is torch.bool else 0)


@converter(aten.ones.default, aten.new_ones.default, aten.ones_like.default)
def _ones(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return _full_like_trace(ctx, node, True if node.meta["val"].dtype is torch.bool else 1)


@converter(aten.scalar_tensor.default)
def _scalar_tensor(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return _full_like_trace(ctx, node, args[0])


@converter(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    val = node.meta["val"]
    if val.dtype.is_floating_point:
        raise Decline("float arange")
    nums = list(args)
    start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums[0], nums[1], nums[2] if len(nums) > 2 else 1)
    if not all(isinstance(v, int) or hasattr(v, "free_symbols") for v in (start, end)) or not isinstance(step, int):
        raise Decline("non-integer arange bounds")
    return ctx.emit("arange", [], start=start, end=end, step=step, dtype=from_torch(val.dtype), device=str(val.device))


# --- in-place writes --------------------------------------------------------------------------
@converter(aten.copy_.default)
def _copy(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    dst, src = args[0], args[1]
    if dst.type.shape != src.type.shape:
        raise Decline("broadcasting copy_")
    if src.type.dtype is not dst.type.dtype:
        src = plain(ctx, "cast", [src], dtype=dst.type.dtype)
    write_back(ctx, dst, src)
    return src


@converter(aten.index.Tensor)
def _index(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x, indices = args[0], list(args[1])
    positions = tuple(i for i, t in enumerate(indices) if t is not None)
    if not positions or any(not is_value(indices[i]) for i in positions):
        raise Decline("index without tensor indices")
    return ctx.emit("index", [x] + [indices[i] for i in positions], positions=positions)


@converter(aten.tril.default, aten.triu.default)
def _tri(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    name = "tril" if "tril" in node.target._schema.name else "triu"
    return ctx.emit(name, [args[0]], diagonal=args[1] if len(args) > 1 else kwargs.get("diagonal", 0))


@converter(aten.diff.default)
def _diff(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    """diff(x) along dim = y[1:] - y[:-1] with y = cat(prepend, x, append): declared ops only."""
    names = ["n", "dim", "prepend", "append"]
    opts = {"n": 1, "dim": -1, "prepend": None, "append": None, **dict(zip(names, args[1:])), **kwargs}
    x = args[0]
    if opts["n"] != 1:
        raise Decline("diff with n != 1")
    dim = opts["dim"] % x.type.rank
    parts = [p for p in (opts["prepend"], x, opts["append"]) if p is not None]
    if any(not is_value(p) or p.type.rank != x.type.rank for p in parts):
        raise Decline("diff with scalar prepend/append")
    y = plain(ctx, "cat", parts, dim=dim) if len(parts) > 1 else x
    n = y.type.shape[dim]
    hi = plain(ctx, "slice", [y], dim=dim, start=1, end=n, step=1)
    lo = plain(ctx, "slice", [y], dim=dim, start=0, end=n - 1, step=1)
    if y.type.dtype.kind == "bool":
        return ctx.emit("bitwise_xor", [hi, lo])
    return ctx.emit("sub", [hi, lo])


@converter(aten.roll.default)
def _roll(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    shifts = args[1] if len(args) > 1 else kwargs["shifts"]
    dims = args[2] if len(args) > 2 else kwargs.get("dims", [])
    if not dims:
        raise Decline("roll over the flattened tensor")
    return ctx.emit("roll", [x], shifts=tuple(shifts), dims=tuple(d % x.type.rank for d in dims))


@converter(aten.addcmul.default)
def _addcmul(ctx: Ctx, node: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.emit("addcmul", list(args[:3]), value=scalar(kwargs.get("value", 1)))
