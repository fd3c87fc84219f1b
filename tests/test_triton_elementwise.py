"""Generated Triton kernels for elementwise fusion groups vs the reference interpreter.

On CPU these run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): small shapes only.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import kiln  # noqa: E402
from kiln import ir  # noqa: E402
from kiln.backends.triton import cache  # noqa: E402
from kiln.backends.triton.codegen import Unsupported, generate  # noqa: E402
from kiln.backends.triton.launch import GroupLauncher  # noqa: E402
from kiln.ir.dtypes import from_torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
UNARY = ["neg", "abs", "exp", "sigmoid", "tanh", "relu", "silu", "sin", "cos", "erf"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def _rand(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) + 0.1
    return t.to(dtype).to(DEVICE)


def _norm_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (the kernel-check metric of the device method notes)."""
    a, b = a.cpu().double(), b.cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _check(body: ir.Graph, inputs: list[torch.Tensor], dtype: torch.dtype) -> None:
    launcher = GroupLauncher(generate(body))
    got = launcher(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    ref = ir.run_graph(body, [x.cpu() for x in inputs])
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _norm_err(a, b) <= TOL[dtype], _norm_err(a, b)


@SETTINGS
@given(
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    shapes=st.sampled_from([((3, 5), (3, 5)), ((3, 5), (1, 5)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((7,), ())]),
    ops=st.lists(st.tuples(st.sampled_from(UNARY + BINARY + ["scalar", "cast"]), st.integers(0, 9)), min_size=2, max_size=6),
)
def test_random_chains_match_the_reference(dtype: torch.dtype, shapes: tuple, ops: list) -> None:
    g = ir.Graph()
    kd = from_torch(dtype)
    xs = [g.add_input(f"x{i}", ir.TensorType(kd, s)) for i, s in enumerate(shapes)]
    vals = list(xs)
    for op, k in ops:
        a, b = vals[k % len(vals)], vals[(k + 1) % len(vals)]
        if op in UNARY:
            v = g.call(op, a)
        elif op in BINARY:
            v = g.call(op, a, b)
        elif op == "scalar":
            v = g.call(["add", "mul", "sub", "div"][k % 4], a, **({"rhs": 0.5} if k % 2 else {"lhs": 2.0}))
        else:
            v = g.call("cast", g.call("cast", a, dtype=ir.by_name("f32")), dtype=kd)
        vals.append(v)
    full = torch.broadcast_shapes(*shapes)
    # outputs: node results of the iteration shape (a fused group's outputs always are)
    outs = [v for v in vals[len(xs):] if tuple(v.type.shape) == tuple(full)]
    assume(outs)
    last = g.call("add", outs[-1], g.call("mul", xs[0], xs[1]))  # every input is read
    g.outputs = [last, outs[len(outs) // 2]]
    _check(g, [_rand(s, dtype, i) for i, s in enumerate(shapes)], dtype)


def test_int_float_mixes_comparisons_and_where() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f32"), (4, 6)))
    k = g.add_input("k", ir.TensorType(ir.by_name("i64"), (4, 1)))
    kf = g.call("mul", k, rhs=0.5)  # i64 * float scalar -> f32
    m = g.call("gt", x, kf)
    y = g.call("where", m, x, g.call("neg", kf))
    g.outputs = [g.call("masked_fill", y, m, value=-1.0), m]
    ints = torch.randint(-3, 4, (4, 1), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    _check(g, [_rand((4, 6), torch.float32, 1), ints], torch.float32)


def test_non_contiguous_inputs_take_the_strided_kernel() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f32"), (5, 3)))
    g.outputs = [g.call("silu", g.call("add", x, rhs=1.0))]
    xt = _rand((3, 5), torch.float32, 2).t()  # a transposed view
    assert not xt.is_contiguous()
    _check(g, [xt], torch.float32)


def test_unsupported_ops_keep_the_group_in_pytorch() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f32"), (4,)))
    g.outputs = [g.call("floor_divide", g.call("exp", x), rhs=2.0)]
    with pytest.raises(Unsupported, match="floor_divide"):
        generate(g)


def test_generated_source_uses_only_kiln_made_identifiers() -> None:
    g = ir.Graph()
    x = g.add_input("a\"b</script>", ir.TensorType(ir.by_name("f32"), (4,)))  # a hostile name
    g.outputs = [g.call("tanh", g.call("mul", x, rhs=3.0))]
    src = generate(g).source
    assert "script" not in src and '"' not in src
    allowed = re.compile(r"^(x|v|in|out|s|size|st|i)\d+(_\d+)?$|^(import|triton|tl|jit|def|kernel|kernel_dense|offs|mask|rem|n|BLOCK|constexpr|program_id|to|int64|float32|arange|load|store|sigmoid|language|as)$")
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", src))
    assert not [w for w in words if not allowed.match(w)]


def test_kernel_cache_is_private_and_content_addressed() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("f32"), (4,)))
    g.outputs = [g.call("relu", g.call("sub", x, rhs=0.25))]
    k = generate(g)
    first, second = cache.load_module(k.source), cache.load_module(k.source)
    assert first is second
    d = cache.cache_dir()
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    files = [f for f in os.listdir(d) if f.endswith(".py")]
    assert any(open(os.path.join(d, f)).read() == k.source for f in files)


class Chains(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(x * 2.0 + y) * x  # one elementwise group
        return torch.relu(a - 0.5).sum(-1)  # another, closed by the sum


def test_compile_with_the_triton_backend_launches_kernels_and_matches_eager() -> None:
    m = Chains()
    x, y = _rand((3, 8), torch.float32, 4), _rand((1, 8), torch.float32, 5)
    fn = kiln.compile(m, (x, y), options=kiln.CompileOptions(backend="triton"))
    assert fn.plan.kernels >= 1
    out = fn(x, y)
    assert ((out - m(x, y)).abs().max() / m(x, y).abs().max()).item() <= 1e-5


@SETTINGS
@given(
    op=st.sampled_from(["sum", "mean", "amax", "amin"]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    keepdim=st.booleans(),
    rows=st.sampled_from([(1,), (3,), (2, 3)]),
    r=st.sampled_from([1, 5, 16, 33]),
    transposed=st.booleans(),
)
def test_reduction_groups_match_the_reference(op: str, dtype: torch.dtype, keepdim: bool, rows: tuple, r: int, transposed: bool) -> None:
    from kiln.backends.triton.reduce import generate_reduction

    shape = rows + (r,)
    g = ir.Graph()
    kd = from_torch(dtype)
    x = g.add_input("x", ir.TensorType(kd, shape))
    w = g.add_input("w", ir.TensorType(kd, (r,)))  # broadcast over rows
    h = g.call("silu", g.call("mul", x, w))
    g.outputs = [h, g.call(op, h, dims=[len(shape) - 1], keepdim=keepdim)]
    xv = _rand(shape, dtype, 7)
    if transposed and len(shape) == 2:
        xv = _rand(shape[::-1], dtype, 7).t()  # a non-contiguous view: the strided kernel
    launcher = GroupLauncher(generate_reduction(g))
    wv = _rand((r,), dtype, 8)
    got = launcher(xv, wv)
    # the float64 reference on upcast inputs (the body has no casts, so it runs at any precision)
    ref = ir.run_graph(g, [xv.cpu().double(), wv.cpu().double()])
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == dtype
        assert _norm_err(a, b) <= TOL[dtype], (op, _norm_err(a, b))
