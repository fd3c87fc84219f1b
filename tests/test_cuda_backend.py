"""The CUDA C++ backend: generated source (always); an nvcc compile of the kernel part (where nvcc
is on PATH); the kernels compiled as host C++ and run single-threaded vs the reference (where g++
and the CUDA headers are); built extensions vs the reference (gpu-marked, needs CUDA).

The GPU tests put every case into one KernelSet so the extension builds once (the host binding
includes torch/extension.h, tens of seconds of g++).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import random
import re
import shutil
import subprocess
from typing import Callable

import pytest
import torch

import kiln
from kiln import ir, passes
from kiln.backends import cuda as cb
from kiln.backends import kernel_hook
from kiln.backends.cuda.build import STRIDED32, STRIDED64, KernelSet, Launcher, binding_source, kernel_source
from kiln.backends.cuda.codegen import Kernel, Unsupported, generate
from kiln.backends.cuda.prelude import PRELUDE
from kiln.backends.cuda.reduce import generate_reduction
from kiln.errors import KilnError
from kiln.ir.dtypes import from_torch
from kiln.options import CompileOptions

F32, F16, BF16, I64 = (ir.by_name(n) for n in ("f32", "f16", "bf16", "i64"))
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.bool: 0.0, torch.int64: 0.0}
HOSTILE = 'x"); import os; //'
UNARY = ["neg", "abs", "exp", "sigmoid", "tanh", "relu", "silu", "sin", "cos", "erf"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


def _elementwise_group(dt: ir.DType, shapes: tuple, name: str = "x") -> ir.Graph:
    """silu(x * w) + 0.5 and its comparison with w: broadcasting, a scalar, a bool output."""
    g = ir.Graph()
    x, w = g.add_input(name, ir.TensorType(dt, shapes[0])), g.add_input(name + "w", ir.TensorType(dt, shapes[1]))
    h = g.call("add", g.call("silu", g.call("mul", x, w)), rhs=0.5)
    g.outputs = [h, g.call("gt", h, w)]
    return g


def _mixed_group() -> ir.Graph:
    """int/float mixes, comparisons, where, masked_fill and casts (the Triton backend's case)."""
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(F32, (4, 6)))
    k = g.add_input("k", ir.TensorType(I64, (4, 1)))
    kf = g.call("mul", k, rhs=0.5)  # i64 * float scalar -> f32
    m = g.call("gt", x, kf)
    y = g.call("where", m, x, g.call("neg", kf))
    g.outputs = [g.call("masked_fill", y, m, value=-1.0), m, g.call("cast", g.call("cast", y, dtype=BF16), dtype=F16)]
    return g


def _reduction_group(op: str, dt: ir.DType, shape: tuple, keepdim: bool) -> ir.Graph:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(dt, shape))
    w = g.add_input("w", ir.TensorType(dt, shape[-1:]))  # broadcast over rows
    h = g.call("silu", g.call("mul", x, w))
    g.outputs = [h, g.call(op, h, dims=[len(shape) - 1], keepdim=keepdim)]
    return g


def _words(src: str) -> set[str]:
    src = re.sub(r"//[^\n]*", "", src)
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", src))


KILN_MADE = re.compile(r"^(x|v|in|out|s|b|r|i|k)\d+(_launch)?$")
FIXED = {
    "namespace", "struct", "Args", "const", "template", "typename", "I", "__global__", "__launch_bounds__", "strided",
    "dense", "vec", "a", "n", "rows", "size", "st", "rem", "blockIdx", "blockDim", "threadIdx", "gridDim", "j", "u",
    "pragma", "unroll", "for", "if", "else", "return", "extern", "C", "int", "void", "p", "fs", "is", "meta",
    "variant", "stream", "dim3", "grid", "block", "cudaStream_t", "d", "cudaErrorInvalidValue", "cudaGetLastError",
    "unsigned", "ACC", "typedef", "shm", "__shared__", "row", "c", "acc", "reinterpret_cast", "x", "double", "i", "k",
    "s", "int32_t", "__half", "__nv_bfloat16", "__half2float", "__float2half_rn", "__bfloat162float", "__float2bfloat16_rn",
}


