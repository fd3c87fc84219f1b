"""pass_report: trace once, run the pipeline pass by pass, plan and measure every stage."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..frontend.export import Traced, trace_export
from ..ir import Graph
from ..ir.interpret import bind_symbols
from ..options import CompileOptions
from ..passes import PIPELINE, Pass, PassContext, PassRecord, plan_memory, run_pipeline
from ..runtime.plan import Plan, _shape_only, build_plan
from .cost import graph_cost
from .layers import layer_rows
from .measure import WARMUP_CALLS, WARMUP_S, max_errors, median_ms, spread, syncer, time_interleaved, tolerance_for

CAPTURED = "captured"  # the label of stage 0


@dataclass
class _Stage:
    label: str  # "captured" or the pass that produced this graph
    graph: Graph
    record: PassRecord | None
    plan: Plan
    plan_s: float


@dataclass
class _Setup:
    """What every stage is planned and run against."""

    traced: Traced
    inputs: tuple  # the graph's input leaves, in graph order
    symbols: dict
    device: torch.device | None
    options: CompileOptions


def pass_report(
    model: Any, args: tuple = (), kwargs: dict | None = None, *, name: str = "model", passes: list[Pass] | None = None,
    options: CompileOptions | None = None, iters: int = 20, rounds: int = 5, leave_one_out: bool = True,
) -> dict:
    """The pass-by-pass report of `model(*args, **kwargs)` as a JSON-ready dict (schema in the
    README, "Pass-by-pass report"). `passes` defaults to the compiler's PIPELINE."""
    kwargs, passes = dict(kwargs or {}), list(PIPELINE if passes is None else passes)
    setup, ref = _trace(model, args, kwargs, options or CompileOptions())
    stages = _stages(setup, passes)
    loo = _leave_one_out(setup, passes, stages) if leave_one_out else {}
    runners = {f"s{i}": _runner(s.plan, setup.inputs) for i, s in enumerate(stages)}
    runners.update({f"loo{i}": _runner(p, setup.inputs) for i, p in loo.items() if p is not None and p is not stages[i].plan})
    runners["eager"] = lambda: model(*args, **kwargs)
    samples = time_interleaved(runners, iters, rounds, syncer(setup.device))
    samples.update({f"loo{i}": samples[f"s{i}"] for i, p in loo.items() if p is stages[i].plan})
    tol = tolerance_for(ref)
    rows = [_row(i, s, setup, ref, tol, samples) for i, s in enumerate(stages)]
    _add_loo(rows, loo, samples)
    return {**_top(name, setup, passes, rows, samples, tol, iters, rounds, leave_one_out), "quantization": _quantization(stages, rows)}


def _trace(model: Any, args: tuple, kwargs: dict, options: CompileOptions) -> tuple[_Setup, list[Any]]:
    """Capture once and run eager once on the same inputs (the numerical reference)."""
    with torch.no_grad():
        traced = trace_export(model, args, kwargs, dynamic=options.dynamic, decompose=options.decompose)
        ref = pytree.tree_leaves(model(*args, **kwargs))
    leaves = pytree.tree_leaves((tuple(args), kwargs))
    inputs = tuple(x for x, (kind, _) in zip(leaves, traced.leaf_roles) if kind == "input")
    device = next((x.device for x in inputs if isinstance(x, torch.Tensor)), None)
    return _Setup(traced, inputs, bind_symbols(traced.graph, inputs), device, options), ref


def _plan(setup: _Setup, g: Graph) -> tuple[Plan, float]:
    t0 = time.perf_counter()
    plan = build_plan(g, setup.device, setup.traced.symbol_ranges)
    return plan, time.perf_counter() - t0


def _stages(setup: _Setup, passes: list[Pass]) -> list[_Stage]:
    """Stage 0 is the captured graph; stage k the graph after the first k passes (one pipeline
    run: each PassRecord keeps the graph its pass produced)."""
    captured = setup.traced.graph
    _, records = run_pipeline(captured, passes, setup.options, symbol_values=setup.symbols)
    stages = [_Stage(CAPTURED, captured, None, *_plan(setup, captured))]
    for r in records:
        stages.append(_Stage(r.name, r.graph, r, *_plan(setup, r.graph)))
    return stages


def _leave_one_out(setup: _Setup, passes: list[Pass], stages: list[_Stage]) -> dict[int, Plan | None]:
    """Stage index k -> plan of the full pipeline minus pass k (None when that pipeline fails).
    Without the last pass the pipeline is exactly stage K-1, whose plan is reused."""
    out: dict[int, Plan | None] = {}
    for k in range(1, len(stages)):
        if k == len(passes):
            out[k] = stages[k - 1].plan
            continue
        rest = passes[: k - 1] + passes[k:]
        try:
            g, _ = run_pipeline(setup.traced.graph, rest, setup.options, symbol_values=setup.symbols)
            out[k] = _plan(setup, g)[0]
        except Exception:  # a pass may need one before it; the report says "-" instead of stopping
            out[k] = None
    return out


