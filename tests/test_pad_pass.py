"""pad_matmul_dims: odd large linear output dims are padded to a multiple of 64 on CUDA only."""

from __future__ import annotations

import torch

from kiln import ir, passes
from kiln.options import CompileOptions


def _graph(n: int, bias: bool) -> ir.Graph:
    gen = torch.Generator().manual_seed(0)
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f32"), (ir.symbol("B"), 16)))
    w = g.add_constant("lm_head.weight", torch.randn(n, 16, generator=gen))
    params = [w] + ([g.add_constant("lm_head.bias", torch.randn(n, generator=gen))] if bias else [])
    g.outputs = [g.call("linear", x, *params)]
    return g


def _run(g: ir.Graph, device: str | None) -> ir.Graph:
    return passes.pad_matmul_dims(g, passes.PassContext(CompileOptions(), device=device))


def test_odd_vocab_is_padded_on_cuda_and_sliced_back() -> None:
    for bias in (False, True):
        g = _graph(1030, bias)
        out = _run(g, "cuda")
        ir.verify(out)
        text = ir.format_graph(out)
        assert "f32[B, 1088]" in text and "slice(" in text and "end=1030" in text
        x = torch.randn(3, 16)
        a, b = ir.run_graph(out, [x])[0], ir.run_graph(g, [x])[0]
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5)  # GEMM order may differ


def test_nothing_changes_on_cpu_or_for_aligned_or_small_dims() -> None:
    for g, device in ((_graph(1030, False), None), (_graph(1030, False), "cpu"), (_graph(1088, True), "cuda"), (_graph(1000, False), "cuda")):
        assert _run(g, device) is g


def test_written_weights_are_never_padded() -> None:
    g = _graph(1030, False)
    w = g.constants["lm_head.weight"]
    g.add_node("copy_to", [w, g.call("mul", w, rhs=1.0)])
    assert _run(g, "cuda") is g
