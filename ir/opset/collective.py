"""Collectives: communication between the ranks of a tensor-parallel graph, over torch.distributed;
and `send` / `recv`, the point-to-point pair at pipeline-parallel stage boundaries.

Every rank runs the same graph structure (only constant data differs), so every rank calls each
collective in the same order: passes must never drop, duplicate, fold or reorder one on some
ranks only. The ops carry `Effect.COLLECTIVE`, which every pass treats as "not pure": never
folded, deduplicated, shape-cached, fused or dropped.

The references run on the default process group, unless a runtime registers (`set_tensor_group`)
the group of this rank's tensor-parallel peers: with tensor x pipeline parallelism every stage's T
ranks form one such subgroup, and all_reduce / all_gather run on it. send / recv keep the peer as a
stage number in the IR; `set_stage_ranks` maps stage k to the global rank this process talks to
(with T tensor ranks per stage, tensor rank t of stage k is rank k * T + t); without one, stage k
is rank k (pipeline parallelism alone). A runtime may install a faster all-reduce for
GPU tensors (`set_all_reduce`, e.g. runtime/comm.py's symmetric-memory one); it must make the same
choice on every rank for every call. With `group_size=1` they are the identity (a
copy); with `group_size > 1` the process group must be initialised with exactly that many ranks,
otherwise they raise instead of returning a partial sum or a single shard silently.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from ..ops import Attr, AttrKind, Effect, InferenceError, declare
from ..types import TensorType
from ._infer import norm_dim, tensors
from .nn import _add_norm_infer, _add_rms_norm

_TENSOR_GROUP: Any = None  # this rank's tensor-parallel group; None: the default group
_STAGE_RANKS: tuple[int, ...] | None = None  # global rank of each pipeline stage; None: stage k is rank k


def set_tensor_group(group: Any) -> None:
    """Run all_reduce / all_gather on `group` (a torch.distributed group holding this rank's
    tensor-parallel peers), or with None on the default group again."""
    global _TENSOR_GROUP
    _TENSOR_GROUP = group


def tensor_group() -> Any:
    """The group all_reduce / all_gather run on (None: the default group)."""
    return _TENSOR_GROUP


def set_stage_ranks(ranks: "Sequence[int] | None") -> None:
    """send / recv with peer stage k talk to global rank `ranks[k]`; None: stage k is rank k."""
    global _STAGE_RANKS
    if ranks is not None:
        ranks = tuple(int(r) for r in ranks)
        if any(r < 0 for r in ranks) or len(set(ranks)) != len(ranks):
            raise ValueError(f"stage ranks must be distinct ranks >= 0, got {list(ranks)}")
    _STAGE_RANKS = ranks


def stage_rank(stage: int) -> int:
    """The global rank send / recv use for pipeline stage `stage`."""
    if _STAGE_RANKS is None:
        return stage
    if not 0 <= stage < len(_STAGE_RANKS):
        raise RuntimeError(f"pipeline stage {stage} has no rank: the registered stage ranks are {list(_STAGE_RANKS)}")
    return _STAGE_RANKS[stage]


def reset_groups() -> None:
    """Forget every registration: the default group, stage k = rank k, no all-reduce hooks."""
    set_tensor_group(None)
    set_stage_ranks(None)
    set_all_reduce(None)
    set_all_reduce_add_rms_norm(None)


def _group_kw() -> dict:
    return {} if _TENSOR_GROUP is None else {"group": _TENSOR_GROUP}


def _check_group(op: str, group_size: int) -> bool:
    """True when the collective really communicates; False for a group of one."""
    if group_size == 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{op} over {group_size} ranks needs an initialised process group "
            "(kiln.runtime.distributed.init_distributed, or launch with torchrun)"
        )
    size = dist.get_world_size(_TENSOR_GROUP) if _TENSOR_GROUP is not None else dist.get_world_size()
    if size != group_size:
        which = "the registered tensor-parallel group" if _TENSOR_GROUP is not None else "the process group"
        hint = ("" if _TENSOR_GROUP is not None else
                " (with pipeline parallelism too, register each stage's tensor group: "
                "kiln.runtime.distributed.setup_parallel_groups)")
        raise RuntimeError(f"{op} expects {group_size} ranks but {which} has {size}{hint}")
    return True


_FAST_ALL_REDUCE: "Callable[[torch.Tensor], torch.Tensor | None] | None" = None


def set_all_reduce(fn: "Callable[[torch.Tensor], torch.Tensor | None] | None") -> None:
    """Install (or with None remove) an all-reduce that may take a call (returning the sum) or
    decline it (returning None: torch.distributed runs it). Rank-symmetric by contract."""
    global _FAST_ALL_REDUCE
    _FAST_ALL_REDUCE = fn


def all_reduce(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """all_reduce's implementation: the installed fast all-reduce where it takes x, else torch.distributed."""
    if _check_group("all_reduce", group_size) and _FAST_ALL_REDUCE is not None:
        out = _FAST_ALL_REDUCE(x)
        if out is not None:
            return out
    out = x.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
    if group_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, **_group_kw())
    return out


def _all_reduce_infer(types, a):  # noqa: ANN001, ANN202
    (x,) = tensors(types)
    if a["group_size"] < 1:
        raise InferenceError(f"all_reduce group_size must be >= 1, got {a['group_size']}")
    return (x,)