def _runner(plan: Plan, inputs: tuple) -> Any:
    fn = plan.fn
    return lambda: fn(*inputs)


def _outputs(setup: _Setup, plan: Plan) -> list[Any]:
    with torch.no_grad():
        outs = plan.fn(*setup.inputs)
    return [outs[v] if kind == "value" else v for kind, v in setup.traced.out_template]


def _peak_bytes(g: Graph, setup: _Setup) -> tuple[int | None, str]:
    """Arena bytes at the traced shapes: the plan_memory pass's result when it ran, else
    plan_memory run on this stage's graph now."""
    if g.memory_plan is not None:
        return g.memory_plan.arena_bytes, "pass"
    planned = plan_memory(g, PassContext(setup.options, symbol_values=dict(setup.symbols)))
    return (planned.memory_plan.arena_bytes, "computed") if planned.memory_plan is not None else (None, "unknown")


def _row(i: int, s: _Stage, setup: _Setup, ref: list[Any], tol: float, samples: dict) -> dict:
    g, rec = s.graph, s.record
    flops, nbytes = graph_cost(g, setup.symbols, _shape_only(g))
    err_abs, err_rel = max_errors(_outputs(setup, s.plan), ref)
    peak, peak_source = _peak_bytes(g, setup)
    capture_s = sum(setup.traced.seconds.values())
    return {
        "stage": i, "pass": s.label if rec else None, "label": s.label, "changed": rec.changed if rec else None,
        "compile_s": rec.seconds if rec else capture_s, "plan_s": s.plan_s,
        "nodes_before": rec.nodes_before if rec else len(g.nodes), "nodes_after": len(g.nodes),
        "fusion_groups": sum(n.op.name == "fusion_group" for n in g.nodes),
        "kernels_per_call": s.plan.calls_per_run, "cached_nodes": s.plan.cached_nodes,
        "flops_per_call": flops, "bytes_per_call": nbytes,
        "latency_ms": median_ms(samples[f"s{i}"]), "latency_spread": spread(samples[f"s{i}"]),
        "loo_latency_ms": None, "loo_delta_ms": None,
        "max_abs_err": err_abs, "max_rel_err": err_rel, "within_tolerance": bool(err_rel <= tol),
        "peak_bytes_est": peak, "peak_source": peak_source, "pass_stats": dict(rec.stats) if rec else {},
    }


def _quantization(stages: list[_Stage], rows: list[dict]) -> dict | None:
    """The quantize_weights stage's layers (format and bytes of every linear weight) and its
    error vs eager; None when no stage quantized anything."""
    k = next((i for i, s in enumerate(stages) if s.label == "quantize_weights" and s.record is not None and s.record.changed), None)
    if k is None:
        return None
    layers = [r.as_dict() for r in layer_rows(stages[k].graph)]
    return {
        "stage": k, "layers": layers, "bytes_fp": sum(r["bytes_fp"] for r in layers), "bytes": sum(r["bytes"] for r in layers),
        "max_abs_err": rows[k]["max_abs_err"], "max_rel_err": rows[k]["max_rel_err"],
    }


def _add_loo(rows: list[dict], loo: dict[int, Plan | None], samples: dict) -> None:
    full = rows[-1]["latency_ms"]
    for k, plan in loo.items():
        if plan is not None:
            rows[k]["loo_latency_ms"] = median_ms(samples[f"loo{k}"])
            rows[k]["loo_delta_ms"] = rows[k]["loo_latency_ms"] - full


def _top(name: str, setup: _Setup, passes: list[Pass], rows: list[dict], samples: dict, tol: float, iters: int, rounds: int, loo: bool) -> dict:
    bad = next((r for r in rows if not r["within_tolerance"]), None)
    g = setup.traced.graph
    return {
        "schema_version": 1,
        "model": name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch_version": torch.__version__,
        "device": str(setup.device) if setup.device is not None else "cpu",
        "threads": torch.get_num_threads(),
        "inputs": [{"name": v.name, "type": str(v.type)} for v in g.inputs],
        "symbol_values": {str(k): int(v) for k, v in setup.symbols.items()},
        "passes": [p.name for p in passes],
        "timing": {"iters": iters, "rounds": rounds, "warmup_calls": WARMUP_CALLS, "warmup_s": WARMUP_S, "statistic": "median", "interleaved": True},
        "leave_one_out": loo,
        "capture_s": sum(setup.traced.seconds.values()),
        "eager_latency_ms": median_ms(samples["eager"]),
        "full_latency_ms": rows[-1]["latency_ms"],
        "tolerance_rel": tol,
        "first_stage_over_tolerance": bad["stage"] if bad else None,
        "first_pass_over_tolerance": bad["label"] if bad else None,
        "peak_memory_note": "peak_bytes_est is the plan_memory arena estimate at the traced shapes, not a measured allocator peak",
        "stages": rows,
    }
