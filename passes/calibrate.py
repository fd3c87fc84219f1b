"""Calibration: run a graph on example inputs and record what every linear's input looks like.

Calibration is an input of the quantize pass, not a separate step: `QuantScheme(calibration=...)`
holds the user's examples, the driver that knows how they map onto the graph's inputs turns them
into a `CalibrationFeed` (kiln.compile: each example is called like the model; kiln.LLM: each is
one token-id sequence run as a prefill), and `quantize_weights` observes its own input graph
with `observe_activations`, so the statistics are keyed by the weights it will quantize (fused
QKV / gate-up weights included).

Statistics per linear input x (`ActivationStats`, keyed by the weight constant's name; linears
reading one weight read one x in the graphs this is used on):

* `channel_absmax` [K]: max |x[..., j]| over every calibration token (SmoothQuant's input);
* `min` / `max`: the exact tensor range over all examples;
* `absmax_percentile`: the `percentile`-th percentile of |x| within each example, combined over
  examples by their maximum (a conservative merge that needs no histogram).

`ActivationStats.absmax(observer)` gives the static range: "minmax" -> max(|min|, |max|),
"percentile" -> `absmax_percentile` (clips rare outliers; saturates them at run time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..errors import QuantizationError
from ..ir import Effect, Graph, Value
from ..ir.interpret import bind_symbols, run_node

OBSERVERS = ("minmax", "percentile")
OBSERVED_OPS = ("linear", "linear_add")


@dataclass(frozen=True)
class CalibrationFeed:
    """Calibration examples as the graph takes them: one flat tuple of graph inputs per example.

    `state_is_scratch`: whether the runs may write the graph's written constants in place (a
    KV-cache pool before serving, whose blocks are rewritten before they are read); otherwise
    every written constant is cloned first, so calibration never changes model state.
    """

    batches: tuple[tuple[Any, ...], ...]
    state_is_scratch: bool = False


@dataclass(slots=True)
class ActivationStats:
    """Running statistics of one linear's input x [..., K] (see the module docstring)."""

    channel_absmax: torch.Tensor  # f32[K] on the CPU
    min: float
    max: float
    absmax_percentile: float
    tokens: int  # rows observed

    def absmax(self, observer: str) -> float:
        """The static symmetric range of x under `observer` ("minmax" | "percentile")."""
        if observer == "minmax":
            return max(abs(self.min), abs(self.max))
        if observer == "percentile":
            return self.absmax_percentile
        raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")


def abs_percentile(x: torch.Tensor, percentile: float) -> float:
    """The `percentile`-th percentile (0 < p <= 100) of |x| by rank: the ceil(p/100 * n)-th smallest
    (kthvalue, so no size limit as with torch.quantile)."""
    flat = x.detach().reshape(-1).abs().float()
    k = min(flat.numel(), max(1, math.ceil(percentile / 100.0 * flat.numel())))
    return float(flat.kthvalue(k).values)


def _observe(prev: ActivationStats | None, x: torch.Tensor, percentile: float) -> ActivationStats:
    xf = x.detach().float().reshape(-1, x.shape[-1])  # (tokens, K)
    ch = xf.abs().amax(dim=0).cpu()
    lo, hi, pct = float(xf.min()), float(xf.max()), abs_percentile(xf, percentile)
    if prev is None:
        return ActivationStats(ch, lo, hi, pct, xf.shape[0])
    return ActivationStats(
        torch.maximum(prev.channel_absmax, ch), min(prev.min, lo), max(prev.max, hi),
        max(prev.absmax_percentile, pct), prev.tokens + xf.shape[0],
    )


def _written_constants(g: Graph) -> set[str]:
    return {v.name for n in g.nodes if n.op.effect is Effect.WRITE for v in n.inputs if v.kind == "const"}


