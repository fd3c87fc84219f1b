"""Triton kernels for kiln's `linear` and `linear_add`: y = act(x @ W.T + bias) (+ residual).

x [..., K] is flattened to [M, K]; W is [N, K] (nn.Linear's layout); bias [N] and residual
[M, N] are optional. Products accumulate in fp32 and the epilogue (bias, activation, residual)
runs on the fp32 accumulator, so the result is rounded once, to the output dtype. fp32 inputs
use `input_precision="ieee"` (never tf32).

Three kernel shapes, all picked per problem by `autotune.choose` against PyTorch itself:

* `gemm`: BLOCK_M x BLOCK_N tiles over a BLOCK_K loop of `tl.dot`, programs in groups of
  GROUP_M tile rows so the W tiles a group reads stay in L2. Napkin math (H200, bf16):
  FLOPs = 2*M*N*K; M=8192, N=5632, K=2048 is 189 GFLOP, 0.24 ms at the measured 791 TFLOP/s;
  bytes = (M*K + N*K + M*N) * 2 = 148 MB, 35 us at 4.25 TB/s, so compute-bound (~70-80% of peak
  is the realistic target, cuBLAS's territory).
* `matvec` (decode, M <= 16): every weight byte is read once and used M times, so it is
  memory-bound: bytes = N*K*elt + M*K*elt + M*N*elt, floor = bytes / 4.25 TB/s. For the 1.1B
  Llama at M=1 in bf16: N=K=2048 reads 8.4 MB (2.0 us), N=11264 fused gate/up 46 MB (10.9 us),
  N=32000 lm_head 131 MB (30.8 us). Each program owns BLOCK_N output columns and streams a
  [BLOCK_N, BLOCK_K] slab of W per step with K contiguous (wide vector loads), multiplying by the
  few rows of x held in registers; the fp32 products accumulate in a [BLOCK_M, BLOCK_N, BLOCK_K]
  register tile reduced over K once at the end. Small N gives too few programs to saturate HBM,
  so a config can split K: each split writes fp32 partials [SPLIT, M, N] and a second small
  kernel sums them in a fixed order and runs the epilogue (deterministic, no atomics).
* `gemv` (batch-1 decode, M <= GEMV_M = 4): the latency-bound case, on CUDA cores. The matvec
  above pays a [BLOCK_M, BLOCK_N, BLOCK_K] register tile and cuBLAS picks tiles for GEMMs (the
  7B TP=2 o-projection, 4096 x 2048, ran at 2.4 TB/s under cuBLAS, 2.8 as a PDL gemv:
  bench/RESULTS.md, bench/gemv_sweep.py). Here each program owns BLOCK_N (8-32) columns of
  all M rows, so N = 4096 is 128-512 programs; K is a compile-time constant, so K <= BLOCK_K is
  one load of the whole [BLOCK_N, K] weight tile and no loop; products in fp32, `tl.sum` per row.
  With `PDL` (programmatic dependent launch, sm90+, weights that are graph constants) the first
  step's weights and the bias are loaded before `gdc_wait()`, overlapping the previous kernel's
  tail; x and the residual (earlier kernels' outputs) are read after it.

Kernel source is kiln-made text only: the activation is one of a fixed table of expressions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ... import debug
from ...ir.opset.nn import ACTIVATIONS
from .autotune import bucket, choose
from .cache import load_module
from .pdl import available as pdl_available
from .pdl import with_pdl
from .prologue import PRO_NONE, no_prologue
from .sparse24 import SPARSE24, SparseWeight

SMALL_M = 16  # at most this many rows: the matvec configs join the candidates
_INT32 = 2**31  # offsets are int32: larger operands run in PyTorch
_MATVEC_TILE = 16384  # BLOCK_M * BLOCK_N * BLOCK_K fp32 registers of the matvec accumulator
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True, slots=True)
class GemmConfig:
    """One tiling of the GEMM kernel (block sizes are compile-time constants)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    warps: int
    stages: int

    @property
    def name(self) -> str:
        return f"gemm_{self.block_m}x{self.block_n}x{self.block_k}_g{self.group_m}_w{self.warps}_s{self.stages}"