def test_generated_source_uses_only_kiln_made_identifiers() -> None:
    for k in (generate(_elementwise_group(F16, ((3, 5), (5,)), HOSTILE)), generate(_mixed_group()),
              generate_reduction(_reduction_group("amax", BF16, (2, 3, 8), True))):
        assert HOSTILE not in k.full_source and "import" not in k.source and '"' not in k.source.replace('extern "C"', "")
        stray = {w for w in _words(k.source) - _words(PRELUDE) - FIXED if not KILN_MADE.match(w)}
        assert not stray, stray


def test_hostile_names_from_a_fused_graph_never_reach_the_source() -> None:
    g = ir.Graph()
    x = g.add_input(HOSTILE, ir.TensorType(F32, (4, 8)))
    w = g.add_constant(HOSTILE + "w", torch.randn(8, generator=torch.Generator().manual_seed(0)))
    h = g.call("silu", g.call("mul", x, w))
    g.outputs = [g.call("sum", g.call("add", h, rhs=1.0), dims=[1], keepdim=True)]
    fused = passes.fuse_elementwise(g, passes.PassContext(CompileOptions()))
    (group,) = [n for n in fused.nodes if n.op.name == "fusion_group"]
    k = generate_reduction(group.subgraph)
    src = k.full_source + binding_source([k])
    assert "import os" not in src and HOSTILE not in src


def test_scalars_are_kernel_arguments_not_source_text() -> None:
    def group(s: float) -> Kernel:
        g = ir.Graph()
        x = g.add_input("x", ir.TensorType(F32, (4,)))
        g.outputs = [g.call("clamp", g.call("mul", x, rhs=s), min=-s, max=None)]
        return generate(g)

    a, b = group(0.123456789), group(2.5)
    assert a.source == b.source and "123456789" not in a.source
    assert a.scalars == (0.123456789, -0.123456789) and b.scalars == (2.5, -2.5)


def test_half_values_round_to_their_dtype_after_every_op() -> None:
    src = generate(_elementwise_group(F16, ((3, 5), (5,)))).source
    # mul, silu and add each round to half; the comparison reads the rounded sum in float
    assert src.count("__float2half_rn(") == 3 * 3  # three ops x (strided, dense, vec)
    assert "(__half2float(v2) > __half2float(x1))" in src


def test_unsupported_ops_and_shapes_raise_unsupported() -> None:
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(F32, (4,)))
    g.outputs = [g.call("floor_divide", g.call("exp", x), rhs=2.0)]
    with pytest.raises(Unsupported, match="floor_divide"):
        generate(g)
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(F32, (4, 6)))
    g.outputs = [g.call("sum", g.call("exp", x), dims=[0], keepdim=False)]  # not the last dim
    with pytest.raises(Unsupported, match="last-dim"):
        generate_reduction(g)
    g = ir.Graph()
    x = g.add_input("x", ir.TensorType(ir.by_name("c64"), (4,)))
    g.outputs = [g.call("neg", x)]
    with pytest.raises(Unsupported, match="c64"):
        generate(g)


def test_identical_groups_share_one_kernel_in_a_set() -> None:
    kset = KernelSet()
    ids = [kset.add(lambda p, s=s: generate(_elementwise_group(F32, ((2, 4), (4,)), s), p))[0] for s in ("a", "b")]
    other, _ = kset.add(lambda p: generate(_mixed_group(), p))
    assert ids == [0, 0] and other == 1 and [k.prefix for k in kset.kernels] == ["k0", "k1"]


def test_backend_cuda_is_an_option_and_refuses_cpu_tensors() -> None:
    assert CompileOptions(backend="cuda").backend == "cuda"
    with pytest.raises(ValueError, match="cuda"):
        CompileOptions(backend="cudaa")
    with pytest.raises(KilnError, match="CUDA tensors"):
        kernel_hook("cuda", torch.device("cpu"))


