"""Triton fused-dequant kernels for linear_w8 / linear_w4 / linear_w8a8 vs the ops' reference.

On CPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): small shapes, every
kernel config pinned so the interpreter really runs each kernel. The interpreter truncates
fp32 -> bf16 casts (the GPU rounds to nearest even), hence bf16's looser tolerance.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import kiln  # noqa: E402
from kiln import ir  # noqa: E402
from kiln.backends.triton import quant_matmul  # noqa: E402
from kiln.backends.triton.matmul import TORCH  # noqa: E402
from kiln.backends.triton.quant_matmul import CONFIGS, GEMM_CONFIGS, GEMV_M, quant_linear_kernel  # noqa: E402
from kiln.ir.dtypes import from_torch  # noqa: E402
from kiln.ir.opset import quant  # noqa: E402
from kiln.options import CompileOptions  # noqa: E402
from kiln.passes import QuantScheme  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
# (op, asymmetric, group_size): every weight format the kernels take
VARIANTS = [("linear_w8", False, 0), ("linear_w8", True, 0), ("linear_w4", False, 32), ("linear_w4", True, 64),
            ("linear_w4", False, 128), ("linear_w4", True, 128)]
GEMMS = [c.name for c in GEMM_CONFIGS]
# every config but hgemv_w4's (inline PTX: CUDA only), the integer gemvs' igemv / kgemv ones
# (symmetric codes, bf16 / fp16 x only) and fp8's tgemv (fp8 only): their own tests below
PORTABLE = sorted(c for c in CONFIGS if not c.startswith(("hgemv", "igemv", "kgemv", "tgemv")))
GEMV_ONE_STEP, GEMV_LOOP = "gemv_16x2048_w8", "gemv_32x512_w4"  # K in one tile; K in 512-column steps
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # sigmoid(-large) in numpy


def _rand(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) + 0.1).to(dtype)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.cpu().double(), b.cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _weights(op: str, asym: bool, group: int, w: torch.Tensor) -> tuple:
    """The op's quantized operands (codes, scales[, zeros]) for the float weight w."""
    if op == "linear_w4":
        return quant.quantize_int4_minmax(w, group) if asym else quant.quantize_int4_grouped(w, group)
    if op == "linear_fp8":
        from kiln.ir.opset.quant_fp8 import quantize_fp8_per_channel

        return quantize_fp8_per_channel(w)
    return quant.quantize_int8_minmax(w) if asym else quant.quantize_int8_per_channel(w)


def _node(op: str, attrs: dict, m: int, n: int, k: int, dtype: torch.dtype, bias: bool, seed: int = 0) -> tuple:
    """A one-node graph and fresh random inputs in IR order: x, codes, scales[, zeros][, bias]."""
    w = _rand((n, k), dtype, seed + 2) * _rand((n, 1), torch.float32, seed + 3).abs().to(dtype)
    vals = [_rand((m, k), dtype, seed + 1), *_weights(op, attrs.get("asymmetric", False), attrs.get("group_size", 0), w)]
    vals += [_rand((n,), dtype, seed + 4)] * bias
    g = ir.Graph()
    ins = [g.add_input(f"a{i}", ir.TensorType(from_torch(v.dtype), tuple(v.shape))) for i, v in enumerate(vals)]
    node = g.add_node(op, ins, attrs)
    g.outputs = list(node.outputs)
    return g, node, [v.to(DEVICE) for v in vals]


def _variant(op: str, asym: bool, group: int, act: str = "silu") -> dict:
    return {"activation": act, "asymmetric": asym, **({"group_size": group} if op == "linear_w4" else {})}


def _check(g: ir.Graph, launcher: quant_matmul.QuantLinearLauncher, vals: list, dtype: torch.dtype) -> None:
    got = launcher(*vals)
    (ref,) = ir.run_graph(g, [v.cpu() for v in vals])
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert _err(got, ref) <= TOL[dtype], _err(got, ref)


