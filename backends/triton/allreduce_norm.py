"""One kernel for a tensor group's `all_reduce_add_rms_norm` (2 to 8 ranks, symmetric memory).

Each program owns one row: it stores its partial row into this rank's symmetric buffer, raises
the peer's flag for that row, waits for its own flag (the peer's row is in), then sums both rows,
adds the residual and applies RMSNorm, writing the sum and the normed row. It replaces an
all-reduce kernel (its own peer handshake) and the add + RMSNorm row kernel: one launch and one
handshake per residual step. bench/ar_norm_probe.py, 64 chained blocks of one 4096-wide bf16 row
on 2 x H200: 7.24 us per block (NCCL + add + RMSNorm 15.83, symm_mem one-shot + them 14.50).

Handshake, per row r: launch e of the kernel (e counts launches per row on each GPU, kept in a
device counter, so CUDA-graph replays continue it) writes its row into slot e % 2 of its buffer,
then, after a CTA barrier, stores e into the peer's flag r with a system-scope release; it spins
on its own flag r (acquire) until it reads e, then reads the peer's slot e % 2. A rank can only
reuse a slot (launch e + 2) after the peer raised flag e + 1, i.e. after the peer finished
reading slot e % 2 in launch e. The spin is bounded by the GPU's global timer: a peer that never
arrives (a dead rank) traps the kernel, which surfaces as a CUDA error on that rank (the driver
then reports the rank), never a hang.

Groups of more than two run `ar_add_rms_norm_n` (RANK and NRANKS compile-time): each rank has a
flag per (source rank, row); a launch stores its row, raises its own flag on every peer, waits for
every peer's flag, then sums the NRANKS rows in rank order (the same order on every rank, so all
ranks get the same bits). Slot reuse is safe for the same reason as with two: launch e + 2 passed
launch e + 1's wait, which every peer enters only after finishing launch e. Peer buffers and flag
arrays are reached through device arrays of their addresses (symmetric-memory mappings).

Roundings follow the unfused ops: the pair's sum is rounded to the row dtype (what the
all-reduce returns), then the residual sum (add_rms_norm's first output), then RMSNorm as the
row kernel in norms.py computes it.
"""

from __future__ import annotations

from typing import Any

import torch

from .cache import load_module
from .norms import RMS_TAIL
from .pdl import NOW_NS, with_pdl

MAX_ROWS = 64  # rows (tokens) per call; more (prefill) take the unfused path
MAX_D = 16384
TIMEOUT_NS = 60 * 10**9  # a peer later than this is taken as gone
KERNELS = ("ar_add_rms_norm", "ar_add_rms_norm_n")  # each waits for the previous kernel and triggers the next (PDL)

# a program's row: this launch's epoch and slot, the partial row stored into this rank's buffer
_ROW_HEAD = """    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < R
    epoch = tl.load(counters + row) + 1
    base = ((epoch % 2) * MAX_ROWS + row).to(tl.int64) * R
    mine = tl.load(x + row * sxm + cols, mask=mask, other=0.0)
    tl.store(own_buf + base + cols, mine, mask=mask)
    tl.debug_barrier()  # every thread's store before the flags
"""
# `total` (the all-reduced row) plus the residual, stored; the epoch kept; then RMSNorm (RMS_TAIL)
_ADD_TAIL = """    x = (total.to(tl.float32) + tl.load(res + row * srm + cols, mask=mask, other=0.0).to(tl.float32)).to(mine.dtype)
    tl.store(s_out + row * R + cols, x, mask=mask)
    tl.store(counters + row, epoch)
    xf = x.to(tl.float32)
""" + RMS_TAIL

