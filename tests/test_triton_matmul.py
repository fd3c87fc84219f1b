"""Triton matmul kernels (GEMM and matvec) for linear / linear_add vs the ops' reference.

On CPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): small shapes, and
every kernel config is pinned explicitly so the interpreter really runs each Triton kernel.
"""

from __future__ import annotations

import inspect
import json
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import kiln  # noqa: E402
from kiln import ir  # noqa: E402
from kiln.backends.triton import autotune, matmul  # noqa: E402
from kiln.backends.triton.matmul import (  # noqa: E402
    CONFIGS,
    GEMM_CONFIGS,
    GEMV_CONFIGS,
    GEMV_M,
    MATVEC_CONFIGS,
    TORCH,
    linear_kernel,
)
from kiln.ir.dtypes import from_torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
ACTS = ["none", "relu", "silu", "gelu", "gelu_tanh"]
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)


def _rand(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) + 0.1).to(dtype).to(DEVICE)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.cpu().double(), b.cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _node(lead: tuple, n: int, k: int, dtype: torch.dtype, bias: bool, residual: bool, act: str) -> tuple:
    """A one-node graph (linear or linear_add) and fresh random inputs in IR order."""
    g = ir.Graph()
    kd = from_torch(dtype)
    specs = [("x", lead + (k,)), ("w", (n, k))] + [("r", lead + (n,))] * residual + [("b", (n,))] * bias
    ins = [g.add_input(name, ir.TensorType(kd, shape)) for name, shape in specs]
    node = g.add_node("linear_add" if residual else "linear", ins, {"activation": act})
    g.outputs = list(node.outputs)
    return g, node, [_rand(shape, dtype, i + 1) for i, (_, shape) in enumerate(specs)]


def _check(g: ir.Graph, launcher: matmul.LinearLauncher, vals: list, dtype: torch.dtype) -> None:
    got = launcher(*vals)
    (ref,) = ir.run_graph(g, [v.cpu() for v in vals])
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert _err(got, ref) <= TOL[dtype], _err(got, ref)


@pytest.fixture
def no_torch_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a launcher quietly runs the PyTorch candidate instead of a Triton kernel."""
    monkeypatch.setattr(matmul, "torch_linear", lambda *a: pytest.fail("ran PyTorch, not a Triton kernel"))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # sigmoid(-large) in numpy
@SETTINGS
@given(
    config=st.sampled_from(sorted(CONFIGS)),
    m=st.sampled_from([1, 3, 17, 40]),
    n=st.sampled_from([1, 5, 24, 70]),
    k=st.sampled_from([7, 16, 33, 300]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    bias=st.booleans(),
    residual=st.booleans(),
    act=st.sampled_from(ACTS),
)
def test_pinned_kernels_match_the_reference(config: str, m: int, n: int, k: int, dtype: torch.dtype, bias: bool, residual: bool, act: str) -> None:
    g, node, vals = _node((m,), n, k, dtype, bias, residual, act)
    _check(g, linear_kernel(node, config), vals, dtype)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_config_runs_ragged_shapes_with_the_full_epilogue(config: str, no_torch_fallback: None) -> None:
    """K = 300 is ragged for every BLOCK_K and gives the split-K matvec configs several splits."""
    m = 3 if config.startswith(("matvec", "gemv")) else 17
    g, node, vals = _node((m,), 70, 300, torch.bfloat16, True, True, "silu")
    _check(g, linear_kernel(node, config), vals, torch.bfloat16)


@pytest.mark.parametrize(("n", "k"), [(70, 300), (33, 130)], ids=["n70-k300", "n33-k130"])
@pytest.mark.parametrize("config", [GEMM_CONFIGS[0].name, GEMM_CONFIGS[5].name, MATVEC_CONFIGS[1].name],
                         ids=["gemm-64x64", "gemm-16x64", "matvec-split4"])
def test_ragged_m_n_k_and_unaligned_rows_are_masked_exactly(config: str, n: int, k: int, no_torch_fallback: None) -> None:
    """M in {1, 3, 17}, N and K ragged for every block, x's rows read from a wider buffer (row
    stride K + 3 elements: never a multiple of 16 bytes) with NaN past K: every edge load must be
    masked, not wrapped, and the result the reference's to fp32 rounding."""
    for m in (1, 3, 17):
        g, node, vals = _node((m,), n, k, torch.float32, True, False, "none")
        wide = torch.full((m, k + 3), float("nan"), device=DEVICE)
        wide[:, :k] = vals[0]
        vals[0] = wide[:, :k]
        assert vals[0].stride(0) == k + 3
        _check(g, linear_kernel(node, config), vals, torch.float32)