@dataclass(frozen=True, slots=True)
class MatvecConfig:
    """One tiling of the matvec kernel: columns and K per step per program, and K splits."""

    block_n: int
    block_k: int
    split_k: int
    warps: int

    @property
    def name(self) -> str:
        return f"matvec_{self.block_n}x{self.block_k}_k{self.split_k}_w{self.warps}"


GEMM_CONFIGS = (
    GemmConfig(64, 64, 32, 8, 4, 3),
    GemmConfig(128, 128, 64, 8, 8, 3),
    GemmConfig(128, 256, 64, 8, 8, 3),
    GemmConfig(64, 128, 64, 8, 4, 4),
    GemmConfig(128, 64, 32, 8, 4, 4),
    GemmConfig(16, 64, 128, 1, 4, 4),
)


@dataclass(frozen=True, slots=True)
class GemvConfig:
    """A batch-1 decode tiling of the CUDA-core `gemv` kernels (dense, and `gemv_w8` / `gemv_w4`
    in quant_kernels.py): output columns per program, K per step (capped at K rounded up to a
    power of two: one step when K fits; int4 at least one group), warps, and whether to launch
    with programmatic dependent launch (sm90+, constant weights)."""

    block_n: int
    block_k: int
    warps: int
    pdl: bool

    @property
    def name(self) -> str:
        return f"gemv_{self.block_n}x{self.block_k}_w{self.warps}{'_pdl' if self.pdl else ''}"


MATVEC_CONFIGS = (MatvecConfig(64, 128, 1, 4), MatvecConfig(32, 256, 4, 4), MatvecConfig(128, 64, 2, 8))
GEMV_M = 4  # at most this many rows: the gemv kernels join the decode candidates (one pass per row)
# bench/pdl_probe.py's winner (16 rows x all of K = 2048, 8 warps), half the rows for twice the
# programs (small N; K up to 4096 in one step), and a looped K; each tiling holds 128 fp32 weights
# per thread. PDL variants first: they are the same kernels, launched to overlap the previous one.
GEMV_TILINGS = ((16, 2048, 8), (8, 4096, 8), (32, 512, 4))


def gemv_configs(tilings: tuple[tuple[int, int, int], ...]) -> tuple[GemvConfig, ...]:
    """The PDL variants of these (BLOCK_N, BLOCK_K, warps) tilings, then the plain ones."""
    return tuple(GemvConfig(n, k, w, pdl) for pdl in (True, False) for n, k, w in tilings)


GEMV_CONFIGS = gemv_configs(GEMV_TILINGS)
CONFIGS: dict[str, GemmConfig | MatvecConfig | GemvConfig] = {c.name: c for c in GEMM_CONFIGS + MATVEC_CONFIGS + GEMV_CONFIGS}


def gemv_flags(cfg: GemvConfig, m: int, k: int, pdl: bool) -> dict[str, Any]:
    """The launch keywords a gemv kernel (dense or quantized) shares: M and K as compile-time
    constants, the tiling, and programmatic dependent launch when `pdl` (only then `launch_pdl`:
    a Triton without PDL, where pdl_available is False, takes no such keyword)."""
    flags: dict[str, Any] = {"M": m, "K": k, "PDL": pdl, "BLOCK_M": _pow2(m), "BLOCK_N": cfg.block_n, "num_warps": cfg.warps}
    if pdl:
        flags["launch_pdl"] = True
    return flags


TORCH = "torch"  # the PyTorch candidate: F.linear, activation, add

# The epilogue's activation on the fp32 accumulator `acc` (gelu_tanh: 0.5*y*(1 + tanh(z)) =
# y*sigmoid(2z)).
_ACT = {
    "none": "",
    "relu": "    acc = tl.maximum(acc, 0.0)\n",
    "silu": "    acc = acc * tl.sigmoid(acc)\n",
    "gelu": "    acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))\n",
    "gelu_tanh": "    acc = acc * tl.sigmoid(1.5957691216057308 * (acc + 0.044715 * acc * acc * acc))\n",
}

