"""Calibration (passes/calibrate.py), SmoothQuant smoothing (passes/smooth.py), static W8A8 and
fp8 e4m3 (`linear_fp8`): observers on known data, smoothing keeps the function, the ops'
references, scheme validation and the kiln.compile / kiln.LLM entry points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.errors import QuantizationError
from kiln.ir import REGISTRY, InferenceError, TensorType, parse_graph, run_graph
from kiln.ir.dtypes import f32, i8
from kiln.ir.opset.quant import quantize_int8_per_channel
from kiln.ir.opset.quant_fp8 import (
    FP8_E4M3_MAX,
    dequantize_fp8,
    quantize_activations_fp8_per_token,
    quantize_fp8_per_channel,
)
from kiln.options import CompileOptions
from kiln.passes import PassContext, QuantScheme, quantize_weights
from kiln.passes.calibrate import CalibrationFeed, abs_percentile, graph_feed, observe_activations
from kiln.passes.smooth import smooth_linears, smoothing_scales

from conftest import rel_err

ONE_LINEAR = """graph(%x: f32[B, 8]) {
  const %w : f32[4, 8]
  %0 = linear(%x, %w) : f32[B, 4]
  return %0
}
"""

# an rms_norm read by one linear (folds), and a graph input read by two linears (explicit mul)
NORM_AND_INPUT = """graph(%x: f32[B, S, 16], %y: f32[B, S, 16]) {
  const %g : f32[16]
  const %wa : f32[24, 16]
  const %wb : f32[8, 16]
  const %wc : f32[8, 16]
  %0 = rms_norm(%x, %g) {eps=1e-06} : f32[B, S, 16]
  %1 = linear(%0, %wa) : f32[B, S, 24]
  %2 = linear(%y, %wb) : f32[B, S, 8]
  %3 = linear(%y, %wc) : f32[B, S, 8]
  return %1, %2, %3
}
"""


def _graph(text: str, seed: int = 0):  # noqa: ANN202
    gen = torch.Generator().manual_seed(seed)
    g0 = parse_graph(text)
    return parse_graph(text, {n: torch.randn([int(d) for d in v.type.shape], generator=gen) + (1.0 if n == "g" else 0.0) for n, v in g0.constants.items()})


def _outlier_inputs(seed: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, 5, 16, generator=gen), torch.randn(batch, 5, 16, generator=gen)
    x[..., 3] *= 30.0  # an outlier channel, as LLM activations have
    y[..., 7] *= 20.0
    return x, y


# --- observers ---------------------------------------------------------------------------------


def test_minmax_and_percentile_observers_on_a_planted_outlier() -> None:
    g = _graph(ONE_LINEAR)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, 8, generator=gen), torch.randn(300, 8, generator=gen) * 0.5
    a[17, 2] = -100.0  # one outlier in 6400 values
    stats = observe_activations(g, CalibrationFeed(((a,), (b,))), percentile=99.9)["w"]
    assert stats.tokens == 800
    assert stats.min == -100.0 and stats.max == max(float(a.max()), float(b.max()))
    assert torch.equal(stats.channel_absmax, torch.maximum(a.abs().amax(0), b.abs().amax(0)))
    assert stats.absmax("minmax") == 100.0
    # the percentile clips the outlier: the max over examples of each example's 99.9th percentile of |x|
    expect = max(abs_percentile(a, 99.9), abs_percentile(b, 99.9))
    assert stats.absmax("percentile") == pytest.approx(expect) and expect < 10.0


@pytest.mark.parametrize("p", [50.0, 99.0, 99.99, 100.0])
def test_abs_percentile_matches_torch_quantile_by_rank(p: float) -> None:
    x = torch.randn(4001, generator=torch.Generator().manual_seed(2))
    got = abs_percentile(x, p)
    sorted_abs = x.abs().sort().values
    assert got in sorted_abs.tolist()
    assert abs(got - torch.quantile(x.abs(), p / 100).item()) <= (sorted_abs[1:] - sorted_abs[:-1]).max().item() + 1e-6


def test_observation_leaves_written_state_alone() -> None:
    g = parse_graph("""graph(%x: f32[B, 8]) {
  const %w : f32[4, 8]
  const %acc : f32[8]
  %0 = linear(%x, %w) : f32[B, 4]
  %1 = sum(%x) {dims=[0]} : f32[8]
  copy_to(%acc, %1)
  return %0
}
""", {"w": torch.randn(4, 8), "acc": torch.zeros(8)})
    observe_activations(g, CalibrationFeed(((torch.randn(3, 8) + 1,),)))
    assert torch.equal(g.constant_data["acc"], torch.zeros(8))


def test_examples_that_do_not_fit_the_graph_raise_quantization_error() -> None:
    g = _graph(NORM_AND_INPUT)
    with pytest.raises(QuantizationError, match="takes 2"):
        graph_feed(g, [(torch.randn(1, 2, 16),)])
    with pytest.raises(QuantizationError, match=r"lacks graph inputs \['y'\]"):
        graph_feed(g, [{"x": torch.randn(1, 2, 16)}])


# --- smoothing ---------------------------------------------------------------------------------


def test_smoothing_scales_balance_activation_and_weight_ranges() -> None:
    x, w = torch.tensor([4.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 0.0])
    s = smoothing_scales(x, w, 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 1.0, 1.0]))  # zero ranges keep s = 1
    assert torch.allclose((x / s)[0], (w * s)[0])  # alpha 0.5: equal maxima after smoothing


def test_smoothing_folds_into_the_norm_or_inserts_a_mul_and_keeps_the_function() -> None:
    g = _graph(NORM_AND_INPUT)
    feed = CalibrationFeed(tuple(_outlier_inputs(s) for s in range(3)))
    stats = observe_activations(g, feed)
    todo = {g.constants[n]: [m for m in g.nodes if m.op.name == "linear" and m.inputs[1].name == n] for n in ("wa", "wb", "wc")}
    ctx = PassContext(CompileOptions())
    out = smooth_linears(g, todo, stats, 0.5, ctx)
    assert ctx.stats == {"smoothing_folded_into_norm": 1, "smoothing_explicit_mul": 1, "linears_smoothed": 3}
    ops = [n.op.name for n in out.nodes]
    assert ops.count("mul") == 1 and "g.smoothed" in out.constants and "g" not in out.constants
    mul = next(n for n in out.nodes if n.op.name == "mul")
    assert sum(1 for n in out.nodes if mul.output in n.inputs) == 2  # both linears over %y share it
    x, y = _outlier_inputs(9)
    for a, b in zip(run_graph(out, [x, y]), run_graph(g, [x, y])):
        assert rel_err(a, b) < 1e-5
    # the outlier channel is flattened: the smoothed activation's channel range is far more even
    smoothed = observe_activations(out, feed)["wb"].channel_absmax
    assert smoothed.max() / smoothed.median() < stats["wb"].channel_absmax.max() / stats["wb"].channel_absmax.median() / 3


def test_a_norm_read_by_another_op_is_not_folded() -> None:
    text = NORM_AND_INPUT.replace("return %1, %2, %3", "return %1, %2, %3, %0")  # the norm is also an output
    g = _graph(text)
    stats = observe_activations(g, CalibrationFeed((_outlier_inputs(0),)))
    todo = {g.constants["wa"]: [n for n in g.nodes if n.op.name == "linear" and n.inputs[1].name == "wa"]}
    ctx = PassContext(CompileOptions())
    out = smooth_linears(g, todo, stats, 0.5, ctx)
    assert ctx.stats.get("smoothing_explicit_mul") == 1 and "g" in out.constants
    x, y = _outlier_inputs(4)
    for a, b in zip(run_graph(out, [x, y]), run_graph(g, [x, y])):
        assert rel_err(a, b) < 1e-5


def test_quantize_pass_with_smoothing_and_static_scales_uses_the_graph_inputs_as_examples() -> None:
    g = _graph(NORM_AND_INPUT)
    scheme = QuantScheme(activations="int8", static=True, smoothing=0.5, calibration=[_outlier_inputs(s) for s in range(4)])
    ctx = PassContext(CompileOptions(quantization=scheme))
    out = quantize_weights(g, ctx)
    nodes = [n for n in out.nodes if n.op.name == "linear_w8a8"]
    assert len(nodes) == 3 and all(n.attrs["act_scale"] > 0 for n in nodes)
    assert ctx.stats["calibration_examples"] == 4 and ctx.stats["linears_smoothed"] == 3
    x, y = _outlier_inputs(11)
    for a, b in zip(run_graph(out, [x, y]), run_graph(g, [x, y])):
        assert rel_err(a, b) < 0.1  # one int8 scale per tensor over K = 16 with outlier channels


# --- ops ---------------------------------------------------------------------------------------


def test_static_w8a8_uses_the_one_calibrated_scale_and_saturates_beyond_it() -> None:
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 5, 32, generator=gen), torch.randn(16, 32, generator=gen)
    q, scale = quantize_int8_per_channel(w)
    act_scale = 2.0 / 127  # range 2: larger |x| saturates
    got = REGISTRY["linear_w8a8"].impl(x, q, scale, "none", act_scale)
    xq = torch.round(x / act_scale).clamp(-127, 127)
    assert torch.allclose(got, (xq @ q.float().t()) * act_scale * scale, rtol=1e-5, atol=1e-5)
    dynamic = REGISTRY["linear_w8a8"].impl(x, q, scale, "none")
    assert torch.equal(dynamic, REGISTRY["linear_w8a8"].impl(x, q, scale, "none", 0.0))  # 0 = dynamic, the default
    assert not torch.equal(dynamic, got)


@pytest.mark.parametrize(("m", "n", "k", "bias", "dtype"), [(7, 16, 32, True, torch.float32), (1, 24, 48, False, torch.bfloat16), (33, 8, 16, True, torch.float16)])
def test_linear_fp8_is_close_to_float_and_equals_its_simulation(m: int, n: int, k: int, bias: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(m + n)
    x, w = torch.randn(2, m, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype)
    b = [torch.randn(n, generator=gen).to(dtype)] if bias else []
    q, scale = quantize_fp8_per_channel(w)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == dtype
    got = REGISTRY["linear_fp8"].impl(x, q, scale, *b, "silu")
    assert got.dtype == dtype and got.shape == (2, m, n)
    xq, s = quantize_activations_fp8_per_token(x)
    sim = F.silu((F.linear(xq.float() * s, dequantize_fp8(q, scale, torch.float32)).to(dtype) + (b[0] if b else 0)))
    assert rel_err(got.float(), sim.float()) < 2e-2
    assert rel_err(got.float(), F.silu(F.linear(x.float(), w.float(), b[0].float() if b else None))) < 0.1


def test_fp8_weights_round_trip_within_e4m3_precision_and_zero_rows_stay_zero() -> None:
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(5))
    w[2] = 0
    q, scale = quantize_fp8_per_channel(w)
    back = dequantize_fp8(q, scale)
    assert torch.equal(back[2], torch.zeros(40)) and scale[2] == 0
    assert (q.float().abs().amax(1)[[0, 1, 3, 4, 5]] == FP8_E4M3_MAX).all()  # each row's max hits 448
    assert ((back - w).abs() <= w.abs() * 2**-4 + 1e-6).all()  # 3 mantissa bits: half a step <= 2^-4 relative


def test_linear_fp8_inference_rejects_int8_weights() -> None:
    with pytest.raises(InferenceError, match="f8e4m3"):
        REGISTRY["linear_fp8"].infer([TensorType(f32, (4, 8)), TensorType(i8, (2, 8)), TensorType(f32, (2,))], {"activation": "none"})


# --- scheme and entry points -------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"activations": "int8", "static": True}, "calibration"),
    ({"activations": "int8", "smoothing": 0.5}, "calibration"),
    ({"smoothing": 0.5, "calibration": [1]}, "quantized activations"),
    ({"static": True, "calibration": [1]}, "W8A8"),
    ({"activations": "int8", "static": True, "calibration": [1], "observer": "mse"}, "observer"),
    ({"weights": "fp8", "activations": "int8"}, "fp8"),
    ({"activations": "int8", "calibration": "some text"}, "sequence of examples"),
])
def test_calibrated_schemes_reject_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        QuantScheme(**kwargs)


def test_fp8_scheme_parses_with_fp8_activations_and_ignores_calibration_in_equality() -> None:
    assert QuantScheme.parse("fp8") == QuantScheme(weights="fp8", activations="fp8")
    a = QuantScheme(activations="int8", static=True, calibration=[torch.ones(2)])
    assert a == QuantScheme(activations="int8", static=True, calibration=[torch.zeros(3)]) and hash(a)
    assert "calibration" not in repr(a)


def test_compile_maps_examples_given_as_the_model_is_called_and_names_bad_ones() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(32)
            self.up = torch.nn.Linear(32, 64)

        def forward(self, x: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
            return self.up(self.norm(x) + shift)

    torch.manual_seed(0)
    model = Tiny().eval()
    calib = [(torch.randn(2, 6, 32),), torch.randn(1, 9, 32)]  # as fn is called: a tuple of args, or one tensor
    scheme = QuantScheme(activations="int8", static=True, smoothing=0.5, skip=(), calibration=calib)
    fn = kiln.compile(model, options=CompileOptions(quantization=scheme))
    x = torch.randn(2, 5, 32)
    assert rel_err(fn(x), model(x).detach()) < 0.05
    assert any(n.op.name == "linear_w8a8" and n.attrs["act_scale"] > 0 for n in fn.graph.nodes)
    bad = QuantScheme(activations="int8", static=True, calibration=[(torch.randn(2, 6, 32), torch.randn(2))])
    with pytest.raises(QuantizationError, match="example 0"):
        kiln.compile(model, options=CompileOptions(quantization=bad))(x)


def test_llm_fp8_generates_tokens_on_the_builtin_tiny_model() -> None:
    llm = kiln.LLM("tiny-llama", quantization="fp8")
    assert any(n.op.name == "linear_fp8" for n in llm.runner.graph.nodes)
    out = llm.generate(["Hello"], kiln.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 6


def test_llm_static_w8a8_calibrates_on_prompts_and_token_ids(trained_lm) -> None:  # noqa: ANN001
    calib = ["It was the best of times", trained_lm.heldout_ids[:40].tolist()]
    scheme = QuantScheme(activations="int8", static=True, smoothing=0.5, calibration=calib)
    params = kiln.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    llm = kiln.LLM(trained_lm.path, quantization=scheme)
    nodes = [n for n in llm.runner.graph.nodes if n.op.name == "linear_w8a8"]
    assert nodes and all(n.attrs["act_scale"] > 0 for n in nodes)
    assert len(llm.generate([trained_lm.heldout_ids[:20].tolist()], params)[0].outputs[0].token_ids) == 6
    with pytest.raises(QuantizationError, match="example 0"):
        kiln.LLM(trained_lm.path, quantization=QuantScheme(activations="int8", static=True, calibration=[[]]))