_SOURCE = '''import triton
import triton.language as tl


''' + NOW_NS + '''@triton.jit
def trap(dep):
    return tl.inline_asm_elementwise("trap;\\n mov.u32 $0, 0;", "=r,r", [dep], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def spin_until(flag, epoch, timeout_ns):
    # acquire-spin on one flag until it reads `epoch`, bounded by the global timer (trap: a dead peer)
    seen = tl.atomic_add(flag, 0, sem="acquire", scope="sys")
    start = now_ns(seen)
    while seen < epoch:
        seen = tl.atomic_add(flag, 0, sem="acquire", scope="sys")
        if now_ns(seen) - start > timeout_ns:
            trap(seen)


@triton.jit
def ar_add_rms_norm(x, res, w, s_out, y_out, own_buf, peer_buf, own_flags, peer_flags, counters,
                    R, eps, sxm, srm, timeout_ns, MAX_ROWS: tl.constexpr, BLOCK: tl.constexpr):
''' + _ROW_HEAD + '''    tl.atomic_xchg(peer_flags + row, epoch, sem="release", scope="sys")
    spin_until(own_flags + row, epoch, timeout_ns)
    tl.debug_barrier()
    theirs = tl.load(peer_buf + base + cols, mask=mask, other=0.0, volatile=True)
    total = (mine.to(tl.float32) + theirs.to(tl.float32)).to(mine.dtype)  # the all-reduce's result
''' + _ADD_TAIL + '''

@triton.jit
def ar_add_rms_norm_n(x, res, w, s_out, y_out, own_buf, buf_ptrs, own_flags, flag_ptrs, counters,
                      R, eps, sxm, srm, timeout_ns, RANK: tl.constexpr, NRANKS: tl.constexpr,
                      MAX_ROWS: tl.constexpr, BLOCK: tl.constexpr):
''' + _ROW_HEAD + '''    for j in tl.static_range(NRANKS):
        if j != RANK:
            peer_flags = tl.load(flag_ptrs + j).to(tl.pointer_type(tl.int32))
            tl.atomic_xchg(peer_flags + RANK * MAX_ROWS + row, epoch, sem="release", scope="sys")
    for j in tl.static_range(NRANKS):
        if j != RANK:
            spin_until(own_flags + j * MAX_ROWS + row, epoch, timeout_ns)
    tl.debug_barrier()
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(NRANKS):  # rank order on every rank: the same sum everywhere
        if j == RANK:
            acc += mine.to(tl.float32)
        else:
            peer = tl.load(buf_ptrs + j).to(tl.pointer_type(mine.dtype))
            acc += tl.load(peer + base + cols, mask=mask, other=0.0, volatile=True).to(tl.float32)
    total = acc.to(mine.dtype)  # the all-reduce's result
''' + _ADD_TAIL


def kernel_module() -> Any:
    return load_module(with_pdl(_SOURCE, trigger=KERNELS, wait=KERNELS))


def launch(mod: Any, x: torch.Tensor, res: torch.Tensor, w: torch.Tensor, eps: float, own_buf: torch.Tensor,
           peer_buf: torch.Tensor, own_flags: torch.Tensor, peer_flags: torch.Tensor, counters: torch.Tensor,
           flags: dict) -> tuple:
    """(sum, normed) for x / res [rows, D] (row-major rows, unit column stride), rows <= MAX_ROWS;
    `flags`: the launch keywords (pdl.launch_flags(), computed once by the caller)."""
    rows, d = x.shape
    s = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    y = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    block = 1 << max(d - 1, 0).bit_length()
    mod.ar_add_rms_norm[(rows,)](x, res, w, s, y, own_buf, peer_buf, own_flags, peer_flags, counters, d, eps,
                                 x.stride(0), res.stride(0), TIMEOUT_NS, MAX_ROWS=MAX_ROWS, BLOCK=block,
                                 num_warps=8 if block >= 4096 else 4, **flags)
    return s, y


def launch_n(mod: Any, x: torch.Tensor, res: torch.Tensor, w: torch.Tensor, eps: float, own_buf: torch.Tensor,
             buf_ptrs: torch.Tensor, own_flags: torch.Tensor, flag_ptrs: torch.Tensor, counters: torch.Tensor,
             rank: int, nranks: int, flags: dict) -> tuple:
    """As `launch`, for a group of `nranks` > 2: `buf_ptrs` / `flag_ptrs` are int64 device arrays of
    every rank's buffer / flag-array address (this rank's own included, unused)."""
    rows, d = x.shape
    s = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    y = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    block = 1 << max(d - 1, 0).bit_length()
    mod.ar_add_rms_norm_n[(rows,)](x, res, w, s, y, own_buf, buf_ptrs, own_flags, flag_ptrs, counters, d, eps,
                                   x.stride(0), res.stride(0), TIMEOUT_NS, RANK=rank, NRANKS=nranks, MAX_ROWS=MAX_ROWS,
                                   BLOCK=block, num_warps=8 if block >= 4096 else 4, **flags)
    return s, y