# the PDL wait, the K-step load and the per-row CUDA-core product, shared by `gemv` here and
# quant_kernels' gemv_w8 / gemv_w4 / gemv_f8 / hgemv_w4
GEMV_COMMON = '''try:
    from triton.language.extra.cuda import gdc_wait
except ImportError:  # an older Triton: only PDL=False kernels compile (the launcher offers no other)
    gdc_wait = None


@triton.jit
def wait_for_input(PDL: tl.constexpr):
    # with programmatic dependent launch: wait for the previous kernel (x is its output; nothing
    # it writes may be read, and nothing stored, before this). The next kernel may already start:
    # every gemv lets it launch as its first statement (pdl.with_pdl's trigger, where PDL runs)
    if PDL:
        gdc_wait()


@triton.jit
def load_step(wp, nmask, rk, left, EVEN: tl.constexpr):
    # a (BLOCK_N, BLOCK_K) step of K-contiguous weights or codes: rows past N masked, and columns
    # at or past `left` (the K still to go) unless every step is whole (EVEN)
    if EVEN:
        return tl.load(wp, mask=nmask[:, None], other=0.0)
    return tl.load(wp, mask=nmask[:, None] & (rk[None, :] < left), other=0.0)


@triton.jit
def load_x(x, r, g, s, i, kx, kin, sxm, sxk, PRO: tl.constexpr, K: tl.constexpr, STORE: tl.constexpr):
    # row i of the linear's input at columns kx (any shape), in fp32, read through the prologue
    # PRO (prologue.py): 0 none; 1 SiLU-mul: silu(x[i, kx]) * x[i, K + kx], rounded to x's dtype as
    # the unfused SiLU-mul stores it; 2 RMSNorm: x[i, kx] * g[kx]; 3 add + RMSNorm: as 2 on the sum
    # v = x + r[i, kx] (rounded to x's dtype, as the reference's residual stream), which program 0
    # stores into s where STORE. Returns (the input, v): a norm's caller sums v * v per row and
    # scales the reduced products by the row's 1 / rms. r and s are contiguous [M, K].
    v = tl.load(x + i * sxm + kx * sxk, mask=kin, other=0.0)
    if PRO == 1:
        a = v.to(tl.float32)
        u = tl.load(x + i * sxm + (K + kx) * sxk, mask=kin, other=0.0).to(tl.float32)
        # silu(a) = a / (1 + e^-a) with the approximate division (2 ulp): every program computes
        # it for all of x, and the IEEE division costs ~20 instructions
        f = (tl.fdiv(a, 1.0 + tl.exp(-a)) * u).to(v.dtype).to(tl.float32)
        return f, f
    if PRO == 3:
        v = (v.to(tl.float32) + tl.load(r + i * K + kx, mask=kin, other=0.0).to(tl.float32)).to(v.dtype)
        if STORE:
            tl.store(s + i * K + kx, v, mask=kin & (tl.program_id(0) == 0))
    f = v.to(tl.float32)
    if PRO >= 2:
        return f * tl.load(g + kx, mask=kin, other=0.0).to(tl.float32), f
    return f, f


@triton.jit
def gemv_rows(acc, ss, wf, x, r, g, s, rm, kx, kin, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr, K: tl.constexpr):
    # acc[i, :] += wf . x[i, kx] for each of the M rows on CUDA cores (wf: fp32 (BLOCK_N, BLOCK_K)
    # weights), x read through the prologue; one row at a time, so only one product tile is live.
    # ss[i] gathers a norm prologue's sum of squares of row i
    for i in tl.static_range(M):
        xv, v = load_x(x, r, g, s, i, kx, kin, sxm, sxk, PRO, K, True)
        acc += tl.where(rm[:, None] == i, tl.sum(wf * xv[None, :], axis=1)[None, :], 0.0)
        if PRO >= 2:
            ss += tl.where(rm == i, tl.sum(v * v), 0.0)
    return acc, ss


@triton.jit
def norm_rows(acc, ss, eps, PRO: tl.constexpr, K: tl.constexpr):
    # a norm prologue's 1 / rms of each row on its reduced products (BLOCK_M, BLOCK_N)
    if PRO >= 2:
        acc = acc * tl.rsqrt(ss / K + eps)[:, None]
    return acc


'''

