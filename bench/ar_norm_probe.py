"""What does a tensor-parallel decode step's all-reduce cost, and what would fusing it with the
residual add and RMSNorm that follow it buy? (issue 7: the 7B TP=2 bar)

At batch 1 a Llama-7B TP=2 step has 64 all-reduces of one 4096-wide bf16 row, each followed by the
residual add and an RMSNorm. On 2 x H200 the NCCL all-reduce took ~8.5 us inside the decode graph
(bench/RESULTS.md), against ~1.4 ms of weights per rank: 64 of them are ~0.55 ms of a ~3 ms step.
This probe chains L such blocks (x <- rmsnorm(allreduce(x) + residual) * w) in one CUDA graph on
2 GPUs, three ways, and prints us per block (median of graph replays) and the largest difference
from the NCCL result:
  nccl      x.clone(); dist.all_reduce; add; F.rms_norm      (kiln today: 4 kernels)
  symm_mem  torch.ops.symm_mem.one_shot_all_reduce_copy; add; F.rms_norm
  fused     one Triton kernel per block: copy x into this rank's symmetric buffer, flag the peer,
            wait for its flag, sum both rows, add the residual, RMSNorm, write both outputs.
The fused kernel's handshake: per row a flag in each rank's symmetric flag array; launch e (a
per-row counter kept on each GPU, so a graph replays it correctly) writes e into the peer's flag
with a system-scope release after a CTA barrier, spins on its own flag (acquire) until it reads e,
and reads the peer's row from slot e % 2 of its buffer, so a rank writing launch e + 1's row never
overwrites what the peer may still read for launch e. The spin is bounded: a broken handshake
shows as a wrong result, never a hang.

    python3 bench/ar_norm_probe.py [--dim 4096] [--rows 1] [--layers 64]
Needs 2 CUDA GPUs with peer access (not run in CI); keep NVLink multicast off (NCCL_NVLS_ENABLE=0).
"""

from __future__ import annotations

import argparse
import datetime
import os
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import triton
import triton.language as tl
from pdl_probe import time_graph  # bench/ is this script's directory

MAX_SPIN = 1 << 22