@pytest.mark.parametrize("config", [GEMM_CONFIGS[0].name, MATVEC_CONFIGS[1].name])
def test_strided_inputs_and_leading_dims_are_read_in_place(config: str, no_torch_fallback: None) -> None:
    """x [2, 5, K] as a transposed view, W a transposed view, residual a column slice."""
    k, n = 33, 24
    g, node, _ = _node((2, 5), n, k, torch.float32, True, True, "gelu")
    x = _rand((k, 5, 2), torch.float32, 1).permute(2, 1, 0)
    w = _rand((k, n), torch.float32, 2).t()
    r = _rand((2, 5, 2 * n), torch.float32, 3)[..., ::2]
    b = _rand((n,), torch.float32, 4)
    assert not (x.is_contiguous() or w.is_contiguous() or r.is_contiguous())
    _check(g, linear_kernel(node, config), [x, w, r, b], torch.float32)


@pytest.mark.parametrize("config", [c.name for c in GEMV_CONFIGS if not c.pdl])
def test_gemv_takes_one_to_four_rows_with_k_in_one_step_or_looped(config: str, no_torch_fallback: None) -> None:
    """M 1..GEMV_M, K below, equal to and past BLOCK_K (ragged), x rows strided with NaN past K."""
    for m, n, k in ((1, 70, 300), (GEMV_M, 33, 2048), (2, 24, 5000)):
        g, node, vals = _node((m,), n, k, torch.float32, True, True, "silu")
        wide = torch.full((m, k + 3), float("nan"), device=DEVICE)
        wide[:, :k] = vals[0]
        vals[0] = wide[:, :k]
        _check(g, linear_kernel(node, config), vals, torch.float32)


