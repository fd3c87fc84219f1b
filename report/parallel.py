"""parallel_report: what each rank of a tensor- or pipeline-parallel compile holds and sends.

    rep = kiln.parallel_report(model, (ids,), tensor_parallel=2)
    print(rep["markdown"])          # one row per rank: nodes, weight bytes, collectives, bytes/token
    rep["ranks"][1]["graph"]        # rank 1's graph as kiln IR text

Every rank's graph is built in this one process by running the compiler's pipeline with that
rank's options (`CompileOptions(tensor_parallel=(rank, N))` or `pipeline_parallel=(stage, N)`);
nothing is executed, so no process group is needed. Communication volume comes from the sharding
passes' own statistics (bytes per token of every all-reduce / all-gather, or of every stage cut),
so it is what the compiled ranks will move, per token of a step.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from ..frontend.export import trace_export
from ..ir import Graph
from ..ir.printer import format_graph
from ..options import CompileOptions
from ..passes import PIPELINE, run_pipeline

_COMM_OPS = ("all_reduce", "all_gather", "send", "recv")


def _weight_bytes(g: Graph) -> int:
    return sum(t.numel() * t.element_size() for t in g.constant_data.values() if t is not None)


def _rank_row(g: Graph, stats: dict, rank: int) -> dict:
    ops = Counter(n.op.name for n in g.nodes)
    comm = {k: v for k, v in stats.items() if k.endswith("bytes_per_token")}
    sent = sum(v for k, v in comm.items() if not k.startswith(("cut", "recv")))
    return {
        "rank": rank, "nodes": len(g.nodes), "weight_bytes": _weight_bytes(g),
        "collectives": {op: ops[op] for op in _COMM_OPS if ops[op]}, "comm_bytes_per_token": sent,
        "pass_stats": stats, "graph": format_graph(g),
    }


def parallel_report(
    model: Any, args: tuple = (), kwargs: dict | None = None, *, tensor_parallel: int | None = None,
    pipeline_parallel: int | None = None, options: CompileOptions | None = None,
) -> dict:
    """Per-rank graphs and communication volume of a parallel compile of `model(*args, **kwargs)`
    (exactly one of `tensor_parallel` / `pipeline_parallel`, the number of ranks or stages)."""
    if (tensor_parallel is None) == (pipeline_parallel is None):
        raise ValueError("give exactly one of tensor_parallel=N or pipeline_parallel=N")
    world = int(tensor_parallel or pipeline_parallel)
    if world < 1:
        raise ValueError(f"the number of ranks must be >= 1, got {world}")
    field = "tensor_parallel" if tensor_parallel is not None else "pipeline_parallel"
    traced = trace_export(model, tuple(args), dict(kwargs or {}))
    base = options or CompileOptions()
    ranks = []
    for rank in range(world):
        opts = dataclasses.replace(base, **{field: (rank, world)})
        g, records = run_pipeline(traced.graph, list(PIPELINE), opts)
        stats: dict = {}
        for rec in records:
            if rec.name in ("shard_tensor_parallel", "split_pipeline"):
                stats.update(rec.stats)
        ranks.append(_rank_row(g, stats, rank))
    single, _ = run_pipeline(traced.graph, list(PIPELINE), base)
    return {"mode": field, "world": world, "single_weight_bytes": _weight_bytes(single), "ranks": ranks,
            "markdown": _markdown(field, ranks, _weight_bytes(single))}


def _markdown(field: str, ranks: list[dict], single: int) -> str:
    kind = "rank" if field == "tensor_parallel" else "stage"
    lines = [f"| {kind} | nodes | weight MiB | of one process | collectives | bytes sent per token |", "|---|---|---|---|---|---|"]
    for r in ranks:
        coll = ", ".join(f"{op} x{n}" for op, n in r["collectives"].items()) or "-"
        lines.append(f"| {r['rank']} | {r['nodes']} | {r['weight_bytes'] / 2**20:.2f} | "
                     f"{r['weight_bytes'] / max(single, 1) * 100:.0f}% | {coll} | {r['comm_bytes_per_token']} |")
    return "\n".join(lines)