def observe_activations(g: Graph, feed: CalibrationFeed, percentile: float = 99.99) -> dict[str, ActivationStats]:
    """Run `g` on every example of `feed` with the reference implementations and return, per
    linear (`linear`, `linear_add`) whose weight is a constant, the statistics of its input x,
    keyed by the weight's name. Values are freed after their last use; nothing in `g` changes."""
    if not feed.batches:
        raise QuantizationError("calibration needs at least one example; pass QuantScheme(calibration=[...])")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    last_use: dict[Value, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last_use[v] = i
    outputs = set(g.outputs)
    written = set() if feed.state_is_scratch else _written_constants(g)
    stats: dict[str, ActivationStats] = {}
    with torch.no_grad():
        for b, inputs in enumerate(feed.batches):
            if len(inputs) != len(g.inputs):
                raise QuantizationError(
                    f"calibration example {b} gives {len(inputs)} inputs, the graph takes {len(g.inputs)} "
                    f"({', '.join(v.name for v in g.inputs)}); give each example as the model is called"
                )
            values: dict[Value, Any] = dict(zip(g.inputs, inputs))
            for name, v in g.constants.items():
                data = g.constant_data.get(name)
                values[v] = data.clone() if name in written and data is not None else data
            env = bind_symbols(g, inputs)
            for i, n in enumerate(g.nodes):
                ins = [values[v] for v in n.inputs]
                w = n.inputs[1] if n.op.name in OBSERVED_OPS and len(n.inputs) > 1 else None
                if w is not None and w.kind == "const":
                    stats[w.name] = _observe(stats.get(w.name), ins[0], percentile)
                values.update(zip(n.outputs, run_node(n, ins, env)))
                for v in n.inputs:
                    if last_use.get(v) == i and v not in outputs and v.kind != "const":
                        values.pop(v, None)
    return stats


def flat_inputs(example: Any, in_spec: Any, leaf_roles: Sequence[tuple[str, Any]], index: int) -> tuple:
    """One kiln.compile-style example (a tuple of positional args, a dict of keyword args, or one
    tensor) -> the graph's flat inputs, following the trace's input structure (`in_spec`) and
    leaf roles ("input" leaves become graph inputs; "literal" leaves must equal the traced value)."""
    if isinstance(example, dict):
        args, kwargs = (), dict(example)
    elif isinstance(example, (tuple, list)):
        args, kwargs = tuple(example), {}
    else:
        args, kwargs = (example,), {}
    leaves, spec = pytree.tree_flatten((args, kwargs))
    if spec != in_spec:
        raise QuantizationError(
            f"calibration example {index} is structured unlike the traced call; give each example as "
            "the model is called (a tuple of positional args, a dict of keyword args, or one tensor)"
        )
    for (kind, value), leaf in zip(leaf_roles, leaves):
        if kind == "literal" and leaf != value:
            raise QuantizationError(f"calibration example {index} changes a non-tensor argument ({leaf!r}, traced {value!r})")
    picked = {int(idx): leaf for leaf, (kind, idx) in zip(leaves, leaf_roles) if kind == "input"}
    return tuple(picked[i] for i in range(len(picked)))


def graph_feed(g: Graph, examples: Iterable[Any]) -> CalibrationFeed:
    """Examples given directly as the graph's inputs: a tuple / list in input order, a dict keyed by
    input name, or one tensor for a one-input graph (the quantize pass's fallback when no driver
    prepared a feed, e.g. for hand-built graphs)."""
    names = [v.name for v in g.inputs]
    batches = []
    for i, ex in enumerate(examples):
        if isinstance(ex, dict):
            missing = [n for n in names if n not in ex]
            if missing:
                raise QuantizationError(f"calibration example {i} lacks graph inputs {missing}")
            ex = tuple(ex[n] for n in names)
        elif isinstance(ex, torch.Tensor):
            ex = (ex,)
        ex = tuple(ex)
        if len(ex) != len(names):
            raise QuantizationError(
                f"calibration example {i} gives {len(ex)} inputs, the graph takes {len(names)} ({', '.join(names)}); "
                "examples in a model's call format are mapped by kiln.compile / kiln.LLM, not by the pass alone"
            )
        batches.append(ex)
    return CalibrationFeed(tuple(batches))
