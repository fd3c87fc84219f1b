"""Fusion groups: nodes owning a subgraph — text form, verifier, interpreter, plan, vertical fusion."""

from __future__ import annotations

import torch

import kiln
from kiln import ir, passes
from kiln.options import CompileOptions

from conftest import rel_err

CHAIN = """graph(%x: f32[B, 8], %w: f32[8]) {
  %0 = mul(%x, %w) : f32[B, 8]
  %1 = silu(%0) : f32[B, 8]
  %2 = add(%1) {rhs=1.0} : f32[B, 8]
  %3 = sum(%2) {dims=[1], keepdim=true} : f32[B, 1]
  %4 = linear(%2, %w2) : f32[B, 4]
  return %3, %4, %0
}
"""


def _chain() -> ir.Graph:
    text = CHAIN.replace("%w: f32[8]) {", "%w: f32[8]) {\n  const %w2 : f32[4, 8]")
    return ir.parse_graph(text, {"w2": torch.randn(4, 8, generator=torch.Generator().manual_seed(0))})


def _fuse(g: ir.Graph) -> ir.Graph:
    return passes.fuse_elementwise(g, passes.PassContext(CompileOptions()))


def test_chain_becomes_one_group_with_escaping_values_as_outputs() -> None:
    out = _fuse(_chain())
    groups = [n for n in out.nodes if n.op.name == "fusion_group"]
    assert len(groups) == 1 and len(groups[0].subgraph.nodes) == 4  # mul, silu, add, closing sum
    assert groups[0].attrs["kind"] == "reduction"
    # %0 is returned and %2 feeds the linear: both escape; silu's result stays inside
    assert [str(o.type) for o in groups[0].outputs] == ["f32[B, 8]", "f32[B, 8]", "f32[B, 1]"]
    ir.verify(out)


def test_group_text_round_trips_and_verifies() -> None:
    out = _fuse(_chain())
    text = ir.format_graph(out)
    assert "fusion_group(" in text and text.count("graph(") == 2
    again = ir.parse_graph(text, dict(out.constant_data))
    assert ir.format_graph(again) == text
    ir.verify(again)


def test_grouped_graph_computes_what_the_chain_computed() -> None:
    g = _chain()
    x, w = torch.randn(3, 8), torch.randn(8)
    for a, b in zip(ir.run_graph(_fuse(g), [x, w]), ir.run_graph(g, [x, w]), strict=True):
        assert rel_err(a, b) <= 1e-6


def test_verifier_rejects_a_group_whose_body_disagrees_with_the_node() -> None:
    out = _fuse(_chain())
    node = next(n for n in out.nodes if n.op.name == "fusion_group")
    node.subgraph.outputs = node.subgraph.outputs[:1]
    try:
        ir.verify(out)
    except ir.VerificationError as e:
        assert "body outputs" in str(e)
    else:
        raise AssertionError("verifier accepted a group with a mismatched body")


def test_compiled_plan_inlines_group_bodies() -> None:
    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (torch.sigmoid(x * 2.0) + x).tanh().sum(-1)

    m = M()
    fn = kiln.compile(m)
    x = torch.randn(4, 6)
    assert rel_err(fn(x), m(x)) <= 1e-6
    assert any(n.op.name == "fusion_group" for n in fn.graph.nodes)
    assert "fusion_group" not in fn.plan.source  # bodies are inlined: no extra call layer
