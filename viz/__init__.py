"""Graph visualisation: Graphviz DOT per graph and one self-contained HTML page per compilation.

Takes kiln IR graphs (the captured graph and the graph after each pass); gives DOT text (and SVG
when Graphviz is installed) and an offline HTML viewer that shows each stage's graph, its diff
against the stage before, fusion groups as boxes and repeated transformer layers as collapsible
groups. Nothing here changes a graph.
"""

from .dot import render_svg, to_dot
from .dump import write_dot, write_passes_html
from .html import render_html, write_html

__all__ = ["render_html", "render_svg", "to_dot", "write_dot", "write_html", "write_passes_html"]
