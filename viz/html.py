"""One self-contained HTML page to browse a compilation pass by pass.

The page inlines its CSS and JS (page.css, page.js beside this file) and the graphs as JSON in a
`<script type="application/json">` block; it fetches nothing and works from file://. In the JSON,
`<`, `>` and `&` are written as \\u escapes, so no user string (module or constant name) can close
the block or open a tag; the script only ever puts strings into the page as text. Errors in the
page (window.onerror, console.error) are written into `#kiln-errors` so tests can read them.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..ir.graph import Graph
from .data import graph_data
from .diff import annotate

_HERE = Path(__file__).parent

# installed first and on its own, so it still reports a syntax error in the main script
_ERROR_CAPTURE = """
(function () {
  function report(msg) {
    var box = document.getElementById("kiln-errors");
    if (box) { var d = document.createElement("div"); d.textContent = String(msg); box.appendChild(d); }
  }
  window.onerror = function (msg, src, line, col) { report(msg + " (line " + line + ":" + col + ")"); };
  window.addEventListener("unhandledrejection", function (e) { report("unhandled rejection: " + e.reason); });
  var original = console.error;
  console.error = function () { report(Array.prototype.join.call(arguments, " ")); original.apply(console, arguments); };
})();
"""

_BODY = """<body>
<div id="kiln-side">
  <h1 id="kiln-title"></h1>
  <div id="kiln-errors"></div>
  <h2>Stages</h2>
  <ol id="kiln-stages"></ol>
  <h2>Stage</h2>
  <div id="kiln-stage-info"></div>
  <h2>Hovered node</h2>
  <div id="kiln-hover">(hover a node)</div>
  <h2>View</h2>
  <div id="kiln-controls">
    <label><input type="checkbox" id="kiln-show-removed" checked> show removed nodes</label><br>
    <button id="kiln-collapse-all">collapse all layers</button><button id="kiln-expand-all">expand all</button><br>
    <button id="kiln-zoom-out">zoom &minus;</button><button id="kiln-zoom-in">zoom +</button>
  </div>
  <div class="legend"><span class="b-added">added</span><span class="b-removed">removed</span><span class="b-fused">fused</span><span class="b-changed">attrs changed</span></div>
  <h2>Layers</h2>
  <div id="kiln-layers"></div>
</div>
<div id="kiln-main"><div id="kiln-graph"></div></div>
"""


def json_for_script(data: Any) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` appears literally."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def stages_data(stages: Sequence[tuple[str, Graph]], details: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each stage's graph data with its diff against the stage before it."""
    out: list[dict[str, Any]] = []
    prev: tuple[Graph, dict[str, Any]] | None = None
    for i, (name, g) in enumerate(stages):
        data = graph_data(g)
        counts = annotate(prev[0] if prev else None, g, prev[1] if prev else None, data)
        extra = dict(details[i]) if details and i < len(details) else {}
        out.append({"name": name, "changed": True, **extra, "counts": counts, **data})
        prev = (g, graph_data(g))  # a clean copy: `data` now holds ghosts of the stage before
    return out


def render_html(stages: Sequence[tuple[str, Graph]], *, title: str = "kiln passes", details: Sequence[dict[str, Any]] | None = None) -> str:
    """The page's text (see the module docstring)."""
    payload = {"title": title, "stages": stages_data(stages, details), "initial": 0}
    css = (_HERE / "page.css").read_text()
    js = (_HERE / "page.js").read_text()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{css}</style>\n"
        f"<script>{_ERROR_CAPTURE}</script>\n</head>\n{_BODY}"
        f'<script type="application/json" id="kiln-data">{json_for_script(payload)}</script>\n'
        f"<script>\n{js}</script>\n</body>\n</html>\n"
    )


def write_html(path: str | os.PathLike, stages: list[tuple[str, Graph]], *, title: str = "", details: Sequence[dict[str, Any]] | None = None) -> None:
    """Write the pass viewer for `stages` (name, graph), e.g. captured then one per pass."""
    text = render_html(stages, title=title or f"kiln passes: {os.path.basename(os.fspath(path))}", details=details)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
