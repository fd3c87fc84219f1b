"""Issue 6's accuracy bars on a model with real structure: the tiny Llama trained on the shipped
text (tests/conftest.py `trained_lm`), quantized by kiln's pass, against full precision on
held-out text: top-1 agreement and perplexity increase."""

from __future__ import annotations

import pytest

import kiln
from kiln.passes import QuantScheme
from kiln.report.accuracy import compare_logits


@pytest.mark.parametrize(("scheme", "min_top1", "max_ppl_increase"), [
    ("int8", 0.99, 0.02),
    # int8 weights + dynamic per-token int8 activations, held to the int8 bars; observed top-1 99.3%, ppl +0.03%
    ("w8a8", 0.99, 0.02),
    (QuantScheme(weights="int4", group_size=32), 0.95, 0.10),
    # asymmetric min-max with zero points; observed top-1 96.4%, ppl +0.57% (symmetric g32: 95.8%, +0.35%)
    (QuantScheme(weights="int4", group_size=32, symmetric=False), 0.95, 0.10),
])
def test_quantized_model_meets_the_accuracy_bars(trained_lm, scheme, min_top1: float, max_ppl_increase: float) -> None:  # noqa: ANN001
    model = trained_lm.model.eval()
    fn = kiln.compile(model, options=kiln.CompileOptions(quantization=scheme))
    report = compare_logits(model, lambda ids: fn(input_ids=ids).logits, trained_lm.heldout_ids)
    assert any(n.op.name in ("linear_w8", "linear_w4", "linear_w8a8") for n in fn.graph.nodes), "the pass quantized nothing"
    assert report.top1_agreement >= min_top1, report
    assert report.ppl_increase <= max_ppl_increase, report
