"""The verifier: structural and type invariants every pass must keep.

Checks: inputs defined before use and owned by this graph, no value defined twice, arity and
attributes match the op's declaration, output types equal the op's own inference, every symbol
in a node's type is bound by the graph inputs, graph outputs are defined, and no node reads a
buffer after a `copy_to` into it (later reads must use the written value: that keeps dataflow
SSA, so CSE and DCE need no memory model).
"""

from __future__ import annotations

from .graph import Graph, Node, Value
from .ops import InferenceError
from .opset._infer import same_dim
from .printer import _Names, format_node
from .types import TensorType


class VerificationError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("IR verification failed:\n  " + "\n  ".join(problems))


def _types_equal(a: object, b: object) -> bool:
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        return a.dtype is b.dtype and a.rank == b.rank and all(same_dim(x, y) for x, y in zip(a.shape, b.shape))
    return a == b


def verify(g: Graph, bound: set | None = None) -> None:
    """Raise VerificationError listing every broken invariant (with the offending IR lines).

    `bound`: symbols bound outside `g` (a fusion group's body sees its enclosing graph's)."""
    problems = _problems(g, bound or set())
    if problems:
        raise VerificationError(problems)


def _problems(g: Graph, outer: set) -> list[str]:
    problems: list[str] = []
    names = _Names(g)
    defined: set[Value] = set()
    bound = g.symbols() | outer
    for v in list(g.inputs) + list(g.constants.values()):
        if v in defined:
            problems.append(f"{names(v)} is declared twice")
        defined.add(v)
    written: set[Value] = set()
    for n in g.nodes:
        problems += _check_node(n, defined, bound, names)
        reads = n.inputs[1:] if n.op.name == "copy_to" else n.inputs
        stale = [v for v in reads if v in written]
        if stale:
            problems.append(f"{format_node(n, names)}: reads {', '.join(names(v) for v in stale)} after copy_to wrote it; read the written value instead")
        if n.op.name == "copy_to":
            written.add(n.inputs[0])
        for i, o in enumerate(n.outputs):
            if o.node is not n or o.index != i:
                problems.append(f"output {i} of {format_node(n, names)} is not owned by its node")
            elif o in defined:
                problems.append(f"output {i} of {format_node(n, names)} is defined twice (its node is listed more than once)")
            defined.add(o)
    for v in g.outputs:
        if v not in defined:
            problems.append(f"graph output {names(v)} is not defined in the graph")
    return problems


def _check_group(n: Node, bound: set, line: str) -> list[str]:
    """A fusion group: a pure body whose inputs/outputs match the node's, verified recursively."""
    body = n.subgraph
    out = [f"{line}: body {p}" for p in _problems(body, bound)]
    if len(body.inputs) != len(n.inputs) or not all(_types_equal(a.type, b.type) for a, b in zip(body.inputs, n.inputs)):
        out.append(f"{line}: body inputs {[str(v.type) for v in body.inputs]} differ from the node's")
    if len(body.outputs) != len(n.outputs) or not all(_types_equal(a.type, b.type) for a, b in zip(body.outputs, n.outputs)):
        out.append(f"{line}: body outputs {[str(v.type) for v in body.outputs]} differ from the node's")
    if any(m.op.effect.value != "pure" or m.subgraph is not None for m in body.nodes):
        out.append(f"{line}: a fusion group's body must hold only pure, ungrouped nodes")
    return out


def _check_node(n: Node, defined: set[Value], bound: set, names: _Names) -> list[str]:
    line = format_node(n, names)
    out = [f"{line}: input {names(v)} is used before it is defined (or is not in this graph)" for v in n.inputs if v not in defined]
    try:
        n.op.check_arity(len(n.inputs))
        n.op.normalize_attrs(n.attrs)
    except TypeError as e:
        return out + [f"{line}: {e}"]
    if n.op.num_outputs >= 0 and n.op.infer is not None and len(n.outputs) != n.op.num_outputs:
        out.append(f"{line}: {n.op.name} has {n.op.num_outputs} outputs, node has {len(n.outputs)}")
    for o in n.outputs:
        free = o.type.symbols - bound
        if free:
            out.append(f"{line}: symbols {sorted(map(str, free))} are not bound by any graph input")
    if n.subgraph is not None or n.op.name == "fusion_group":
        if n.subgraph is None:
            return out + [f"{line}: fusion_group has no body"]
        return out + _check_group(n, bound, line)
    if n.op.infer is not None and not out:
        try:
            inferred = n.op.infer([v.type for v in n.inputs], n.attrs)
        except InferenceError as e:
            return out + [f"{line}: inference failed: {e}"]
        if len(inferred) != len(n.outputs) or not all(_types_equal(a, b.type) for a, b in zip(inferred, n.outputs)):
            out.append(f"{line}: types differ from inference {', '.join(map(str, inferred))}")
    return out
