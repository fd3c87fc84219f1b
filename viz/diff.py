"""What a pass changed: match the nodes of two stages and mark the differences.

Node ids are positions, so a pass that removes one node renumbers every later one; nodes are
matched by content instead. The heuristic, in two rounds, each greedy in program order:

1. exact: the same (op, source file, source line, nn.Module path, output types);
2. loose: the same (op, nn.Module path, output types), for nodes a pass rebuilt without source.

A current node left unmatched is `fused` when its op is one of kiln's fused ops (or it holds a
fusion subgraph), else `added`. A previous node left unmatched is `removed`: it comes back as a
ghost node (id `r<k>`) with its edges remapped onto the current stage. A matched node whose
attributes changed is `changed`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..ir.graph import Graph, Node
from .data import attrs_text, subgraph_of, type_text

FUSED_OPS = frozenset({"attention", "paged_attention", "rms_norm", "gelu", "linear", "linear_add", "layer_norm", "add_layer_norm", "add_rms_norm", "addcmul", "fusion_group"})

Key = Callable[[Node], tuple]


def _exact(n: Node) -> tuple:
    s = n.source
    return (n.op.name, s.file if s else "", s.line if s else 0, s.module if s else "", type_text(n))


def _loose(n: Node) -> tuple:
    return (n.op.name, n.source.module if n.source else "", type_text(n))


def match_nodes(prev: Graph, cur: Graph) -> dict[int, int]:
    """Current node index -> matched previous node index (see the module docstring)."""
    matched: dict[int, int] = {}
    for key in (_exact, _loose):
        free: dict[tuple, list[int]] = {}
        taken = set(matched.values())
        for k, n in enumerate(prev.nodes):
            if k not in taken:
                free.setdefault(key(n), []).append(k)
        for k, n in enumerate(cur.nodes):
            if k not in matched and free.get(key(n)):
                matched[k] = free[key(n)].pop(0)
    return matched


def _status(n: Node, prev: Node | None) -> str:
    if prev is None:
        return "fused" if n.op.name in FUSED_OPS or subgraph_of(n) is not None else "added"
    return "changed" if attrs_text(n) != attrs_text(prev) else "same"


def annotate(prev: Graph | None, cur: Graph, prev_data: dict[str, Any] | None, cur_data: dict[str, Any]) -> dict[str, int]:
    """Set each current node's `status`, add removed ghosts to `cur_data`; returns the counts."""
    matched = match_nodes(prev, cur) if prev is not None else {k: k for k in range(len(cur.nodes))}
    for d in cur_data["nodes"]:
        d["status"] = "same"
    for k, n in enumerate(cur.nodes):
        if prev is not None:
            cur_data["nodes"][len(cur.inputs) + k]["status"] = _status(n, prev.nodes[matched[k]] if k in matched else None)
    removed: list[int] = []
    if prev is not None and prev_data is not None:
        removed = sorted(set(range(len(prev.nodes))) - set(matched.values()))
        _add_ghosts(prev_data, cur_data, {v: k for k, v in matched.items()}, removed)
    counts = {"added": 0, "fused": 0, "changed": 0}
    for d in cur_data["nodes"]:
        if d["status"] in counts:
            counts[d["status"]] += 1
    return {**counts, "removed": len(removed)}


def _add_ghosts(prev_data: dict[str, Any], cur_data: dict[str, Any], back: dict[int, int], removed: list[int]) -> None:
    """Removed previous nodes become ghosts `r<k>`; their edges are remapped onto current ids."""
    gone = {f"n{k}" for k in removed}

    def remap(pid: str) -> str:
        if pid in gone:
            return "r" + pid[1:]
        if pid.startswith("n"):
            k = back.get(int(pid[1:]))
            return f"n{k}" if k is not None else ""
        return pid  # inputs and outputs keep their positions

    for d in prev_data["nodes"]:
        if d["id"] in gone:
            cur_data["nodes"].append({**d, "id": "r" + d["id"][1:], "kind": "removed", "status": "removed"})
    for src, dst, ty, *_ in prev_data["edges"]:
        if (src in gone or dst in gone) and remap(src) and remap(dst):
            cur_data["edges"].append([remap(src), remap(dst), ty, "removed"])
