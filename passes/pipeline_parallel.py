"""split_pipeline: one stage of a pipeline-parallel model, cut between transformer layers.

The graph's top-level nodes are cut into `num_stages` contiguous stages. Cuts fall only between
two transformer layers (nodes whose module paths carry a layer index, `model.layers.3...`), at
the position in that gap where the fewest bytes cross: the residual stream. Among those gaps the
pass picks the `num_stages - 1` that minimise the most expensive stage (a small DP), with a
node's cost `max(FLOPs, FLOPS_PER_BYTE * bytes)` from `report.cost` at one token (every shape
symbol = 1), so the split depends on the graph alone and every stage computes the same one.

Values that cross a cut are received at the top of the stage (`recv`) and sent at its end
(`send`), each to / from the neighbouring stage only (a value the stage after next needs is
passed through): messages flow one way, so blocking point-to-point ops cannot deadlock, and the
sender's order is the receiver's order. Cheap values computed from the graph inputs and constants
alone (causal mask, rotary tables, position embeddings: pure nodes with no matmul or attention
upstream) are recomputed by every stage that reads them instead of being sent. For that, and so
that symbolic dims in `recv` shapes bind, every stage takes the original graph inputs (token ids
are tiny): stage s is called like the whole model. Only the last stage returns the graph's
outputs; the others return nothing.

Runs after quantize_weights and before fuse_epilogues / fuse_elementwise: the elementwise fusion
merges one layer's last residual add with the next layer's norm (`add_rms_norm`), after which no
point between layers carries only the residual stream; splitting first lets each stage fuse on
its own, and send/recv (collectives) bound every fusion group, so a group is never cut.

    stage 0 of 2:                                stage 1 of 2:
    %h1 = add(%h0, %mlp0) : f32[B, S, 64]         %h1 = recv() {src=0, shape=[B, S, 64], dtype=f32}
    send(%h1) {dst=1}                             %n = rms_norm(%h1, ...)   (layer 1 onwards)
    (no outputs)                                  (the graph's outputs)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PipelineParallelError
from ..ir import Effect, Graph, Node, Value
from .manager import PassContext, graph_pass
from .rewrite import Rebuilder

FLOPS_PER_BYTE = 100  # nominal machine balance: a node costs max(FLOPs, 100 * bytes moved)
_CONTRACTIONS = {"linear", "linear_add", "matmul", "addmm", "bmm", "mm", "baddbmm", "conv2d"}
_LAYER = re.compile(r"^(.*?\.\d+)(?:\.|$)")  # "model.layers.3.mlp" -> "model.layers.3"


@dataclass(frozen=True)
class PipelineSplit:
    """Where the graph is cut. `cuts[k]` is the index of the first node of stage k + 1;
    `crossing[k]` the values sent over cut k, in send order; costs and bytes at one token."""

    cuts: tuple[int, ...]
    crossing: tuple[tuple[Value, ...], ...]
    stage_costs: tuple[int, ...]
    cut_bytes_per_token: tuple[int, ...]
    local: frozenset[int]  # indices of nodes each stage recomputes instead of receiving
    layers: int


@graph_pass("cut the graph into pipeline stages balanced by FLOPs and bytes, with send/recv at the cuts")
def split_pipeline(g: Graph, ctx: PassContext) -> Graph:
    """This stage's graph when `CompileOptions(pipeline_parallel=(stage, num_stages))` is set.

    Guarantees: the stage graphs, run in order with each stage's sends feeding the next stage's
    recvs, return exactly the original outputs from the last stage; every cut lies between two
    layers; raises PipelineParallelError when there are fewer layers than stages.
    """
    if ctx.options.pipeline_parallel is None:
        return g
    stage, num_stages = ctx.options.pipeline_parallel
    return pipeline_stage_graph(g, stage, num_stages, ctx)


def pipeline_stage_graph(g: Graph, stage: int, num_stages: int, ctx: PassContext | None = None) -> Graph:
    """Stage `stage` of `num_stages` (see the module docstring); the graph itself for one stage."""
    if not 0 <= stage < num_stages:
        raise PipelineParallelError(f"stage {stage} is not in 0..{num_stages - 1}")
    if num_stages == 1:
        return g
    split = plan_split(g, num_stages)
    if ctx is not None:
        for k, b in enumerate(split.cut_bytes_per_token):
            ctx.count(f"cut{k}_bytes_per_token", b)
        for k, c in enumerate(split.stage_costs):
            ctx.count(f"stage{k}_cost", c)
    device = str(ctx.device) if ctx is not None and ctx.device is not None else "cpu"
    return _build_stage(g, split, stage, num_stages, device, ctx)


def plan_split(g: Graph, num_stages: int) -> PipelineSplit:
    """Choose the cuts: one candidate per gap between layers (its cheapest position), then the
    `num_stages - 1` candidates that minimise the largest stage cost."""
    from ..report.cost import node_bytes, node_flops  # lazily: kiln.report imports kiln.passes

    env = {s: 1 for s in g.symbols()}
    local = _local_nodes(g)
    layer_of = [_layer(n) if i not in local else None for i, n in enumerate(g.nodes)]
    layers = len({x for x in layer_of if x is not None})
    gaps = _layer_gaps(layer_of)
    if num_stages - 1 > len(gaps):
        raise PipelineParallelError(
            f"{num_stages} stages need {num_stages - 1} cuts between transformer layers, but the graph has "
            f"{layers} layer(s) ({len(gaps)} possible cut(s)); use at most {len(gaps) + 1} stages"
        )
    producer, last_use = _lifetimes(g, local)
    candidates = []
    for lo, hi in gaps:
        best = min(range(lo, hi + 1), key=lambda p: (_crossing_bytes(_crossing(p, producer, last_use), env), p))
        candidates.append(best)
    costs = [0 if i in local else max(node_flops(n, env), FLOPS_PER_BYTE * node_bytes(n, env)) for i, n in enumerate(g.nodes)]
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    cuts = _balance(candidates, prefix, num_stages)
    bounds = [0, *cuts, len(g.nodes)]
    crossing = tuple(_crossing(p, producer, last_use) for p in cuts)
    return PipelineSplit(
        tuple(cuts), crossing, tuple(prefix[b] - prefix[a] for a, b in zip(bounds, bounds[1:])),
        tuple(_crossing_bytes(c, env) for c in crossing), frozenset(local), layers,
    )


def _layer(n: Node) -> str | None:
    m = _LAYER.match(n.source.module) if n.source is not None and n.source.module else None
    return m.group(1) if m else None


def _layer_gaps(layer_of: list[str | None]) -> list[tuple[int, int]]:
    """(lo, hi) per change of layer: a cut before any node index in lo..hi lies between them."""
    gaps, prev, prev_at = [], None, -1
    for i, layer in enumerate(layer_of):
        if layer is None:
            continue
        if prev is not None and layer != prev:
            gaps.append((prev_at + 1, i))
        prev, prev_at = layer, i
    return gaps


def _local_nodes(g: Graph) -> set[int]:
    """Nodes every stage may recompute: pure, no contraction, fed only by graph inputs, constants
    nobody writes, and other such nodes (masks, rotary tables, position embeddings)."""
    written = {v for n in g.nodes if n.op.effect is Effect.WRITE for v in n.inputs}
    ok: set[Value] = {v for v in (*g.inputs, *g.constants.values()) if v not in written}
    local: set[int] = set()
    for i, n in enumerate(g.nodes):
        cheap = n.op.name not in _CONTRACTIONS and n.op.category != "attention" and n.subgraph is None
        if n.op.effect is Effect.PURE and cheap and n.outputs and all(v in ok for v in n.inputs):
            local.add(i)
            ok.update(n.outputs)
    return local


def _lifetimes(g: Graph, local: set[int]) -> tuple[dict[Value, int], dict[Value, int]]:
    """For values that must be sent when they cross a cut: producer index and last reader
    (len(g.nodes) for graph outputs)."""
    producer = {o: i for i, n in enumerate(g.nodes) if i not in local for o in n.outputs}
    last_use: dict[Value, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            if v in producer:
                last_use[v] = i
    for v in g.outputs:
        if v in producer:
            last_use[v] = len(g.nodes)
    return producer, last_use


def _crossing(p: int, producer: dict[Value, int], last_use: dict[Value, int]) -> tuple[Value, ...]:
    """Values made before node p and read at or after it, in production order."""
    return tuple(v for v, i in producer.items() if i < p <= last_use.get(v, -1))


def _crossing_bytes(values: tuple[Value, ...], env: dict) -> int:
    from ..report.cost import value_bytes

    return sum(value_bytes(v, env) for v in values)


def _balance(candidates: list[int], prefix: list[int], num_stages: int) -> list[int]:
    """The num_stages - 1 candidate cuts minimising the largest stage cost (DP over candidates)."""
    total = len(prefix) - 1
    points = [0, *candidates]  # best[k][j]: stages 0..k with stage k ending at candidate j
    best: list[dict[int, tuple[int, list[int]]]] = [{0: (0, [])}]
    for _ in range(num_stages - 1):
        layer: dict[int, tuple[int, list[int]]] = {}
        for j in range(1, len(points)):
            options = [
                (max(cost, prefix[points[j]] - prefix[points[i]]), cuts + [points[j]])
                for i, (cost, cuts) in best[-1].items() if i < j
            ]
            if options:
                layer[j] = min(options)
        best.append(layer)
    cost, cuts = min((max(c, prefix[total] - prefix[points[j]]), cuts) for j, (c, cuts) in best[-1].items())
    return cuts


def _build_stage(g: Graph, split: PipelineSplit, stage: int, num_stages: int, device: str, ctx: PassContext | None) -> Graph:
    bounds = [0, *split.cuts, len(g.nodes)]
    start, end = bounds[stage], bounds[stage + 1]
    received = split.crossing[stage - 1] if stage > 0 else ()
    sent = split.crossing[stage] if stage < num_stages - 1 else ()
    outputs = g.outputs if stage == num_stages - 1 else []
    own = [i for i in range(start, end) if i not in split.local]
    picked = _with_local_inputs(g, own, [*sent, *outputs], split.local, set(received))
    used_consts = {v.name for i in picked for v in g.nodes[i].inputs if v.kind == "const"}
    used_consts |= {v.name for v in outputs if v.kind == "const"}
    rb = Rebuilder(g, keep_constants=[name for name in g.constants if name in used_consts])
    for v in received:
        rb.map[v] = rb.out.call("recv", src=stage - 1, shape=v.type.shape, dtype=v.type.dtype, device=device)
    for i in sorted(picked):
        rb.copy(g.nodes[i])
    for v in sent:
        rb.out.add_node("send", [rb.get(v)], {"dst": stage + 1})
    rb.out.outputs = [rb.get(v) for v in outputs]
    if ctx is not None:
        env = {s: 1 for s in g.symbols()}
        ctx.count("recv_bytes_per_token", _crossing_bytes(received, env))
        ctx.count("send_bytes_per_token", _crossing_bytes(sent, env))
        ctx.count("stage_nodes", len(picked))
    return rb.out


def _with_local_inputs(g: Graph, own: list[int], roots: list[Value], local: frozenset[int], received: set[Value]) -> set[int]:
    """`own` plus the recomputable nodes its nodes (and `roots`) read, transitively."""
    index = {o: i for i, n in enumerate(g.nodes) for o in n.outputs}
    picked = set(own)
    stack = [v for i in own for v in g.nodes[i].inputs] + list(roots)
    while stack:
        v = stack.pop()
        i = index.get(v)
        if i is None or i in picked or v in received:
            continue
        if i not in local:
            raise PipelineParallelError(f"internal: stage reads value {v} of node {i} that is neither its own nor received")
        picked.add(i)
        stack.extend(g.nodes[i].inputs)
    return picked


__all__ = ["FLOPS_PER_BYTE", "PipelineSplit", "pipeline_stage_graph", "plan_split", "split_pipeline"]