_SOURCE = '''import triton
import triton.language as tl


@triton.jit
def epilogue(acc, rm, rn, M, N, b, r, y, srm, srn, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr):
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        acc += tl.load(b + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
{act}    if HAS_RES:
        acc += tl.load(r + rm[:, None] * srm + rn[None, :] * srn, mask=mask, other=0.0).to(tl.float32)
    tl.store(y + rm[:, None] * N + rn[None, :], acc.to(y.dtype.element_ty), mask=mask)


@triton.jit
def gemm(x, w, b, r, y, M, N, K, sxm, sxk, swn, swk, srm, srn,
         HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, EVEN_K: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    width = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // width) * GROUP_M
    rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # plain offsets (Triton infers their true contiguity / divisibility); rows / columns past
    # M / N are masked on load (loop-invariant masks) and on store
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    ncol = rn[None, :] < N  # (1, BLOCK_N)
    xp = x + rm[:, None] * sxm + rk[None, :] * sxk  # (BLOCK_M, BLOCK_K)
    wp = w + rn[None, :] * swn + rk[:, None] * swk  # (BLOCK_K, BLOCK_N): a tile of W.T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
{loop:k0:0:K}
        if EVEN_K:
            a = tl.load(xp, mask=mrow, other=0.0)
            bt = tl.load(wp, mask=ncol, other=0.0)
        else:
            a = tl.load(xp, mask=mrow & (rk[None, :] < K - k0), other=0.0)
            bt = tl.load(wp, mask=ncol & (rk[:, None] < K - k0), other=0.0)
        acc = {dot}
        xp += BLOCK_K * sxk
        wp += BLOCK_K * swk
{step:k0}    epilogue(acc, rm, rn, M, N, b, r, y, srm, srn, HAS_BIAS, HAS_RES)


@triton.jit
def matvec(x, w, b, r, y, part, M, N, K, K_SPLIT, sxm, sxk, swn, swk, srm, srn,
           HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # ragged edges: loads past M / N are masked (loop-invariant masks), the stores drop them
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    ncol = rn[:, None] < N  # (BLOCK_N, 1)
    k_lo = pid_k * K_SPLIT
    xp = x + rm[:, None] * sxm + (k_lo + rk)[None, :] * sxk  # (BLOCK_M, BLOCK_K)
    wp = w + rn[:, None] * swn + (k_lo + rk)[None, :] * swk  # (BLOCK_N, BLOCK_K), K contiguous
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    k_hi = min(k_lo + K_SPLIT, K)
{loop:k0:k_lo:k_hi}
        if EVEN_K:
            wt = tl.load(wp, mask=ncol, other=0.0)
            xv = tl.load(xp, mask=mrow, other=0.0)
        else:
            wt = tl.load(wp, mask=ncol & (rk[None, :] < K - k0), other=0.0)
            xv = tl.load(xp, mask=mrow & (rk[None, :] < K - k0), other=0.0)
        acc += xv.to(tl.float32)[:, None, :] * wt.to(tl.float32)[None, :, :]
        xp += BLOCK_K * sxk
        wp += BLOCK_K * swk
{step:k0}    out = tl.sum(acc, axis=2)  # (BLOCK_M, BLOCK_N)
    if SPLIT == 1:
        epilogue(out, rm, rn, M, N, b, r, y, srm, srn, HAS_BIAS, HAS_RES)
    else:
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(part + pid_k * M * N + rm[:, None] * N + rn[None, :], out, mask=mask)


{gemv_common}@triton.jit
def gemv(x, w, b, r, y, pr, pg, ps, eps, N, sxm, sxk, swn, swk, srm, srn, M: tl.constexpr, K: tl.constexpr,
         HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # batch-1 decode on CUDA cores, no x padding: each program owns BLOCK_N columns of all M
    # rows; K is a compile-time constant, so K <= BLOCK_K is one load of the whole weight tile
    # and no loop. What no earlier kernel writes (the first step's weights, the bias) is loaded
    # before the PDL wait; x, the residual and every store come after it.
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < N  # (BLOCK_N,): loads past N / K are masked, the store drops columns past N
    wp = w + rn[:, None] * swn + rk[None, :] * swk  # (BLOCK_N, BLOCK_K), K contiguous
    wt = load_step(wp, nmask, rk, K, K % BLOCK_K == 0)
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc, ss = gemv_rows(acc, ss, wt.to(tl.float32), x, pr, pg, ps, rm, rk, rk < K, sxm, sxk, M, PRO, K)
{loop:k0:BLOCK_K:K}
        wp += BLOCK_K * swk
        wt = load_step(wp, nmask, rk, K - k0, K % BLOCK_K == 0)
        acc, ss = gemv_rows(acc, ss, wt.to(tl.float32), x, pr, pg, ps, rm, k0 + rk, rk < K - k0, sxm, sxk, M, PRO, K)
{step:k0}    acc = norm_rows(acc, ss, eps, PRO, K)
    if HAS_BIAS:  # before the activation, as the reference
        acc += bias[None, :]
    epilogue(acc, rm, rn, M, N, b, r, y, srm, srn, False, HAS_RES)


@triton.jit
def finish(part, b, r, y, M, N, srm, srn, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
           SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in tl.static_range(SPLIT):  # a fixed order: deterministic sums
        acc += tl.load(part + s * M * N + rm[:, None] * N + rn[None, :], mask=mask, other=0.0)
    epilogue(acc, rm, rn, M, N, b, r, y, srm, srn, HAS_BIAS, HAS_RES)
'''


