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
    """Tear the default process group down (a no-op when none is running)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def compile_tensor_parallel(model: Any, example_inputs: Any = None, *, options: CompileOptions | None = None, **kwargs: Any) -> Any:
    """`kiln.compile` for this rank of the running process group: the model's heads, MLP and
    lm_head split across the group's ranks (`CompileOptions(tensor_parallel=(rank, world))`).
    Every rank must compile and call the model alike; each call returns the full outputs."""
    from dataclasses import replace

    from ..api import compile as kiln_compile

    if not dist.is_initialized():
        raise RuntimeError("compile_tensor_parallel needs a process group: call init_distributed first (or launch with torchrun)")
    tp = (dist.get_rank(), dist.get_world_size())
    options = replace(options or CompileOptions(), tensor_parallel=tp)
    return kiln_compile(model, example_inputs, options=options, **kwargs)


__all__ = ["DEFAULT_TIMEOUT_S", "compile_tensor_parallel", "free_port", "init_distributed", "shutdown_distributed"]