declare(
    "all_reduce", ["x"], [Attr("group_size", AttrKind.INT)], infer=_all_reduce_infer, impl=all_reduce,
    effect=Effect.COLLECTIVE, category="collective",
    doc="elementwise sum of x over the group_size ranks of the tensor-parallel group (default: the process group; every rank gets the sum)",
)


_FAST_AR_NORM: "Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple | None] | None" = None


def set_all_reduce_add_rms_norm(fn: "Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple | None] | None") -> None:
    """Install (or with None remove) a fused all_reduce_add_rms_norm: fn(x, residual, weight, eps)
    returns (sum, normed) or declines with None (the reference runs: all_reduce, then add_rms_norm).
    Rank-symmetric by contract, like `set_all_reduce`."""
    global _FAST_AR_NORM
    _FAST_AR_NORM = fn


def fused_all_reduce_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, group_size: int,
                                  eps: float) -> tuple | None:
    """The installed fused kernel's (sum, normed), or None where there is none or it declines
    (then all_reduce, then add_rms_norm). Backends whose norm kernel replaces the reference call
    this first (backends/triton/norms.py)."""
    if _FAST_AR_NORM is not None and _check_group("all_reduce_add_rms_norm", group_size):
        return _FAST_AR_NORM(x, residual, weight, eps)
    return None


def _all_reduce_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, group_size: int,
                             eps: float) -> tuple:
    out = fused_all_reduce_add_rms_norm(x, residual, weight, group_size, eps)
    return out if out is not None else _add_rms_norm(all_reduce(x, group_size), residual, weight, eps)


def _all_reduce_add_rms_norm_infer(types, a):  # noqa: ANN001, ANN202
    _all_reduce_infer(types[:1], a)
    return _add_norm_infer("rms_norm")(types, {"eps": a["eps"]})


declare(
    "all_reduce_add_rms_norm", ["x", "residual", "weight"], [Attr("group_size", AttrKind.INT), Attr("eps", AttrKind.FLOAT, 1e-6)],
    infer=_all_reduce_add_rms_norm_infer, impl=_all_reduce_add_rms_norm, effect=Effect.COLLECTIVE,
    category="collective", num_outputs=2,
    doc="the sum of x over the group_size ranks plus residual, and its RMSNorm: (s, rms_norm(s)) with "
        "s = all_reduce(x) + residual (one kernel on GPUs that can; a row-parallel projection's epilogue)",
)


def _all_gather(x: torch.Tensor, dim: int, group_size: int) -> torch.Tensor:
    if not _check_group("all_gather", group_size):
        return x.clone(memory_format=torch.contiguous_format)
    x = x.contiguous()
    if _FAST_ALL_REDUCE is not None:
        # through the installed all-reduce, as a sum of zero-padded shards (x + 0 is exact): the
        # decode step's logits gather then runs on the same capturable kernel as its all-reduces
        d = dim % x.dim()
        rank = dist.get_rank(_TENSOR_GROUP) if _TENSOR_GROUP is not None else dist.get_rank()
        padded = x.new_zeros(x.shape[:d] + (x.shape[d] * group_size,) + x.shape[d + 1:])
        padded.narrow(d, rank * x.shape[d], x.shape[d]).copy_(x)
        out = _FAST_ALL_REDUCE(padded)
        if out is not None:
            return out
    if x.is_cuda:  # NCCL: one flat gather (capturable, no per-part copies), then the parts moved to dim
        flat = torch.empty((group_size, *x.shape), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(flat, x, **_group_kw())
        return torch.cat(flat.unbind(0), dim)
    parts = [torch.empty_like(x) for _ in range(group_size)]
    dist.all_gather(parts, x, **_group_kw())  # list form: gloo has no all_gather_into_tensor on every build
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


def _check_peer(op: str, stage: int) -> int:
    """The global rank of pipeline stage `stage` (see set_stage_ranks), checked to be another rank."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{op} with stage {stage} needs an initialised process group (kiln.runtime.distributed.init_distributed)")
    peer = stage_rank(stage)
    if not 0 <= peer < dist.get_world_size() or peer == dist.get_rank():
        raise RuntimeError(f"{op}: rank {peer} (stage {stage}) is not another rank of this {dist.get_world_size()}-rank process group")
    return peer


def _send(x: torch.Tensor, dst: int) -> None:
    peer = _check_peer("send", dst)
    dist.send(x.contiguous(), peer)  # blocking; the process group's timeout bounds it


def _send_infer(types, a):  # noqa: ANN001, ANN202
    tensors(types)
    if a["dst"] < 0:
        raise InferenceError(f"send dst must be a rank >= 0, got {a['dst']}")
    return ()


declare(
    "send", ["x"], [Attr("dst", AttrKind.INT)], infer=_send_infer, impl=_send, effect=Effect.COLLECTIVE,
    category="collective", num_outputs=0,
    doc="send x to pipeline stage dst (its rank: set_stage_ranks; default rank dst); the matching recv there gets it",
)


def _recv(src: int, shape: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    peer = _check_peer("recv", src)
    out = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(out, peer)  # raises after the process group's timeout when src never sends
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
    doc="a tensor of the given shape and dtype received from pipeline stage src (symbolic dims evaluate per call)",
)
