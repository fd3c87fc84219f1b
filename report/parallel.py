"""parallel_report: what each rank of a tensor- or pipeline-parallel compile holds and sends.

    rep = kiln.parallel_report(model, (ids,), tensor_parallel=2)
    print(rep["markdown"])          # one row per rank: nodes, weight bytes, collectives, bytes/token
    rep["ranks"][1]["graph"]        # rank 1's graph as kiln IR text
    kiln.parallel_report(model, (ids,), tensor_parallel=2, pipeline_parallel=2)  # 4 ranks: r = s * 2 + t

Every rank's graph is built in this one process by running the compiler's pipeline with that
rank's options (`CompileOptions(tensor_parallel=(rank, N))`, `pipeline_parallel=(stage, N)`, or
both: rank r of T x P is tensor rank r % T of stage r // T);
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

_COMM_OPS = ("all_reduce", "all_reduce_add_rms_norm", "all_gather", "send", "recv")


def _weight_bytes(g: Graph) -> int:
    return sum(t.numel() * t.element_size() for t in g.constant_data.values() if t is not None)


def _rank_row(g: Graph, stats: dict, rank: int, tp: tuple[int, int] | None = None, pp: tuple[int, int] | None = None) -> dict:
    ops = Counter(n.op.name for n in g.nodes)
    comm = {k: v for k, v in stats.items() if k.endswith("bytes_per_token")}
    sent = sum(v for k, v in comm.items() if not k.startswith(("cut", "recv")))
    return {
        "rank": rank, "tensor_rank": tp[0] if tp else None, "stage": pp[0] if pp else None, "nodes": len(g.nodes), "weight_bytes": _weight_bytes(g),
        "collectives": {op: ops[op] for op in _COMM_OPS if ops[op]}, "comm_bytes_per_token": sent,
        "pass_stats": stats, "graph": format_graph(g),
    }


def parallel_report(
    model: Any, args: tuple = (), kwargs: dict | None = None, *, tensor_parallel: int | None = None,
    pipeline_parallel: int | None = None, options: CompileOptions | None = None,
) -> dict:
    """Per-rank graphs and communication volume of a parallel compile of `model(*args, **kwargs)`
    (`tensor_parallel` ranks, `pipeline_parallel` stages, or both: T x P ranks, rank r being tensor
    rank r % T of stage r // T; mode "tensor_pipeline_parallel")."""
    if tensor_parallel is None and pipeline_parallel is None:
        raise ValueError("give tensor_parallel=N, pipeline_parallel=N or both")
    t_size, p_size = int(tensor_parallel or 1), int(pipeline_parallel or 1)
    if t_size < 1 or p_size < 1:
        raise ValueError(f"the number of ranks must be >= 1, got tensor_parallel={tensor_parallel}, pipeline_parallel={pipeline_parallel}")
    both = tensor_parallel is not None and pipeline_parallel is not None
    field = "tensor_pipeline_parallel" if both else "tensor_parallel" if tensor_parallel is not None else "pipeline_parallel"
    world = t_size * p_size
    traced = trace_export(model, tuple(args), dict(kwargs or {}))
    base = options or CompileOptions()
    ranks = []
    for rank in range(world):
        tp, pp = (rank % t_size, t_size), (rank // t_size, p_size)
        fields = {"tensor_parallel": tp} if tensor_parallel is not None else {}
        fields.update({"pipeline_parallel": pp} if pipeline_parallel is not None else {})
        opts = dataclasses.replace(base, **fields)
        g, records = run_pipeline(traced.graph, list(PIPELINE), opts)
        stats: dict = {}
        for rec in records:
            if rec.name in ("shard_tensor_parallel", "split_pipeline"):
                stats.update(rec.stats)
        ranks.append(_rank_row(g, stats, rank, fields.get("tensor_parallel"), fields.get("pipeline_parallel")))
    single, _ = run_pipeline(traced.graph, list(PIPELINE), base)
    return {"mode": field, "world": world, "single_weight_bytes": _weight_bytes(single), "ranks": ranks,
            "markdown": _markdown(field, ranks, _weight_bytes(single))}


def _markdown(field: str, ranks: list[dict], single: int) -> str:
    both = field == "tensor_pipeline_parallel"
    kind = "rank (stage.tensor rank)" if both else "rank" if field == "tensor_parallel" else "stage"
    lines = [f"| {kind} | nodes | weight MiB | of one process | collectives | bytes sent per token |", "|---|---|---|---|---|---|"]
    for r in ranks:
        coll = ", ".join(f"{op} x{n}" for op, n in r["collectives"].items()) or "-"
        name = f"{r['rank']} ({r['stage']}.{r['tensor_rank']})" if both else str(r["rank"])
        lines.append(f"| {name} | {r['nodes']} | {r['weight_bytes'] / 2**20:.2f} | "
                     f"{r['weight_bytes'] / max(single, 1) * 100:.0f}% | {coll} | {r['comm_bytes_per_token']} |")
    return "\n".join(lines)
