"""The linear layers of a graph: module, weight, storage format and bytes, one row per weight.

Used by the pass report's quantization section, the sensitivity scan and the compression report,
so all three name and count layers alike. A fused weight (QKV, gate/up: `fuse_projections`) is one
layer, named by its first projection's module; `fused` says how many projections it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node

# linear-family ops reading a constant weight at input 1 -> (format, weight-part inputs counted as its storage)
QUANT_OPS = {"linear_w8": "int8", "linear_w4": "int4", "linear_w8a8": "w8a8", "linear_fp8": "fp8"}
FLOAT_OPS = ("linear", "linear_add")


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One weight as stored in the graph. `bytes_fp`: its float size (the result dtype's width
    times out x in features); `bytes`: what the graph holds for it (codes, scales, zero points)."""

    name: str  # source module path of its first reader (the weight's name when there is none)
    weight: str  # the weight constant's name (`.q` etc. stripped for quantized ones)
    fused: int  # projections merged into it (1: not fused)
    format: str  # "f32", "int8", "int4 g32", "w8a8 static", "fp8", with " asym" for zero points
    out_features: int
    in_features: int
    bytes_fp: int
    bytes: int

    @property
    def params(self) -> int:
        return self.out_features * self.in_features

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "fused": self.fused, "format": self.format,
                "params": self.params, "bytes_fp": self.bytes_fp, "bytes": self.bytes}


def layer_rows(g: Graph) -> list[LayerRow]:
    """Every linear-family node over a constant weight, once per weight, in graph order."""
    readers: dict[int, list[Node]] = {}
    for n in g.nodes:
        for v in n.inputs:
            if v.kind == "node":
                readers.setdefault(id(v), []).append(n)
    rows, seen = [], set()
    for n in g.nodes:
        if (n.op.name not in QUANT_OPS and n.op.name not in FLOAT_OPS) or n.inputs[1].kind != "const" or n.inputs[1].name in seen:
            continue
        w = n.inputs[1]
        seen.add(w.name)
        parts = n.inputs[1:2] if n.op.name in FLOAT_OPS else n.inputs[1:3 + bool(n.attrs.get("asymmetric"))]
        out_f, in_f = int(n.output.type.shape[-1]), int(n.inputs[0].type.shape[-1])
        after = readers.get(id(n.output), [])
        fused = len(after[0].outputs) if len(after) == 1 and after[0].op.name == "split" else 1
        data = [g.constant_data.get(p.name) for p in parts]
        rows.append(LayerRow(
            name=(n.source.module if n.source is not None and n.source.module else _base_name(w.name)),
            weight=_base_name(w.name) if n.op.name in QUANT_OPS else w.name, fused=fused, format=_format(n),
            out_features=out_f, in_features=in_f, bytes_fp=out_f * in_f * n.output.type.dtype.bits // 8,
            bytes=sum(t.nbytes for t in data if t is not None),
        ))
    return rows


def _base_name(name: str) -> str:
    return name.removesuffix(".q")


def _format(n: Node) -> str:
    if n.op.name in FLOAT_OPS:
        return n.inputs[1].type.dtype.name
    fmt = QUANT_OPS[n.op.name]
    if fmt == "int4":
        fmt += f" g{n.attrs['group_size']}"
    if n.op.name == "linear_w8a8" and n.attrs.get("act_scale"):
        fmt += " static"
    return fmt + (" asym" if n.attrs.get("asymmetric") else "")


def markdown_rows(rows: list[LayerRow]) -> str:
    """A markdown table of layer rows, with a total line."""
    head = "| layer | weight | fused | format | params | fp KiB | stored KiB |\n|---|---|---|---|---|---|---|\n"
    body = "".join(f"| {r.name} | {r.weight} | {r.fused} | {r.format} | {r.params} | {r.bytes_fp / 1024:.1f} | {r.bytes / 1024:.1f} |\n" for r in rows)
    fp, now = sum(r.bytes_fp for r in rows), sum(r.bytes for r in rows)
    total = f"| total | | | | {sum(r.params for r in rows)} | {fp / 1024:.1f} | {now / 1024:.1f} ({now / max(fp, 1):.1%}) |\n"
    return head + body + total
