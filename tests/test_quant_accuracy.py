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
    # fp8 e4m3 weights and per-token activations: observed top-1 97.6%, ppl -0.03%. Below the 99%
    # int8 bar: 3 mantissa bits cost more than int8's 127 steps on this model (fp8 weights alone:
    # 98.8%; even bf16 weights and activations agree on only 99.3%: its logits have many near-ties)
    ("fp8", 0.97, 0.02),
    # asymmetric min-max with zero points; observed top-1 96.4%, ppl +0.57% (symmetric g32: 95.8%, +0.35%)
    (QuantScheme(weights="int4", group_size=32, symmetric=False), 0.95, 0.10),
])
def test_quantized_model_meets_the_accuracy_bars(trained_lm, scheme, min_top1: float, max_ppl_increase: float) -> None:  # noqa: ANN001
    model = trained_lm.model.eval()
    fn = kiln.compile(model, options=kiln.CompileOptions(quantization=scheme))
    report = compare_logits(model, lambda ids: fn(input_ids=ids).logits, trained_lm.heldout_ids)
    assert any(n.op.name in ("linear_w8", "linear_w4", "linear_w8a8", "linear_fp8") for n in fn.graph.nodes), "the pass quantized nothing"
    assert report.top1_agreement >= min_top1, report
    assert report.ppl_increase <= max_ppl_increase, report


@pytest.mark.parametrize(("settings", "min_top1", "max_ppl_increase"), [
    # SmoothQuant (alpha 0.5) + dynamic per-token W8A8: observed top-1 99.2%, ppl +0.03%
    ({"smoothing": 0.5}, 0.99, 0.02),
    # static per-tensor activation scales from min-max calibration: observed top-1 98.0%, ppl -0.05%
    ({"static": True}, 0.97, 0.02),
    # static, 99.99th-percentile ranges after smoothing: observed top-1 98.8%, ppl +0.11%
    ({"static": True, "smoothing": 0.5, "observer": "percentile"}, 0.97, 0.02),
])
def test_calibrated_w8a8_meets_the_accuracy_bars(trained_lm, settings: dict, min_top1: float, max_ppl_increase: float) -> None:  # noqa: ANN001
    model = trained_lm.model.eval()
    calib = [{"input_ids": trained_lm.train_ids[i * 64:(i + 1) * 64][None]} for i in range(8)]  # training text, not held out
    scheme = QuantScheme(weights="int8", activations="int8", calibration=calib, **settings)
    fn = kiln.compile(model, options=kiln.CompileOptions(quantization=scheme))
    report = compare_logits(model, lambda ids: fn(input_ids=ids).logits, trained_lm.heldout_ids)
    nodes = [n for n in fn.graph.nodes if n.op.name == "linear_w8a8"]
    assert nodes and all((n.attrs["act_scale"] > 0) == settings.get("static", False) for n in nodes)
    assert report.top1_agreement >= min_top1, report
    assert report.ppl_increase <= max_ppl_increase, report
