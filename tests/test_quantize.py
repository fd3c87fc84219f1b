"""Weight-only quantization: the scheme, the int8/int4 arithmetic, the quantized linear ops'
references, and quantize_weights end to end on a tiny Llama (golden IR: tests/golden/quantize_weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kiln
from kiln.ir import REGISTRY, InferenceError, TensorType
from kiln.ir.dtypes import f32, i8, u8
from kiln.ir.opset import quant
from kiln.ir.opset.nn import ACTIVATIONS as NN_ACTIVATIONS
from kiln.ir.opset.quant import (
    dequantize_int4,
    dequantize_int4_minmax,
    dequantize_int8,
    dequantize_int8_minmax,
    pack_int4,
    pack_uint4,
    quantize_activations_per_token,
    quantize_int4_grouped,
    quantize_int4_minmax,
    quantize_int8_minmax,
    quantize_int8_per_channel,
    unpack_int4,
    unpack_uint4,
)
from kiln.options import CompileOptions
from kiln.passes import QuantScheme

from conftest import rel_err, tiny_config

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
ACTIVATIONS = st.sampled_from(["none", "relu", "silu", "gelu_tanh"])


def _weight(n: int, k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen).add(0.1)).to(dtype)


# --- the scheme ---------------------------------------------------------------------------


def test_scheme_strings_map_to_default_schemes() -> None:
    assert CompileOptions(quantization="int8").quantization == QuantScheme()
    assert CompileOptions(quantization="int4").quantization == QuantScheme(weights="int4", group_size=128)
    assert CompileOptions().quantization is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": "int3"}, "weights must be"),
        ({"weights": "int4", "group_size": 48}, "group_size must be one of"),
        ({"skip": "lm_head"}, "sequence of patterns"),
    ],
)
def test_scheme_rejects_bad_settings_with_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        QuantScheme(**kwargs)


def test_asymmetric_schemes_are_accepted() -> None:
    assert not QuantScheme(symmetric=False).symmetric
    assert QuantScheme(weights="int4", group_size=32, symmetric=False).group_size == 32


def test_w8a8_scheme_parses_and_needs_symmetric_int8_weights() -> None:
    assert CompileOptions(quantization="w8a8").quantization == QuantScheme(weights="int8", activations="int8")
    assert QuantScheme().activations is None
    with pytest.raises(ValueError, match="activations must be"):
        QuantScheme(activations="int4")
    with pytest.raises(ValueError, match="needs symmetric int8 weights"):
        QuantScheme(weights="int4", activations="int8")
    with pytest.raises(ValueError, match="needs symmetric int8 weights"):
        QuantScheme(symmetric=False, activations="int8")


def test_unknown_quantization_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown quantization 'fp4'"):
        CompileOptions(quantization="fp4")


def test_skip_patterns_match_module_paths_and_weight_names() -> None:
    s = QuantScheme()
    assert s.skips("lm_head") and s.skips("", "lm_head.weight") and s.skips("model.embed_tokens")
    assert not s.skips("model.layers.0.mlp.down_proj", "model.layers.0.mlp.down_proj.weight")


# --- arithmetic -----------------------------------------------------------------------------


@SETTINGS
@given(n=st.integers(1, 40), k=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_int8_round_trip_error_is_at_most_half_a_step(n: int, k: int, seed: int) -> None:
    w = _weight(n, k, seed)
    q, scale = quantize_int8_per_channel(w)
    assert q.dtype is torch.int8 and q.shape == (n, k) and scale.shape == (n,)
    assert int(q.abs().max()) <= 127
    err = (dequantize_int8(q, scale) - w).abs()  # (N, K)
    assert (err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-7).all()


@SETTINGS
@given(n=st.integers(1, 24), groups=st.integers(1, 4), group=st.sampled_from([32, 64, 128]), seed=st.integers(0, 2**16))
def test_int4_round_trip_error_is_at_most_half_a_step_per_group(n: int, groups: int, group: int, seed: int) -> None:
    w = _weight(n, groups * group, seed)
    packed, scales = quantize_int4_grouped(w, group)
    assert packed.dtype is torch.uint8 and packed.shape == (n, groups * group // 2) and scales.shape == (n, groups)
    err = (dequantize_int4(packed, scales, group) - w).abs().reshape(n, groups, group)
    assert (err <= scales[..., None] / 2 * (1 + 1e-5) + 1e-7).all()


@SETTINGS
@given(n=st.integers(1, 8), half=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_int4_packing_round_trips_and_puts_even_columns_in_the_low_nibble(n: int, half: int, seed: int) -> None:
    q = torch.randint(-8, 8, (n, 2 * half), generator=torch.Generator().manual_seed(seed))
    packed = pack_int4(q)
    assert torch.equal(unpack_int4(packed), q.to(torch.int8))
    assert torch.equal(packed & 0xF, (q[:, 0::2] + 8).to(torch.uint8))


def test_zero_rows_quantize_to_exact_zeros() -> None:
    w = torch.zeros(3, 64)
    assert torch.equal(dequantize_int8(*quantize_int8_per_channel(w)), w)
    assert torch.equal(dequantize_int4(*quantize_int4_grouped(w, 32), 32), w)
    assert torch.equal(dequantize_int8_minmax(*quantize_int8_minmax(w)), w)
    assert torch.equal(dequantize_int4_minmax(*quantize_int4_minmax(w, 32), 32), w)


# --- asymmetric min-max arithmetic ------------------------------------------------------------

SHIFTS = st.sampled_from([0.0, 0.5, 3.0, -2.0])  # 0: centred; > 0 mostly positive; < 0 mostly negative


@SETTINGS
@given(n=st.integers(1, 40), k=st.integers(1, 70), shift=SHIFTS, seed=st.integers(0, 2**16))
def test_int8_minmax_round_trip_error_is_at_most_half_a_step(n: int, k: int, shift: float, seed: int) -> None:
    w = _weight(n, k, seed) + shift
    q, scale, zeros = quantize_int8_minmax(w)
    assert q.dtype is torch.uint8 and q.shape == (n, k) and scale.shape == (n,)
    assert zeros.dtype is torch.uint8 and zeros.shape == (n,)
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    assert torch.allclose(scale, (hi - lo) / 255, rtol=1e-6)
    err = (dequantize_int8_minmax(q, scale, zeros) - w).abs()  # (N, K)
    assert (err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-7).all()


@SETTINGS
@given(n=st.integers(1, 24), groups=st.integers(1, 4), group=st.sampled_from([32, 64, 128]), shift=SHIFTS,
       seed=st.integers(0, 2**16))
def test_int4_minmax_round_trip_error_is_at_most_half_a_step_per_group(n: int, groups: int, group: int, shift: float, seed: int) -> None:
    w = _weight(n, groups * group, seed) + shift
    packed, scales, zeros = quantize_int4_minmax(w, group)
    assert packed.dtype is torch.uint8 and packed.shape == (n, groups * group // 2) and scales.shape == (n, groups)
    assert zeros.dtype is torch.uint8 and zeros.shape == (n, groups) and int(zeros.max()) <= 15
    err = (dequantize_int4_minmax(packed, scales, zeros, group) - w).abs().reshape(n, groups, group)
    assert (err <= scales[..., None] / 2 * (1 + 1e-5) + 1e-7).all()


@SETTINGS
@given(n=st.integers(1, 8), k=st.sampled_from([32, 64, 96]), dtype=st.sampled_from([torch.bfloat16, torch.float16]),
       shift=SHIFTS, seed=st.integers(0, 2**16))
def test_minmax_scales_stored_in_low_precision_still_cover_the_range(n: int, k: int, dtype: torch.dtype, shift: float, seed: int) -> None:
    w = (_weight(n, k, seed) + shift).to(dtype)
    q, scale, zeros = quantize_int8_minmax(w)
    assert scale.dtype is dtype
    err = (dequantize_int8_minmax(q, scale, zeros, torch.float64) - w.double()).abs()
    assert (err <= scale.double()[:, None] / 2 * (1 + 1e-5) + 1e-7).all()  # no code clipped at the ends
    packed, scales, zeros4 = quantize_int4_minmax(w, 32)
    err4 = (dequantize_int4_minmax(packed, scales, zeros4, 32, torch.float64) - w.double()).abs().reshape(n, k // 32, 32)
    assert (err4 <= scales.double()[..., None] / 2 * (1 + 1e-5) + 1e-7).all()


@SETTINGS
@given(n=st.integers(1, 8), half=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_uint4_packing_round_trips_and_matches_the_signed_layout(n: int, half: int, seed: int) -> None:
    u = torch.randint(0, 16, (n, 2 * half), generator=torch.Generator().manual_seed(seed))
    packed = pack_uint4(u)
    assert torch.equal(unpack_uint4(packed), u.to(torch.uint8))
    assert torch.equal(packed, pack_int4(u - 8))  # same bytes: the signed format stores q + 8


def test_minmax_keeps_zero_exact_and_codes_span_the_range() -> None:
    w = torch.tensor([[-1.0, 0.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    q, scale, zeros = quantize_int8_minmax(w)
    assert int(q[0].min()) == 0 and int(q[0].max()) == 255 and int(q[0, 1]) == int(zeros[0])  # 0 -> the zero point
    assert float(scale[1]) == 0.0 and int(zeros[1]) == 0  # all-zero row: max == min guarded
    assert int(zeros[2]) == 0 and torch.allclose(dequantize_int8_minmax(q, scale, zeros)[2], w[2])  # constant row
    assert float(dequantize_int8_minmax(q, scale, zeros)[0, 1]) == 0.0


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_asymmetric_beats_symmetric_on_a_skewed_weight_distribution(weights: str) -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.rand(64, 256, generator=gen) * torch.rand(64, 1, generator=gen).add(0.1)  # all positive
    if weights == "int8":
        sym = dequantize_int8(*quantize_int8_per_channel(w))
        asym = dequantize_int8_minmax(*quantize_int8_minmax(w))
    else:
        sym = dequantize_int4(*quantize_int4_grouped(w, 32), 32)
        asym = dequantize_int4_minmax(*quantize_int4_minmax(w, 32), 32)
    sym_err, asym_err = (sym - w).abs().mean(), (asym - w).abs().mean()
    # all-positive: symmetric spends half its codes on negatives, asymmetric uses all of them on
    # [0, max], so its step (and error) is about half (255 vs 127 steps; 15 vs 7)
    assert asym_err < 0.6 * sym_err, (float(asym_err), float(sym_err))


# --- the ops --------------------------------------------------------------------------------


@SETTINGS
@given(m=st.integers(1, 6), n=st.integers(1, 20), k=st.integers(1, 48), bias=st.booleans(), act=ACTIVATIONS,
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]), seed=st.integers(0, 2**16))
def test_linear_w8_matches_dequantize_then_linear(m: int, n: int, k: int, bias: bool, act: str, dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, scale = quantize_int8_per_channel(_weight(n, k, seed, dtype))
    x = torch.randn(2, m, k, generator=gen).to(dtype)  # (B, M, K): the int8 kernel wants 2-dim, so it reshapes
    b = [torch.randn(n, generator=gen).to(dtype)] if bias else []
    got = REGISTRY["linear_w8"].impl(x, q, scale, *b, act)
    want = REGISTRY["linear"].impl(x, dequantize_int8(q, scale, dtype), *b, act)
    tol = 2e-2 if dtype is torch.bfloat16 else 1e-5
    assert got.dtype == dtype and got.shape == (2, m, n)
    assert rel_err(got.double(), want.double()) <= tol


def _w8a8_simulated(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, b: list, act: str) -> torch.Tensor:
    """W8A8 simulated in float: fake-quantize x per token (scale and rounding in f32, as defined),
    dequantize both operands and run a float64 linear."""
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True) / 127
    xq = torch.round(xf / torch.where(s == 0, torch.ones_like(s), s)).clamp(-127, 127).double() * s.double()
    y = F.linear(xq, q.double() * scale.double()[:, None], b[0].double() if b else None)
    return y if act == "none" else NN_ACTIVATIONS[act](y)


@SETTINGS
@given(m=st.integers(1, 40), n=st.integers(1, 20), k=st.integers(1, 48), bias=st.booleans(), act=ACTIVATIONS,
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]), seed=st.integers(0, 2**16))
def test_linear_w8a8_matches_a_float_simulation(m: int, n: int, k: int, bias: bool, act: str, dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, scale = quantize_int8_per_channel(_weight(n, k, seed, dtype))
    x = torch.randn(2, m, k, generator=gen).to(dtype) * torch.rand(2, m, 1, generator=gen).add(0.1).to(dtype)
    x[0, 0] = 0  # an all-zero token: scale 0, exact zeros
    b = [torch.randn(n, generator=gen).to(dtype)] if bias else []
    got = REGISTRY["linear_w8a8"].impl(x, q, scale, *b, act)
    want = _w8a8_simulated(x, q, scale, b, act)
    tol = 2e-2 if dtype is torch.bfloat16 else 1e-5
    assert got.dtype == dtype and got.shape == (2, m, n)
    assert rel_err(got.double(), want) <= tol


def test_w8a8_int_mm_and_float_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    q, scale = quantize_int8_per_channel(_weight(24, 64, 1))
    x = torch.randn(3, 20, 64, generator=gen)
    assert quant._int_mm_fits(x.reshape(-1, 64).to(torch.int8), q)  # CPU torch._int_mm takes any shape
    fast = REGISTRY["linear_w8a8"].impl(x, q, scale, "none")
    monkeypatch.setattr(quant, "_int_mm_fits", lambda a, w: False)
    slow = REGISTRY["linear_w8a8"].impl(x, q, scale, "none")
    assert torch.allclose(fast, slow, rtol=1e-6, atol=1e-6)


def test_per_token_activation_quantization_is_within_half_a_step() -> None:
    x = torch.randn(5, 33, generator=torch.Generator().manual_seed(2)) * torch.arange(1, 6)[:, None]
    x[2] = 0
    xq, s = quantize_activations_per_token(x)
    assert xq.dtype is torch.int8 and s.shape == (5, 1) and float(s[2]) == 0 and not xq[2].any()
    assert int(xq.abs().amax()) == 127
    assert bool(((xq.float() * s - x).abs() <= s / 2 + 1e-7).all())


def test_int_mm_fit_rules_for_cuda_shapes() -> None:
    a = torch.empty(17, 64, dtype=torch.int8, device="meta")
    w = torch.empty(32, 64, dtype=torch.int8, device="meta")
    assert not quant._int_mm_fits(a, w)  # neither CPU nor CUDA
    assert quant._int_mm_fits(torch.zeros(1, 3, dtype=torch.int8), torch.zeros(5, 3, dtype=torch.int8))


@SETTINGS
@given(m=st.integers(1, 6), n=st.integers(1, 20), groups=st.integers(1, 3), group=st.sampled_from([32, 64]),
       bias=st.booleans(), act=ACTIVATIONS, seed=st.integers(0, 2**16))
def test_linear_w4_matches_dequantize_then_linear(m: int, n: int, groups: int, group: int, bias: bool, act: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = groups * group
    packed, scales = quantize_int4_grouped(_weight(n, k, seed), group)
    x = torch.randn(m, k, generator=gen)
    b = [torch.randn(n, generator=gen)] if bias else []
    got = REGISTRY["linear_w4"].impl(x, packed, scales, *b, group, act)
    want = REGISTRY["linear"].impl(x, dequantize_int4(packed, scales, group), *b, act)
    assert rel_err(got, want) <= 1e-5


@SETTINGS
@given(m=st.integers(1, 6), n=st.integers(1, 20), k=st.integers(1, 48), bias=st.booleans(), act=ACTIVATIONS,
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]), seed=st.integers(0, 2**16))
def test_asymmetric_linear_w8_matches_dequantize_then_linear(m: int, n: int, k: int, bias: bool, act: str, dtype: torch.dtype, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, scale, zeros = quantize_int8_minmax(_weight(n, k, seed, dtype) + 0.5)
    x = torch.randn(2, m, k, generator=gen).to(dtype)
    b = [torch.randn(n, generator=gen).to(dtype)] if bias else []
    got = REGISTRY["linear_w8"].impl(x, q, scale, zeros, *b, act, True)
    want = REGISTRY["linear"].impl(x, dequantize_int8_minmax(q, scale, zeros, dtype), *b, act)
    tol = 2e-2 if dtype is torch.bfloat16 else 1e-5
    assert got.dtype == dtype and got.shape == (2, m, n)
    assert rel_err(got.double(), want.double()) <= tol


@SETTINGS
@given(m=st.integers(1, 6), n=st.integers(1, 20), groups=st.integers(1, 3), group=st.sampled_from([32, 64]),
       bias=st.booleans(), act=ACTIVATIONS, seed=st.integers(0, 2**16))
def test_asymmetric_linear_w4_matches_dequantize_then_linear(m: int, n: int, groups: int, group: int, bias: bool, act: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = groups * group
    packed, scales, zeros = quantize_int4_minmax(_weight(n, k, seed) + 0.5, group)
    x = torch.randn(m, k, generator=gen)
    b = [torch.randn(n, generator=gen)] if bias else []
    got = REGISTRY["linear_w4"].impl(x, packed, scales, zeros, *b, group, act, True)
    want = REGISTRY["linear"].impl(x, dequantize_int4_minmax(packed, scales, zeros, group), *b, act)
    assert rel_err(got, want) <= 1e-5


def test_asymmetric_linear_w4_dequantizes_in_row_blocks_for_large_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quant, "_W4_BLOCK_ELEMENTS", 3 * 64)  # 3 output rows per block, 10 rows
    packed, scales, zeros = quantize_int4_minmax(_weight(10, 64, 1) + 1.0, 32)
    x, b = torch.randn(4, 64), torch.randn(10)
    got = REGISTRY["linear_w4"].impl(x, packed, scales, zeros, b, 32, "silu", True)
    assert rel_err(got, F.silu(F.linear(x, dequantize_int4_minmax(packed, scales, zeros, 32), b))) <= 1e-5


def test_linear_w4_dequantizes_in_row_blocks_for_large_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quant, "_W4_BLOCK_ELEMENTS", 3 * 64)  # 3 output rows per block, 10 rows
    packed, scales = quantize_int4_grouped(_weight(10, 64, 1), 32)
    x, b = torch.randn(4, 64), torch.randn(10)
    got = REGISTRY["linear_w4"].impl(x, packed, scales, b, 32, "silu")
    assert rel_err(got, F.silu(F.linear(x, dequantize_int4(packed, scales, 32), b))) <= 1e-5


def test_quantized_linear_inference_rejects_mismatched_operands() -> None:
    x = TensorType(f32, (4, 64))
    w8 = REGISTRY["linear_w8"]
    assert w8.infer([x, TensorType(i8, (16, 64)), TensorType(f32, (16,))], {"activation": "none"}) == (TensorType(f32, (4, 16)),)
    with pytest.raises(InferenceError, match="qweight i8"):
        w8.infer([x, TensorType(u8, (16, 64)), TensorType(f32, (16,))], {"activation": "none"})
    w4 = REGISTRY["linear_w4"]
    with pytest.raises(InferenceError, match="divisible by group_size"):
        w4.infer([TensorType(f32, (4, 48)), TensorType(u8, (16, 24)), TensorType(f32, (16, 1))], {"group_size": 32, "activation": "none"})
    with pytest.raises(InferenceError, match="scales must be"):
        w4.infer([x, TensorType(u8, (16, 32)), TensorType(f32, (16, 1))], {"group_size": 32, "activation": "none"})


def test_asymmetric_quantized_linear_inference_checks_zeros_and_codes() -> None:
    x = TensorType(f32, (4, 64))
    w8, asym = REGISTRY["linear_w8"], {"activation": "none", "asymmetric": True}
    q8, s8, z8 = TensorType(u8, (16, 64)), TensorType(f32, (16,)), TensorType(u8, (16,))
    assert w8.infer([x, q8, s8, z8], asym) == (TensorType(f32, (4, 16)),)
    assert w8.infer([x, q8, s8, z8, TensorType(f32, (16,))], asym) == (TensorType(f32, (4, 16)),)
    with pytest.raises(InferenceError, match="zeros"):
        w8.infer([x, q8, s8], asym)  # the zero points are missing
    with pytest.raises(InferenceError, match="zeros must be u8"):
        w8.infer([x, q8, s8, TensorType(f32, (16,))], asym)  # a bias where the zeros go
    with pytest.raises(InferenceError, match="qweight u8"):
        w8.infer([x, TensorType(i8, (16, 64)), s8, z8], asym)
    with pytest.raises(InferenceError, match="qweight i8"):
        w8.infer([x, q8, s8, z8], {"activation": "none"})  # symmetric wants signed codes
    w4, asym4 = REGISTRY["linear_w4"], {"group_size": 32, "activation": "none", "asymmetric": True}
    p, s4 = TensorType(u8, (16, 32)), TensorType(f32, (16, 2))
    assert w4.infer([x, p, s4, TensorType(u8, (16, 2))], asym4) == (TensorType(f32, (4, 16)),)
    with pytest.raises(InferenceError, match="zeros must be u8 shaped like the scales"):
        w4.infer([x, p, s4, TensorType(u8, (16, 1))], asym4)
    with pytest.raises(InferenceError, match="optional bias"):
        w4.infer([x, p, s4, TensorType(u8, (16, 2)), TensorType(f32, (16,)), TensorType(f32, (16,))], asym4)


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config("llama")).eval()


def _compile_and_run(model: torch.nn.Module, quantization: object) -> tuple:
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(3))
    fn = kiln.compile(model, options=CompileOptions(quantization=quantization))
    with torch.no_grad():
        out, ref = fn(ids).logits, model(ids).logits
    return fn.graph, out, ref


def test_int8_llama_quantizes_every_linear_but_lm_head_and_stays_close(llama: torch.nn.Module) -> None:
    g, out, ref = _compile_and_run(llama, "int8")
    counts = g.op_counts()
    assert counts["linear_w8"] == 8 and counts["linear"] == 1  # fused QKV, o, fused gate-up, down x 2 layers
    lm_head = next(n for n in g.nodes if n.op.name == "linear")
    assert lm_head.inputs[1].name == "lm_head.weight"
    assert rel_err(out, ref) <= 2e-2  # observed 0.0072 (max abs error / max abs logit)


def test_int8_graph_holds_int8_weights_and_no_float_copy_of_them(llama: torch.nn.Module) -> None:
    g, _, _ = _compile_and_run(llama, "int8")
    data = g.constant_data
    float_matrices = {name for name, t in data.items() if t is not None and t.is_floating_point() and t.dim() == 2}
    assert float_matrices == {"model.embed_tokens.weight", "lm_head.weight"}  # skipped by default
    assert sum(t.dtype is torch.int8 for t in data.values() if t is not None) == 8
    for n in g.nodes:
        if n.op.name == "linear_w8":
            assert data[n.inputs[1].name].dtype is torch.int8


def test_int4_llama_group32_runs_and_stays_within_int4_error(llama: torch.nn.Module) -> None:
    g, out, ref = _compile_and_run(llama, QuantScheme(weights="int4", group_size=32))
    assert g.op_counts()["linear_w4"] == 8
    assert all(g.constant_data[n.inputs[1].name].dtype is torch.uint8 for n in g.nodes if n.op.name == "linear_w4")
    assert rel_err(out, ref) <= 0.3  # observed 0.145 on random weights (near-uniform logits amplify it)


def test_int4_default_group_128_keeps_linears_with_smaller_k(llama: torch.nn.Module) -> None:
    g, out, ref = _compile_and_run(llama, "int4")
    # hidden 64 < 128: only the down projections (K = intermediate = 128) are quantized
    assert g.op_counts()["linear_w4"] == 2


@pytest.mark.parametrize("scheme", [QuantScheme(symmetric=False), QuantScheme(weights="int4", group_size=32, symmetric=False)])
def test_asymmetric_llama_quantizes_with_zero_points_and_stays_close(llama: torch.nn.Module, scheme: QuantScheme) -> None:
    g, out, ref = _compile_and_run(llama, scheme)
    op = "linear_w8" if scheme.weights == "int8" else "linear_w4"
    nodes = [n for n in g.nodes if n.op.name == op]
    assert len(nodes) == 8 and all(n.attrs["asymmetric"] for n in nodes)
    for n in nodes:
        assert n.inputs[3].name.endswith(".zero") and g.constant_data[n.inputs[3].name].dtype is torch.uint8
        assert g.constant_data[n.inputs[1].name].dtype is torch.uint8
    assert rel_err(out, ref) <= (2e-2 if scheme.weights == "int8" else 0.3)


def test_w8a8_llama_quantizes_every_linear_but_lm_head_and_stays_close(llama: torch.nn.Module) -> None:
    g, out, ref = _compile_and_run(llama, "w8a8")
    counts = g.op_counts()
    assert counts["linear_w8a8"] == 8 and counts["linear"] == 1 and "linear_w8" not in counts
    assert all(g.constant_data[n.inputs[1].name].dtype is torch.int8 for n in g.nodes if n.op.name == "linear_w8a8")
    assert rel_err(out, ref) <= 3e-2  # observed 0.0094 (weight-only int8: 0.0072)
