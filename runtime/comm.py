"""Tensor-parallel all-reduce on GPUs without NCCL: one-shot sums over symmetric memory.

A decode step of a tensor-parallel plan all-reduces a few kilobytes twice per layer. Each
NCCL call costs a launch through the process group and its bookkeeping; PyTorch's symmetric
memory (torch.distributed._symmetric_memory, CUDA 12.3+) maps every rank's buffer into its NVLink
peers' address space, so `symm_mem.one_shot_all_reduce` is one kernel that reads all ranks'
buffers and sums them (plain peer loads: no NVLink multicast, which the device machines forbid).
It is an ordinary kernel on the current stream, so CUDA graphs capture it.

Rank symmetry: the decision to take a call depends only on the tensor's shape, dtype and size,
which are the same on every rank for the same collective, and on a probe whose outcome the ranks
agree on (an all-reduce of the per-rank results). A buffer per (shape, dtype) is allocated and
rendezvoused on its first use, which is always an uncaptured call (the graph runner captures a
signature only on its second call), on every rank at the same collective.

Group names: torch keeps a group name's symmetric-memory rendezvous store for the life of the
process, and a process group made after an earlier one was destroyed reuses its names ("0", "1",
...). A second parallel `kiln.LLM` in the same process would then rendezvous through the first
one's store and wait forever. So the hooks run on a group of the tensor group's ranks whose name
no rank has given symmetric memory before (`symm_group`).

Rendezvous counters: torch (2.11 at least) numbers a process's symmetric-memory exchanges with one
counter for the whole process, whatever the group, and the ranks of a rendezvous must agree on it.
A driver that already ran a parallel LLM has counted past fresh workers' zero and would wait out
the store timeout (120 s) at the first rendezvous. `rendezvous_counts_agree` compares every rank's
count first; where they differ, the hooks are skipped with a warning (NCCL all-reduces instead)
at once. Run each symmetric-memory parallel LLM in its own process to keep the fast path.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist

from .. import debug
from ..ir.opset import collective

# larger messages (long prefills) go to NCCL's bandwidth-optimal algorithms; up to this size a
# one-shot sum (each rank reads every peer's buffer) is one capturable kernel, which also carries
# the logits gather of decode batches (all_gather as a sum of zero-padded shards)
MAX_BYTES = 16 << 20
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_FUSED_RANKS = 8  # the fused all-reduce + RMSNorm kernel's largest tensor group
_SYMM_NAMES: set[str] = set()  # group names this process gave symmetric memory (see the module doc)
_RENDEZVOUS = [0]  # symmetric-memory rendezvous this process made (see the module doc)


def _rendezvous(symm_mem: Any, buf: torch.Tensor, name: str) -> Any:
    _RENDEZVOUS[0] += 1
    return symm_mem.rendezvous(buf, name)


def rendezvous_counts_agree(device: torch.device, count: int | None = None) -> tuple[bool, str]:
    """Whether every rank of the world made as many symmetric-memory rendezvous before as this one
    (`count`: this process's record); else why not. Every rank calls it alike."""
    count = _RENDEZVOUS[0] if count is None else count
    t = torch.tensor([count, -count], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    most, least = int(t[0]), -int(t[1])
    if most == least:
        return True, ""
    return False, (f"ranks made {least} to {most} symmetric-memory rendezvous earlier in their processes (an earlier parallel "
                   "LLM in this one), and torch numbers them per process; run each parallel LLM in its own process")


def symm_group(device: torch.device, used: set[str] | None = None) -> Any:
    """The tensor-parallel group (`collective.tensor_group()`, else the default group), or, where
    any rank already gave symmetric memory a group of that name (`used`: this process's record),
    a new group of the same ranks whose name none has used. Every rank of the default group calls
    this alike: the tensor groups' rank lists are gathered and each round makes one new group per
    list, in the same order everywhere (new_group's rule), until no rank's name is stale."""
    used = _SYMM_NAMES if used is None else used
    group = collective.tensor_group() or dist.group.WORLD
    ranks = sorted(dist.get_process_group_ranks(group))
    lists: list[list[int]] | None = None
    while True:
        stale = torch.tensor([1 if group.group_name in used else 0], device=device)
        dist.all_reduce(stale, op=dist.ReduceOp.MAX)
        if not int(stale.item()):
            return group
        if lists is None:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, ranks)
            lists = sorted({tuple(r) for r in gathered})
        made = {r: dist.new_group(ranks=list(r)) for r in lists}
        group = made[tuple(ranks)]


class SymmAllReduce:
    """A `collective.set_all_reduce` hook over symmetric-memory buffers of the tensor-parallel
    group (`collective.tensor_group()`, registered before this is built; else the default group)."""

    def __init__(self, device: torch.device, group: Any = None):
        import torch.distributed._symmetric_memory as symm_mem

        self.symm_mem = symm_mem
        self.device = device
        if group is None:
            group = collective.tensor_group() or dist.group.WORLD
        self.group_name = group.group_name
        if hasattr(symm_mem, "enable_symm_mem_for_group"):  # needed before torch 2.8, harmless after
            symm_mem.enable_symm_mem_for_group(self.group_name)
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.calls = 0
        # one_shot_all_reduce_copy (torch 2.8+) copies the local input into the buffer itself: one
        # kernel per all-reduce instead of a copy and the all-reduce (64 per 7B decode step)
        self.copy_in = getattr(torch.ops.symm_mem, "one_shot_all_reduce_copy", None) if hasattr(torch.ops, "symm_mem") else None

    def takes(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()
        return x.is_cuda and x.dtype in DTYPES and 0 < nbytes <= MAX_BYTES and nbytes % 16 == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.takes(x):
            return None
        key = (tuple(x.shape), x.dtype)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.symm_mem.empty(tuple(x.shape), dtype=x.dtype, device=x.device)
            _rendezvous(self.symm_mem, buf, self.group_name)
            self.buffers[key] = buf
        self.calls += 1
        if self.copy_in is not None:  # the copy into the buffer happens inside the all-reduce kernel
            return self.copy_in(buf, x.contiguous(), "sum", self.group_name)
        buf.copy_(x)
        return torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", self.group_name)


class SymmAllReduceNorm:
    """A `collective.set_all_reduce_add_rms_norm` hook for a tensor group of 2 to 8 ranks: the partial
    rows go through symmetric memory and one kernel sums, adds the residual and norms them
    (backends/triton/allreduce_norm.py). Declines (None: the all-reduce and the row kernel run)
    for more rows than the kernel's buffers hold, non-CUDA or mixed dtypes, or strided rows;
    the decision depends only on shapes and dtypes, the same on every rank. Buffers per (width,
    dtype) are allocated and rendezvoused on first use, an uncaptured call on every rank."""

    def __init__(self, device: torch.device, group: Any = None):
        import torch.distributed._symmetric_memory as symm_mem

        from ..backends.triton import allreduce_norm
        from ..backends.triton.pdl import launch_flags

        self.symm_mem, self.device, self.kernel = symm_mem, device, allreduce_norm
        self.group = group if group is not None else collective.tensor_group() or dist.group.WORLD
        self.size, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        if not 2 <= self.size <= MAX_FUSED_RANKS:
            raise ValueError(f"the fused all-reduce + RMSNorm kernel serves tensor groups of 2 to {MAX_FUSED_RANKS} ranks, not {self.size}")
        self.peer = 1 - self.rank
        self.mod = allreduce_norm.kernel_module()
        self.flags = launch_flags()
        self.state: dict[tuple, tuple] = {}
        self.calls = 0

    def takes(self, x: torch.Tensor, res: torch.Tensor, w: torch.Tensor) -> bool:
        d = x.shape[-1] if x.dim() else 0
        rows = x.numel() // max(d, 1)
        return (x.is_cuda and x.dtype in DTYPES and res.dtype == x.dtype and w.dtype == x.dtype and res.shape == x.shape
                and tuple(w.shape) == (d,) and 0 < rows <= self.kernel.MAX_ROWS and 0 < d <= self.kernel.MAX_D
                and x.is_contiguous() and res.is_contiguous() and w.is_contiguous())

    def _buffers(self, d: int, dtype: torch.dtype) -> tuple:
        MAX_ROWS = self.kernel.MAX_ROWS  # noqa: N806
        key = (d, dtype)
        got = self.state.get(key)
        if got is None:
            name = self.group.group_name
            buf = self.symm_mem.empty((2 * MAX_ROWS * d,), dtype=dtype, device=self.device)
            flags = self.symm_mem.empty((self.size * MAX_ROWS if self.size > 2 else MAX_ROWS,), dtype=torch.int32, device=self.device)
            flags.zero_()
            torch.cuda.synchronize(self.device)  # zeroed before the peer can raise a flag in it
            buf_h = _rendezvous(self.symm_mem, buf, name)
            flags_h = _rendezvous(self.symm_mem, flags, name)
            counters = torch.zeros(MAX_ROWS, dtype=torch.int32, device=self.device)
            if self.size == 2:
                got = (buf, buf_h.get_buffer(self.peer, (2 * MAX_ROWS * d,), dtype), flags,
                       flags_h.get_buffer(self.peer, (MAX_ROWS,), torch.int32), counters)
            else:  # every rank's buffer / flags by address (this rank's own: its local tensors)
                bufs = [buf if r == self.rank else buf_h.get_buffer(r, (2 * MAX_ROWS * d,), dtype) for r in range(self.size)]
                flag_arrays = [flags if r == self.rank else flags_h.get_buffer(r, (self.size * MAX_ROWS,), torch.int32)
                               for r in range(self.size)]
                addresses = lambda ts: torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=self.device)  # noqa: E731
                # the mapped peer tensors stay referenced here: their addresses are only valid while they live
                got = (buf, addresses(bufs), flags, addresses(flag_arrays), counters, bufs, flag_arrays)
            self.state[key] = got
        return got

    def __call__(self, x: torch.Tensor, res: torch.Tensor, w: torch.Tensor, eps: float) -> tuple | None:
        if not self.takes(x, res, w):
            return None
        d = x.shape[-1]
        own, peer, own_flags, peer_flags, counters, *_ = self._buffers(d, x.dtype)
        self.calls += 1
        if self.size == 2:
            s, y = self.kernel.launch(self.mod, x.view(-1, d), res.view(-1, d), w, eps, own, peer, own_flags, peer_flags, counters,
                                      self.flags)
        else:
            s, y = self.kernel.launch_n(self.mod, x.view(-1, d), res.view(-1, d), w, eps, own, peer, own_flags, peer_flags,
                                        counters, self.rank, self.size, self.flags)
        return s.view(x.shape), y.view(x.shape)


def setup_all_reduce(choice: str, device: torch.device) -> Any:
    """Called by every rank right after joining the group (and registering its tensor-parallel
    group, if any), with the same `choice` (CompileOptions.all_reduce). Installs the symmetric-memory hook when chosen and usable on every rank; returns
    the hook (or None: torch.distributed's all_reduce)."""
    collective.set_all_reduce(None)
    collective.set_all_reduce_add_rms_norm(None)
    if choice == "nccl" or device.type != "cuda":
        return None
    hook, why = None, ""
    group = symm_group(device)
    counted, why = rendezvous_counts_agree(device)
    try:
        if not counted:
            raise RuntimeError(why)
        hook = SymmAllReduce(device, group)
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        probe = torch.full((8,), float(rank + 1), device=device)
        got = hook(probe)
        want = size * (size + 1) / 2
        ok = got is not None and bool(torch.all(got == want))
        why = "" if ok else f"the probe sum was {got.tolist() if got is not None else None}, not {want}"
    except Exception as e:  # noqa: BLE001 - decided together below
        ok, why = False, f"{type(e).__name__}: {e}"
    _SYMM_NAMES.add(group.group_name)  # rendezvoused (or tried): never again under this name
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # every rank of the world takes the same path
    if not int(flag.item()):
        if (choice == "symm_mem" or not counted) and why:
            warnings.warn(f"kiln: symmetric-memory all-reduce unavailable, using NCCL: {why}", RuntimeWarning, stacklevel=2)
        return None
    collective.set_all_reduce(hook)
    if debug.FUSED_AR_NORM:
        _setup_fused_norm(device, group)
    return hook


def _setup_fused_norm(device: torch.device, group: Any) -> None:
    """The fused all-reduce + add + RMSNorm kernel for a tensor group of 2 to 8 ranks, where every
    rank can build it (KILN_FUSED_AR_NORM=0 turns it off). 7B decode, TP=2 on 2 x H200: 342
    tok/s with it, 300 without (bench/RESULTS.md, 2026-11-21). Groups of more than two only with
    KILN_FUSED_AR_NORM=all: on 4 x H200 the kernel was correct but no faster than the one-shot
    all-reduce and the norm kernel apart (7B TP=4: 429 vs 437 tok/s, 2026-11-22)."""
    if dist.get_world_size(group) > 2 and not debug.FUSED_AR_NORM_ALL:
        return
    hook, why = None, ""
    try:
        hook = SymmAllReduceNorm(device, group)
    except Exception as e:  # noqa: BLE001 - decided together below
        why = f"{type(e).__name__}: {e}"
    flag = torch.tensor([0 if hook is None else 1], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # every rank takes the same path
    if int(flag.item()):
        collective.set_all_reduce_add_rms_norm(hook)
    elif why:
        warnings.warn(f"kiln: fused all-reduce + RMSNorm unavailable, running them apart: {why}", RuntimeWarning, stacklevel=3)
