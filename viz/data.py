"""A graph as plain data for the HTML viewer: nodes, edges, layer groups and fusion boxes.

Ids are kiln-made (`i0` inputs, `n0` nodes, `o0` outputs, `n3.1` inner nodes of a fusion group),
never user strings, so they are safe anywhere. Constants are not nodes: each node lists the
constants it reads (name and type), shown on hover and as a small badge.
"""

from __future__ import annotations

import re
from typing import Any

from ..ir.graph import Graph, Node, Value
from ..ir.printer import format_attr

# the component of an nn.Module path that names one repeated transformer layer
_LAYER = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+)(?:\.|$)")


def layer_group(module: str) -> str:
    """`model.layers.3.self_attn` -> `model.layers.3`; "" when the path names no repeated layer."""
    m = _LAYER.match(module or "")
    return m.group(1) if m else ""


def source_text(n: Node) -> str:
    """`file:line (module)` or ""."""
    return str(n.source) if n.source is not None else ""


def type_text(n: Node) -> str:
    return ", ".join(str(o.type) for o in n.outputs)


def attrs_text(n: Node) -> str:
    """Attributes that differ from their defaults, like the text IR prints them."""
    shown = []
    for a in n.op.attrs:
        if a.name in n.attrs and (a.required or n.attrs[a.name] != a.default):
            try:
                shown.append(f"{a.name}={format_attr(n.attrs[a.name])}")
            except TypeError:
                shown.append(f"{a.name}={n.attrs[a.name]!r}")
    return ", ".join(shown)


def subgraph_of(n: Node) -> Graph | None:
    """A fusion group's inner graph (the attribute may not exist on every Node)."""
    sub = getattr(n, "subgraph", None)
    return sub if isinstance(sub, Graph) else None


def _node_dict(n: Node, nid: str, consts: list[list[str]]) -> dict[str, Any]:
    module = n.source.module if n.source is not None else ""
    d: dict[str, Any] = {
        "id": nid, "op": n.op.name, "type": type_text(n), "src": source_text(n), "module": module,
        "group": layer_group(module), "attrs": attrs_text(n), "consts": consts, "kind": "node",
    }
    sub = subgraph_of(n)
    if sub is not None:
        d["inner"] = [[m.op.name, type_text(m)] for m in sub.nodes]
    return d


def graph_data(g: Graph) -> dict[str, Any]:
    """Nodes (in topological order) and edges `[src, dst, type]` of `g` as JSON-ready data."""
    ids: dict[Value, str] = {}
    nodes: list[dict[str, Any]] = []
    edges: list[list[str]] = []
    for i, v in enumerate(g.inputs):
        ids[v] = f"i{i}"
        nodes.append({"id": f"i{i}", "op": "input", "name": v.name, "type": str(v.type), "kind": "input", "group": ""})
    for k, n in enumerate(g.nodes):
        consts = [[v.name, str(v.type)] for v in n.inputs if v.kind == "const"]
        nodes.append(_node_dict(n, f"n{k}", consts))
        edges += [[ids[v], f"n{k}", str(v.type)] for v in dict.fromkeys(n.inputs) if v in ids]
        for o in n.outputs:
            ids[o] = f"n{k}"
    for j, v in enumerate(g.outputs):
        nodes.append({"id": f"o{j}", "op": "output", "type": str(v.type), "kind": "output", "group": ""})
        if v in ids:
            edges.append([ids[v], f"o{j}", str(v.type)])
    return {"nodes": nodes, "edges": edges}