def _loops(src: str, interpreted: bool) -> str:
    """`{loop:v:lo:hi}` ... `{step:v}` as `for v in range(lo, hi, BLOCK_K)` when compiled (Triton
    software-pipelines it), as a while loop when interpreted: Triton 3.6's interpreter cannot take
    a runtime `range` bound under numpy >= 2.4 (triton-lang/triton#9171; attention.py does the same)."""
    def head(m: re.Match) -> str:
        v, lo, hi = m.groups()
        return f"    {v} = {lo}\n    while {v} < {hi}:" if interpreted else f"    for {v} in range({lo}, {hi}, BLOCK_K):"

    src = re.sub(r"\{loop:(\w+):(\w+):(\w+)\}", head, src)
    return re.sub(r"\{step:(\w+)\}", (lambda m: f"        {m[1]} += BLOCK_K\n") if interpreted else (lambda m: ""), src)


def dot_expr(a: str, b: str, fp32: bool, interpreted: bool) -> str:
    """`tl.dot(a, b, acc)` as kernel text: IEEE-exact for fp32 inputs; widened to fp32 when
    interpreted (the interpreter multiplies bf16 tiles as raw integers)."""
    if interpreted:
        return f'tl.dot({a}.to(tl.float32), {b}.to(tl.float32), acc, input_precision="ieee")'
    return f'tl.dot({a}, {b}, acc, input_precision="ieee")' if fp32 else f"tl.dot({a}, {b}, acc)"


