"""The verifier accepts well-formed graphs and names each broken invariant it finds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from kiln import ir
from kiln.ir.dtypes import f32, i64
from kiln.ir.graph import Node
from kiln.ir.types import SymIntType, TensorType

sys.path.insert(0, str(Path(__file__).parent))
from test_ir_text import graphs  # noqa: E402

B, S, T = ir.symbol("B"), ir.symbol("S"), ir.symbol("T")


def _good() -> tuple[ir.Graph, ir.Value]:
    g = ir.Graph()
    x = g.add_input("x", TensorType(f32, (B, S, 8)))
    w = g.add_constant("w", torch.randn(16, 8, generator=torch.Generator().manual_seed(0)))
    h = g.call("linear", x, w)
    h = g.call("add", h, rhs=1.0)
    values, idx = g.add_node("max_dim", [h], {"dim": -1}).outputs
    g.outputs = [h, values, idx]
    return g, x


def _problems(g: ir.Graph) -> str:
    with pytest.raises(ir.VerificationError) as e:
        ir.verify(g)
    assert e.value.problems, "a VerificationError must list its problems"
    return str(e.value)


def test_verifier_accepts_a_well_formed_graph() -> None:
    g, _ = _good()
    ir.verify(g)


def test_verifier_accepts_symbols_bound_only_by_a_symint_input() -> None:
    g = ir.Graph()
    g.add_input("n", SymIntType(T))
    g.outputs = [g.call("arange", end=T, dtype=i64)]
    ir.verify(g)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_verifier_accepts_generated_graphs_and_their_reparse(g: ir.Graph) -> None:
    ir.verify(g)
    ir.verify(ir.parse_graph(ir.format_graph(g)))


def test_verifier_rejects_an_input_from_another_graph() -> None:
    g, _ = _good()
    other = ir.Graph()
    foreign = other.add_input("y", TensorType(f32, (B, S, 16)))
    g.add_node("neg", [foreign])
    msg = _problems(g)
    assert "used before it is defined (or is not in this graph)" in msg
    assert "neg(" in msg


def test_verifier_rejects_a_use_before_its_definition() -> None:
    g, x = _good()
    a = g.add_node("neg", [x])
    b = g.add_node("abs", [a.output])
    g.nodes[-2:] = [b, a]  # the user now comes first
    msg = _problems(g)
    assert "used before it is defined" in msg
    assert "abs(" in msg


def test_verifier_rejects_an_output_type_that_differs_from_inference() -> None:
    g, x = _good()
    g.add_node("neg", [x], out_types=[TensorType(f32, (B, S, 9))])
    msg = _problems(g)
    assert "types differ from inference f32[B, S, 8]" in msg


def test_verifier_rejects_an_output_dtype_that_differs_from_inference() -> None:
    g, x = _good()
    g.add_node("neg", [x], out_types=[TensorType(i64, (B, S, 8))])
    assert "types differ from inference f32[B, S, 8]" in _problems(g)


def test_verifier_rejects_a_wrong_output_count() -> None:
    g, x = _good()
    g.add_node("max_dim", [x], {"dim": 0}, out_types=[TensorType(f32, (S, 8))])
    assert "max_dim has 2 outputs, node has 1" in _problems(g)


def test_verifier_rejects_a_wrong_arity() -> None:
    g, x = _good()
    g.nodes.append(Node(ir.get_op("neg"), [x, x], {}, [TensorType(f32, (B, S, 8))]))
    assert "op neg takes 1 inputs, got 2" in _problems(g)


def test_verifier_rejects_a_missing_required_attribute() -> None:
    g, x = _good()
    g.nodes.append(Node(ir.get_op("permute"), [x], {}, [x.type]))
    assert "needs attribute 'dims'" in _problems(g)


def test_verifier_rejects_a_graph_output_not_defined_in_the_graph() -> None:
    g, _ = _good()
    other = ir.Graph()
    g.outputs.append(other.add_input("stray", TensorType(f32, (4,))))
    assert "graph output %<undefined" in _problems(g)
    assert "is not defined in the graph" in _problems(g)


def test_verifier_rejects_a_graph_output_of_a_dropped_node() -> None:
    g, _ = _good()
    del g.nodes[-1]  # max_dim's outputs are still returned
    assert "is not defined in the graph" in _problems(g)


def test_verifier_rejects_a_value_defined_twice() -> None:
    g, x = _good()
    n = g.add_node("neg", [x])
    g.nodes.append(n)  # the same node listed twice defines its output twice
    msg = _problems(g)
    assert "defined twice" in msg
    assert "neg(" in msg


def test_verifier_rejects_an_input_declared_twice() -> None:
    g, x = _good()
    g.inputs.append(x)
    assert "%x is declared twice" in _problems(g)


def test_verifier_rejects_an_output_not_owned_by_its_node() -> None:
    g, x = _good()
    a = g.add_node("neg", [x])
    b = g.add_node("abs", [x])
    b.outputs = a.outputs  # b claims a's value
    assert "is not owned by its node" in _problems(g)


def test_verifier_rejects_a_symbol_not_bound_by_any_input() -> None:
    g, _ = _good()
    g.add_node("full", [], {"shape": [T, 2], "value": 1.5, "dtype": f32})
    msg = _problems(g)
    assert "symbols ['T'] are not bound by any graph input" in msg


def test_verifier_rejects_a_symbol_bound_only_by_a_constant() -> None:
    g = ir.Graph()
    x = g.add_input("x", TensorType(f32, (4,)))
    c = g.add_constant("c", type=TensorType(f32, (T,)))
    g.outputs = [g.call("add", x, rhs=2), g.call("neg", c)]
    assert "symbols ['T'] are not bound by any graph input" in _problems(g)


def test_verifier_reports_inference_failures() -> None:
    g, x = _good()
    g.nodes.append(Node(ir.get_op("permute"), [x], {"dims": (0, 0, 1)}, [x.type]))
    assert "inference failed: permute dims [0, 0, 1] are not a permutation of 3 dims" in _problems(g)


def test_verifier_lists_every_problem() -> None:
    g, x = _good()
    g.add_node("neg", [x], out_types=[TensorType(f32, (9,))])
    g.add_node("full", [], {"shape": [T], "value": 1, "dtype": f32})
    g.outputs.append(ir.Graph().add_input("stray", TensorType(f32, (4,))))
    with pytest.raises(ir.VerificationError) as e:
        ir.verify(g)
    assert len(e.value.problems) == 3


def test_verifier_does_not_run_inference_for_opaque_ops() -> None:
    g, x = _good()
    node = g.add_node("aten.topk.default", [x], {"targs": "t", "k": 3}, out_types=[TensorType(f32, (B, S, 3)), TensorType(i64, (B, S, 3))])
    g.outputs = list(node.outputs)
    ir.verify(g)


def test_verifier_rejects_a_read_of_a_buffer_after_it_was_written() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f32"), (4,)))
    buf = g.add_constant("buf", type=ir.TensorType(ir.by_name("f32"), (4,)))
    g.add_node("copy_to", [buf, x])
    g.outputs = [g.call("neg", buf)]
    with pytest.raises(ir.VerificationError, match="after copy_to wrote it"):
        ir.verify(g)
