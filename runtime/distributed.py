"""Process groups for tensor-parallel plans, on torch.distributed (gloo on CPU, NCCL on CUDA).

kiln does no communication of its own: the collective IR ops (`ir.opset.collective`) call
torch.distributed on the default process group, which `init_distributed` starts. Every process
group gets a timeout, so a rank that dies or never arrives turns a collective into an error on
the others instead of a hang.

Launch either with `torchrun` (rank, world size and rendezvous address come from the environment)
or by starting the processes yourself and passing them explicitly:

    init_distributed(rank, world_size, master_port=port)      # one call per process
    fn = compile_tensor_parallel(model)                        # this rank's share of the model
    logits = fn(input_ids)                                     # every rank returns the full logits
    shutdown_distributed()

Tensor x pipeline parallelism (T x P ranks): after `init_distributed`, every rank calls
`setup_parallel_groups(T, P)`, which makes one subgroup per stage for the tensor collectives and
maps stages to ranks (stage s = rank // T, tensor rank t = rank % T), then compiles with the
`CompileOptions(tensor_parallel=(t, T), pipeline_parallel=(s, P))` it returns.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import torch
import torch.distributed as dist

from ..options import CompileOptions

DEFAULT_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (for a rendezvous on one machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_distributed(
    rank: int | None = None, world_size: int | None = None, *, backend: str | None = None,
    master_addr: str | None = None, master_port: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Start the default process group for this process.

    Unset arguments come from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT). `backend` defaults to NCCL when CUDA is available, else gloo. `timeout_s`
    bounds every collective: a peer that is gone raises after it instead of blocking forever.
    """
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised in this process")
    rank = int(os.environ["RANK"]) if rank is None else rank
    world_size = int(os.environ["WORLD_SIZE"]) if world_size is None else world_size
    addr = master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = master_port if master_port is not None else int(os.environ["MASTER_PORT"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dist.init_process_group(
        backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def shutdown_distributed() -> None:
    """Tear the default process group down (a no-op when none is running) and forget the
    tensor-group / stage-rank registrations of `setup_parallel_groups`."""
    from ..ir.opset import collective

    collective.reset_groups()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def parallel_layout(rank: int, tensor_size: int, pipeline_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """`((t, T), (s, P))` of global rank `rank` in a T x P layout: stage s = rank // T, tensor rank
    t = rank % T (each stage's T ranks are consecutive; rank 0 is stage 0, tensor rank 0)."""
    if tensor_size < 1 or pipeline_size < 1 or not 0 <= rank < tensor_size * pipeline_size:
        raise ValueError(f"rank {rank} is not in a {tensor_size} x {pipeline_size} (tensor x pipeline) layout")
    stage, t = divmod(rank, tensor_size)
    return (t, tensor_size), (stage, pipeline_size)


def setup_parallel_groups(tensor_size: int, pipeline_size: int, *, timeout_s: float | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Every rank of the running process group calls this with the same sizes, after joining.
    Checks that the group has T * P ranks; with both > 1 creates one subgroup per stage (its T
    ranks; every rank creates every subgroup, in stage order, as torch.distributed requires),
    registers this rank's as the group of all_reduce / all_gather and maps stage k to rank
    k * T + t for send / recv (`ir.opset.collective`). One of them 1: nothing to register (the
    default group, stage k = rank k). Returns this rank's `(tensor_parallel, pipeline_parallel)`
    option values. `shutdown_distributed` forgets the registrations."""
    from ..ir.opset import collective

    if not dist.is_initialized():
        raise RuntimeError("setup_parallel_groups needs a process group: call init_distributed first (or launch with torchrun)")
    world = dist.get_world_size()
    if tensor_size * pipeline_size != world:
        raise ValueError(f"tensor_parallel {tensor_size} x pipeline_parallel {pipeline_size} needs "
                         f"{tensor_size * pipeline_size} ranks, the process group has {world}")
    tp, pp = parallel_layout(dist.get_rank(), tensor_size, pipeline_size)
    collective.set_tensor_group(None)
    collective.set_stage_ranks(None)
    if tensor_size > 1 and pipeline_size > 1:
        kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        groups = [dist.new_group(ranks=[s * tensor_size + t for t in range(tensor_size)], **kw) for s in range(pipeline_size)]
        collective.set_tensor_group(groups[pp[0]])
        collective.set_stage_ranks([s * tensor_size + tp[0] for s in range(pipeline_size)])
    return tp, pp


def compile_tensor_parallel(model: Any, example_inputs: Any = None, *, options: CompileOptions | None = None, **kwargs: Any) -> Any:
    """`kiln.compile` for this rank of the running process group: the model's heads, MLP and
    lm_head split across the group's ranks (`CompileOptions(tensor_parallel=(rank, world))`).
    Every rank must compile and call the model alike; each call returns the full outputs."""
    from dataclasses import replace

    from ..api import compile as kiln_compile

    if not dist.is_initialized():
        raise RuntimeError("compile_tensor_parallel needs a process group: call init_distributed first (or launch with torchrun)")
    if options is not None and options.pipeline_parallel is not None and options.pipeline_parallel[1] > 1:
        raise ValueError("compile_tensor_parallel uses the whole process group for one tensor-parallel group; with "
                         "pipeline_parallel too, call setup_parallel_groups(T, P) and kiln.compile with the options it returns")
    tp = (dist.get_rank(), dist.get_world_size())
    options = replace(options or CompileOptions(), tensor_parallel=tp)
    return kiln_compile(model, example_inputs, options=options, **kwargs)


__all__ = ["DEFAULT_TIMEOUT_S", "compile_tensor_parallel", "free_port", "init_distributed", "parallel_layout",
           "setup_parallel_groups", "shutdown_distributed"]