def test_gemv_joins_the_decode_candidates_up_to_four_rows_with_pdl_only_for_constant_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU the interpreter keeps the matvec first (and no PDL); at M > GEMV_M no gemv at all;
    PDL gemv configs are offered on sm90 only when the weight and bias are graph constants."""
    plain = [c.name for c in GEMV_CONFIGS if not c.pdl]
    pdl = [c.name for c in GEMV_CONFIGS if c.pdl]
    g, node, _ = _node((1,), 8, 16, torch.float32, True, False, "none")
    launcher = linear_kernel(node)
    assert not launcher.constant_weights
    names = launcher.candidates(GEMV_M)
    assert names[0] == MATVEC_CONFIGS[1].name and set(plain) <= set(names) and not set(pdl) & set(names)
    assert not set(plain) & set(launcher.candidates(GEMV_M + 1))
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(from_torch(torch.float32), (1, 16)))
    w, b = g.add_constant("w", _rand((8, 16), torch.float32, 2)), g.add_constant("b", _rand((8,), torch.float32, 3))
    const = linear_kernel(g.add_node("linear", [x, w, b], {"activation": "none"}))
    assert const.constant_weights
    r = g.add_input("r", ir.TensorType(from_torch(torch.float32), (1, 8)))
    assert linear_kernel(g.add_node("linear_add", [x, w, r, b], {"activation": "none"})).constant_weights  # residual: read after the wait
    b_in = g.add_input("b_in", ir.TensorType(from_torch(torch.float32), (8,)))
    assert not linear_kernel(g.add_node("linear", [x, w, b_in], {"activation": "none"})).constant_weights
    monkeypatch.setattr(matmul, "pdl_available", lambda: True)
    assert const._pdl_ok(True) and not const._pdl_ok(False) and not launcher._pdl_ok(True)


def test_unsupported_dtypes_and_ops_stay_in_pytorch() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f64"), (3, 4)))
    w = g.add_input("w", ir.TensorType(ir.by_name("f64"), (5, 4)))
    assert linear_kernel(g.add_node("linear", [x, w], {"activation": "none"})) is None
    assert linear_kernel(g.add_node("relu", [x], {})) is None
    with pytest.raises(ValueError, match="unknown matmul config"):
        matmul.LinearLauncher("none", False, False, config="gemm_1x1x1")


def test_torch_candidate_and_empty_inputs_match_the_reference() -> None:
    g, node, vals = _node((4,), 6, 8, torch.float16, True, True, "relu")
    _check(g, linear_kernel(node, TORCH), vals, torch.float16)
    g, node, _ = _node((0,), 6, 8, torch.float32, False, False, "none")
    out = linear_kernel(node, MATVEC_CONFIGS[0].name)(_rand((0, 8), torch.float32, 1), _rand((6, 8), torch.float32, 2))
    assert out.shape == (0, 6)


def test_autotune_keys_by_m_bucket_and_offers_torch_and_matvec_for_small_m(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []

    def fake_choose(key: str, candidates: dict, on_cuda: bool) -> str:
        calls.append((key, list(candidates)))
        return next(iter(candidates))

    monkeypatch.setattr(matmul, "choose", fake_choose)
    g, node, vals = _node((3,), 5, 16, torch.float32, True, False, "silu")
    launcher = linear_kernel(node)
    launcher(*vals)
    launcher(_rand((4, 16), torch.float32, 9), *vals[1:])  # M = 4: the same bucket, no new choice
    launcher(_rand((40, 16), torch.float32, 9), *vals[1:])
    assert [key for key, _ in calls] == [
        "linear|float32|silu|bias=1|res=0|M4|N5|K16", "linear|float32|silu|bias=1|res=0|M64|N5|K16"]
    small, large = calls[0][1], calls[1][1]
    assert small[0].startswith("matvec") and small[-1] == TORCH
    assert not any(c.startswith("matvec") for c in large) and large[-1] == TORCH


def test_autotune_choice_round_trips_through_the_cache_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    from kiln import debug

    monkeypatch.setattr(debug, "CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.setattr(autotune, "_MEMO", {})
    monkeypatch.setattr(autotune, "_DISK", None)
    times = {"gemm_a": 2.0, "matvec_b": 0.5, TORCH: 1.0}
    monkeypatch.setattr(autotune, "time_ms", lambda fn: times[fn()])
    candidates = {name: (lambda name=name: name) for name in times}
    assert autotune.choose("linear|test", candidates, on_cuda=True) == "matvec_b"
    path = tmp_path / "kernels" / "autotune.json"
    assert os.stat(path).st_mode & 0o077 == 0
    assert list(json.loads(path.read_text()).values()) == ["matvec_b"]

    # a fresh process: empty memo, the file read back, nothing timed
    monkeypatch.setattr(autotune, "_MEMO", {})
    monkeypatch.setattr(autotune, "_DISK", None)
    monkeypatch.setattr(autotune, "time_ms", lambda fn: pytest.fail("a cached choice must not be re-timed"))
    assert autotune.choose("linear|test", candidates, on_cuda=True) == "matvec_b"


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(32, 48), torch.nn.Linear(48, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.silu(self.up(x)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA autotuning may rightly pick cuBLAS")
def test_compiled_mlp_runs_both_linears_as_triton_kernels(no_torch_fallback: None) -> None:
    """up + SiLU becomes linear{silu}, down + residual becomes linear_add: two launches, which
    run the matvec kernel at M = 10 and the GEMM at M = 40 (CPU takes the first candidate)."""
    torch.manual_seed(0)
    model = _MLP().eval().to(DEVICE)
    x = _rand((2, 5, 32), torch.float32, 1)
    fn = kiln.compile(model, (x,), options=kiln.CompileOptions(backend="triton"))
    ops = sorted((n.op.name, n.attrs.get("activation")) for n in fn.graph.nodes if n.op.category == "matmul")
    assert ops == [("linear", "silu"), ("linear_add", "none")]
    assert fn.plan.kernels == 2
    for shape in ((2, 5, 32), (4, 10, 32)):
        x = _rand(shape, torch.float32, 2)
        with torch.no_grad():
            assert _err(fn(x), model(x)) <= 1e-5


# --- CUDA ----------------------------------------------------------------------------------



@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_configs_match_the_reference_at_model_shapes(config: str, dtype: torch.dtype) -> None:
    from triton.runtime.errors import OutOfResources

    m = 7 if config.startswith("matvec") else 3 if config.startswith("gemv") else 300
    g, node, vals = _node((m,), 1000, 2048, dtype, True, True, "gelu_tanh")
    try:
        _check(g, linear_kernel(node, config), vals, dtype)
    except OutOfResources:  # fp32 tiles of the largest configs exceed shared memory; autotune skips them
        pytest.skip(f"{config} does not fit this GPU in {dtype}")


@pytest.mark.parametrize("m", [1, 16, 512])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autotuned_launcher_is_correct_and_replays_in_a_cuda_graph(m: int) -> None:
    g, node, vals = _node((m,), 2048, 1024, torch.bfloat16, False, True, "silu")
    launcher = linear_kernel(node)
    _check(g, launcher, vals, torch.bfloat16)  # the first call tunes, outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = launcher(*vals)
    graph.replay()
    torch.cuda.synchronize()
    (ref,) = ir.run_graph(g, [v.cpu() for v in vals])
    assert _err(out, ref) <= TOL[torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pdl_gemv_chained_twice_in_a_cuda_graph_reads_each_input_after_its_writer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """y = f(f(x) + r) with a PDL gemv (constant weight and bias), captured once and replayed on
    fresh x: the second launch reads the first one's output, so a read of x or the residual
    before `gdc_wait` (or a store before it) shows as a wrong y."""
    if not matmul.pdl_available():
        pytest.skip("PDL needs sm90+ and a Triton with gdc_wait")
    d, dtype = 2048, torch.bfloat16
    g = ir.Graph()
    x_in = g.add_input("x", ir.TensorType(from_torch(dtype), (1, d)))
    r_in = g.add_input("r", ir.TensorType(from_torch(dtype), (1, d)))
    params = [(_rand((d, d), torch.float32, 2) / d**0.5).to(dtype), _rand((d,), dtype, 4)]
    w, b = (g.add_constant(f"c{i}", p.cpu()) for i, p in enumerate(params))
    node = g.add_node("linear_add", [x_in, w, r_in, b], {"activation": "none"})
    g.outputs = list(node.outputs)
    launcher = linear_kernel(node, "gemv_16x2048_w8_pdl")
    launches: list[bool] = []
    gemv = matmul.LinearLauncher._gemv
    pdl_of = lambda self, *a: inspect.signature(gemv).bind(self, *a).arguments["pdl"]  # noqa: E731
    monkeypatch.setattr(matmul.LinearLauncher, "_gemv", lambda self, *a: (launches.append(pdl_of(self, *a)), gemv(self, *a)))
    x, r = _rand((1, d), dtype, 1), _rand((1, d), dtype, 3)
    launcher(x, params[0], r, params[1])  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mid = launcher(x, params[0], r, params[1])
        out = launcher(mid, params[0], mid, params[1])
    assert launches == [True] * 3
    for seed in (5, 6, 7):
        x.copy_(_rand((1, d), dtype, seed))
        r.copy_(_rand((1, d), dtype, seed + 10))
        graph.replay()
        torch.cuda.synchronize()
        (ref_mid,) = ir.run_graph(g, [x.cpu(), r.cpu()])
        (ref_out,) = ir.run_graph(g, [mid.cpu(), mid.cpu()])
        assert _err(mid, ref_mid) <= TOL[dtype] and _err(out, ref_out) <= TOL[dtype]