def _compile_set() -> list[Kernel]:
    """A representative translation unit: broadcast, casts, int/float mixes, reductions, f16/bf16."""
    makers: list[Callable[[str], Kernel]] = [
        lambda p: generate(_elementwise_group(F16, ((3, 5), (5,))), p),
        lambda p: generate(_elementwise_group(BF16, ((2, 1, 4), (3, 1))), p),
        lambda p: generate(_mixed_group(), p),
        lambda p: generate_reduction(_reduction_group("sum", F32, (3, 33), False), p),
        lambda p: generate_reduction(_reduction_group("mean", BF16, (2, 3, 16), True), p),
        lambda p: generate_reduction(_reduction_group("amax", F16, (5, 7), False), p),
        lambda p: generate_reduction(_reduction_group("amin", F32, (7,), True), p),
    ]
    kset = KernelSet()
    for make in makers:
        kset.add(make)
    return kset.kernels


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc on PATH")
def test_kernel_part_compiles_alone_with_nvcc(tmp_path) -> None:  # noqa: ANN001
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS  # what the extension build passes too

    src = tmp_path / "kernels.cu"
    src.write_text(kernel_source(_compile_set()))
    cmd = ["nvcc", "-c", "-arch=sm_90", "-O3", *COMMON_NVCC_FLAGS, "-o", str(tmp_path / "kernels.o"), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# On the host: the generated kernels compiled by g++ as plain C++ and run with one thread (their
# grid-stride loops then cover every element), called through the real launch stubs and Launcher.
# This checks the generated arithmetic, conversions and argument marshalling on CPU CI; what it
# cannot check (block_reduce across threads, real launches) the gpu tests below do.

_HOST_SHIM = r"""
#include <cstring>
#include <cmath>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define __global__
#define __launch_bounds__(x)
#define __shared__ static
#define cudaGetLastError() cudaSuccess
struct kdim { unsigned x; };
static kdim blockIdx{0}, threadIdx{0}, blockDim{1}, gridDim{1};
static inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
static inline double __longlong_as_double(long long x) { double f; std::memcpy(&f, &x, 8); return f; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
"""


def _cuda_include() -> str | None:
    homes = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"))]
    return next((os.path.join(h, "include") for h in homes if h and os.path.exists(os.path.join(h, "include", "cuda_fp16.h"))), None)


def _host_launch(kernels: list[Kernel], tmp: str) -> Callable[..., None]:
    """The set's launch stubs compiled for the host; returns Launcher's `fn(idx, ts, fs, is, meta, variant)`."""
    start = PRELUDE.index("template <typename T, typename Op>")
    prelude = PRELUDE[:start] + "template <typename T, typename Op> T block_reduce(T v, Op, T, T*) { return v; }\n" + \
        PRELUDE[PRELUDE.index("}  // namespace kiln"):]  # one thread: its accumulator is the block's
    src = _HOST_SHIM + prelude + "".join(k.source for k in kernels).replace("<<<grid, block, 0, s>>>", "")
    path = os.path.join(tmp, "host.cpp")
    with open(path, "w") as f:
        f.write(src)
    cmd = ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-D__device__=", "-D__forceinline__=inline",
           f"-I{_cuda_include()}", "-o", path + ".so", path]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    lib = ctypes.CDLL(path + ".so")
    stubs = [getattr(lib, f"{k.prefix}_launch") for k in kernels]

    def fn(idx: int, ts: list, fs: list, is_: list, meta: list, variant: int) -> None:
        arr = lambda ct, xs: (ct * max(1, len(xs)))(*xs)  # noqa: E731
        args = (arr(ctypes.c_void_p, [t.data_ptr() for t in ts]), arr(ctypes.c_double, fs), arr(ctypes.c_int64, is_),
                arr(ctypes.c_int64, meta), ctypes.c_int(variant), None)
        assert stubs[idx](*args) == 0

    return fn


