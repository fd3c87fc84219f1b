"""Napkin cost model for a planned graph: FLOPs and bytes per call, evaluated at the traced shapes.

FLOPs (multiply and add count as two):
- matmul / linear / addmm: 2*M*N*K, i.e. 2 * numel(output) * K with K the contracted dim;
- attention: 4*B*H*Sq*Sk*D (QK^T and PV, 2*Sq*Sk*D each per head; softmax ignored);
- elementwise and norm ops: ~numel(output); reductions: ~numel(input);
- fusion groups: the sum over their subgraph's nodes;
- views, data movement, creation, writes and opaque ATen ops: 0.
Bytes moved: input + output tensor bytes of each executed node (views included, so this is the
traffic of a runtime that materialises every node); a fusion group counts only its own inputs
and outputs, not the intermediates that stay inside the kernel. Shape-only nodes the plan caches
per symbol binding do not run per call and are skipped by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..ir import Graph, Node, Value
from ..ir.symbolic import evaluate_dim
from ..ir.types import TensorType

_MATMUL_K_INPUT = {"linear": 0, "linear_add": 0, "matmul": 0, "addmm": 1}  # which input carries the contracted dim last


def _dims(v: Value, env: dict) -> list[int] | None:
    if not isinstance(v.type, TensorType):
        return None
    try:
        return [evaluate_dim(d, env) for d in v.type.shape]
    except (KeyError, ValueError):
        return None  # a dim whose symbols the example did not bind


def numel(v: Value, env: dict) -> int:
    dims = _dims(v, env)
    return math.prod(dims) if dims is not None else 0


def value_bytes(v: Value, env: dict) -> int:
    return numel(v, env) * v.type.dtype.itemsize if isinstance(v.type, TensorType) else 0


def node_flops(n: Node, env: dict) -> int:
    """Estimated floating-point operations of one node (see the module docstring)."""
    cat, name = n.op.category, n.op.name
    if name in _MATMUL_K_INPUT:
        k = _dims(n.inputs[_MATMUL_K_INPUT[name]], env)
        return 2 * sum(numel(o, env) for o in n.outputs) * (k[-1] if k else 0)
    if cat == "attention":
        q, k = _dims(n.inputs[0], env), _dims(n.inputs[1], env)
        if not q or not k:
            return 0
        return 4 * math.prod(q[:-1]) * k[-2] * q[-1]  # 4 * (B*H*Sq) * Sk * D
    if n.subgraph is not None:
        return sum(node_flops(m, env) for m in n.subgraph.nodes)
    if cat in ("elementwise", "norm", "fusion"):
        return sum(numel(o, env) for o in n.outputs)
    if cat == "reduction":
        return numel(n.inputs[0], env) if n.inputs else 0
    return 0


def node_bytes(n: Node, env: dict) -> int:
    """Bytes a node reads and writes; a fusion group's interior is not counted."""
    return sum(value_bytes(v, env) for v in (*n.inputs, *n.outputs))


def graph_cost(g: Graph, env: dict, skip: Iterable[int] = ()) -> tuple[int, int]:
    """(FLOPs, bytes) per call over the nodes not in `skip` (indices into g.nodes)."""
    skipped = set(skip)
    nodes = [n for i, n in enumerate(g.nodes) if i not in skipped]
    return sum(node_flops(n, env) for n in nodes), sum(node_bytes(n, env) for n in nodes)
