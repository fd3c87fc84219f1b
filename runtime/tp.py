"""Tensor-parallel kiln.LLM: rank 0 drives (this process), ranks 1..N-1 are spawned workers.

    llm = kiln.LLM("path/or/builtin", tensor_parallel_size=2)   # starts one worker process

Every rank compiles the model with `CompileOptions(tensor_parallel=(rank, N))` (the Megatron
sharding pass: each rank holds 1/N of the heads, MLP columns and KV cache, and the graph carries
its all-reduce/all-gather ops) and owns a `PagedModelRunner` over its shard. torch.distributed
carries everything between ranks (gloo on CPU, NCCL on GPUs): the model's collectives, and each
step's inputs, which rank 0 broadcasts before it runs the step itself (`broadcast_object_list`).
The scheduler, the allocator and sampling live on rank 0 only: workers just execute steps, so
their block tables are the driver's and no rank ever decides anything on its own.

Failure handling (nothing hangs): the process group has a timeout, rank 0 checks that every
worker is alive before each step, and a worker that raises reports its traceback through a queue
before it exits; the driver then raises `TensorParallelError` naming the rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..errors import TensorParallelError
from ..options import CompileOptions
from .distributed import free_port

DEFAULT_TIMEOUT_S = 120.0


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _rank_device(device: torch.device, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device.type == "cuda" else device


def _rank_options(options: CompileOptions | None, rank: int, world: int) -> CompileOptions:
    return dataclasses.replace(options or CompileOptions(), tensor_parallel=(rank, world))


def _worker_main(rank: int, world: int, port: int, spec: Any, kw: dict, errors: Any) -> None:
    """A worker: join the group, build the same runner as rank 0 over its shard, execute steps."""
    try:
        from .model_runner import PagedModelRunner

        device = _rank_device(torch.device(kw["device"]), rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(_backend(device), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=kw["timeout"]))
        module = _load(spec, kw, device)
        box: list[Any] = [None]

        def blocks(_cfg: Any) -> int:  # rank 0 sizes the pool; every rank takes its number
            dist.broadcast_object_list(box, src=0)
            return int(box[0])

        with torch.no_grad():
            runner = PagedModelRunner(module, block_size=kw["block_size"], device=device, num_blocks=blocks,
                                      options=_rank_options(kw["options"], rank, world), max_model_len=kw["max_model_len"])
        while True:
            dist.broadcast_object_list(box, src=0)
            msg = box[0]
            if msg[0] == "stop":
                break
            if msg[0] == "copy":
                runner.copy_blocks(msg[1])
            else:
                runner.execute(msg[1])
    except BaseException:  # report, then leave: the driver raises with this text
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _load(spec: Any, kw: dict, device: torch.device) -> torch.nn.Module:
    if isinstance(spec, torch.nn.Module):
        return spec.eval().to(device)
    from .loader import load_model

    return load_model(spec, dtype=kw["dtype"], device=device, allow_pickle=kw["allow_pickle"]).model


class TPRunner:
    """Rank 0's runner for the engine: broadcasts each step (and copy-on-write copies) to the
    workers, then runs it on its own shard. Same interface as `PagedModelRunner`."""

    def __init__(self, local: Any, group: "TPGroup"):
        self.local, self.group = local, group

    def __getattr__(self, name: str) -> Any:  # info, num_blocks, block_size, device, run, pool ...
        return getattr(self.local, name)

    def execute(self, chunks: list) -> torch.Tensor:
        self.group.send(("exec", chunks))
        return self.local.execute(chunks)

    def copy_blocks(self, copies: list) -> None:
        if copies:
            self.group.send(("copy", copies))
        self.local.copy_blocks(copies)


class TPGroup:
    """The worker processes and rank 0's membership of the process group."""

    def __init__(self, world: int, spec: Any, *, device: torch.device, dtype: Any, block_size: int, max_model_len: int,
                 options: CompileOptions | None, allow_pickle: bool, timeout: float = DEFAULT_TIMEOUT_S):
        if world < 2:
            raise ValueError(f"a tensor-parallel group needs at least 2 ranks, got {world}")
        if dist.is_initialized():
            raise TensorParallelError("torch.distributed is already initialised in this process; kiln.LLM starts its own "
                                      "tensor-parallel group (use tensor_parallel_size=1 inside torchrun jobs for now)")
        if device.type == "cuda" and torch.cuda.device_count() < world:
            raise TensorParallelError(f"tensor_parallel_size={world} needs {world} GPUs, this machine has {torch.cuda.device_count()}")
        self.world = world
        self.device = _rank_device(device, 0)
        port = free_port()
        ctx = torch.multiprocessing.get_context("spawn")
        self.errors = ctx.Queue()
        kw = {"device": str(device), "dtype": dtype, "block_size": block_size, "max_model_len": max_model_len,
              "options": options, "allow_pickle": allow_pickle, "timeout": timeout}
        self.procs = [ctx.Process(target=_worker_main, args=(r, world, port, spec, kw, self.errors), daemon=True)
                      for r in range(1, world)]
        for p in self.procs:
            p.start()
        try:
            dist.init_process_group(_backend(device), init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
        except Exception as e:
            self._kill()
            raise self._failure(f"could not form the tensor-parallel group: {e}") from e
        self.closed = False

    def options(self, options: CompileOptions | None) -> CompileOptions:
        return _rank_options(options, 0, self.world)

    def pool_size(self, blocks: Callable[[Any], int]) -> Callable[[Any], int]:
        """Rank 0's pool sizing, shared with the workers (every shard holds the same blocks)."""
        def shared(cfg: Any) -> int:
            n = int(blocks(cfg))
            self.send(n, check=False)
            return n

        return shared

    def send(self, msg: Any, check: bool = True) -> None:
        if self.closed:
            raise TensorParallelError("the tensor-parallel group was closed")
        if check:
            self.check()
        try:
            dist.broadcast_object_list([msg], src=0)
        except Exception as e:
            raise self._failure(f"broadcast to the workers failed: {e}") from e

    def check(self) -> None:
        dead = [(i + 1, p.exitcode) for i, p in enumerate(self.procs) if not p.is_alive()]
        if dead:
            raise self._failure(f"worker rank(s) {', '.join(f'{r} (exit code {c})' for r, c in dead)} stopped")

    def _failure(self, what: str) -> TensorParallelError:
        details = []
        while True:
            try:
                rank, tb = self.errors.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue empty
                break
            details.append(f"rank {rank}:\n{tb}")
        return TensorParallelError(what + ("\n" + "\n".join(details) if details else ""))

    def close(self) -> None:
        if getattr(self, "closed", True):
            return
        self.closed = True
        try:
            if all(p.is_alive() for p in self.procs):
                dist.broadcast_object_list([("stop",)], src=0)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        for p in self.procs:
            p.join(timeout=10)
        self._kill()
        if dist.is_initialized():
            dist.destroy_process_group()

    def _kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

