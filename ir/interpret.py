"""The reference interpreter: runs a graph node by node with each op's PyTorch implementation.

Slow and obviously correct; tests and passes check against it. The fast path is the compiled
plan in `runtime.plan`, which lowers every node through the same `node_call`.
"""

from __future__ import annotations

from typing import Any, Sequence

import sympy
import torch

from .graph import Graph, Node, Value
from .ops import Call, is_symbolic, runtime_attr
from .symbolic import evaluate_dim
from .types import SymIntType, TensorType


def node_call(node: Node) -> Call:
    """How to call `node`'s reference implementation: its op's lowering or the default layout
    `impl(*inputs, *attrs)`, with symbolic attributes left as ("dims", value) to evaluate per call."""
    if node.op.lower is not None:
        return node.op.lower(node)
    args: list = [("in", i) for i in range(len(node.inputs))]
    for a in node.op.attrs:
        v = node.attrs[a.name]
        args.append(("dims", v) if is_symbolic(v) else ("const", runtime_attr(a.kind, v)))
    return Call(node.op.impl, tuple(args))


def bind_symbols(g: Graph, inputs: Sequence[Any]) -> dict[sympy.Symbol, int]:
    """Symbol values from the inputs' shapes (each symbol must appear alone as some input dim)."""
    env: dict[sympy.Symbol, int] = {}
    for v, x in zip(g.inputs, inputs):
        if isinstance(v.type, TensorType):
            for d, n in zip(v.type.shape, x.shape):
                if isinstance(d, sympy.Symbol):
                    env.setdefault(d, int(n))
        elif isinstance(v.type, SymIntType) and isinstance(v.type.expr, sympy.Symbol):
            env.setdefault(v.type.expr, int(x))
    return env


def eval_item(item: tuple, ins: Sequence[Any], env: dict) -> Any:
    tag, val = item
    if tag == "in":
        return ins[val]
    if tag == "const":
        return val
    if tag == "list":
        return [eval_item(x, ins, env) for x in val]
    if tag == "dims":
        if isinstance(val, (tuple, list)):
            return [evaluate_dim(d, env) if isinstance(d, (int, sympy.Expr)) else d for d in val]
        return evaluate_dim(val, env)
    raise ValueError(f"bad call template item {item!r}")


def run_node(node: Node, ins: Sequence[Any], env: dict) -> tuple:
    if node.subgraph is not None:
        return tuple(_run_body(node.subgraph, ins, env))
    call = node_call(node)
    args = [eval_item(a, ins, env) for a in call.args]
    kwargs = {k: eval_item(a, ins, env) for k, a in call.kwargs}
    out = call.fn(*args, **kwargs)
    if len(node.outputs) == 0:
        return ()
    if len(node.outputs) == 1 and not isinstance(out, (tuple, list)):
        return (out,)
    return tuple(out)


def run_graph(g: Graph, inputs: Sequence[Any], constants: dict[str, torch.Tensor] | None = None) -> list[Any]:
    """Run `g` on `inputs`; constants come from the graph unless overridden."""
    if len(inputs) != len(g.inputs):
        raise TypeError(f"graph takes {len(g.inputs)} inputs, got {len(inputs)}")
    values: dict[Value, Any] = dict(zip(g.inputs, inputs))
    for name, v in g.constants.items():
        data = (constants or {}).get(name, g.constant_data.get(name))
        if data is None:
            raise ValueError(f"constant {name!r} has no data")
        values[v] = data
    env = bind_symbols(g, inputs)
    for n in g.nodes:
        outs = run_node(n, [values[v] for v in n.inputs], env)
        values.update(zip(n.outputs, outs))
    return [values[v] for v in g.outputs]


def _run_body(body: Graph, inputs: Sequence[Any], env: dict) -> list[Any]:
    """Run a fusion group's body with the enclosing graph's symbol values."""
    values: dict[Value, Any] = dict(zip(body.inputs, inputs))
    values.update({v: body.constant_data[name] for name, v in body.constants.items()})
    for n in body.nodes:
        values.update(zip(n.outputs, run_node(n, [values[v] for v in n.inputs], env)))
    return [values[v] for v in body.outputs]
