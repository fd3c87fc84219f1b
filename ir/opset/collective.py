"""Collectives: communication between the ranks of a tensor-parallel graph, over torch.distributed;
and `send` / `recv`, the point-to-point pair at pipeline-parallel stage boundaries.

Every rank runs the same graph structure (only constant data differs), so every rank calls each
collective in the same order: passes must never drop, duplicate, fold or reorder one on some
ranks only. The ops carry `Effect.COLLECTIVE`, which every pass treats as "not pure": never
folded, deduplicated, shape-cached, fused or dropped.

The references run on the default process group. A runtime may install a faster all-reduce for
GPU tensors (`set_all_reduce`, e.g. runtime/comm.py's symmetric-memory one); it must make the same
choice on every rank for every call. With `group_size=1` they are the identity (a
copy); with `group_size > 1` the process group must be initialised with exactly that many ranks,
otherwise they raise instead of returning a partial sum or a single shard silently.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from ..ops import Attr, AttrKind, Effect, InferenceError, declare
from ..types import TensorType
from ._infer import norm_dim, tensors


def _check_group(op: str, group_size: int) -> bool:
    """True when the collective really communicates; False for a group of one."""
    if group_size == 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{op} over {group_size} ranks needs an initialised process group "
            "(kiln.runtime.distributed.init_distributed, or launch with torchrun)"
        )
    if dist.get_world_size() != group_size:
        raise RuntimeError(f"{op} expects {group_size} ranks but the process group has {dist.get_world_size()}")
    return True


_FAST_ALL_REDUCE: "Callable[[torch.Tensor], torch.Tensor | None] | None" = None


def set_all_reduce(fn: "Callable[[torch.Tensor], torch.Tensor | None] | None") -> None:
    """Install (or with None remove) an all-reduce that may take a call (returning the sum) or
    decline it (returning None: torch.distributed runs it). Rank-symmetric by contract."""
    global _FAST_ALL_REDUCE
    _FAST_ALL_REDUCE = fn


def _all_reduce(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if _check_group("all_reduce", group_size) and _FAST_ALL_REDUCE is not None:
        out = _FAST_ALL_REDUCE(x)
        if out is not None:
            return out
    out = x.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
    if group_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _all_reduce_infer(types, a):  # noqa: ANN001, ANN202
    (x,) = tensors(types)
    if a["group_size"] < 1:
        raise InferenceError(f"all_reduce group_size must be >= 1, got {a['group_size']}")
    return (x,)


declare(
    "all_reduce", ["x"], [Attr("group_size", AttrKind.INT)], infer=_all_reduce_infer, impl=_all_reduce,
    effect=Effect.COLLECTIVE, category="collective",
    doc="elementwise sum of x over the group_size ranks of the default process group (every rank gets the sum)",
)


def _all_gather(x: torch.Tensor, dim: int, group_size: int) -> torch.Tensor:
    if not _check_group("all_gather", group_size):
        return x.clone(memory_format=torch.contiguous_format)
    x = x.contiguous()
    if x.is_cuda:  # NCCL: one flat gather (capturable, no per-part copies), then the parts moved to dim
        flat = torch.empty((group_size, *x.shape), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(flat, x)
        return torch.cat(flat.unbind(0), dim)
    parts = [torch.empty_like(x) for _ in range(group_size)]
    dist.all_gather(parts, x)  # list form: gloo has no all_gather_into_tensor on every build
    return torch.cat(parts, dim)


def _all_gather_infer(types, a):  # noqa: ANN001, ANN202
    (x,) = tensors(types)
    n = a["group_size"]
    if n < 1:
        raise InferenceError(f"all_gather group_size must be >= 1, got {n}")
    d = norm_dim(a["dim"], x.rank)
    return (TensorType(x.dtype, x.shape[:d] + (x.shape[d] * n,) + x.shape[d + 1:]),)


declare(
    "all_gather", ["x"], [Attr("dim", AttrKind.INT), Attr("group_size", AttrKind.INT)],
    infer=_all_gather_infer, impl=_all_gather, effect=Effect.COLLECTIVE, category="collective",
    doc="concatenation along dim of x from every rank, in rank order (every rank gets the whole)",
)


# --- point-to-point: pipeline-parallel stage boundaries ------------------------------------------
#
# A stage sends the values the next stage needs and that stage receives them, in the same order
# (gloo and NCCL match point-to-point messages per peer in program order). Only neighbouring
# stages talk, so messages flow one way and blocking send/recv cannot deadlock.


def _check_peer(op: str, peer: int) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{op} with rank {peer} needs an initialised process group (kiln.runtime.distributed.init_distributed)")
    if not 0 <= peer < dist.get_world_size() or peer == dist.get_rank():
        raise RuntimeError(f"{op}: rank {peer} is not another rank of this {dist.get_world_size()}-rank process group")


def _send(x: torch.Tensor, dst: int) -> None:
    _check_peer("send", dst)
    dist.send(x.contiguous(), dst)  # blocking; the process group's timeout bounds it


def _send_infer(types, a):  # noqa: ANN001, ANN202
    tensors(types)
    if a["dst"] < 0:
        raise InferenceError(f"send dst must be a rank >= 0, got {a['dst']}")
    return ()


declare(
    "send", ["x"], [Attr("dst", AttrKind.INT)], infer=_send_infer, impl=_send, effect=Effect.COLLECTIVE,
    category="collective", num_outputs=0,
    doc="send x to rank dst of the default process group (the matching recv there gets it)",
)


def _recv(src: int, shape: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    _check_peer("recv", src)
    out = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(out, src)  # raises after the process group's timeout when src never sends
    return out


def _recv_infer(types, a):  # noqa: ANN001, ANN202
    if types:
        raise InferenceError("recv takes no inputs")
    if a["src"] < 0:
        raise InferenceError(f"recv src must be a rank >= 0, got {a['src']}")
    return (TensorType(a["dtype"], tuple(a["shape"])),)


declare(
    "recv", [], [Attr("src", AttrKind.INT), Attr("shape", AttrKind.DIMS), Attr("dtype", AttrKind.DTYPE), Attr("device", AttrKind.DEVICE, "cpu")],
    infer=_recv_infer, impl=_recv, effect=Effect.COLLECTIVE, category="collective",
    doc="a tensor of the given shape and dtype received from rank src (symbolic dims evaluate per call)",
)
