"""The canonical text form of a graph: deterministic, and parsed back by `ir.parser`.

    graph(%x: f32[B, 8]) {
      const %w : f32[16, 8]
      %0 = linear(%x, %w) : f32[B, 16]
      %1 = add(%0) {rhs=1.0} : f32[B, 16]
      return %1
    }

Node results are numbered in order; inputs and constants keep their names. Attributes equal to
their declared default are omitted. With `source=True` each node line ends in a comment naming the
user's file:line and module (comments are ignored by the parser).
"""

from __future__ import annotations

import json
import math
from typing import Any

import sympy

from .dtypes import DType
from .graph import Graph, Node, Value
from .symbolic import format_dim


def format_attr(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if ("." in r or "e" in r) else r + ".0"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.name
    if isinstance(v, sympy.Expr):
        return format_dim(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


class _Names:
    def __init__(self, g: Graph):
        self.names: dict[Value, str] = {}
        for v in g.inputs:
            self.names[v] = v.name
        for name, v in g.constants.items():
            self.names[v] = name
        k = 0
        for n in g.nodes:
            for o in n.outputs:
                self.names[o] = str(k)
                k += 1

    def __call__(self, v: Value) -> str:
        name = self.names.get(v)
        return "%" + name if name is not None else f"%<undefined {v!r}>"


def format_node(n: Node, names: Any, source: bool = False) -> str:
    # `a.name in n.attrs`: a malformed node (missing attribute) still prints, so the verifier can report it
    attrs = [
        f"{a.name}={format_attr(n.attrs[a.name])}"
        for a in n.op.attrs
        if a.name in n.attrs and (a.required or not _same(n.attrs[a.name], a.default))
    ]
    text = f"{n.op.name}({', '.join(names(v) for v in n.inputs)})"
    if attrs:
        text += " {" + ", ".join(attrs) + "}"
    if n.outputs:
        text = f"{', '.join(names(o) for o in n.outputs)} = {text} : {', '.join(str(o.type) for o in n.outputs)}"
    if n.subgraph is not None:
        text += " {"
    if source and n.source is not None and str(n.source):
        text += f"  # {n.source}"
    return text


def format_graph(g: Graph, source: bool = False) -> str:
    return "\n".join(_graph_lines(g, source)) + "\n"


def _graph_lines(g: Graph, source: bool) -> list[str]:
    """A fusion group's body follows its node line, indented, closed by `}`."""
    names = _Names(g)
    params = ", ".join(f"{names(v)}: {v.type}" for v in g.inputs)
    lines = [f"graph({params}) {{"]
    lines += [f"  const {names(v)} : {v.type}" for v in g.constants.values()]
    for n in g.nodes:
        lines.append("  " + format_node(n, names, source))
        if n.subgraph is not None:
            lines += ["    " + ln for ln in _graph_lines(n.subgraph, source)]
            lines.append("  }")
    lines.append("  return" + "".join((" " if i == 0 else ", ") + names(v) for i, v in enumerate(g.outputs)))
    lines.append("}")
    return lines
