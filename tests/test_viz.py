"""Graph visualisation: DOT text, the HTML pass viewer (escaping, diff, a headless-browser run) and dumps."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import kiln
from kiln import ir
from kiln.ir.dtypes import f32
from kiln.ir.types import TensorType
from kiln.models import get_model
from kiln.passes import PIPELINE
from kiln.viz import render_html, to_dot, write_html
from kiln.viz.data import graph_data, layer_group
from kiln.viz.diff import annotate
from kiln.viz.html import stages_data

HOSTILE = 'a"b</script><img src=x onerror=alert(1)>\\'
T = TensorType(f32, (ir.symbol("B"), 8))


def small_graph(const_name: str = "w", module: str = "model.layers.0.mlp") -> ir.Graph:
    g = ir.Graph()
    x = g.add_input("x", T)
    w = g.add_constant(const_name, torch.randn(8, 8))
    src = ir.SourceInfo("m.py", 3, module)
    h = g.call("linear", x, w, source=src)
    g.outputs = [g.call("gelu", h, source=src, approximate="tanh")]
    return g


def written_out_graph() -> ir.Graph:
    """x * w + x: two elementwise nodes a later stage replaces."""
    g = ir.Graph()
    x = g.add_input("x", T)
    w = g.add_constant("w", torch.randn(8))
    src = ir.SourceInfo("m.py", 5, "model.layers.0")
    g.outputs = [g.call("add", g.call("mul", x, w, source=src), x, source=src)]
    return g


def fused_graph() -> ir.Graph:
    """The same computation as one fusion group owning a subgraph."""
    body = ir.Graph()
    bx, bw = body.add_input("x0", T), body.add_input("x1", TensorType(f32, (8,)))
    body.outputs = [body.call("add", body.call("mul", bx, bw), bx)]
    g = ir.Graph()
    x = g.add_input("x", T)
    w = g.add_constant("w", torch.randn(8))
    node = g.add_node("fusion_group", [x, w], {"kind": "elementwise"}, source=ir.SourceInfo("m.py", 5, "model.layers.0"), subgraph=body)
    g.outputs = [node.outputs[0]]
    return g


def json_block(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="kiln-data">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


# --- DOT --------------------------------------------------------------------------------------


def test_dot_names_every_node_with_balanced_braces() -> None:
    g = small_graph()
    text = to_dot(g, title="t")
    for nid in ("i0", "c0", "n0", "n1", "o0"):
        assert re.search(rf"^\s*{nid} \[label=", text, re.M), nid
    assert "linear" in text and "gelu" in text and "f32[B, 8]" in text
    assert text.count("{") == text.count("}") and text.startswith("digraph kiln {")


def test_dot_escapes_hostile_constant_name() -> None:
    text = to_dot(small_graph(HOSTILE), title=HOSTILE)
    assert '"a\\"b</script><img src=x onerror=alert(1)>\\\\\\nf32[8, 8]"' in text
    for line in text.splitlines():  # every quote is escaped or paired: no label ends early
        assert len(re.findall(r'(?<!\\)"', line.replace("\\\\", ""))) % 2 == 0, line


def test_dot_draws_fusion_group_as_cluster() -> None:
    text = to_dot(fused_graph(), title="f")
    assert "subgraph cluster_n0 {" in text and "n0_0 [label=" in text and "n0_1 [label=" in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
@pytest.mark.parametrize("make", [lambda: small_graph(HOSTILE), fused_graph], ids=["hostile", "fusion"])
def test_dot_renders_with_graphviz(make) -> None:  # noqa: ANN001
    done = subprocess.run(["dot", "-Tsvg"], input=to_dot(make(), title=HOSTILE), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "<svg" in done.stdout and "<img" not in done.stdout


# --- HTML data and diff -------------------------------------------------------------------------


def test_layer_group_takes_the_repeated_layer_component() -> None:
    assert layer_group("model.layers.3.self_attn") == "model.layers.3"
    assert layer_group("transformer.h.0.attn") == "transformer.h.0"
    assert layer_group("bert.encoder.layer.1.output") == "bert.encoder.layer.1"
    assert layer_group("blocks.0") == "blocks.0"
    assert layer_group("lm_head") == "" and layer_group("") == ""


def test_diff_marks_fused_and_removed_nodes() -> None:
    data = stages_data([("captured", written_out_graph()), ("fused", fused_graph())])
    after = {n["id"]: n for n in data[1]["nodes"]}
    assert after["n0"]["status"] == "fused" and after["n0"]["inner"] == [["mul", "f32[B, 8]"], ["add", "f32[B, 8]"]]
    assert after["r0"]["status"] == "removed" and after["r1"]["status"] == "removed"
    assert data[1]["counts"] == {"added": 0, "fused": 1, "changed": 0, "removed": 2}


def test_diff_matches_unchanged_nodes_despite_renumbering() -> None:
    before, after = written_out_graph(), written_out_graph()
    cur = graph_data(after)
    counts = annotate(before, after, graph_data(before), cur)
    assert counts == {"added": 0, "fused": 0, "changed": 0, "removed": 0}
    assert {n["status"] for n in cur["nodes"]} == {"same"}


def test_html_json_block_survives_hostile_names() -> None:
    page = render_html([("captured", small_graph(HOSTILE, module=HOSTILE))], title=HOSTILE)
    assert "<img" not in page and page.count("</script>") == 3  # error capture, data, viewer: none from the names
    data = json_block(page)
    assert data["title"] == HOSTILE
    assert data["stages"][0]["nodes"][1]["consts"][0][0] == HOSTILE
    assert data["stages"][0]["nodes"][1]["module"] == HOSTILE


def test_html_is_self_contained() -> None:
    page = render_html([("captured", small_graph())])
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "fetch(" not in page and "XMLHttpRequest" not in page and 'id="kiln-errors"' in page


# --- kiln.compile dumps ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("viz") / "dumps"
    model = get_model("tiny-gpt")
    kiln.compile(model, (torch.randint(0, 512, (2, 16)),), dump_dir=str(d))
    return d


def test_dump_writes_dot_beside_every_text_dump_and_one_html(tiny_dump: Path) -> None:
    texts = sorted(p.stem for p in tiny_dump.glob("trace1_[0-9]*.txt"))
    assert "trace1_000_captured" in texts
    assert texts == sorted(p.stem for p in tiny_dump.glob("trace1_[0-9]*.dot"))
    assert (tiny_dump / "trace1_passes.html").is_file()
    assert os.stat(tiny_dump).st_mode & 0o777 == 0o700
    if shutil.which("dot"):
        assert texts == sorted(p.stem for p in tiny_dump.glob("trace1_[0-9]*.svg"))


def test_dump_html_lists_captured_and_every_pass(tiny_dump: Path) -> None:
    data = json_block((tiny_dump / "trace1_passes.html").read_text())
    assert [s["name"] for s in data["stages"]] == ["000 captured"] + [f"{i:03d} {p.name}" for i, p in enumerate(PIPELINE, 1)]


# --- a real browser ------------------------------------------------------------------------------


def dump_dom(html_path: Path, tmp_path: Path) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the page is not rendered")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000"]
    done = subprocess.run([exe, *flags, "--dump-dom", html_path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def errors_in(dom: str) -> str:
    m = re.search(r'<div id="kiln-errors">(.*?)</div>\s*<h2>', dom, re.S)
    assert m is not None, "no #kiln-errors element in the rendered page"
    return m.group(1)


@pytest.mark.slow
def test_browser_renders_every_stage_of_a_compiled_model(tiny_dump: Path, tmp_path: Path) -> None:
    dom = dump_dom(tiny_dump / "trace1_passes.html", tmp_path)
    assert errors_in(dom) == ""
    assert len(re.findall(r'<g class="kiln-node ', dom)) > 10
    assert len(re.findall(r'<path [^>]*class="kiln-edge', dom)) > 10
    stages = re.findall(r'<li class="kiln-stage[^"]*"[^>]*><span class="kiln-stage-name">([^<]*)</span>', dom)
    assert stages == ["000 captured"] + [f"{i:03d} {p.name}" for i, p in enumerate(PIPELINE, 1)]


@pytest.mark.slow
def test_browser_shows_hostile_names_as_text(tmp_path: Path) -> None:
    path = tmp_path / "hostile.html"
    write_html(path, [("captured", small_graph(HOSTILE, module=HOSTILE)), ("fused", fused_graph())], title=HOSTILE)
    dom = dump_dom(path, tmp_path)
    assert errors_in(dom) == ""
    assert "<img" not in dom and len(re.findall(r'<g class="kiln-node ', dom)) == 4