@triton.jit
def ar_add_rmsnorm(x_ptr, own_buf, peer_buf, res_ptr, w_ptr, out_ptr, res_out_ptr, own_flags, peer_flags,
                   counters, D, eps, BLOCK_D: tl.constexpr, SPIN: tl.constexpr):
    row = tl.program_id(0)
    rows = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    m = cols < D
    epoch = tl.load(counters + row) + 1
    base = ((epoch % 2) * rows + row) * D
    x = tl.load(x_ptr + row * D + cols, mask=m, other=0.0)
    tl.store(own_buf + base + cols, x, mask=m)
    tl.debug_barrier()  # every thread's store before the flag
    tl.atomic_xchg(peer_flags + row, epoch, sem="release", scope="sys")
    seen = tl.atomic_add(own_flags + row, 0, sem="acquire", scope="sys")
    spins = 0
    while (seen < epoch) & (spins < SPIN):
        seen = tl.atomic_add(own_flags + row, 0, sem="acquire", scope="sys")
        spins += 1
    tl.debug_barrier()
    p = tl.load(peer_buf + base + cols, mask=m, other=0.0, volatile=True)
    h = x.to(tl.float32) + p.to(tl.float32) + tl.load(res_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
    h = h.to(res_out_ptr.dtype.element_ty).to(tl.float32)  # the residual stream is stored in bf16
    var = tl.sum(h * h, axis=0) / D
    y = h * tl.rsqrt(var + eps) * tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(res_out_ptr + row * D + cols, h.to(res_out_ptr.dtype.element_ty), mask=m)
    tl.store(out_ptr + row * D + cols, y.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(counters + row, epoch)


def rank_main(rank: int, port: int, args: argparse.Namespace, results: mp.Queue) -> None:
    try:
        import torch.distributed._symmetric_memory as symm_mem

        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=120), device_id=dev)
        group = dist.group.WORLD.group_name
        if hasattr(symm_mem, "enable_symm_mem_for_group"):
            symm_mem.enable_symm_mem_for_group(group)
        R, D, L = args.rows, args.dim, args.layers
        torch.manual_seed(1234 + rank)  # each rank's partial sums differ
        xs = [torch.randn(R, D, device=dev, dtype=torch.bfloat16) for _ in range(L)]
        torch.manual_seed(0)  # residuals and weights are replicated
        res = torch.randn(R, D, device=dev, dtype=torch.bfloat16)
        w = (1 + 0.1 * torch.randn(D, device=dev)).to(torch.bfloat16)
        eps = 1e-5

        def chain(block) -> torch.Tensor:  # noqa: ANN001
            r, y = res, None
            for i in range(L):
                x = xs[i] if y is None else xs[i] + y * 0.01  # depends on the previous block
                y, r = block(x, r)
            return y

        def nccl_block(x: torch.Tensor, r: torch.Tensor) -> tuple:
            s = x.clone()
            dist.all_reduce(s)
            h = s + r
            return torch.nn.functional.rms_norm(h, (D,), w, eps), h

        sbuf = symm_mem.empty((R, D), dtype=torch.bfloat16, device=dev)
        symm_mem.rendezvous(sbuf, group)

        def symm_block(x: torch.Tensor, r: torch.Tensor) -> tuple:
            s = torch.ops.symm_mem.one_shot_all_reduce_copy(sbuf, x, "sum", group)
            h = s + r
            return torch.nn.functional.rms_norm(h, (D,), w, eps), h

        fbuf = symm_mem.empty((2 * R * D,), dtype=torch.bfloat16, device=dev)
        fh = symm_mem.rendezvous(fbuf, group)
        flags = symm_mem.empty((R,), dtype=torch.int32, device=dev)
        flags.zero_()
        gh = symm_mem.rendezvous(flags, group)
        torch.cuda.synchronize()
        dist.barrier()
        peer = 1 - rank
        peer_buf = fh.get_buffer(peer, (2 * R * D,), torch.bfloat16)
        peer_flags = gh.get_buffer(peer, (R,), torch.int32)
        counters = torch.zeros(R, dtype=torch.int32, device=dev)
        block_d = triton.next_power_of_2(D)

        def fused_block(x: torch.Tensor, r: torch.Tensor) -> tuple:
            out, r_out = torch.empty_like(x), torch.empty_like(x)
            ar_add_rmsnorm[(R,)](x, fbuf, peer_buf, r, w, out, r_out, flags, peer_flags, counters, D, eps,
                                 BLOCK_D=block_d, SPIN=MAX_SPIN, num_warps=8)
            return out, r_out

        rows = []
        want = chain(nccl_block).float()
        for name, block in (("nccl", nccl_block), ("symm_mem", symm_block), ("fused", fused_block)):
            try:
                got = chain(block).float()
                diff = ((got - want).abs().max() / want.abs().max()).item()
                ms = time_graph(lambda b=block: chain(b), ready=dist.barrier)
                got2 = chain(block).float()  # after many replays the handshake must still line up
                diff = max(diff, ((got2 - want).abs().max() / want.abs().max()).item())
                rows.append((name, ms * 1e3 / L, diff))
            except Exception as e:  # noqa: BLE001 - report the variant, go on
                rows.append((name, float("nan"), f"{type(e).__name__}: {str(e)[:160]}"))
            torch.cuda.synchronize()
            dist.barrier()
        dist.destroy_process_group()
        results.put((rank, "ok", rows))
    except Exception:  # noqa: BLE001
        results.put((rank, "error", traceback.format_exc()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--layers", type=int, default=64)
    args = p.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    if torch.cuda.device_count() < 2:
        raise SystemExit("needs 2 GPUs")
    from kiln.runtime.distributed import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port("127.0.0.1")
    procs = [ctx.Process(target=rank_main, args=(r, port, args, results), daemon=True) for r in range(2)]
    for q in procs:
        q.start()
    got = {}
    for _ in procs:
        rank, status, payload = results.get(timeout=300)
        got[rank] = (status, payload)
    for q in procs:
        q.join(timeout=30)
        if q.is_alive():
            q.kill()
    if any(s != "ok" for s, _ in got.values()):
        for rank, (s, payload) in sorted(got.items()):
            print(f"rank {rank}: {s}\n{payload}")
        raise SystemExit(1)
    print(f"{torch.cuda.get_device_name(0)} x 2 | torch {torch.__version__} | triton {triton.__version__} | "
          f"{args.layers} blocks of all-reduce + add + RMSNorm, {args.rows} x {args.dim} bf16\n")
    print("| variant | us per block (rank 0) | us per block (rank 1) | max rel diff vs nccl |")
    print("|---|---|---|---|")
    for (name, us0, d0), (_, us1, d1) in zip(got[0][1], got[1][1]):
        diff = d0 if isinstance(d0, str) else f"{max(d0, d1):.1e}"
        print(f"| {name} | {us0:.2f} | {us1:.2f} | {diff} |")


if __name__ == "__main__":
    main()
