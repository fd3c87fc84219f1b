"""Dump-directory writers: DOT (and SVG when Graphviz is installed) per stage, one HTML per trace.

Called by the pass manager's and `kiln.compile`'s dump instruments; the directory is created
private (0700) like the text dumps beside it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..ir.graph import Graph
from .dot import render_svg, to_dot
from .html import write_html

SVG_MAX_NODES = 2000  # Graphviz lays out larger graphs too slowly to run on every compile's dump


def write_dot(dump_dir: str, stem: str, g: Graph) -> None:
    """`<stem>.dot`, and `<stem>.svg` when the `dot` binary is on PATH and the graph is not huge."""
    os.makedirs(dump_dir, mode=0o700, exist_ok=True)
    text = to_dot(g, title=stem)
    with open(os.path.join(dump_dir, stem + ".dot"), "w", encoding="utf-8") as f:
        f.write(text)
    svg = render_svg(text) if len(g.nodes) <= SVG_MAX_NODES else None
    if svg is not None:
        with open(os.path.join(dump_dir, stem + ".svg"), "w", encoding="utf-8") as f:
            f.write(svg)


def write_passes_html(dump_dir: str, prefix: str, captured: Graph, records: Sequence[Any]) -> str:
    """`<prefix>passes.html` over the captured graph and every pass record; returns its path."""
    stages = [("000 captured", captured)] + [(f"{i:03d} {r.name}", r.graph) for i, r in enumerate(records, start=1) if r.graph is not None]
    details: list[dict[str, Any]] = [{"changed": True}]
    details += [{"changed": r.changed, "seconds": r.seconds, "stats": r.stats} for r in records if r.graph is not None]
    os.makedirs(dump_dir, mode=0o700, exist_ok=True)
    path = os.path.join(dump_dir, f"{prefix}passes.html")
    write_html(path, stages, title=f"kiln {prefix}passes", details=details)
    return path