@pytest.fixture
def no_torch_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a launcher quietly runs the op's reference instead of a Triton kernel."""
    monkeypatch.setattr(quant_matmul, "torch_reference", lambda *a: pytest.fail("ran the reference, not a Triton kernel"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{'asym' if v[1] else 'sym'}-g{v[2]}")
@pytest.mark.parametrize("config", PORTABLE)
def test_every_config_and_weight_format_matches_the_reference(config: str, variant: tuple, dtype: torch.dtype,
                                                              no_torch_fallback: None) -> None:
    """N = 70 is ragged for every BLOCK_N; int8's K = 300 is ragged for every BLOCK_K and gives the
    split-K matvecs several splits (int4's K is a multiple of the group by definition)."""
    op, asym, group = variant
    m, k = (3 if config.startswith(("matvec", "dmv", "gemv")) else 17), (256 if op == "linear_w4" else 300)
    g, node, vals = _node(op, _variant(op, asym, group), m, 70, k, dtype, True)
    _check(g, quant_linear_kernel(node, config), vals, dtype)


# one pinned config per kernel: (kernel, op, config, rows M it runs); mv_w8 / mv_w4 take M = 17 as
# two 16-row tiles, the dmv kernels one 16-row tile (M <= 16), the gemv kernels M <= 4 rows
RAGGED_KERNELS = [
    ("mv_w8", "linear_w8", quant_matmul.MATVEC_CONFIGS[1].name, (1, 3, 17)),
    ("mv_w4", "linear_w4", quant_matmul.MATVEC_CONFIGS[1].name, (1, 3, 17)),
    ("dmv_w8", "linear_w8", quant_matmul.DMV_W8[1].name, (1, 3)),
    ("dmv_w4", "linear_w4", quant_matmul.DMV_W4[1].name, (1, 3)),
    ("gemv_w8", "linear_w8", GEMV_LOOP, (1, 3)),
    ("gemv_w4", "linear_w4", GEMV_LOOP, (1, 3)),
    ("gemm_w8", "linear_w8", GEMMS[0], (1, 3, 17)),
    ("gemm_w4", "linear_w4", GEMMS[3], (1, 3, 17)),
    ("gemm_a8", "linear_w8a8", GEMMS[3], (1, 3, 17)),
]


@pytest.mark.parametrize(("n", "k", "asym"), [(70, 300, False), (33, 130, True)], ids=["n70-k300-sym", "n33-k130-asym"])
@pytest.mark.parametrize(("kernel", "op", "config", "ms"), RAGGED_KERNELS, ids=[r[0] for r in RAGGED_KERNELS])
def test_each_kernel_masks_ragged_m_n_k_and_unaligned_rows_exactly(kernel: str, op: str, config: str, ms: tuple, n: int,
                                                                   k: int, asym: bool, no_torch_fallback: None) -> None:
    """Ragged M, N and K (int4: N ragged, K a whole number of groups) with x's rows read from a
    wider buffer (row stride K + 3 elements: never a multiple of 16 bytes): every edge load must
    be masked, not wrapped, and the result the reference's to fp32 rounding."""
    group = 32
    if op == "linear_w4":
        k = k - k % group  # 288 / 128: int4's K is a multiple of the group by definition
    attrs = {"activation": "none"} if op == "linear_w8a8" else _variant(op, asym, group, "none")
    for m in ms:
        g, node, vals = _node(op, attrs, m, n, k, torch.float32, True, seed=m + n)
        wide = torch.full((m, k + 3), float("nan"), device=DEVICE)  # NaN past K: read only if a K mask is missing
        wide[:, :k] = vals[0]
        vals[0] = wide[:, :k]
        assert vals[0].stride(0) == k + 3
        _check(g, quant_linear_kernel(node, config), vals, torch.float32)


# (op, asymmetric, group_size, K for one step, K for the looped tiling): int8's K is ragged for
# both, int4's a whole number of groups with a ragged last step (1152 = 2.25 x 512, 1280 = 2.5 x 512)
GEMV_VARIANTS = [("linear_w8", False, 0, 300, 1100), ("linear_w8", True, 0, 300, 1100),
                 ("linear_w4", False, 32, 288, 1152), ("linear_w4", True, 32, 288, 1152),
                 ("linear_w4", False, 128, 256, 1280), ("linear_w4", True, 128, 256, 1280)]


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("config", [GEMV_ONE_STEP, GEMV_LOOP])
@pytest.mark.parametrize("variant", GEMV_VARIANTS, ids=lambda v: f"{v[0]}-{'asym' if v[1] else 'sym'}-g{v[2]}")
def test_gemv_kernels_match_the_reference_in_one_step_and_over_a_ragged_k_loop(
        variant: tuple, config: str, m: int, dtype: torch.dtype, bias: bool, no_torch_fallback: None) -> None:
    """gemv_w8 / gemv_w4 for every weight format at decode row counts, N = 70 ragged for every
    BLOCK_N, K in one tile (no loop) or over several 512-column steps with a ragged last one."""
    op, asym, group, k_one, k_loop = variant
    k = k_one if config == GEMV_ONE_STEP else k_loop
    g, node, vals = _node(op, _variant(op, asym, group, "gelu_tanh"), m, 70, k, dtype, bias, seed=m + k)
    _check(g, quant_linear_kernel(node, config), vals, dtype)


@pytest.mark.parametrize(("op", "config", "k"), [("linear_w8", "gemv_4x4096_w2", 300), ("linear_w8", "gemv_8x1024_w2", 1100),
                                                  ("linear_w8", "gemv_4x8192_w4", 5000), ("linear_w4", "gemv_16x1024_w4", 1280)])
def test_the_tilings_only_the_quantized_gemvs_offer_match_the_reference(op: str, config: str, k: int, no_torch_fallback: None) -> None:
    """GEMV_W8 / GEMV_W4's own tilings: N = 70 ragged for their BLOCK_N, K in one ragged tile or
    over a loop with a ragged last step."""
    from kiln.backends.triton.quant_matmul import GEMV_W4, GEMV_W8

    assert config in [c.name for c in (GEMV_W4 if op == "linear_w4" else GEMV_W8)]
    g, node, vals = _node(op, _variant(op, False, 128 if op == "linear_w4" else 0, "none"), 1, 70, k, torch.bfloat16, True, seed=k)
    _check(g, quant_linear_kernel(node, config), vals, torch.bfloat16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the CPU interpreter's candidate lists first")
def test_gemv_pdl_configs_are_offered_only_on_sm90_cuda_for_constant_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """PDL variants lead the CUDA decode candidates (the integer gemvs', then the fp32 ones) where
    PDL runs (mocked: sm90 and gdc_wait) and every operand but x is a constant; never on CPU,
    where a pinned PDL config launches plainly."""
    from kiln.backends.triton.quant_matmul import DMV_W8, GEMV_M, GEMV_W8, IGEMV_W8, KGEMV_W8, QuantLinearLauncher

    ints = [c.name for c in KGEMV_W8 + IGEMV_W8]  # the integer gemvs, each list PDL first
    pdl, ipdl = [c.name for c in GEMV_W8 if c.pdl], [c.name for c in KGEMV_W8 + IGEMV_W8 if c.pdl]
    plain, iplain = ([c.name for c in cs if not c.pdl] for cs in (GEMV_W8, KGEMV_W8 + IGEMV_W8))
    dmv = [c.name for c in DMV_W8]
    const = QuantLinearLauncher("linear_w8", {"activation": "none"}, False, constant_weights=True)
    fed = QuantLinearLauncher("linear_w8", {"activation": "none"}, False)
    assert not quant_matmul.pdl_available()  # the interpreter never runs gdc calls
    assert const.candidates(1, on_cuda=True) == iplain + plain + dmv + [TORCH]  # pre-Hopper CUDA
    assert const.candidates(1) == dmv + plain + [TORCH]  # CPU: the interpreter runs the first, as before
    monkeypatch.setattr(quant_matmul, "pdl_available", lambda: True)
    assert const.candidates(1, on_cuda=True) == ints + pdl + plain + dmv + [TORCH]
    assert const.candidates(GEMV_M, on_cuda=True)[0] == ipdl[0]
    assert const.candidates(GEMV_M + 1, on_cuda=True) == dmv + [TORCH]  # one weight pass per row: dmv's job
    assert fed.candidates(1, on_cuda=True) == iplain + plain + dmv + [TORCH]  # weights a kernel may write
    assert const.candidates(1) == dmv + plain + [TORCH]

    launches: list[bool] = []
    monkeypatch.setattr(QuantLinearLauncher, "_gemv", lambda self, cfg, x2, q, scale, zeros, bias, y, pdl, pro=None, words=None: launches.append(pdl))
    g, node, vals = _node("linear_w8", _variant("linear_w8", False, 0), 1, 8, 32, torch.float32, False)
    assert not quant_linear_kernel(node).constant_weights  # graph inputs, not constants
    const.run(pdl[0], tuple(v.cpu() for v in vals))
    assert launches == [False]  # CPU tensors: no PDL launch even where the GPU could


def _constant_node(op: str, asym: bool, group: int, m: int, d: int, dtype: torch.dtype) -> tuple:
    """x [m, d] as the graph's input and d x d quantized weights (scaled by 1/sqrt(d), so a chain
    keeps its magnitude) and a bias as graph constants: what the quantize pass makes."""
    w = _rand((d, d), torch.float32, 2) / d**0.5
    params = [*_weights(op, asym, group, w.to(dtype)), _rand((d,), dtype, 4)]
    g = ir.Graph()
    ins = [g.add_input("x", ir.TensorType(from_torch(dtype), (m, d)))]
    ins += [g.add_constant(f"c{i}", p) for i, p in enumerate(params)]
    node = g.add_node(op, ins, _variant(op, asym, group, "none"))
    g.outputs = list(node.outputs)
    return g, node, _rand((m, d), dtype, 1).to(DEVICE), [p.to(DEVICE) for p in params]


@settings(max_examples=14, deadline=None, derandomize=True)
@given(
    variant=st.sampled_from(VARIANTS),
    m=st.sampled_from([1, 3, 16, 17, 40]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    bias=st.booleans(),
    act=st.sampled_from(["none", "relu", "gelu", "gelu_tanh"]),
)
def test_autotuned_launcher_matches_the_reference_over_m_dtypes_and_epilogues(variant: tuple, m: int, dtype: torch.dtype,
                                                                            bias: bool, act: str) -> None:
    op, asym, group = variant
    g, node, vals = _node(op, _variant(op, asym, group, act), m, 24, 128, dtype, bias, seed=m)
    _check(g, quant_linear_kernel(node), vals, dtype)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize(("config", "m"), [(GEMMS[3], 1), (GEMMS[3], 5), *((c, 33) for c in GEMMS)])
def test_w8a8_configs_match_the_reference_to_fp32_rounding(config: str, m: int, static: bool, no_torch_fallback: None) -> None:
    """The same integers, scales and rounding order as the reference: fp32 agrees to the last bits
    (only the bias add and activation's order of fp32 ops may differ), K = 300 ragged."""
    attrs = {"activation": "gelu_tanh", **({"act_scale": 0.02} if static else {})}  # static: |x| > 2.54 saturates
    g, node, vals = _node("linear_w8a8", attrs, m, 70, 300, torch.float32, True, seed=m)
    _check(g, quant_linear_kernel(node, config), vals, torch.float32)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize(("config", "k"), [(GEMV_ONE_STEP, 300), (GEMV_LOOP, 1100)], ids=["one-step", "k-loop"])
def test_gemv_i8_matches_the_w8a8_reference(config: str, k: int, m: int, static: bool, dtype: torch.dtype, bias: bool,
                                            no_torch_fallback: None) -> None:
    """linear_w8a8 at decode rows in one kernel: each row's token scale (or the static one, which
    saturates |x| > 2.54), x rounded to int8 codes, exact int32 code products (dp4a's sum, emulated
    where interpreted) and the reference's epilogue order; fp32 agrees to the last bits. A zero
    run in row 0 and, with three rows, an all-zero row (s = 0). N = 70 ragged, K one step or looped."""
    attrs = {"activation": "gelu_tanh" if bias else "none", **({"act_scale": 0.02} if static else {})}
    g, node, vals = _node("linear_w8a8", attrs, m, 70, k, dtype, bias, seed=m + k)
    vals[0][0, :5] = 0.0
    if m == 3:
        vals[0][1] = 0.0
    _check(g, quant_linear_kernel(node, config), vals, dtype)


def test_gemv_i8_takes_unaligned_codes_and_leaves_k_not_a_multiple_of_4_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Codes whose rows are not whole aligned int32 words are copied (then read after the wait);
    K % 4 != 0 is not offered the gemv, and a pinned gemv config runs the reference there."""
    g, node, vals = _node("linear_w8a8", {"activation": "none"}, 1, 24, 64, torch.float32, False)
    wide = torch.zeros((24, 65), dtype=torch.int8, device=DEVICE)
    wide[:, 1:] = vals[1]
    codes = wide[:, 1:]  # rows 65 bytes apart, starting at byte 1
    assert not quant_matmul._word_aligned(codes)
    _check(g, quant_linear_kernel(node, GEMV_ONE_STEP), [vals[0], codes, vals[2]], torch.float32)
    g, node, vals = _node("linear_w8a8", {"activation": "none"}, 1, 24, 66, torch.float32, False)
    launcher = quant_linear_kernel(node)
    assert not any(c.startswith("gemv") for c in launcher.candidates(1, True, 66))
    assert any(c.startswith("gemv") for c in launcher.candidates(1, True, 64))
    assert not any(c.startswith("gemv") for c in launcher.candidates(GEMV_M + 1, True, 64))
    ran: list[bool] = []
    reference = quant_matmul.torch_reference
    monkeypatch.setattr(quant_matmul, "torch_reference", lambda *a: ran.append(True) or reference(*a))
    pinned = quant_linear_kernel(node, GEMV_ONE_STEP)
    _check(g, pinned, vals, torch.float32)
    assert ran


IGEMV_ONE_STEP, IGEMV_LOOP = "igemv_16x2048_w8", "igemv_32x512_w4"


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("x_scale", [1.0, 300.0, 1e-4], ids=["x1", "x300", "x1e-4"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize(("config", "k"), [(IGEMV_ONE_STEP, 300), (IGEMV_LOOP, 1100)], ids=["one-step", "k-loop"])
def test_igemv_matches_the_int8_reference(config: str, k: int, m: int, x_scale: float, dtype: torch.dtype, bias: bool,
                                          no_torch_fallback: None) -> None:
    """Weight-only int8 in integer arithmetic: x in 15-bit fixed point per row (its power of two
    follows the row's largest element, so large and tiny activations keep their precision), two
    dp4a per four codes (emulated where interpreted). N = 70 ragged, K one step or looped."""
    g, node, vals = _node("linear_w8", _variant("linear_w8", False, 0, "gelu_tanh" if bias else "none"), m, 70, k, dtype, bias,
                          seed=m + k)
    vals[0] = (vals[0].float() * x_scale).to(dtype)
    vals[0][0, :5] = 0.0
    _check(g, quant_linear_kernel(node, config), vals, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize(("config", "group", "k", "x_scale", "bias"), [
    (IGEMV_ONE_STEP, 32, 288, 1.0, True), (IGEMV_LOOP, 32, 1152, 300.0, False), (IGEMV_LOOP, 128, 1280, 1e-4, True),
    ("igemv_16x1024_w4", 64, 1088, 1.0, False)], ids=["g32-one-step", "g32-loop-large-x", "g128-loop-tiny-x", "g64-ragged"])
def test_igemv_matches_the_int4_reference(config: str, group: int, k: int, x_scale: float, bias: bool, m: int, dtype: torch.dtype,
                                          no_torch_fallback: None) -> None:
    """Symmetric int4 in integer arithmetic (gemv_i4): the even / odd columns' codes split from
    each word, four unsigned-by-signed dp4a per eight weights and the offset 8 taken off per
    group. N = 70 ragged; K in one step, looped, or with a ragged last step of whole groups."""
    g, node, vals = _node("linear_w4", _variant("linear_w4", False, group, "gelu_tanh" if bias else "none"), m, 70, k, dtype,
                          bias, seed=m + k)
    vals[0] = (vals[0].float() * x_scale).to(dtype)
    vals[0][0, :5] = 0.0
    _check(g, quant_linear_kernel(node, config), vals, dtype)


@pytest.mark.parametrize(("op", "config", "group", "m", "k", "dtype", "x_scale", "bias"), [
    ("linear_w4", "kgemv_8x1024_w1", 32, 1, 288, torch.bfloat16, 1.0, True),
    ("linear_w4", "kgemv_8x1024_w1", 128, 3, 1152, torch.float16, 300.0, False),
    ("linear_w4", "kgemv_8x2048_w2", 64, 1, 1088, torch.bfloat16, 1e-4, True),
    ("linear_w8", "kgemv_8x1024_w2", 0, 1, 1100, torch.bfloat16, 1.0, True),
    ("linear_w8", "kgemv_8x1024_w2", 0, 3, 300, torch.float16, 300.0, False),
], ids=["int4-g32-partial-step", "int4-g128-rows3-loop-ragged-x300", "int4-g64-tiny-x", "int8-loop-ragged", "int8-rows3-partial-x300"])
def test_kgemv_matches_the_reference(op: str, config: str, group: int, m: int, k: int, dtype: torch.dtype, x_scale: float,
                                     bias: bool, no_torch_fallback: None) -> None:
    """kgemv_i4 / kgemv_i8: the integer gemvs with every thread along K (rows in registers, x's
    codes made once per step, one dp4a chain per row and 32- / 16-column chunk). N = 70 ragged;
    K shorter than one step, looped with a ragged last step (whole chunks, codes past K left
    undefined: x is 0 there), several rows, large and tiny activations."""
    g, node, vals = _node(op, _variant(op, False, group, "gelu_tanh" if bias else "none"), m, 70, k, dtype, bias, seed=m + k)
    vals[0] = (vals[0].float() * x_scale).to(dtype)
    vals[0][0, :5] = 0.0
    _check(g, quant_linear_kernel(node, config), vals, dtype)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreting NaN rows
def test_igemv_rows_with_inf_nan_zeros_or_tiny_values() -> None:
    """Per row: NaN or inf anywhere gives NaN (not a wrapped integer); an all-zero row gives the
    bias; a row of values near 1e-30 (bf16 reaches it; its power of two is 2^113) keeps its precision."""
    g, node, vals = _node("linear_w8", _variant("linear_w8", False, 0, "none"), 4, 40, 64, torch.bfloat16, True)
    x = vals[0]
    x[0, 3], x[1, 7] = float("nan"), float("inf")
    x[2] = 0.0
    x[3] = (x[3].float() * 1e-30).to(torch.bfloat16)
    got = quant_linear_kernel(node, IGEMV_ONE_STEP)(*vals).cpu()
    (ref,) = ir.run_graph(g, [v.cpu() for v in vals])
    assert got[:2].isnan().all()
    assert torch.equal(got[2], ref[2])
    tiny = (got[3].double() - vals[3].cpu().double()) * 1e30  # the bias (~1) dominates: compare x's part alone
    want = (ref[3].double() - vals[3].cpu().double()) * 1e30
    assert _err(tiny, want) <= 1e-2, _err(tiny, want)


def test_igemv_is_offered_for_symmetric_int8_with_half_activations_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates: the integer gemvs (kgemv, then igemv) lead on CUDA for symmetric int8 / int4 at
    <= GEMV_M rows with bf16 / fp16 x and K % 4 == 0; never for fp32 x, asymmetric codes, other K,
    W8A8 (gemv_i8 under the gemv names) or on CPU. A pinned igemv config that does not apply runs the reference."""
    sym = quant_matmul.QuantLinearLauncher("linear_w8", {"activation": "none"}, False)
    asym = quant_matmul.QuantLinearLauncher("linear_w8", {"activation": "none", "asymmetric": True}, False)
    w4 = quant_matmul.QuantLinearLauncher("linear_w4", {"activation": "none", "group_size": 64}, False)
    w4_asym = quant_matmul.QuantLinearLauncher("linear_w4", {"activation": "none", "group_size": 64, "asymmetric": True}, False)
    a8 = quant_matmul.QuantLinearLauncher("linear_w8a8", {"activation": "none"}, False)
    ints = ("igemv", "kgemv")
    for launcher, rows, dtype in ((w4, 1, torch.bfloat16), (sym, 1, torch.bfloat16), (sym, GEMV_M, torch.float16)):
        cands = launcher.candidates(rows, True, 2048, dtype)
        assert cands[0].startswith("kgemv") and any(c.startswith("igemv") for c in cands)
        assert max(i for i, c in enumerate(cands) if c.startswith(ints)) < min(i for i, c in enumerate(cands) if not c.startswith(ints))
    for cands in (sym.candidates(1, True, 2048, torch.float32), sym.candidates(1, True, 2046, torch.bfloat16),
                  sym.candidates(GEMV_M + 1, True, 2048, torch.bfloat16), sym.candidates(1, False, 2048, torch.bfloat16),
                  asym.candidates(1, True, 2048, torch.bfloat16), w4_asym.candidates(1, True, 2048, torch.bfloat16),
                  w4.candidates(1, True, 2048, torch.float32), a8.candidates(1, True, 2048, torch.bfloat16)):
        assert not any(c.startswith(ints) for c in cands)
    ran: list[bool] = []
    reference = quant_matmul.torch_reference
    monkeypatch.setattr(quant_matmul, "torch_reference", lambda *a: ran.append(True) or reference(*a))
    for asymmetric, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        g, node, vals = _node("linear_w8", _variant("linear_w8", asymmetric, 0, "none"), 1, 24, 64, dtype, False)
        _check(g, quant_linear_kernel(node, IGEMV_ONE_STEP), vals, dtype)
    assert len(ran) == 2


@pytest.mark.parametrize("config", [GEMMS[3], GEMV_ONE_STEP])
def test_w8a8_activation_rounding_is_half_to_even_like_torch_round(config: str, no_torch_fallback: None) -> None:
    """max|x| = 127 makes s = 1, so x / s lands exactly on .5 ties; the weight is 127 * identity with
    scale 1/127, so y shows x_q itself (times 1 in fp32)."""
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0] * 4], dtype=torch.float32)  # (1, 32)
    q, scale = quant.quantize_int8_per_channel(torch.eye(32))
    g = ir.Graph()
    ins = [g.add_input(f"a{i}", ir.TensorType(from_torch(v.dtype), tuple(v.shape))) for i, v in enumerate((x, q, scale))]
    node = g.add_node("linear_w8a8", ins, {"activation": "none"})
    g.outputs = list(node.outputs)
    got = quant_linear_kernel(node, config)(x.to(DEVICE), q.to(DEVICE), scale.to(DEVICE))
    (ref,) = ir.run_graph(g, [x, q, scale])
    assert torch.equal(got.cpu(), ref)
    assert ref[0, :8].tolist() == pytest.approx([0, 2, 2, 0, -2, -2, 126, 127], abs=1e-5)


def test_reference_candidate_and_empty_inputs_match_the_reference() -> None:
    g, node, vals = _node("linear_w4", _variant("linear_w4", True, 32, "relu"), 4, 6, 64, torch.float16, True)
    _check(g, quant_linear_kernel(node, TORCH), vals, torch.float16)
    g, node, vals = _node("linear_w8", _variant("linear_w8", False, 0), 1, 6, 8, torch.float32, False)
    assert quant_linear_kernel(node, GEMMS[0])(_rand((0, 8), torch.float32, 1).to(DEVICE), *vals[1:]).shape == (0, 6)


def test_unsupported_nodes_stay_in_pytorch() -> None:
    g, node, _ = _node("linear_w4", _variant("linear_w4", False, 32), 2, 4, 64, torch.float32, False)
    assert quant_linear_kernel(node) is not None
    g2 = ir.Graph()
    x = g2.add_input("x", ir.TensorType(ir.by_name("f32"), (2, 96)))
    p = g2.add_input("p", ir.TensorType(ir.by_name("u8"), (4, 48)))
    s = g2.add_input("s", ir.TensorType(ir.by_name("f32"), (4, 2)))
    assert quant_linear_kernel(g2.add_node("linear_w4", [x, p, s], {"group_size": 48})) is None  # not a power of two
    assert quant_linear_kernel(g2.add_node("relu", [x], {})) is None
    with pytest.raises(ValueError, match="unknown quantized matmul config"):
        quant_matmul.QuantLinearLauncher("linear_w8", {"activation": "none"}, False, config="gemm_1x1x1")


def test_autotune_keys_by_m_bucket_offers_the_reference_and_matvecs_only_for_weight_only_small_m(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []

    def fake_choose(key: str, candidates: dict, on_cuda: bool) -> str:
        calls.append((key, list(candidates)))
        return next(iter(candidates))

    monkeypatch.setattr(quant_matmul, "choose", fake_choose)
    g, node, vals = _node("linear_w8", _variant("linear_w8", False, 0), 3, 5, 32, torch.float32, True)
    launcher = quant_linear_kernel(node)
    launcher(*vals)
    launcher(_rand((4, 32), torch.float32, 9).to(DEVICE), *vals[1:])  # M = 4: the same bucket, no new choice
    launcher(_rand((40, 32), torch.float32, 9).to(DEVICE), *vals[1:])
    assert [key for key, _ in calls] == ["linear_w8|float32|silu|g0|asym=0|static=0|bias=1|M4|N5|K32",
                                         "linear_w8|float32|silu|g0|asym=0|static=0|bias=1|M64|N5|K32"]
    small, large = calls[0][1], calls[1][1]
    assert small[0].startswith("dmv") and small[-1] == TORCH
    assert not any(c.startswith(("matvec", "dmv")) for c in large) and large[-1] == TORCH
    g, node, vals = _node("linear_w8a8", {"activation": "none"}, 2, 5, 32, torch.float32, False)
    quant_linear_kernel(node)(*vals)
    assert not any(c.startswith("matvec") for c in calls[-1][1]) and calls[-1][1][-1] == TORCH


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA autotuning may rightly pick the reference")
@pytest.mark.parametrize(("quantization", "op", "tol"), [
    ("int8", "linear_w8", 1e-5),
    ("int4", "linear_w4", 1e-5),
    (QuantScheme(weights="int4", group_size=32, symmetric=False), "linear_w4", 1e-5),
    ("w8a8", "linear_w8a8", 1e-5),  # observed 8e-8: the layers' x_q agree bit for bit
], ids=["int8", "int4", "int4-asym-g32", "w8a8"])
def test_compiled_quantized_mlp_runs_every_linear_as_a_triton_kernel(quantization: object, op: str, tol: float,
                                                                    no_torch_fallback: None) -> None:
    """Linear + SiLU + Linear: both quantized linears launch kernels (the matvec at M = 3, the
    GEMM at M = 20) and agree with the reference backend under the same quantization."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.SiLU(), torch.nn.Linear(256, 128)).eval()
    x = _rand((3, 128), torch.float32, 1)
    fn = kiln.compile(model, (x,), options=CompileOptions(backend="triton", quantization=quantization))
    ref_fn = kiln.compile(model, (x,), options=CompileOptions(backend="reference", quantization=quantization))
    assert [n.op.name for n in fn.graph.nodes if n.op.category == "matmul"] == [op, op]
    assert fn.plan.kernels == 2
    for m in (3, 20):
        x = _rand((m, 128), torch.float32, m)
        with torch.no_grad():
            assert _err(fn(x), ref_fn(x)) <= tol


# --- CUDA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", [*VARIANTS, ("linear_w8a8", False, 0)], ids=lambda v: f"{v[0]}-{int(v[1])}-g{v[2]}")
@pytest.mark.parametrize("config", PORTABLE)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_configs_match_the_reference_at_model_shapes(config: str, variant: tuple, dtype: torch.dtype) -> None:
    from triton.runtime.errors import OutOfResources

    op, asym, group = variant
    if op == "linear_w8a8" and config.startswith(("matvec", "gemv")):
        pytest.skip("W8A8 has no matvec kernel (its small-M path is the 16-row GEMM tile)")
    m = 7 if config.startswith("matvec") else 3 if config.startswith("gemv") else 300
    attrs = {"activation": "gelu_tanh"} if op == "linear_w8a8" else _variant(op, asym, group, "gelu_tanh")
    g, node, vals = _node(op, attrs, m, 1000, 2048, dtype, True)
    try:
        _check(g, quant_linear_kernel(node, config), vals, dtype)
    except OutOfResources:  # the largest tiles may exceed shared memory; autotune skips them
        pytest.skip(f"{config} does not fit this GPU")


@pytest.mark.parametrize("m", [1, 16, 512])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autotuned_launcher_is_correct_and_replays_in_a_cuda_graph(m: int) -> None:
    g, node, vals = _node("linear_w4", _variant("linear_w4", False, 128), m, 2048, 1024, torch.bfloat16, False)
    launcher = quant_linear_kernel(node)
    _check(g, launcher, vals, torch.bfloat16)  # the first call tunes, outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = launcher(*vals)
    graph.replay()
    torch.cuda.synchronize()
    (ref,) = ir.run_graph(g, [v.cpu() for v in vals])
    assert _err(out, ref) <= TOL[torch.bfloat16]


@pytest.mark.parametrize(("op", "asym", "group"), [("linear_w8", False, 0), ("linear_w4", True, 128)],
                         ids=["int8", "int4-asym-g128"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pdl_gemv_chained_twice_in_a_cuda_graph_reads_each_input_after_its_writer(
        op: str, asym: bool, group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """y = f(f(x)) with a PDL gemv, captured once and replayed on fresh x: the second launch reads
    the first one's output, so a read before `gdc_wait` (or a store before it) shows as a wrong y."""
    if not quant_matmul.pdl_available():
        pytest.skip("PDL needs sm90+ and a Triton with gdc_wait")
    g, node, x, params = _constant_node(op, asym, group, 1, 2048, torch.bfloat16)
    launcher = quant_linear_kernel(node, "gemv_16x2048_w8_pdl")
    launches: list[bool] = []
    gemv = quant_matmul.QuantLinearLauncher._gemv
    pdl_of = lambda self, *a: inspect.signature(gemv).bind(self, *a).arguments["pdl"]  # noqa: E731
    monkeypatch.setattr(quant_matmul.QuantLinearLauncher, "_gemv", lambda self, *a: (launches.append(pdl_of(self, *a)), gemv(self, *a)))
    launcher(x, *params)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mid = launcher(x, *params)
        out = launcher(mid, *params)
    assert launches == [True] * 3
    for seed in (5, 6, 7):
        x.copy_(_rand(tuple(x.shape), torch.bfloat16, seed))
        graph.replay()
        torch.cuda.synchronize()
        (ref_mid,) = ir.run_graph(g, [x.cpu()])
        (ref_out,) = ir.run_graph(g, [mid.cpu()])
        assert _err(mid, ref_mid) <= TOL[torch.bfloat16] and _err(out, ref_out) <= TOL[torch.bfloat16]


def test_cuda_candidates_are_the_gemv_and_tensor_core_matvecs_and_gemms_for_every_shape() -> None:
    """On CUDA: decode gets the dmv tilings (+ PyTorch), batch-1 decode the gemv ones before them
    (the integer gemvs first); the GEMMs (prefill, W8A8) whatever the shape (ragged edges are
    masked and GPU-tested)."""
    from kiln.backends.triton.quant_matmul import (
        DMV_W4,
        DMV_W8,
        GEMV_W4,
        GEMV_W8,
        IGEMV_W4,
        IGEMV_W8,
        KGEMV_W4,
        KGEMV_W8,
        QuantLinearLauncher,
    )

    w8 = QuantLinearLauncher("linear_w8", {"activation": "none"}, False)
    w4 = QuantLinearLauncher("linear_w4", {"activation": "none", "group_size": 128}, False)
    a8 = QuantLinearLauncher("linear_w8a8", {"activation": "none"}, False)
    assert w8.candidates(2, on_cuda=True) == [c.name for cs in (KGEMV_W8, IGEMV_W8, GEMV_W8, DMV_W8) for c in cs if not getattr(c, "pdl", False)] + [TORCH]
    assert w4.candidates(1, on_cuda=True) == [c.name for cs in (KGEMV_W4, IGEMV_W4, GEMV_W4, DMV_W4) for c in cs if not getattr(c, "pdl", False)] + [TORCH]
    assert w4.candidates(16, on_cuda=True) == [c.name for c in DMV_W4] + [TORCH]
    assert any(c in GEMMS for c in w8.candidates(17, on_cuda=True)) and any(c in GEMMS for c in a8.candidates(1, on_cuda=True))
    assert w8.candidates(17, on_cuda=True) == w8.candidates(17) and w8.candidates(17)[-1] == TORCH


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the CPU interpreter's candidate lists first")
def test_hgemv_w4_is_offered_only_for_one_row_of_symmetric_constant_int4_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed-f16 int4 gemv (inline PTX) follows the integer gemvs in the CUDA candidates at
    M = 1 for symmetric int4 with constant weights, and is never offered elsewhere: not on CPU or under the
    interpreter (it cannot run PTX), not for zero points, more rows, int8 or weights a kernel may write."""
    from kiln import debug
    from kiln.backends.triton.quant_matmul import HGEMV_W4, IGEMV_W4, KGEMV_W4, QuantLinearLauncher

    def launcher(op: str = "linear_w4", asym: bool = False, const: bool = True) -> QuantLinearLauncher:
        return QuantLinearLauncher(op, _variant(op, asym, 128 if op == "linear_w4" else 0), False, constant_weights=const)

    half = {c.name for c in HGEMV_W4}
    offered = lambda names: [c for c in names if c in half]  # noqa: E731
    assert not offered(launcher().candidates(1, on_cuda=True))  # this suite runs interpreted
    monkeypatch.setattr(debug, "TRITON_INTERPRET", False)
    monkeypatch.setattr(quant_matmul, "pdl_available", lambda: True)
    ints = [c.name for c in KGEMV_W4 + IGEMV_W4]
    cands = launcher().candidates(1, on_cuda=True)
    assert cands[:len(ints) + len(half)] == ints + [c.name for c in HGEMV_W4]
    monkeypatch.setattr(quant_matmul, "pdl_available", lambda: False)
    cands = launcher().candidates(1, on_cuda=True)
    assert cands[len(ints) // 2:(len(ints) + len(half)) // 2] == [c.name for c in HGEMV_W4 if not c.pdl]
    for other in (launcher().candidates(1), launcher().candidates(2, on_cuda=True), launcher(asym=True).candidates(1, on_cuda=True),
                  launcher(const=False).candidates(1, on_cuda=True), launcher("linear_w8").candidates(1, on_cuda=True)):
        assert not offered(other)


def test_half_scales_keep_every_group_scale_within_f16_normals_or_decline() -> None:
    """The f16 copy is the scales times one power of two (largest in [1, 2)), exact for bf16
    scales within f16's normal range; spreads beyond HALF_SCALE_RANGE, all-zero and
    non-finite scales are declined (the kernel is not offered for that weight)."""
    from kiln.backends.triton.quant_matmul import HALF_SCALE_RANGE, half_scales

    s = (torch.rand(64, 16, generator=torch.Generator().manual_seed(0)) * 0.02 + 1e-4).to(torch.bfloat16)
    s[3, 5] = 0.0  # an all-zero group: allowed
    s16, rescale = half_scales(s)
    assert s16.dtype == torch.float16 and 1.0 <= s16.float().abs().max().item() < 2.0
    assert torch.equal(s16.float() * rescale, s.float())  # a power of two: exact
    wide = s.clone()
    wide[0, 0] = s.float().abs().max() * HALF_SCALE_RANGE / 4
    assert half_scales(wide) is None
    assert half_scales(torch.zeros(4, 4)) is None
    assert half_scales(torch.tensor([[1.0, float("inf")]])) is None


def test_a_pinned_hgemv_config_runs_the_reference_where_the_kernel_cannot_run() -> None:
    """On CPU (and under the interpreter) a pinned hgemv config is a config that does not apply:
    the op's reference runs, with the reference's result."""
    g, node, vals = _node("linear_w4", _variant("linear_w4", False, 128, "none"), 1, 40, 512, torch.bfloat16, True)
    node_launcher = quant_linear_kernel(node, "hgemv_16x512_w4_f4")
    _check(g, node_launcher, vals, torch.bfloat16)


_SM90_COUNTS = """
import json, re, sys, triton
from triton.backends.compiler import GPUTarget
from kiln.backends.triton.quant_kernels import kernel_source
from kiln.backends.triton.cache import load_module
kernel, sig, consts, warps, patterns = json.loads(sys.argv[1])
fn = getattr(load_module(kernel_source("silu", False)), kernel)
order = list(fn.arg_names)
src = triton.compiler.ASTSource(fn=fn, signature={a: sig.get(a, "constexpr") for a in order},
                                constexprs={(order.index(k),): v for k, v in consts.items()})
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["ptx"]
print(json.dumps([len(re.findall(p, ptx)) for p in patterns]))
"""


def _sm90_counts(kernel: str, sig: dict, consts: dict, warps: int, patterns: list[str]) -> list[int]:
    """How often each regex occurs in `kernel`'s PTX compiled for sm90 without a GPU (in a process
    of its own: this suite's interpreter patches triton.language); skips without a CUDA toolchain."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _SM90_COUNTS, json.dumps([kernel, sig, consts, warps, patterns])], env=env,
                         capture_output=True, text=True, timeout=180)
    if run.returncode != 0:
        if "ptxas" in run.stderr or "cuda" in run.stderr.lower() and "not found" in run.stderr.lower():
            pytest.skip("no CUDA toolchain in this Triton build")
        raise AssertionError(run.stderr[-2000:])
    return json.loads(run.stdout)


def test_hgemv_w4_compiles_for_hopper_to_packed_f16_arithmetic() -> None:
    """The inline PTX assembles for sm90 without a GPU: per four bytes (one call) four lop3 and
    six fma.rn.f16x2 (two to exact codes, four products); a 16 x 512 step of 4 groups is 4096
    bytes, 32 per thread of 4 warps, 8 calls; K = 1280 is 3 steps, the last one half masked: 24 calls."""
    sig = {"x": "*bf16", "w": "*u8", "s16": "*fp16", "b": "*bf16", "y": "*bf16", "N": "i32", "rescale": "fp32", "swn": "i32", "ssn": "i32"}
    consts = {"sxk": 1, "K": 1280, "KP": 2048, "HAS_BIAS": True, "PDL": False, "GS": 128, "BLOCK_N": 16, "BLOCK_K": 512, "FLUSH": 4}
    fma, lop3 = _sm90_counts("hgemv_w4", sig, consts, 4, [r"fma\.rn\.f16x2", r"lop3\.b32"])
    assert (fma, lop3) == (6 * 24, 4 * 24)


@pytest.mark.parametrize(("weight_only", "block_n", "block_k", "warps", "k", "calls", "divs"),
                         [(False, 16, 2048, 8, 2048, 32, 9), (False, 4, 4096, 2, 5632, 128, 129), (True, 16, 2048, 8, 2048, 64, 0)],
                         ids=["w8a8-one-step", "w8a8-ragged-loop", "weight-only"])
def test_gemv_i8_compiles_for_hopper_to_dp4a(weight_only: bool, block_n: int, block_k: int, warps: int, k: int, calls: int,
                                             divs: int) -> None:
    """One dp4a per four codes (two weight-only: x's high and low bytes) and nothing wider per
    weight: a 16 x 2048 step is 8192 words, 32 per thread of 8 warps; 4 x 4096 over K = 5632 is
    two steps (the second ragged) of 4096 words, 64 per thread of 2 warps. W8A8 divides (div.rn)
    once per x element of a step per thread, not once per weight: 2048 / 256 = 8 and
    2 x 4096 / 64 = 128, plus the token scale's one; weight-only multiplies by a power of two instead."""
    sig = {"x": "*bf16", "w": "*i32", "sc": "*bf16", "b": "*bf16", "y": "*bf16", "pr": "*bf16", "pg": "*bf16", "ps": "*bf16",
           "eps": "fp32", "N": "i32", "sxm": "i32", "swn": "i32", "act_scale": "fp32"}
    consts = {"sxk": 1, "M": 1, "K": k, "KP": 1 << (k - 1).bit_length(), "HAS_BIAS": True, "PDL": False, "PRO": 0,
              "WEIGHT_ONLY": weight_only, "STATIC": False, "ASM": True, "BLOCK_M": 1, "BLOCK_N": block_n, "BLOCK_K": block_k}
    assert _sm90_counts("gemv_i8", sig, consts, warps, [r"dp4a\.s32\.s32", r"div\.rn\.f32"]) == [calls, divs]


def test_gemv_i4_compiles_for_hopper_to_unsigned_dp4a() -> None:
    """Four dp4a.u32.s32 per word of eight int4 codes (even / odd columns x x's high / low bytes)
    and no float conversion per weight: a 16 x 1024 step (groups of 128) is 2048 words, 16 per
    thread of 4 warps; K = 2048 is two steps: 128 calls."""
    sig = {"x": "*bf16", "w": "*i32", "sc": "*bf16", "b": "*bf16", "y": "*bf16", "pr": "*bf16", "pg": "*bf16", "ps": "*bf16",
           "eps": "fp32", "N": "i32", "sxm": "i32", "swn": "i32", "ssn": "i32"}
    consts = {"sxk": 1, "ssg": 1, "M": 1, "K": 2048, "KP": 2048, "HAS_BIAS": True, "PDL": False, "PRO": 0, "ASM": True, "GS": 128,
              "BLOCK_M": 1, "BLOCK_N": 16, "BLOCK_K": 1024}
    assert _sm90_counts("gemv_i4", sig, consts, 4, [r"dp4a\.u32\.s32", r"dp4a\.s32"]) == [128, 0]


def test_kgemv_compiles_for_hopper_with_no_shuffle_per_step_and_x_bytes_once_for_all_rows() -> None:
    """kgemv's structure, from its sm90 PTX without a GPU: int4 four dp4a.u32 per word and row (a
    16 x 1024 step with one warp is four words per thread and row; K = 2048 is two steps) plus
    four per word for the chunk's offset, not per row; int8 two per word and row. Its shuffles
    are the final reductions only (as many at K = 4096 as at 2048; gemv_i4 reduced every step),
    and x's byte packing (prmt) is the same for 8 rows as for 16: once per thread and step."""
    sig = {"x": "*bf16", "w": "*i32", "sc": "*bf16", "b": "*bf16", "y": "*bf16", "pr": "*bf16", "pg": "*bf16", "ps": "*bf16",
           "eps": "fp32", "N": "i32", "sxm": "i32", "swn": "i32", "ssn": "i32"}
    base = {"sxk": 1, "ssg": 1, "M": 1, "HAS_BIAS": True, "PDL": False, "PRO": 0, "ASM": True, "GS": 128, "BLOCK_M": 1, "BLOCK_K": 1024}

    def counts(kernel: str, k: int, rows: int, warps: int, patterns: list[str]) -> list[int]:
        consts = {**base, "K": k, "KP": k, "BLOCK_N": rows}
        if kernel == "kgemv_i8":
            consts = {c: v for c, v in consts.items() if c not in ("ssg", "GS")}
        return _sm90_counts(kernel, {a: t for a, t in sig.items() if kernel != "kgemv_i8" or a != "ssn"}, consts, warps, patterns)

    pats = [r"dp4a\.u32\.s32", r"dp4a\.s32\.s32", r"shfl\.sync", r"prmt\.b32"]
    u4, s4, shfl, prmt = counts("kgemv_i4", 2048, 16, 1, pats)
    assert (u4, s4) == (2 * 16 * 4 * 4, 2 * 4 * 4)
    assert counts("kgemv_i4", 4096, 16, 1, pats[2:3]) == [shfl]
    assert counts("kgemv_i4", 2048, 8, 1, pats[3:]) == [prmt] and prmt > 0
    assert counts("gemv_i4", 2048, 16, 1, pats[2:3])[0] > 10 * shfl
    assert counts("kgemv_i8", 2048, 16, 2, pats[1:2]) == [2 * 16 * 4 * 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize(("n", "k", "group", "bias", "act", "x_scale"),
                         [(1000, 2048, 128, True, "gelu_tanh", 1.0), (70, 1280, 32, False, "none", 3e3), (64, 5632, 64, True, "silu", 1e-5)],
                         ids=["g128-bias-gelu", "ragged-n-k-g32-large-x", "g64-tiny-x"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_hgemv_w4_matches_the_reference(dtype: torch.dtype, n: int, k: int, group: int, bias: bool, act: str,
                                              x_scale: float, no_torch_fallback: None) -> None:
    """Every hgemv tiling (PDL where it runs) against the reference: ragged N, K that is not a
    multiple of the tile's step (the step halves), x large and tiny (its power-of-two scaling)."""
    from kiln.backends.triton.quant_matmul import HGEMV_W4

    # rows of magnitudes 0.25-1.25 (group scales well inside HALF_SCALE_RANGE), the weights and
    # bias as constants, as the quantize pass makes them (the kernel needs constant weights)
    rows = torch.rand((n, 1), generator=torch.Generator().manual_seed(7)) + 0.25
    params = [*_weights("linear_w4", False, group, (_rand((n, k), torch.float32, 2) * rows / k**0.5).to(dtype))]
    params += [_rand((n,), dtype, 4)] * bias
    x = _rand((1, k), dtype, 1) * x_scale
    g = ir.Graph()
    ins = [g.add_input("x", ir.TensorType(from_torch(dtype), (1, k)))] + [g.add_constant(f"c{i}", p) for i, p in enumerate(params)]
    node = g.add_node("linear_w4", ins, _variant("linear_w4", False, group, act))
    g.outputs = list(node.outputs)
    (ref,) = ir.run_graph(g, [x])
    params = [p.to(DEVICE) for p in params]
    for cfg in HGEMV_W4:
        if cfg.pdl and not quant_matmul.pdl_available():
            continue
        launcher = quant_linear_kernel(node, cfg.name)
        assert launcher.constant_weights
        got = launcher(x.to(DEVICE), *params)
        assert _err(got, ref) <= TOL[dtype], (cfg.name, _err(got, ref))


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize(("config", "k"), [(GEMV_ONE_STEP, 300), (GEMV_LOOP, 1100)], ids=["one-step", "k-loop"])
def test_gemv_f8_matches_the_fp8_reference(config: str, k: int, m: int, dtype: torch.dtype, bias: bool,
                                           no_torch_fallback: None) -> None:
    """linear_fp8 at decode rows: each row's token scale, x rounded to e4m3 (ties to even) and the
    exact fp8 products; fp32 at 1e-5 shows the rounding of every x element matches the reference's
    cast (one flipped rounding moves a product by up to 1/16). N = 70 ragged, K ragged or looped."""
    attrs = {"activation": "gelu_tanh" if bias else "none"}
    g, node, vals = _node("linear_fp8", attrs, m, 70, k, dtype, bias, seed=m + k)
    vals[0][0, :5] = 0.0  # ties and zeros: exact-zero products and a row maximum elsewhere
    _check(g, quant_linear_kernel(node, config), vals, dtype)


def test_fp8_rounding_matches_torch_on_every_e4m3_neighbourhood() -> None:
    """round_e4m3 against torch's float8_e4m3fn cast on values around every e4m3 number (ties,
    subnormals, the 448 limit, signs): interpreted on CPU, compiled where CUDA is (the tensors
    live on DEVICE: a compiled kernel cannot take CPU tensors)."""
    from kiln.backends.triton.cache import load_module
    from kiln.backends.triton.quant_kernels import kernel_source

    probe = "\n\n@triton.jit\ndef rounded(x, y, N: tl.constexpr):\n    r = tl.arange(0, N)\n    tl.store(y + r, round_e4m3(tl.load(x + r)))\n"
    rounded = load_module(kernel_source("none", False, DEVICE == "cpu") + probe).rounded

    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite()]
    vals = torch.sort(grid).values
    ties = (vals[:-1] + vals[1:]) / 2
    x = torch.cat([vals, ties, ties.nextafter(torch.tensor(float("inf"))), ties.nextafter(torch.tensor(float("-inf"))),
                   torch.tensor([500.0, -1e4, 1e-12, -3e-3])])
    x = torch.cat([x, torch.zeros(4096 - x.numel())])
    y = torch.empty_like(x, device=DEVICE)
    rounded[(1,)](x.to(DEVICE), y, N=4096)
    y = y.cpu()
    ref = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(y, ref), (x[y != ref][:8], y[y != ref][:8], ref[y != ref][:8])


@pytest.mark.parametrize(("config", "m", "k", "dtype", "x_scale", "bias"), [
    ("tgemv_64x256_w4_s3_a32", 1, 300, torch.bfloat16, 1.0, True),
    ("tgemv_64x128_w4_s4_a32", 3, 1100, torch.float16, 300.0, False),
    ("tgemv_64x256_w4_s4_a256", 2, 512, torch.bfloat16, 1e-4, False),
    ("tgemv_64x256_w4_s4_a256_k4", 3, 1100, torch.bfloat16, 1.0, True),
    ("tgemv_64x256_w4_s4_a256_k2", 1, 512, torch.float16, 300.0, False),
], ids=["one-ragged-step", "rows3-loop-ragged-x300", "rows2-even-steps-tiny-x", "split4-rows3-ragged", "split2-even"])
def test_tgemv_f8_matches_the_fp8_reference(config: str, m: int, k: int, dtype: torch.dtype, x_scale: float, bias: bool,
                                            no_torch_fallback: None) -> None:
    """tgemv_f8 (fp8 on tensor cores): x's rows as the MMA's 16 columns (the columns past M repeat
    row 0 and are never stored), each row's token scale and e4m3 codes as the reference's, the
    channel scale on the sums. N = 70 ragged; K in one ragged step, looped with a ragged last
    step, or whole steps; large and tiny activations. Split K (programs per column block adding
    their partials in order, the last to arrive running the epilogue): every arrival counter is
    back at 0 after each call, and a second call gives the same bits."""
    g, node, vals = _node("linear_fp8", {"activation": "gelu_tanh" if bias else "none"}, m, 70, k, dtype, bias, seed=m + k)
    vals[0] = (vals[0].float() * x_scale).to(dtype)
    vals[0][0, :5] = 0.0
    launcher = quant_linear_kernel(node, config)
    _check(g, launcher, vals, dtype)
    if "_k" in config:
        first = launcher(*vals)
        assert torch.equal(launcher(*vals), first)
        counters = [c for _, c in launcher._split_ws.values()]
        assert len(counters) == 1 and counters[0].numel() == 2 and not counters[0].any()


def test_fp8_candidates_are_the_gemv_tilings_at_decode_rows_and_the_reference_beyond(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode rows: tgemv_f8 first on CUDA for bf16 / fp16 x (its fp8 MMA sums are not IEEE fp32,
    so fp32 x keeps gemv_f8 only), then gemv_f8; on CPU gemv_f8 alone; more rows: the reference.
    A pinned tgemv config for fp32 x runs the reference."""
    from kiln.backends.triton.quant_matmul import GEMV_M, GEMV_W8, TGEMV_F8, QuantLinearLauncher

    f8 = QuantLinearLauncher("linear_fp8", {"activation": "none"}, False)
    gemv = [c.name for c in GEMV_W8 if not c.pdl]
    tgemv = [c.name for c in TGEMV_F8 if not c.pdl]
    assert f8.candidates(1, True, 2048, torch.bfloat16) == tgemv + gemv + [TORCH] == f8.candidates(GEMV_M, True, 64, torch.float16)
    assert f8.candidates(1, True, 2048, torch.float32) == gemv + [TORCH] == f8.candidates(1, False, 2048, torch.bfloat16)
    assert f8.candidates(GEMV_M + 1, on_cuda=True) == [TORCH] == f8.candidates(300)
    _, node, vals = _node("linear_fp8", {"activation": "none"}, 1, 24, 64, torch.float32, False)
    ran: list[bool] = []
    reference = quant_matmul.torch_reference
    monkeypatch.setattr(quant_matmul, "torch_reference", lambda *a: ran.append(True) or reference(*a))
    quant_linear_kernel(node, tgemv[0])(*vals)
    assert ran == [True]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gemv_f8_matches_the_reference_at_a_model_shape(m: int, dtype: torch.dtype, no_torch_fallback: None) -> None:
    """Every fp8 gemv tiling compiled for the GPU (PDL where it runs) against the reference."""
    from kiln.backends.triton.quant_matmul import GEMV_W8

    g, node, vals = _node("linear_fp8", {"activation": "silu"}, m, 1000, 2048, dtype, True)
    for cfg in GEMV_W8:
        if cfg.pdl and not quant_matmul.pdl_available():
            continue
        _check(g, quant_linear_kernel(node, cfg.name), vals, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 2560, 2048), (4, 1000, 5632)], ids=["1row-qkv", "4rows-ragged"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tgemv_f8_matches_the_reference_at_model_shapes(m: int, n: int, k: int, dtype: torch.dtype,
                                                             no_torch_fallback: None) -> None:
    """Every tgemv_f8 tiling compiled for the GPU (PDL where it runs; the fp8 MMA with its
    accumulator promoted to fp32) against the reference, large activations (x300 in bf16, x3 in
    f16, whose outputs would overflow)."""
    from kiln.backends.triton.quant_matmul import TGEMV_F8

    g, node, vals = _node("linear_fp8", {"activation": "silu"}, m, n, k, dtype, True)
    vals[0] = vals[0] * (300 if dtype == torch.bfloat16 else 3)
    for cfg in TGEMV_F8:
        if cfg.pdl and not quant_matmul.pdl_available():
            continue
        launcher = quant_linear_kernel(node, cfg.name)
        launcher.constant_weights = True
        _check(g, launcher, vals, dtype)


@pytest.mark.parametrize(("op", "attrs"), [("linear_w8a8", {}), ("linear_w8a8", {"act_scale": 0.02}), ("linear_w8", {"asymmetric": False})],
                         ids=["w8a8-dynamic", "w8a8-static", "int8-igemv"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gemv_i8_matches_the_reference_at_model_shapes(m: int, dtype: torch.dtype, op: str, attrs: dict,
                                                            no_torch_fallback: None) -> None:
    """Every gemv_i8 tiling compiled for the GPU (dp4a; PDL where it runs, with the codes as graph
    constants) against the reference, at K = 2048 and the ragged-step K = 5632: W8A8's gemv
    configs, weight-only int8's igemv ones."""
    from kiln.backends.triton.quant_matmul import GEMV_W8, IGEMV_W8

    for k in (2048, 5632):
        g, node, vals = _node(op, {"activation": "silu", **attrs}, m, 1000, k, dtype, True)
        for cfg in IGEMV_W8 if op == "linear_w8" else GEMV_W8:
            if cfg.pdl and not quant_matmul.pdl_available():
                continue
            launcher = quant_linear_kernel(node, cfg.name)
            launcher.constant_weights = True
            _check(g, launcher, vals, dtype)
