"""Pipeline-parallel execution: one process per stage, micro-batches in flight (GPipe fill/drain).

Every rank of the default process group is one stage (`rank == stage`). Each compiles the model
for its stage and runs the same micro-batches in the same order; the plans' `recv` / `send` ops
move the residual stream between neighbouring stages. While stage s works on micro-batch i,
stage s + 1 works on micro-batch i - 1: messages flow only forward, so blocking send/recv cannot
deadlock, and the process group's timeout turns a dead neighbour into an error, never a hang.

    init_distributed(stage, num_stages, master_port=port)    # one call per process
    fn = compile_pipeline_stage(model)                        # this stage's layers
    outs = run_pipeline_stage(fn, microbatches(input_ids, 4)) # last stage: 4 outputs; others: None
    shutdown_distributed()

Every stage receives the micro-batch's original inputs (token ids are tiny): they bind the shape
symbols of the `recv`s and let a stage recompute masks and rotary tables instead of receiving them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..options import CompileOptions


def compile_pipeline_stage(model: Any, example_inputs: Any = None, *, options: CompileOptions | None = None, **kwargs: Any) -> Any:
    """`kiln.compile` for this rank's stage (`CompileOptions(pipeline_parallel=(rank, world))`).
    Every stage must compile the same model on the same inputs, so they all choose the same cuts."""
    from ..api import compile as kiln_compile

    if not dist.is_initialized():
        raise RuntimeError("compile_pipeline_stage needs a process group: call init_distributed first (or launch with torchrun)")
    if options is not None and options.tensor_parallel is not None and options.tensor_parallel[1] > 1:
        raise ValueError("compile_pipeline_stage makes every rank a stage; with tensor_parallel too, call "
                         "kiln.runtime.distributed.setup_parallel_groups(T, P) and kiln.compile with the options it returns")
    options = replace(options or CompileOptions(), pipeline_parallel=(dist.get_rank(), dist.get_world_size()))
    return kiln_compile(model, example_inputs, options=options, **kwargs)


def microbatches(*inputs: torch.Tensor, num: int) -> list[tuple[torch.Tensor, ...]]:
    """Split the inputs along dim 0 into `num` micro-batches (sizes differ by at most one row)."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    rows = {x.shape[0] for x in inputs}
    if len(rows) != 1 or min(rows) < num:
        raise ValueError(f"cannot split batches of {sorted(rows)} rows into {num} micro-batches")
    return list(zip(*(x.tensor_split(num) for x in inputs)))


def run_pipeline_stage(stage_fn: Any, batches: Sequence[Any]) -> list[Any] | None:
    """Run this stage over every micro-batch, in order; the last stage returns each micro-batch's
    outputs, the others None. A micro-batch is one input or a tuple of positional inputs."""
    stage, num_stages = stage_fn.options.pipeline_parallel
    outs = []
    for mb in batches:
        args = mb if isinstance(mb, tuple) else (mb,)
        outs.append(stage_fn(*args))  # recv from stage - 1 ... send to stage + 1, inside the plan
    return outs if stage == num_stages - 1 else None


__all__ = ["compile_pipeline_stage", "microbatches", "run_pipeline_stage"]
