"""Graphviz DOT text for a graph, and SVG through the `dot` binary when it is installed.

    digraph kiln {
      i0 [label="input_ids\\ni64[B, S]", shape=invhouse];
      n0 [label="embedding\\nf32[B, S, 128]"];
      i0 -> n0 [label="i64[B, S]"];
    }

Identifiers are kiln-made (`i0`, `c0`, `n0`, `o0`; `n3_0` inside fusion group `n3`); every user
string (constant and input names, module paths, types) only appears inside a quoted, escaped label.
Constants are small grey boxes; a node with a `subgraph` Graph is drawn as a cluster of its nodes.
"""

from __future__ import annotations

import shutil
import subprocess

from ..ir.graph import Graph, Node, Value
from .data import attrs_text, source_text, subgraph_of, type_text


def quote(s: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as DOT's `\\n`."""
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + s.replace("\r", "").replace("\n", "\\n") + '"'


def _label(*lines: str) -> str:
    return quote("\n".join(line for line in lines if line))


def _node_lines(n: Node, nid: str) -> list[str]:
    sub = subgraph_of(n)
    tip = quote(source_text(n))
    if sub is None:
        return [f"  {nid} [label={_label(n.op.name, attrs_text(n)[:60], type_text(n))}, tooltip={tip}];"]
    lines = [f"  subgraph cluster_{nid} {{", f"    label={_label(f'{n.op.name} ({len(sub.nodes)} ops)', type_text(n))};",
             '    style="rounded,dashed"; color="#7a5cc4";']
    lines += [f"    {nid}_{j} [label={_label(m.op.name, type_text(m))}];" for j, m in enumerate(sub.nodes)]
    lines += [f"    {nid}_{j} -> {nid}_{j + 1} [style=dotted];" for j in range(len(sub.nodes) - 1)]
    lines += [f'    {nid} [label={_label(n.op.name, type_text(n))}, shape=box, style="rounded,bold"];', "  }"]
    if sub.nodes:
        lines.append(f"  {nid}_{len(sub.nodes) - 1} -> {nid} [style=dotted];")
    return lines


def to_dot(graph: Graph, *, title: str = "") -> str:
    """DOT text: inputs, constants (small), nodes labelled op and output type, typed edges."""
    ids: dict[Value, str] = {}
    lines = ["digraph kiln {", f"  label={quote(title)}; labelloc=t;", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#667"];']
    for i, v in enumerate(graph.inputs):
        ids[v] = f"i{i}"
        lines.append(f'  i{i} [label={_label(v.name, str(v.type))}, shape=invhouse, fillcolor="#dff0d8"];')
    for c, v in enumerate(graph.constants.values()):
        ids[v] = f"c{c}"
        lines.append(f'  c{c} [label={_label(v.name, str(v.type))}, shape=note, fontsize=7, fillcolor="#f4f4f4", color="#bbb"];')
    for k, n in enumerate(graph.nodes):
        lines += _node_lines(n, f"n{k}")
        lines += [f"  {ids[v]} -> n{k} [label={quote(str(v.type))}];" for v in dict.fromkeys(n.inputs) if v in ids]
        for o in n.outputs:
            ids[o] = f"n{k}"
    for j, v in enumerate(graph.outputs):
        lines.append(f'  o{j} [label={_label("output", str(v.type))}, shape=house, fillcolor="#fbe5d6"];')
        if v in ids:
            lines.append(f"  {ids[v]} -> o{j} [label={quote(str(v.type))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(dot_text: str, timeout: float = 30.0) -> str | None:
    """SVG text from Graphviz, or None when `dot` is not installed, fails or takes too long."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
