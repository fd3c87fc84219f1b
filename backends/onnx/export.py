"""`kiln.export_onnx`: a kiln graph, at any point of the pass pipeline, as an ONNX model file.

Takes the graph kiln compiled (a CompiledModule, or a module traced here the way kiln.compile
traces it), after the full pipeline or after a named pass, and converts node by node through
`ops.CONVERTERS` / `nn.ORT_CONVERTERS` into standard ONNX (opset >= 17) or, with
target="onnxruntime", onnxruntime contrib ops where they exist. Graph inputs keep their kiln
names, outputs are `output_0`, `output_1`, ...; constants become initializers; buffers a graph
writes (`copy_to`, e.g. a static KV cache) become an input plus a `present.<name>` output.
Shape symbols become named dim_params (dynamic=True) or the example's values (dynamic=False).

An op with no mapping raises ExportError naming the op and node before anything is written; the
file (and external data) is written to temporary names in the output directory and renamed at
the end, so a failed export leaves no partial file.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import onnx
import torch
from onnx import helper
from torch.utils import _pytree as pytree

from ...errors import ExportError
from ...ir.graph import Graph, Node, Value
from ...ir.types import TensorType
from . import nn as _nn  # noqa: F401 - registers the matmul/norm/attention/quant converters
from .builder import MS_DOMAIN, OnnxBuilder, node_label, value_info
from .ops import CONVERTERS
from .write import write_model

TARGETS = ("standard", "onnxruntime")


def export_onnx(
    model_or_compiled: Any,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    dynamic: bool = True,
    target: str = "standard",
    after_pass: str | None = None,
    opset: int = 18,
    options: Any = None,
    external_data: bool | None = None,
) -> onnx.ModelProto:
    """Export a module or CompiledModule's kiln graph to ONNX at `path`; returns the model
    (initializer data left out when written as external data).

    `example_inputs`: as for kiln.compile (tuple of args, dict of kwargs or one tensor); may be
    None for a CompiledModule that has run. `after_pass`: a pass name from kiln.passes.PIPELINE
    (or "captured" for the graph before any pass); None exports the final graph. `options`: the
    CompileOptions a module is compiled with (quantization etc.). `external_data`: None writes
    weights as external data only when they exceed 2 GB.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if opset < 17:
        raise ValueError(f"kiln exports at opset >= 17, got {opset}")
    graph, inputs = select_graph(model_or_compiled, example_inputs, after_pass, options)
    env = None
    if not dynamic:
        if inputs is None:
            raise ValueError("dynamic=False needs example_inputs to fix the shapes")
        from ...ir.interpret import bind_symbols

        env = bind_symbols(graph, inputs)
    model = graph_to_onnx(graph, target=target, opset=opset, env=env)
    write_model(model, os.fspath(path), external_data)
    return model


def select_graph(model_or_compiled: Any, example_inputs: Any, after_pass: str | None, options: Any) -> tuple[Graph, list | None]:
    """(the kiln graph to export, the example's flat graph inputs or None)."""
    from ...api import CompiledModule, _split_inputs
    from ...api import compile as kiln_compile
    from ...options import CompileOptions

    if isinstance(model_or_compiled, CompiledModule):
        compiled = model_or_compiled
        if example_inputs is not None and compiled.graph is None:
            args, kwargs = _split_inputs(example_inputs)
            compiled._capture(args, kwargs)
    else:
        if example_inputs is None:
            raise ValueError("exporting a module needs example_inputs to trace it")
        opts = replace(options or CompileOptions(), fullgraph=True)
        compiled = kiln_compile(model_or_compiled, example_inputs, options=opts)
    if compiled.graph is None:
        raise ValueError("the CompiledModule has no whole graph (not called yet, or captured through torch.compile); "
                         "pass example_inputs or a module")
    stats = compiled.stats
    if after_pass is None:
        graph = compiled.graph
    elif after_pass == "captured":
        graph = stats.captured
    else:
        found = [r.graph for r in stats.passes if r.name == after_pass]
        if not found:
            raise ValueError(f"no pass named {after_pass!r} ran; passes run: {['captured'] + [r.name for r in stats.passes]}")
        graph = found[-1]
    flat = None
    if example_inputs is not None:
        args, kwargs = _split_inputs(example_inputs)
        roles = compiled._entries[-1].traced.leaf_roles
        flat = [x for x, (kind, _) in zip(pytree.tree_leaves((args, kwargs)), roles) if kind == "input"]
    return graph, flat