def split_k(k: int, block_k: int, splits: int) -> tuple[int, int]:
    """(splits actually used, K per split): K per split is a multiple of BLOCK_K, so splits never
    share a step."""
    steps = -(-k // block_k)
    per = -(-steps // min(splits, steps)) * block_k
    return -(-k // per), per


def kernel_source(activation: str, fp32: bool, interpreted: bool = False) -> str:
    """The Triton module for one activation (fp32 inputs get IEEE-exact dot products)."""
    src = _SOURCE.replace("{gemv_common}", GEMV_COMMON).replace("{act}", _ACT[activation]).replace("{dot}", dot_expr("a", "bt", fp32, interpreted))
    return _loops(src, interpreted)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def torch_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None, activation: str) -> torch.Tensor:
    """The PyTorch candidate: what the reference plan runs for linear / linear_add."""
    return torch_epilogue(F.linear(x, w, bias), residual, activation)


def torch_epilogue(y: torch.Tensor, residual: torch.Tensor | None, activation: str) -> torch.Tensor:
    """act(y) (+ residual) in PyTorch, in place on the fresh `y`."""
    if activation != "none":
        y = ACTIVATIONS[activation](y)
    return y if residual is None else y.add_(residual)


class LinearLauncher:
    """Runs one linear / linear_add node: inputs in IR order (x, weight[, residual][, bias]).

    `config` names a kernel config (see CONFIGS), "torch" or "sparse24" to skip autotuning (tests,
    benchmarks); otherwise the first call per (M bucket) times the candidates and remembers the
    winner. "sparse24" (PyTorch's 2:4 semi-structured kernels, sparse24.py) is a candidate only for
    a CUDA fp16/bf16 weight whose values have 2:4 structure; where it cannot run, PyTorch's dense
    F.linear does. `constant_weights`: the weight and bias are constants no kernel writes, so a
    PDL gemv config may read them before waiting on the previous kernel (else it launches plain).
    """

    __slots__ = ("activation", "has_bias", "has_residual", "config", "constant_weights", "chosen", "_mod",
                 "_by_shape", "sparse")

    def __init__(self, activation: str, has_bias: bool, has_residual: bool, config: str | None = None,
                 constant_weights: bool = False):
        if config is not None and config not in (TORCH, SPARSE24) and config not in CONFIGS:
            raise ValueError(f"unknown matmul config {config!r}; known: {', '.join(CONFIGS)}, {TORCH}, {SPARSE24}")
        self.activation, self.has_bias, self.has_residual, self.config = activation, has_bias, has_residual, config
        self.constant_weights = constant_weights
        self.chosen: dict[str, str] = {}  # autotune key -> candidate name, for this node
        self._mod: dict[bool, Any] = {}  # fp32? -> loaded kernel module
        self._by_shape: dict[tuple, str] = {}  # (x shape, dtype) -> choice: no key string per call
        self.sparse = SparseWeight()  # the weight's 2:4-compressed form, built on first use

    def _operands(self, ins: tuple) -> tuple:
        """(x, w, bias, residual) of inputs in IR order (x, weight[, residual][, bias])."""
        return ins[0], ins[1], ins[-1] if self.has_bias else None, ins[2] if self.has_residual else None

    def __call__(self, *ins: torch.Tensor) -> torch.Tensor:
        x, w, bias, residual = self._operands(ins)
        name = self.config or self._by_shape.get((x.shape, x.dtype)) or self._choose(x, w, bias, residual)
        return self.run(name, x, w, bias, residual)

    def run_with_prologue(self, name: str, ins: tuple, pro: Any) -> torch.Tensor:
        """One launch of gemv config `name` (where `takes_prologue`) on inputs in IR order whose x
        is the prologue's input (x [..., K], or [..., 2K] for SiLU-mul)."""
        return self.run(name, *self._operands(ins), pro)

    def run(self, name: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
            pro: Any = None) -> torch.Tensor:
        """One launch of candidate `name` (a config name, "torch" or "sparse24"); x is read through
        `pro` (a prologue.Prologue) when given, which only the gemv configs take (`takes_prologue`)."""
        if pro is not None and not self.takes_prologue(name, x):  # it would be silently dropped below
            raise ValueError(f"matmul config {name!r} cannot read a prologue for x {tuple(x.shape)}; see takes_prologue")
        if name == SPARSE24:
            y = self.sparse.linear(x, w, bias) if self._fits(x, w) else None
            if y is not None:
                return torch_epilogue(y, residual, self.activation)
        if name in (TORCH, SPARSE24) or not self._fits(x, w):
            if pro is not None:
                raise ValueError(f"matmul config {name!r} does not apply to these operands and cannot read the prologue")
            return torch_linear(x, w, bias, residual, self.activation)
        k, n = x.shape[-1], w.shape[0]
        x2 = x.reshape(-1, k)
        r2 = residual.reshape(-1, n) if residual is not None else None
        y = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
        cfg = CONFIGS[name]
        if isinstance(cfg, GemmConfig):
            self._gemm(cfg, x2, w, bias, r2, y)
        elif isinstance(cfg, GemvConfig):
            if x2.shape[0] > GEMV_M:  # one pass over the weights per row: more rows are matvec's job
                return torch_linear(x, w, bias, residual, self.activation)
            self._gemv(cfg, x2, w, bias, r2, y, cfg.pdl and self._pdl_ok(x2.is_cuda), pro)
        else:
            self._matvec(cfg, x2, w, bias, r2, y)
        return y.view(*x.shape[:-1], n)

    def _fits(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        """Non-empty, one float dtype, and every operand addressable with int32 offsets."""
        m, k, n = x.numel() // max(x.shape[-1], 1), x.shape[-1], w.shape[0]
        return x.dtype in _DTYPES and w.dtype == x.dtype and min(m, n, k) > 0 and max(m * k, n * k, m * n) < _INT32

    def _module(self, x: torch.Tensor) -> Any:
        fp32 = x.dtype == torch.float32
        mod = self._mod.get(fp32)
        if mod is None:
            src = kernel_source(self.activation, fp32, debug.TRITON_INTERPRET)
            # every kernel lets the next one launch (PDL, where it runs) as it starts
            mod = self._mod[fp32] = load_module(with_pdl(src, trigger=("gemm", "matvec", "finish", "gemv")))
        return mod

    def _epilogue_args(self, y: torch.Tensor, bias: torch.Tensor | None, r2: torch.Tensor | None) -> tuple:
        r = r2 if r2 is not None else y  # an unused pointer when HAS_RES is false
        return (bias if bias is not None else y, r, y), (r.stride(0), r.stride(1))

    def _gemm(self, cfg: GemmConfig, x2: torch.Tensor, w: torch.Tensor, bias: Any, r2: Any, y: torch.Tensor) -> None:
        (m, k), n = x2.shape, w.shape[0]
        (b, r, y_), rs = self._epilogue_args(y, bias, r2)
        grid = (-(-m // cfg.block_m) * -(-n // cfg.block_n),)
        self._module(x2).gemm[grid](
            x2, w, b, r, y_, m, n, k, *x2.stride(), *w.stride(), *rs,
            HAS_BIAS=bias is not None, HAS_RES=r2 is not None, EVEN_K=k % cfg.block_k == 0,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.warps, num_stages=cfg.stages,
        )

    def _matvec(self, cfg: MatvecConfig, x2: torch.Tensor, w: torch.Tensor, bias: Any, r2: Any, y: torch.Tensor) -> None:
        (m, k), n = x2.shape, w.shape[0]
        block_m = min(_pow2(m), SMALL_M)
        block_n, block_k = cfg.block_n, cfg.block_k
        while block_m * block_n * block_k > _MATVEC_TILE and block_k > 32:  # keep the register tile
            block_k //= 2
        while block_m * block_n * block_k > _MATVEC_TILE and block_n > 16:
            block_n //= 2
        split, k_split = split_k(k, block_k, cfg.split_k)
        (b, r, y_), rs = self._epilogue_args(y, bias, r2)
        part = torch.empty((split, m, n), dtype=torch.float32, device=y.device) if split > 1 else y
        mod = self._module(x2)
        flags = {"HAS_BIAS": bias is not None, "HAS_RES": r2 is not None}
        tiles_m = -(-m // block_m)
        mod.matvec[(-(-n // block_n), split, tiles_m)](
            x2, w, b, r, y_, part, m, n, k, k_split, *x2.stride(), *w.stride(), *rs, **flags,
            EVEN_K=k % block_k == 0, SPLIT=split, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=cfg.warps,
        )
        if split > 1:
            mod.finish[(-(-n // 128), tiles_m)](part, b, r, y_, m, n, *rs, **flags, SPLIT=split, BLOCK_M=block_m, BLOCK_N=128)

    def _gemv(self, cfg: GemvConfig, x2: torch.Tensor, w: torch.Tensor, bias: Any, r2: Any, y: torch.Tensor,
              pdl: bool, pro: Any = None) -> None:
        """One launch of `gemv`, with programmatic dependent launch when `pdl`, x read through
        `pro` (a prologue.Prologue) when given. M and K are compile-time constants (K is the
        weight's, M at most GEMV_M): a few compiles per node."""
        m, (n, k) = x2.shape[0], w.shape
        (b, r, y_), rs = self._epilogue_args(y, bias, r2)
        self._module(x2).gemv[(-(-n // cfg.block_n),)](
            x2, w, b, r, y_, *(pro.args(y) if pro is not None else no_prologue(y)), n, *x2.stride(), *w.stride(), *rs,
            HAS_BIAS=bias is not None, HAS_RES=r2 is not None, PRO=pro.kind if pro is not None else PRO_NONE,
            BLOCK_K=min(cfg.block_k, _pow2(k)), **gemv_flags(cfg, m, k, pdl))

    def takes_prologue(self, name: str, x: torch.Tensor) -> bool:
        """Candidate `name` can read x through a prologue (prologue.py): a gemv config, at most
        GEMV_M rows, a dtype and size the kernels take."""
        m = x.numel() // max(x.shape[-1], 1)
        return isinstance(CONFIGS.get(name), GemvConfig) and m <= GEMV_M and x.dtype in _DTYPES and 0 < m \
            and x.numel() < _INT32

    def _pdl_ok(self, on_cuda: bool) -> bool:
        return on_cuda and self.constant_weights and pdl_available()

    def candidates(self, m: int, w: torch.Tensor | None = None) -> list[str]:
        """Candidate names for M rows, in CPU preference order (the first wins untimed).

        Three Triton configs per side (those that won on the H200 bench, bench/RESULTS.md) plus
        PyTorch: every candidate is compiled on the first call, so the list is kept short to
        keep first-call time under torch.compile's; `config=` reaches any config. Given the
        weight `w`, "sparse24" joins (before "torch") where `w` is eligible (CUDA only)."""
        if m <= SMALL_M:
            names = [MATVEC_CONFIGS[1].name, MATVEC_CONFIGS[0].name, GEMM_CONFIGS[5].name, TORCH]
            on_cuda = w is not None and w.is_cuda
            if m <= GEMV_M:  # batch-1 decode: the CUDA-core gemv tilings, first on CUDA (PDL where it may)
                pdl = self._pdl_ok(on_cuda)
                gemv = [c.name for c in GEMV_CONFIGS if pdl or not c.pdl]
                names = gemv + names if on_cuda else names[:1] + gemv + names[1:]
        else:
            names = [GEMM_CONFIGS[2].name, GEMM_CONFIGS[1].name, GEMM_CONFIGS[3].name, TORCH]
        if w is not None and self.sparse.usable(w):
            names.insert(-1, SPARSE24)
        return names

    def problem_key(self, m: int, k: int, dtype: torch.dtype, w: torch.Tensor) -> str:
        """The autotune key of this linear at M rows of K (without the 2:4 mark)."""
        return (f"linear|{str(dtype).removeprefix('torch.')}|{self.activation}|bias={int(self.has_bias)}|"
                f"res={int(self.has_residual)}|M{bucket(m)}|N{w.shape[0]}|K{k}")

    def prologue_candidates(self, x: torch.Tensor, w: torch.Tensor) -> list[str]:
        """The candidates that can read the prologue's input x themselves (prologue.py)."""
        m = x.numel() // max(x.shape[-1], 1)
        return [name for name in self.candidates(m, w) if self.takes_prologue(name, x)]

    def _choose(self, x: torch.Tensor, w: torch.Tensor, bias: Any, residual: Any) -> str:
        m = x.numel() // max(x.shape[-1], 1)
        names = self.candidates(m, w)
        # 2:4 weights get their own key: a dense weight of the same shape must not read (or
        # overwrite) a cached "sparse24" choice
        key = self.problem_key(m, x.shape[-1], x.dtype, w) + ("|2:4" if SPARSE24 in names else "")
        hit = self.chosen.get(key)
        if hit is None:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                return TORCH  # never time inside graph capture; not remembered, so a later call tunes
            cands: dict[str, Callable[[], object]] = {
                name: (lambda name=name: self.run(name, x, w, bias, residual)) for name in names
            }
            hit = self.chosen[key] = choose(key, cands, on_cuda=x.is_cuda)
            if SPARSE24 in names and SPARSE24 not in self.chosen.values():
                self.sparse.release()  # timing compressed the weight; keep that memory only if used
        self._by_shape[(x.shape, x.dtype)] = hit
        return hit


def linear_kernel(node: Any, config: str | None = None) -> LinearLauncher | None:
    """A launcher for a linear / linear_add node in fp32, fp16 or bf16, else None; `config`
    pins a candidate (see LinearLauncher) instead of autotuning."""
    if node.op.name not in ("linear", "linear_add"):
        return None
    if any(v.type.dtype.torch not in _DTYPES for v in node.inputs) or node.attrs["activation"] not in _ACT:
        return None
    has_residual = node.op.name == "linear_add"
    has_bias = len(node.inputs) == 3 + has_residual
    # the weight and bias (never the residual: an earlier kernel's output) are graph constants
    constant = all(v.kind == "const" for v in (node.inputs[1], node.inputs[-1] if has_bias else node.inputs[1]))
    return LinearLauncher(node.attrs["activation"], has_bias, has_residual, config, constant_weights=constant)