@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include() is None, reason="needs g++ and the CUDA headers")
def test_kernels_run_on_the_host_match_the_reference(tmp_path) -> None:  # noqa: ANN001
    kset, launchers = KernelSet(), []
    for name, g, ins, dtype, red in _cases("cpu"):
        idx, k = kset.add(lambda p, g=g, red=red: (generate_reduction if red else generate)(g, p))
        launchers.append((name, g, ins, dtype, red, Launcher(kset, idx, k)))
    fn = _host_launch(kset.kernels, str(tmp_path))
    for name, g, ins, dtype, red, launcher in launchers:
        launcher.fn = fn
        got = launcher(*ins)
        _compare(name, g, got if isinstance(got, tuple) else (got,), ins, dtype, red)


# ---------------------------------------------------------------------------------------------
# On a GPU: build everything once, compare with the reference interpreter.

gpu = pytest.mark.skipif(not cb.available(), reason=f"needs {cb.missing()}")


def _rand(shape: tuple, dtype: torch.dtype, seed: int, device: str = "cuda") -> torch.Tensor:
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) + 0.1  # never all zeros
    return t.to(dtype).to(device)


def _norm_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.cpu().double(), b.cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _random_chain(rng: random.Random, dtype: torch.dtype) -> tuple[ir.Graph, list[tuple]]:
    shapes = rng.choice([((3, 5), (3, 5)), ((3, 5), (1, 5)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((7,), ())])
    g = ir.Graph()
    kd = from_torch(dtype)
    xs = [g.add_input(f"x{i}", ir.TensorType(kd, s)) for i, s in enumerate(shapes)]
    vals = list(xs)
    full = tuple(torch.broadcast_shapes(*shapes))
    for _ in range(rng.randint(2, 6)):
        op, k = rng.choice(UNARY + BINARY + ["scalar", "cast"]), rng.randint(0, 9)
        a, b = vals[k % len(vals)], vals[(k + 1) % len(vals)]
        if op in UNARY:
            vals.append(g.call(op, a))
        elif op in BINARY:
            vals.append(g.call(op, a, b))
        elif op == "scalar":
            vals.append(g.call(["add", "mul", "sub", "div"][k % 4], a, **({"rhs": 0.5} if k % 2 else {"lhs": 2.0})))
        else:
            vals.append(g.call("cast", g.call("cast", a, dtype=F32), dtype=kd))
    outs = [v for v in vals[len(xs):] if tuple(v.type.shape) == full] or [g.call("add", xs[0], xs[1])]
    g.outputs = [g.call("add", outs[-1], g.call("mul", xs[0], xs[1])), outs[len(outs) // 2]]
    return g, [(s, dtype) for s in shapes]


def _cases(device: str = "cuda") -> list[tuple[str, ir.Graph, list[torch.Tensor], torch.dtype, bool]]:
    """(name, body, inputs, tolerance dtype, reduction?) for every GPU comparison."""
    rng = random.Random(0)
    rnd = functools.partial(_rand, device=device)
    cases = []
    for i in range(24):
        dtype = [torch.float32, torch.float16, torch.bfloat16][i % 3]
        g, specs = _random_chain(rng, dtype)
        cases.append((f"chain{i}", g, [rnd(s, d, 10 * i + j) for j, (s, d) in enumerate(specs)], dtype, False))
    ints = torch.randint(-3, 4, (4, 1), generator=torch.Generator().manual_seed(3)).to(device)
    cases.append(("mixed", _mixed_group(), [rnd((4, 6), torch.float32, 1), ints], torch.float32, False))
    xt = rnd((6, 4), torch.float32, 2).t()  # a transposed view: the strided kernel
    cases.append(("transposed", _elementwise_group(F32, ((4, 6), (6,))), [xt, rnd((6,), torch.float32, 3)], torch.float32, False))
    same = [rnd((64, 32), torch.float16, k) for k in (4, 5)]  # contiguous, aligned: the vec kernel
    cases.append(("vec", _elementwise_group(F16, ((64, 32), (64, 32))), same, torch.float16, False))
    big = rnd((4097,), torch.float16, 6)  # numel % VEC == 0 but the view is 2 bytes off: dense
    cases.append(("unaligned", _elementwise_group(F16, ((4096,), (4096,))), [big[1:], rnd((4096,), torch.float16, 7)], torch.float16, False))
    for j, (op, dtype, shape, keep, tr) in enumerate([
        ("sum", torch.float32, (3, 33), False, False), ("mean", torch.float16, (2, 3, 16), True, False),
        ("amax", torch.bfloat16, (5, 1), False, False), ("amin", torch.float32, (7,), True, False),
        ("sum", torch.bfloat16, (4, 4096), True, False), ("mean", torch.float32, (6, 5), False, True),
        ("amax", torch.float16, (9, 2000), True, True), ("sum", torch.float16, (70000, 3), False, False),
    ]):
        x = rnd(shape[::-1], dtype, 50 + j).t() if tr else rnd(shape, dtype, 50 + j)
        g = _reduction_group(op, from_torch(dtype), shape, keep)
        cases.append((f"{op}{j}", g, [x, rnd(shape[-1:], dtype, 60 + j)], dtype, True))
    return cases


@pytest.fixture(scope="module")
def built() -> list:
    kset = KernelSet()
    out = []
    for name, g, ins, dtype, red in _cases():
        idx, k = kset.add(lambda p, g=g, red=red: (generate_reduction if red else generate)(g, p))
        out.append((name, g, ins, dtype, red, Launcher(kset, idx, k)))
    return out


def _compare(name: str, g: ir.Graph, got: tuple, ins: list, dtype: torch.dtype, red: bool) -> None:
    """Reductions against float64 on upcast inputs (their bodies have no casts); elementwise
    groups against the same-dtype CPU reference, which also computes half in float and rounds."""
    ref = ir.run_graph(g, [x.cpu().double() if red else x.cpu() for x in ins])
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and (red or a.dtype == b.dtype), (name, a.shape, a.dtype, b.shape, b.dtype)
        if a.dtype == torch.bool:  # comparisons may flip where rounding differs in the last place
            assert (a.cpu() != b).float().mean().item() <= 0.05, name
        else:
            assert _norm_err(a, b) <= TOL[dtype], (name, _norm_err(a, b))


@pytest.mark.gpu
@gpu
def test_built_kernels_match_the_reference(built: list) -> None:
    for name, g, ins, dtype, red, launcher in built:
        got = launcher(*ins)
        _compare(name, g, got if isinstance(got, tuple) else (got,), ins, dtype, red)


@pytest.mark.gpu
@gpu
def test_int32_and_int64_strided_indexing_agree(built: list) -> None:
    name, g, ins, dtype, _, launcher = next(c for c in built if c[0] == "transposed")
    shape = torch.broadcast_shapes(*(x.shape for x in ins))
    strides = [s for x in ins for s in x.expand(shape).stride()]
    results = []
    for variant in (STRIDED64, STRIDED32):
        outs = [torch.empty(shape, dtype=d, device="cuda") for d in launcher.out_dtypes]
        launcher._call([*ins, *outs], [shape.numel(), 0, 1, 256, *shape, *strides], variant)
        results.append(outs)
    for a, b in zip(*results):
        assert torch.equal(a, b)
    _compare(name, g, tuple(results[0]), ins, dtype, False)


class Chains(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(x * 2.0 + y) * x  # one elementwise group
        return torch.relu(a - 0.5).sum(-1)  # another, closed by the sum


@pytest.mark.gpu
@gpu
def test_compile_with_the_cuda_backend_launches_kernels_and_matches_eager() -> None:
    m, dtype = Chains(), torch.float32
    x, y = _rand((3, 64), dtype, 4), _rand((1, 64), dtype, 5)
    fn = kiln.compile(m, (x, y), options=CompileOptions(backend="cuda"))
    assert fn.plan.kernels >= 1
    out, ref = fn(x, y), m(x, y)
    assert _norm_err(out, ref) <= TOL[dtype]