def graph_to_onnx(g: Graph, *, target: str = "standard", opset: int = 18, env: dict | None = None) -> onnx.ModelProto:
    """Convert a kiln graph to an in-memory ONNX ModelProto (raises ExportError on unmapped ops)."""
    from .nn import ORT_CONVERTERS

    b = OnnxBuilder(target, opset, env)
    b.current = "graph inputs"
    b.causal_masks = _causal_masks(g) if target == "onnxruntime" else set()
    state = _written_state(g)
    inputs = []
    for v in g.inputs:
        b.names[v] = b.claim(v.name)
        inputs.append(value_info(b, b.names[v], v.type))
    for v in state:  # written buffers are inputs (the state before the call)
        b.names[v] = b.claim(v.name)
        inputs.append(value_info(b, b.names[v], v.type))
    b.bind_inputs(g)
    table = {**CONVERTERS, **ORT_CONVERTERS} if target == "onnxruntime" else CONVERTERS
    present: list[tuple[Value, str]] = []
    _emit(b, g, table, present)
    outputs = []
    for i, v in enumerate(g.outputs):
        name = b.claim(f"output_{i}")
        b.op_into("Identity", [_name(b, g, v)], [name])
        outputs.append(value_info(b, name, v.type))
    for v, src in present:
        name = b.claim(f"present.{v.name}")
        b.op_into("Identity", [src], [name])
        outputs.append(value_info(b, name, v.type))
    from .builder import tensor_proto

    graph = helper.make_graph(b.nodes, "kiln", inputs, outputs, [tensor_proto(n, t) for n, t in b.initializers])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in sorted(b.domains)]
    model = helper.make_model(graph, opset_imports=imports, producer_name="kiln", producer_version=_version())
    model.ir_version = max(8, helper.find_min_ir_version_for([helper.make_opsetid("", opset)], ignore_unknown=True))
    if MS_DOMAIN in b.domains:
        model.doc_string = "uses onnxruntime contrib ops (com.microsoft)"
    return model


def _version() -> str:
    from ... import __version__

    return __version__


def _written_state(g: Graph) -> list[Value]:
    """Constants some copy_to writes: exported as inputs with a present.<name> output."""
    out: list[Value] = []
    for n in g.nodes:
        if n.op.name == "copy_to" and n.inputs[0].kind == "const" and n.inputs[0] not in out:
            out.append(n.inputs[0])
    return out


def _name(b: OnnxBuilder, g: Graph, v: Value) -> str:
    """The ONNX name of `v`; constants become initializers on first use."""
    name = b.names.get(v)
    if name is not None:
        return name
    if v.kind != "const":
        raise ExportError("?", b.current, f"value {v} is used before it is defined")
    data = g.constant_data.get(v.name)
    if data is None:
        raise ExportError("?", b.current, f"constant {v.name!r} has no data (parsed IR?)")
    b.names[v] = b.initializer(v.name, data)
    return b.names[v]


def _emit(b: OnnxBuilder, g: Graph, table: dict, present: list, prefix: str = "") -> None:
    for i, n in enumerate(g.nodes):
        b.current = node_label(n, i) if not prefix else f"{prefix}, body {node_label(n, i)}"
        ins = [_name(b, g, v) for v in n.inputs]
        if n.subgraph is not None:
            _inline(b, n, ins, table, present)
            continue
        if n.op.name == "copy_to":
            present.append((n.inputs[0], ins[1]))
            continue
        conv = table.get(n.op)
        if conv is None:
            raise ExportError(n.op.name, b.current)
        try:
            outs = conv(b, n, ins)
        except ExportError:
            raise
        except Exception as e:  # a converter precondition the node breaks: name the node
            raise ExportError(n.op.name, b.current, f"{type(e).__name__}: {e}") from e
        if len(outs) != len(n.outputs):
            raise ExportError(n.op.name, b.current, f"converter gave {len(outs)} outputs for {len(n.outputs)}")
        for v, o in zip(n.outputs, outs):
            b.names[v] = o


def _inline(b: OnnxBuilder, node: Node, ins: list, table: dict, present: list) -> None:
    """A fusion group's body, emitted in place of the group."""
    body = node.subgraph
    for v, name in zip(body.inputs, ins):
        b.names[v] = name
    _emit(b, body, table, present, prefix=b.current)
    for v, inner in zip(node.outputs, body.outputs):
        b.names[v] = _name(b, body, inner)


def _causal_masks(g: Graph) -> set:
    """Boolean attention masks that depend on shapes only and are exactly causal (lower
    triangle over the last two dims, for every batch and head) at two probe lengths."""
    from ...ir.interpret import run_node

    out: set = set()
    for n in g.nodes:
        if n.op.name != "attention" or len(n.inputs) != 4 or n.attrs["causal"]:
            continue
        mask = n.inputs[3]
        if not isinstance(mask.type, TensorType) or mask.type.dtype.name != "b8":
            continue
        cone = _cone(g, mask)
        if cone is None:
            continue
        ok = True
        for t in (3, 7):
            env = {s: t for s in g.symbols()}
            values: dict = {}
            try:
                for m in cone:
                    ins = [values[v] if v in values else g.constant_data[v.name] for v in m.inputs]
                    values.update(zip(m.outputs, run_node(m, ins, env)))
            except Exception:  # anything unusual: keep the standard decomposition
                ok = False
                break
            got = values[mask] if mask.kind == "node" else g.constant_data[mask.name]
            want = torch.ones(t, t, dtype=torch.bool).tril()
            ok = ok and tuple(got.shape[-2:]) == (t, t) and bool((got == want).all())
        if ok:
            out.add(mask)
    return out


def _cone(g: Graph, v: Value) -> list[Node] | None:
    """The nodes `v` depends on, or None when it reads a graph input's values (not shape-only)."""
    need = {v}
    picked = []
    for n in reversed(g.nodes):
        if any(o in need for o in n.outputs):
            if any(x.kind == "input" for x in n.inputs) or n.op.effect.value != "pure":
                return None
            picked.append(n)
            need.update(n.inputs)
    return picked[::-1]


__all__ = ["TARGETS", "export_onnx", "graph_to_onnx", "select_graph"]
