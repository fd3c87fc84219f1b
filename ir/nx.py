"""A read-only networkx view of a graph, for analysis (reachability, critical paths, plots).

Nodes are ("input", name), ("const", name) and ("node", index); edges carry the value's type.
The view is derived on demand: editing it never changes the Graph.
"""

from __future__ import annotations

from typing import Any

from .graph import Graph, Value


def to_networkx(g: Graph) -> Any:
    import networkx as nx

    view = nx.MultiDiGraph()
    key: dict[Value, tuple] = {}
    for v in g.inputs:
        key[v] = ("input", v.name)
        view.add_node(key[v], kind="input", type=str(v.type))
    for name, v in g.constants.items():
        key[v] = ("const", name)
        view.add_node(key[v], kind="const", type=str(v.type))
    for i, n in enumerate(g.nodes):
        view.add_node(("node", i), kind="node", op=n.op.name, types=[str(o.type) for o in n.outputs])
        for o in n.outputs:
            key[o] = ("node", i)
        for j, v in enumerate(n.inputs):
            view.add_edge(key[v], ("node", i), port=j, type=str(v.type))
    for j, v in enumerate(g.outputs):
        view.add_node(("output", j), kind="output")
        view.add_edge(key[v], ("output", j), port=0, type=str(v.type))
    return nx.freeze(view)
