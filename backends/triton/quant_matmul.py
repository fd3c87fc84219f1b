"""Launchers for the quantized linears `linear_w8`, `linear_w4`, `linear_w8a8` and `linear_fp8` (fused dequant).

Inputs in IR order: x [..., K], the codes (i8/u8 [N, K] or packed u8 [N, K/2]), the scales,
the zero points when `asymmetric`, then the optional bias. Kernels live in quant_kernels.py (its
docstring has the napkin math). Like matmul.LinearLauncher, each problem key (op, dtype,
activation, group, zero points, bias, M bucket, N, K) picks among a few Triton configs and the
op's own reference implementation ("torch") through `autotune.choose`: timed on CUDA once, the
first candidate untimed on CPU, never timed during CUDA-graph capture.

Batch-1 decode (M <= GEMV_M) also gets the CUDA-core `gemv` kernels; on Hopper their PDL
variants launch with programmatic dependent launch and read the weights before waiting on the
previous kernel, so they are offered only when every operand but x is a graph constant (the
quantize pass's codes / scales / zeros, a constant bias): nothing a kernel in flight writes.
`linear_fp8` has only the gemvs (`gemv_f8`, M <= GEMV_M: x quantized per token in the kernel;
with bf16 / fp16 x on CUDA also `tgemv_f8`, the same on fp8 tensor cores, offered first);
`linear_w8a8` at M <= GEMV_M also gets one (`gemv_i8`: x quantized per token in the kernel, dp4a
on the codes read as int32 words), beside quant_rows + the int8 GEMM it runs at every M, and
symmetric `linear_w8` with bf16 / fp16 activations gets the same kernel with x in 15-bit fixed
point (two dp4a per four codes; the `igemv` configs);
with more rows its reference runs (`torch._scaled_mm` on sm >= 8.9). Symmetric int4 at one row
on CUDA also gets `hgemv_w4` (packed f16 arithmetic, inline PTX), with
its f16 copy of the group scales made once per weight (`half_scales`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ... import debug
from ...ir import REGISTRY
from .autotune import bucket, choose
from .cache import load_module
from .matmul import (
    _ACT,
    _DTYPES,
    _INT32,
    _MATVEC_TILE,
    GEMV_M,
    GEMV_TILINGS,
    SMALL_M,
    TORCH,
    GemmConfig,
    GemvConfig,
    MatvecConfig,
    _pow2,
    gemv_configs,
    gemv_flags,
    pdl_available,
    split_k,
)
from .pdl import with_pdl
from .prologue import PRO_NONE, Prologue, no_prologue
from .quant_kernels import kernel_source

# every kernel lets the next one launch as its first statement (pdl.with_pdl's trigger): a kernel
# missing here holds a PDL chain's next kernel until it ends
_KERNELS = ("mv_w8", "mv_w4", "dmv_w8", "dmv_w4", "gemv_w8", "gemv_w4", "hgemv_w4", "gemv_f8", "gemv_i8", "gemv_i4", "kgemv_i4",
            "kgemv_i8", "tgemv_f8", "gemm_w8", "gemm_w4", "finish", "quant_rows")

OPS = ("linear_w8", "linear_w4", "linear_w8a8", "linear_fp8")
_KNOWN_ATTRS = frozenset({"activation", "group_size", "asymmetric", "act_scale"})
_FINISH_N = 128  # columns per program of the split-K finish kernel

@dataclass(frozen=True, slots=True)
class DotMatvecConfig:
    """A decode tiling of `dmv_w8` / `dmv_w4`: output columns and K per step per program, K
    splits, warps, pipeline stages (x's rows are one 16-row tile)."""

    block_n: int
    block_k: int
    split_k: int
    warps: int
    stages: int

    @property
    def name(self) -> str:
        return f"dmv_{self.block_n}x{self.block_k}_k{self.split_k}_w{self.warps}_s{self.stages}"


@dataclass(frozen=True, slots=True)
class IntGemvConfig(GemvConfig):
    """A tiling of the weight-only integer gemvs, `gemv_i8` (symmetric int8) and `gemv_i4`
    (symmetric int4): x in 15-bit fixed point, dp4a on the codes; a GemvConfig under its own
    name (the launcher tests for this class before GemvConfig)."""

    @property
    def name(self) -> str:
        return "i" + GemvConfig.name.fget(self)


@dataclass(frozen=True, slots=True)
class KGemvConfig(IntGemvConfig):
    """A tiling of `kgemv_i4` / `kgemv_i8`: the integer gemvs with every thread along K (rows in
    registers, x's codes made once per thread and step). Each thread takes four words per row
    and chunk where BLOCK_K is a multiple of 1024 x warps (int4) or 512 x warps (int8), as every
    offered tiling is; other tilings are correct, with threads repeating chunks or sharing them."""

    @property
    def name(self) -> str:
        return "k" + GemvConfig.name.fget(self)


@dataclass(frozen=True, slots=True)
class TensorGemvConfig(GemvConfig):
    """A tiling of `tgemv_f8` (batch-1 fp8 with bf16 / fp16 x on tensor cores): weight rows per
    program (the MMA's M side: 64 per four warps), K per software-pipelined step, warps, PDL, then
    pipeline stages and the products the MMA sums before the accumulator is promoted to fp32."""

    stages: int = 3
    imprecise: int = 32
    split: int = 1  # K splits: programs per column block, the last to finish adds the partials

    @property
    def name(self) -> str:
        ks = f"_k{self.split}" if self.split > 1 else ""
        return f"tgemv_{self.block_n}x{self.block_k}_w{self.warps}_s{self.stages}_a{self.imprecise}{ks}{'_pdl' if self.pdl else ''}"


@dataclass(frozen=True, slots=True)
class HalfGemvConfig:
    """A tiling of `hgemv_w4` (batch-1 symmetric int4 in packed f16 arithmetic, CUDA only): output
    rows per program, K per step (whole groups), warps, steps per f16 sum before widening,
    programmatic dependent launch."""

    block_n: int
    block_k: int
    warps: int
    flush: int
    pdl: bool

    @property
    def name(self) -> str:
        return f"hgemv_{self.block_n}x{self.block_k}_w{self.warps}_f{self.flush}{'_pdl' if self.pdl else ''}"


MATVEC_CONFIGS = (MatvecConfig(64, 256, 1, 4), MatvecConfig(32, 256, 4, 4), MatvecConfig(128, 128, 2, 8))
# the fastest tilings per 1.1B-Llama shape on an H200 (bench/quant_sweep.py, bench/RESULTS.md)
DMV_W8 = (DotMatvecConfig(32, 256, 1, 4, 4), DotMatvecConfig(32, 128, 4, 4, 4), DotMatvecConfig(64, 128, 1, 4, 4))
DMV_W4 = (DotMatvecConfig(32, 128, 8, 4, 3), DotMatvecConfig(64, 128, 8, 4, 3), DotMatvecConfig(64, 128, 1, 4, 3),
          DotMatvecConfig(128, 128, 4, 4, 3))
# batch-1 tilings of the quantized gemv kernels: the dense ones plus those that won on the codes
# on an H200 (bench/gemv_sweep.py --quant --extra, 2026-11-22, bench/RESULTS.md). int8: 4 rows x
# 4096 with 2 warps (1.1B down 7.90 -> 6.70 us, 7B q/k/v 16.66 -> 14.81, gate/up 27.0 -> 24.8,
# down 18.2 -> 15.6) and 8 x 1024 with 2 warps (1.1B gate/up 9.01 -> 8.67); int4 g128: 16 x 1024
# with 4 warps (1.1B gate/up 11.3 -> 9.0 us, 7B q/k/v 20.2 -> 19.6, gate/up 34.8 -> 32.3). More
# programs of fewer registers each: more of a matvec's loads are in flight at once. int8 4 x 8192
# with 4 warps: all of a 1.1B down projection's K (5632) in one step, every code loaded before the
# PDL wait (7.01 -> 5.22 us; bench/tiling_probe.py, 2026-11-22, session 3).
W8_TILINGS = GEMV_TILINGS + ((4, 4096, 2), (8, 1024, 2), (4, 8192, 4))
W4_TILINGS = GEMV_TILINGS + ((16, 1024, 4),)
GEMV_W8 = gemv_configs(W8_TILINGS)
GEMV_W4 = gemv_configs(W4_TILINGS)
# the integer gemvs take the same tilings plus 16 x 1024 with 2 warps, which won the 1.1B gate/up
# for both (int8 6.66 us, int4 5.66; bench/tiling_run.sh, 2026-11-22 session 6)
IGEMV_W8 = tuple(IntGemvConfig(n, k, w, pdl) for pdl in (True, False) for n, k, w in W8_TILINGS + ((16, 1024, 2),))
IGEMV_W4 = tuple(IntGemvConfig(n, k, w, pdl) for pdl in (True, False) for n, k, w in W4_TILINGS + ((16, 1024, 2),))
# the kgemv tilings that won on an H200 (bench/gemv_sweep.py, 2026-11-22 session 6): int4 8 x 1024
# / 1 warp (1.1B gate/up), 8 x 4096 / 4 (1.1B down), 8 x 2048 / 2 (7B q/k/v, down), 16 x 1024 / 1
# (7B gate/up); int8 8 x 1024 / 2 (1.1B gate/up), 16 x 1024 / 2 (7B q/k/v, gate/up), 8 x 2048 / 4 (7B down)
KGEMV_W4 = tuple(KGemvConfig(n, k, w, pdl) for pdl in (True, False)
                 for n, k, w in ((8, 1024, 1), (8, 4096, 4), (8, 2048, 2), (16, 1024, 1)))
KGEMV_W8 = tuple(KGemvConfig(n, k, w, pdl) for pdl in (True, False) for n, k, w in ((8, 1024, 2), (16, 1024, 2), (8, 2048, 4)))
# the tgemv_f8 tilings that won on an H200 (bench/gemv_sweep.py --quant fp8, 2026-11-22 session 7,
# us per launch): 64 x 256, 4 stages, promoted every 256 products (7B q/k/v 16.4); the same with
# K split over 2 programs per column block (1.1B gate/up 9.8) or 4 (1.1B down 7.9, 7B down 15.8);
# 64 x 128, 4 stages (7B gate/up 23.8); 64 x 256, 3 stages (7B gate/up 25.5 in a later run);
# 128 x 256 with 8 warps, split 4 (7B o 7.9). 16 / 32 rows (MMA v2) never won; at 1.1B q/k/v and
# o gemv_f8 stays faster
TGEMV_F8 = tuple(TensorGemvConfig(n, k, w, pdl, st, a, sp) for pdl in (True, False)
                 for n, k, w, st, a, sp in ((64, 256, 4, 4, 256, 1), (64, 256, 4, 4, 256, 2), (64, 256, 4, 4, 256, 4),
                                            (64, 128, 4, 4, 32, 1), (64, 256, 4, 3, 32, 1), (128, 256, 8, 4, 256, 4)))
INT_GEMV_K = 1 << 17  # gemv_i8's int32 sums hold K products of 127 x 128 below 2^31
# the two that won among seven tilings on an H200 (bench/gemv_sweep.py --quant int4, 2026-11-22):
# 16 x 512 at 1.1B q/k/v and gate/up, 7B q/k/v and gate/up; 8 x 1024 at 1.1B o and down, 7B o and
# down; then 16 x 2048 with 8 warps at 1.1B down (7.28 -> 6.18 us; bench/tiling_probe.py, session 3)
HGEMV_W4 = tuple(HalfGemvConfig(n, k, w, f, pdl) for pdl in (True, False)
                 for n, k, w, f in ((16, 512, 4, 4), (8, 1024, 4, 4), (16, 2048, 8, 4)))
# hgemv_w4 only where every nonzero group scale is within this of the largest: scaled to [1, 2) at
# the top, the smallest stays an f16 normal (>= 2^-14) with its full 11-bit precision
HALF_SCALE_RANGE = 2.0**-13
GEMM_CONFIGS = (
    GemmConfig(64, 64, 32, 8, 4, 3),
    GemmConfig(128, 128, 64, 8, 8, 3),
    GemmConfig(64, 128, 64, 8, 4, 4),
    GemmConfig(16, 64, 128, 1, 4, 4),
    GemmConfig(128, 256, 64, 8, 8, 3),
)
CONFIGS: dict[str, GemmConfig | MatvecConfig | DotMatvecConfig | GemvConfig | HalfGemvConfig] = {
    c.name: c for c in GEMM_CONFIGS + MATVEC_CONFIGS + DMV_W8 + DMV_W4 + GEMV_W8 + GEMV_W4 + IGEMV_W8 + IGEMV_W4 + KGEMV_W4 + KGEMV_W8
    + HGEMV_W4 + TGEMV_F8
}


def torch_reference(op: str, ins: tuple, attrs: tuple) -> torch.Tensor:
    """The PyTorch candidate: the op's reference implementation, what the reference plan runs."""
    return REGISTRY[op].impl(*ins, *attrs)


def half_scales(scale: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """int4 group scales as `hgemv_w4` reads them: (scale * 2^shift in f16, 2^-shift), the largest
    |scale| * 2^shift in [1, 2); None when no scale is finite and nonzero or a nonzero one is below
    HALF_SCALE_RANGE of the largest (f16 would round it coarsely)."""
    mag = scale.float().abs()
    top = mag.max().item()
    if not 0 < top < float("inf"):
        return None
    low = mag[mag > 0].min().item()
    if low < top * HALF_SCALE_RANGE:
        return None
    shift = -math.floor(math.log2(top))
    return (scale.float() * 2.0**shift).to(torch.float16).contiguous(), 2.0**-shift


def _word_aligned(q: torch.Tensor) -> bool:
    """Code bytes [N, B] whose rows are whole, 4-byte aligned int32 words (B % 4 == 0, contiguous)."""
    return q.stride(1) == 1 and q.stride(0) % 4 == 0 and q.storage_offset() % 4 == 0 and q.shape[1] % 4 == 0


def _words(q: torch.Tensor) -> torch.Tensor:
    """`gemv_i8` / `gemv_i4`'s view of int8 codes [N, K] (K % 4 == 0) or packed int4 bytes
    [N, K / 2] (K % 8 == 0) as int32 words, four bytes each, the lowest column in the low byte;
    a fresh aligned copy where the rows are not aligned (then no PDL read of it before the wait:
    `run`, which makes it once per call)."""
    if not _word_aligned(q):
        q = q.clone(memory_format=torch.contiguous_format)
    return q.view(torch.int32)


class QuantLinearLauncher:
    """Runs one linear_w8 / linear_w4 / linear_w8a8 / linear_fp8 node (inputs in IR order).

    `config` names a kernel config (see CONFIGS) or "torch" to skip autotuning (tests, benchmarks);
    otherwise the first call per problem key picks one. Matvec configs do not apply to W8A8 (its
    small-M paths are the 16-row GEMM tile and, at M <= GEMV_M, `gemv_i8` under the gemv
    configs); a config that does not apply runs the reference.
    `constant_weights`: every operand but x is a constant no kernel writes, so a PDL config may
    read them before waiting on the previous kernel; otherwise PDL configs launch without PDL.
    """

    __slots__ = ("op", "activation", "group_size", "asymmetric", "act_scale", "has_bias", "config", "chosen",
                 "constant_weights", "_attrs", "_mod", "_by_shape", "_half_scales", "_split_ws")

    def __init__(self, op: str, attrs: dict[str, Any], has_bias: bool, config: str | None = None,
                 constant_weights: bool = False):
        if config is not None and config != TORCH and config not in CONFIGS:
            raise ValueError(f"unknown quantized matmul config {config!r}; known: {', '.join(CONFIGS)}, {TORCH}")
        if op not in OPS:
            raise ValueError(f"not a quantized linear op: {op!r}")
        declared = REGISTRY[op].attrs
        self._attrs = tuple(attrs.get(a.name, a.default) for a in declared)  # the reference's trailing arguments
        values = {a.name: v for a, v in zip(declared, self._attrs)}
        self.op, self.has_bias, self.config, self.constant_weights = op, has_bias, config, constant_weights
        self.activation = str(values["activation"])
        self.group_size = int(values.get("group_size", 0))
        self.asymmetric = bool(values.get("asymmetric", False))
        self.act_scale = float(values.get("act_scale", 0.0))  # W8A8: > 0 is one static activation scale
        self.chosen: dict[str, str] = {}  # autotune key -> candidate name, for this node
        self._mod: dict[bool, Any] = {}  # fp32? -> loaded kernel module
        self._by_shape: dict[tuple, str] = {}  # (x shape, dtype) -> choice: no key string per call
        self._half_scales: dict[tuple, tuple[torch.Tensor, float] | None] = {}  # hgemv_w4's f16 scales per weight
        self._split_ws: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # tgemv_f8's split-K partials and counters

    def __call__(self, *ins: torch.Tensor) -> torch.Tensor:
        x = ins[0]
        name = self.config or self._by_shape.get((x.shape, x.dtype)) or self._choose(ins)
        return self.run(name, ins)

    def run(self, name: str, ins: tuple, pro: Prologue | None = None) -> torch.Tensor:
        """One launch of candidate `name` (a config name or "torch"); x is read through `pro` (a
        prologue.Prologue) when given, which only the gemv configs take (`takes_prologue`)."""
        x, q = ins[0], ins[1]
        if pro is not None and not self.takes_prologue(name, x):  # it would be silently dropped below
            raise ValueError(f"quantized matmul config {name!r} cannot read a prologue for x {tuple(x.shape)}; see takes_prologue")
        cfg = CONFIGS.get(name)
        if cfg is None or not self._fits(x, q) or (self.op == "linear_w8a8" and not isinstance(cfg, (GemmConfig, GemvConfig))) \
                or (self.op == "linear_fp8" and not isinstance(cfg, GemvConfig)):
            if pro is not None:
                raise ValueError(f"quantized matmul config {name!r} does not apply to these operands and cannot read the prologue")
            return torch_reference(self.op, ins, self._attrs)
        k, n = x.shape[-1], q.shape[0]
        x2 = x.reshape(-1, k)
        scale = ins[2].contiguous()
        zeros = ins[3].contiguous() if self.asymmetric else scale  # an unused pointer when symmetric
        bias = ins[-1] if self.has_bias else None
        y = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
        if self.op == "linear_w8a8" and isinstance(cfg, GemmConfig):
            self._w8a8(cfg, x2, q, scale, bias, y)
        elif isinstance(cfg, GemmConfig):
            self._gemm(cfg, x2, q, scale, zeros, bias, y)
        elif isinstance(cfg, DotMatvecConfig):
            if x2.shape[0] > SMALL_M:  # one 16-row tile: more rows are a GEMM's job
                return torch_reference(self.op, ins, self._attrs)
            self._dot_matvec(cfg, x2, q, scale, zeros, bias, y)
        elif isinstance(cfg, HalfGemvConfig):
            half = self._half(x2, q, scale)
            if half is None:  # not a shape, dtype or scale range it takes: the reference, as any config that does not apply
                return torch_reference(self.op, ins, self._attrs)
            self._hgemv(cfg, x2, q, *half, bias, y, cfg.pdl and self._pdl_ok(x2.is_cuda))
        elif isinstance(cfg, GemvConfig):  # IntGemvConfig included
            if not self._gemv_applies(cfg, x2.shape[0], k, x.dtype):  # more rows are dmv's job; see _gemv_applies
                if pro is not None:
                    raise ValueError(f"quantized matmul config {name!r} does not apply to x {tuple(x.shape)} and cannot read the prologue")
                return torch_reference(self.op, ins, self._attrs)
            # gemv_i8 / gemv_i4 read the codes as int32 words (a view, or a copy where unaligned)
            words = _words(q) if self.op == "linear_w8a8" or isinstance(cfg, IntGemvConfig) else None
            # PDL reads codes, scales and zeros before the wait: not a copy just launched
            copied = scale is not ins[2] or (self.asymmetric and zeros is not ins[3]) or \
                (words is not None and words.data_ptr() != q.data_ptr())
            self._gemv(cfg, x2, q, scale, zeros, bias, y, cfg.pdl and self._pdl_ok(x2.is_cuda) and not copied, pro, words)
        else:
            self._matvec(cfg, x2, q, scale, zeros, bias, y)
        return y.view(*x.shape[:-1], n)

    def _gemv_applies(self, cfg: GemvConfig, m: int, k: int, dtype: torch.dtype) -> bool:
        """A gemv takes at most GEMV_M rows (one pass over the weights per row). `gemv_i8` (W8A8's
        gemv configs, weight-only int8's igemv ones) reads the codes as int32 words (K % 4 == 0)
        and sums below INT_GEMV_K products in int32; igemv is symmetric int8 with bf16 / fp16 x only
        (its fixed-point x is exact to 2^-15 of the row's largest element, beyond fp32's 1e-5), and
        takes symmetric int4 too (`gemv_i4`); so do the kgemv configs (`kgemv_i8` / `kgemv_i4`)."""
        if m > GEMV_M:
            return False
        if isinstance(cfg, TensorGemvConfig):  # fp8 MMA sums are not IEEE fp32: fp32 x keeps gemv_f8
            return self.op == "linear_fp8" and dtype in (torch.bfloat16, torch.float16)
        if isinstance(cfg, IntGemvConfig):  # int4: K is whole groups of >= 32, so whole words
            return self.op in ("linear_w8", "linear_w4") and not self.asymmetric and dtype in (torch.bfloat16, torch.float16) \
                and k % 4 == 0 and k < INT_GEMV_K
        return self.op != "linear_w8a8" or (k % 4 == 0 and k < INT_GEMV_K)

    def _fits(self, x: torch.Tensor, q: torch.Tensor) -> bool:
        """Non-empty, a float dtype the kernels take, every operand addressable with int32 offsets
        (split-K partials included), and for int4 a power-of-two group of at least 32."""
        m, k, n = x.numel() // max(x.shape[-1], 1), x.shape[-1], q.shape[0]
        g = self.group_size
        group_ok = self.op != "linear_w4" or (g >= 32 and not g & (g - 1))
        return group_ok and x.dtype in _DTYPES and min(m, n, k) > 0 and max(m * k, n * k, 4 * m * n) < _INT32

    def _module(self, x: torch.Tensor) -> Any:
        fp32 = x.dtype == torch.float32
        mod = self._mod.get(fp32)
        if mod is None:
            src = kernel_source(self.activation, fp32, debug.TRITON_INTERPRET)
            # every kernel lets the next one launch (PDL, where it runs) as it starts
            mod = self._mod[fp32] = load_module(with_pdl(src, trigger=_KERNELS))
        return mod

    def _block_k(self, block_k: int) -> int:
        """int4 steps never straddle a group: BLOCK_K is capped at the group size (a power of two)."""
        return min(block_k, self.group_size) if self.op == "linear_w4" else block_k

    def _gemm(self, cfg: GemmConfig, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor,
              bias: Any, y: torch.Tensor) -> None:
        (m, k), n = x2.shape, q.shape[0]
        block_k = self._block_k(cfg.block_k)
        grid = (-(-m // cfg.block_m) * -(-n // cfg.block_n),)
        common = (x2, q, scale, zeros, bias if bias is not None else y, y, m, n, k, *x2.stride(), *q.stride())
        blocks = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": block_k, "GROUP_M": cfg.group_m,
                  "num_warps": cfg.warps, "num_stages": cfg.stages}
        mod = self._module(x2)
        if self.op == "linear_w4":
            mod.gemm_w4[grid](*common, *scale.stride(), HAS_BIAS=bias is not None, ASYM=self.asymmetric,
                              GS=self.group_size, **blocks)
        else:
            mod.gemm_w8[grid](*common, HAS_BIAS=bias is not None, ASYM=self.asymmetric, EVEN_K=k % block_k == 0, **blocks)

    def _matvec(self, cfg: MatvecConfig, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor,
                bias: Any, y: torch.Tensor) -> None:
        (m, k), n = x2.shape, q.shape[0]
        w4 = self.op == "linear_w4"
        block_m, block_n, block_k = min(_pow2(m), SMALL_M), cfg.block_n, self._block_k(cfg.block_k)
        lanes = lambda: block_m * block_n * (block_k // 2 if w4 else block_k)  # noqa: E731 - fp32 accumulator size
        while lanes() > _MATVEC_TILE and block_k > 32:  # keep the register tile
            block_k //= 2
        while lanes() > _MATVEC_TILE and block_n > 16:
            block_n //= 2
        split, k_split = split_k(k, block_k, cfg.split_k)
        part = torch.empty((split, m, n), dtype=torch.float32, device=y.device) if split > 1 else y
        b = bias if bias is not None else y
        tiles_m = -(-m // block_m)
        mod = self._module(x2)
        args = (x2, q, scale, zeros, b, y, part, m, n, k, k_split, *x2.stride(), *q.stride())
        flags = {"HAS_BIAS": bias is not None, "ASYM": self.asymmetric, "SPLIT": split, "BLOCK_M": block_m,
                 "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": cfg.warps}
        grid = (-(-n // block_n), split, tiles_m)
        if w4:
            mod.mv_w4[grid](*args, *scale.stride(), GS=self.group_size, **flags)
        else:
            mod.mv_w8[grid](*args, EVEN_K=k % block_k == 0, **flags)
        if split > 1:
            mod.finish[(-(-n // _FINISH_N), tiles_m)](part, b, y, m, n, HAS_BIAS=bias is not None, SPLIT=split,
                                                      BLOCK_M=block_m, BLOCK_N=_FINISH_N)

    def _dot_matvec(self, cfg: DotMatvecConfig, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                    zeros: torch.Tensor, bias: Any, y: torch.Tensor) -> None:
        (m, k), n = x2.shape, q.shape[0]
        w4 = self.op == "linear_w4"
        block_k = self._block_k(cfg.block_k)
        split, k_split = split_k(k, block_k, cfg.split_k)
        part = torch.empty((split, m, n), dtype=torch.float32, device=y.device) if split > 1 else y
        b = bias if bias is not None else y
        mod = self._module(x2)
        args = (x2, q, scale, zeros, b, y, part, m, n, k, k_split, *x2.stride(), *q.stride())
        flags = {"HAS_BIAS": bias is not None, "ASYM": self.asymmetric, "SPLIT": split, "BLOCK_M": SMALL_M,
                 "BLOCK_N": cfg.block_n, "BLOCK_K": block_k, "num_warps": cfg.warps, "num_stages": cfg.stages}
        grid = (-(-n // cfg.block_n), split)
        if w4:
            mod.dmv_w4[grid](*args, *scale.stride(), GS=self.group_size, **flags)
        else:
            mod.dmv_w8[grid](*args, EVEN_K=k % block_k == 0, **flags)
        if split > 1:
            mod.finish[(-(-n // _FINISH_N), 1)](part, b, y, m, n, HAS_BIAS=bias is not None, SPLIT=split,
                                                BLOCK_M=SMALL_M, BLOCK_N=_FINISH_N)

    def _gemv(self, cfg: GemvConfig, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor,
              bias: Any, y: torch.Tensor, pdl: bool, pro: Prologue | None = None, words: torch.Tensor | None = None) -> None:
        """One launch of `gemv_w8` / `gemv_w4` / `gemv_f8` / `gemv_i8` / `gemv_i4` (these two on `words`, q's int32 view), with programmatic dependent launch when
        `pdl`, x read through `pro` when given. M and K are compile-time constants (K is the
        weight's, M at most GEMV_M): a few compiles per node."""
        m, n, k = x2.shape[0], q.shape[0], self._k(q)
        block_k = min(cfg.block_k, _pow2(k))
        head = (bias if bias is not None else y, y, *(pro.args(y) if pro is not None else no_prologue(y)), n)  # bias, out, the prologue's operands, N
        tail = (*head, *x2.stride(), *q.stride())
        flags = {"HAS_BIAS": bias is not None, "PRO": pro.kind if pro is not None else PRO_NONE, **gemv_flags(cfg, m, k, pdl)}
        grid = (-(-n // cfg.block_n),)
        mod = self._module(x2)
        if words is None and (self.op == "linear_w8a8" or isinstance(cfg, IntGemvConfig)):  # a direct call (benchmarks)
            words = _words(q)
        if isinstance(cfg, KGemvConfig) and self.op != "linear_w4":  # four codes per word, 16 columns per thread and row
            mod.kgemv_i8[grid](x2, words, scale, *head, *x2.stride(), words.stride(0), KP=_pow2(k),
                               ASM=x2.is_cuda and not debug.TRITON_INTERPRET, BLOCK_K=cfg.block_k, **flags)
        elif isinstance(cfg, KGemvConfig):  # eight codes per word, 32 columns per thread and row in a step
            mod.kgemv_i4[grid](x2, words, scale, *head, *x2.stride(), words.stride(0), *scale.stride(), KP=_pow2(k),
                               ASM=x2.is_cuda and not debug.TRITON_INTERPRET, GS=self.group_size, BLOCK_K=cfg.block_k, **flags)
        elif self.op == "linear_w4" and isinstance(cfg, IntGemvConfig):  # eight codes per word, whole groups per step
            mod.gemv_i4[grid](x2, words, scale, *head, *x2.stride(), words.stride(0), *scale.stride(), KP=_pow2(k),
                              ASM=x2.is_cuda and not debug.TRITON_INTERPRET, GS=self.group_size,
                              BLOCK_K=max(block_k, self.group_size), **flags)
        elif self.op == "linear_w8a8" or isinstance(cfg, IntGemvConfig):  # the codes as int32 words, four per dp4a
            mod.gemv_i8[grid](x2, words, scale, *head, *x2.stride(), words.stride(0), self.act_scale, KP=_pow2(k),
                              WEIGHT_ONLY=self.op == "linear_w8", STATIC=self.act_scale > 0,
                              ASM=x2.is_cuda and not debug.TRITON_INTERPRET, BLOCK_K=block_k, **flags)
        elif isinstance(cfg, TensorGemvConfig):  # x's rows are the MMA's 16 columns; K steps of at least one MMA
            block_k = max(min(cfg.block_k, _pow2(k)), 32)
            split, k_split = split_k(k, block_k, cfg.split)
            # one program per block: no partials (y stands in for the unused pointers, nothing allocated per call)
            ws, cnt = self._split_buffers(split, n, m, -(-n // cfg.block_n), y.device) if split > 1 else (y, y)
            mod.tgemv_f8[(grid[0], split)](x2, q, scale, *head[:-1], ws, cnt, n, *x2.stride(), q.stride(0), q.stride(1),
                                           KP=_pow2(k), BLOCK_K=block_k, IMPRECISE=min(cfg.imprecise, block_k), SPLIT=split,
                                           K_SPLIT=k_split, num_stages=cfg.stages, **flags)
        elif self.op == "linear_fp8":  # no zero points; every program reads each row's whole x for its token scale
            mod.gemv_f8[grid](x2, q, scale, *tail, KP=_pow2(k), BLOCK_K=block_k, **flags)
        elif self.op == "linear_w4":  # a step is whole groups
            mod.gemv_w4[grid](x2, q, scale, zeros, *tail, *scale.stride(), ASYM=self.asymmetric, GS=self.group_size,
                              BLOCK_K=max(block_k, self.group_size), **flags)
        else:
            mod.gemv_w8[grid](x2, q, scale, zeros, *tail, ASYM=self.asymmetric, BLOCK_K=block_k, **flags)

    def _split_buffers(self, split: int, n: int, m: int, blocks: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """tgemv_f8's split-K partials (fp32 [split, n, m], split > 1) and its per-column-block arrival counters
        (int32, zero between launches: the last program of a block resets its own), made once per
        shape and device and kept by this node's launcher (one launch at a time on its stream)."""
        key = (split, n, m, blocks, device)
        if key not in self._split_ws:
            self._split_ws[key] = (torch.empty(split * n * m, dtype=torch.float32, device=device),
                                   torch.zeros(blocks, dtype=torch.int32, device=device))
        return self._split_ws[key]

    def _half(self, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """hgemv_w4's operands for this weight: (group scales times a power of two, in f16, and the
        factor that undoes it), or None where the kernel does not apply: not CUDA (inline PTX; the
        interpreter cannot run it), not one row of bf16 / fp16, asymmetric, weights that are not
        constants (the f16 scales are made once per weight, outside graph capture), or group scales
        spread wider than HALF_SCALE_RANGE (the small ones would lose precision in f16)."""
        if not self._hgemv_offered(x2.shape[0], x2.is_cuda) or x2.dtype not in (torch.bfloat16, torch.float16) or q.stride(1) != 1:
            return None
        key = (scale.data_ptr(), tuple(scale.shape), scale.dtype)
        if key not in self._half_scales:
            if torch.cuda.is_current_stream_capturing():
                return None  # no host sync inside a capture; a later uncaptured call prepares them
            self._half_scales[key] = half_scales(scale)
        return self._half_scales[key]

    def _hgemv_offered(self, m: int, on_cuda: bool) -> bool:
        """hgemv_w4 applies to one row of symmetric int4 with constant weights, compiled for CUDA."""
        return m == 1 and on_cuda and self.op == "linear_w4" and not self.asymmetric and self.constant_weights \
            and not debug.TRITON_INTERPRET

    def _hgemv(self, cfg: HalfGemvConfig, x2: torch.Tensor, q: torch.Tensor, s16: torch.Tensor, rescale: float,
               bias: Any, y: torch.Tensor, pdl: bool) -> None:
        """One launch of `hgemv_w4`: BLOCK_K is cfg.block_k, at most K rounded up to a power of two
        and at least the group (a ragged last step masks whole groups)."""
        k, n = x2.shape[1], q.shape[0]
        block_k = max(min(cfg.block_k, _pow2(k)), self.group_size)
        flags: dict[str, Any] = {"K": k, "KP": _pow2(k), "HAS_BIAS": bias is not None, "PDL": pdl, "GS": self.group_size,
                                 "BLOCK_N": cfg.block_n, "BLOCK_K": block_k, "FLUSH": cfg.flush, "num_warps": cfg.warps}
        if pdl:
            flags["launch_pdl"] = True
        self._module(x2).hgemv_w4[(-(-n // cfg.block_n),)](
            x2, q, s16, bias if bias is not None else y, y, n, rescale, x2.stride(1), q.stride(0), s16.stride(0), **flags)

    def _k(self, q: torch.Tensor) -> int:
        """The weight's K (int4 packs two columns per byte)."""
        return q.shape[1] * 2 if self.op == "linear_w4" else q.shape[1]

    def takes_prologue(self, name: str, x: torch.Tensor) -> bool:
        """Candidate `name` can read x through a prologue (prologue.py): a gemv config (int8, int4,
        fp8), at most GEMV_M rows, a dtype and size the kernels take. Not hgemv_w4: its f16 scaling
        pass reads all of x before its steps read it again, so every program computed the
        prologue twice; reading the norms and SiLU-mul made the 1.1B int4 decode step slower in
        the graph (H200 replays 721 -> 763-837 us) though its isolated timings won."""
        cfg = CONFIGS.get(name)
        m = x.numel() // max(x.shape[-1], 1)
        if not isinstance(cfg, GemvConfig) or self.act_scale > 0:  # a static scale is absolute (gemv_i8)
            return False
        # x's width is K, or 2K for a SiLU-mul (whose K % 4 then only `candidates` and `run` see)
        return self._gemv_applies(cfg, m, x.shape[-1], x.dtype) and m > 0 and x.dtype in _DTYPES and x.numel() < _INT32

    def run_with_prologue(self, name: str, ins: tuple, pro: Prologue) -> torch.Tensor:
        """`run` with x read through `pro` (the interface prologue.py shares with matmul's launcher)."""
        return self.run(name, ins, pro)

    def _pdl_ok(self, on_cuda: bool) -> bool:
        return on_cuda and self.constant_weights and pdl_available()

    def _w8a8(self, cfg: GemmConfig, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: Any, y: torch.Tensor) -> None:
        """Per-row int8 activations (one program per row), then the int8 x int8 -> int32 GEMM."""
        (m, k), n = x2.shape, q.shape[0]
        xq = torch.empty((m, k), dtype=torch.int8, device=x2.device)
        static = self.act_scale > 0  # s as the reference rounds it: act_scale in f32
        s = torch.full((m,), self.act_scale, dtype=torch.float32, device=x2.device) if static else \
            torch.empty((m,), dtype=torch.float32, device=x2.device)
        mod = self._module(x2)
        mod.quant_rows[(m,)](x2, xq, s, k, 0 if static else k, *x2.stride(), STATIC=static,
                             BLOCK_K=min(_pow2(k), 1024), num_warps=4)
        block_k = max(cfg.block_k, 32)  # int8 tensor-core steps are 32 deep
        grid = (-(-m // cfg.block_m) * -(-n // cfg.block_n),)
        mod.gemm_a8[grid](
            xq, q, s, scale, bias if bias is not None else y, y, m, n, k, *q.stride(),
            HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            BLOCK_K=block_k, GROUP_M=cfg.group_m, num_warps=cfg.warps, num_stages=cfg.stages,
        )

    def candidates(self, m: int, on_cuda: bool = False, k: int = 0, dtype: torch.dtype | None = None) -> list[str]:
        """Candidate names for M rows, in CPU preference order (the first wins untimed).

        Decode (M <= 16) weight-only: the tensor-core matvec tilings that won per shape on an
        H200; at M <= GEMV_M also the CUDA-core gemv tilings, on CUDA first (their PDL variants
        where `_pdl_ok`), on CPU after the dmv ones (the interpreter runs the first; no PDL there).
        W8A8 at M <= GEMV_M with K % 4 == 0 (`k`; 0: not known yet) also gets `gemv_i8` under the
        gemv tilings (x quantized per token inside the kernel: one launch, not quant_rows + a GEMM);
        symmetric int8 on CUDA with bf16 / fp16 x (`dtype`; None: not known) its `igemv` tilings,
        first (on an H200 they won the 1.1B q/k/v, gate/up and down and the 7B gate/up and down
        projections; the 1.1B o stayed with gemv_w8: bench/RESULTS.md, 2026-11-22 session 5).
        The GEMM kernels (prefill, and all other W8A8) take every shape: their edges are masked (an
        H200 misaligned-address fault on ragged shapes, 2026-11-21, came from false
        `tl.multiple_of` hints on wrapped indices; the ragged GPU tests pass since, 2026-11-22)."""
        if self.op == "linear_fp8":  # batch-1 decode: gemv_f8 (tgemv_f8 on CUDA); more rows: the reference's torch._scaled_mm
            if m > GEMV_M:
                return [TORCH]
            pdl = self._pdl_ok(on_cuda)
            gemv = [c.name for c in GEMV_W8 if pdl or not c.pdl]
            if on_cuda:
                gemv = [c.name for c in TGEMV_F8 if (pdl or not c.pdl) and self._gemv_applies(c, m, k, dtype or torch.bfloat16)] + gemv
            return gemv + [TORCH]
        if self.op == "linear_w8a8":
            if m > SMALL_M:
                return [GEMM_CONFIGS[2].name, GEMM_CONFIGS[1].name, GEMM_CONFIGS[4].name, TORCH]
            small = [GEMM_CONFIGS[3].name, GEMM_CONFIGS[0].name]
            pdl = self._pdl_ok(on_cuda)
            gemv = [c.name for c in GEMV_W8 if (pdl or not c.pdl) and self._gemv_applies(c, m, k or 4, torch.float32)]
            return (gemv + small if on_cuda else small + gemv) + [TORCH]
        if m <= SMALL_M:
            dmv = [c.name for c in (DMV_W4 if self.op == "linear_w4" else DMV_W8)]
            if m > GEMV_M:
                return dmv + [TORCH]
            pdl = self._pdl_ok(on_cuda)
            gemv = [c.name for c in (GEMV_W4 if self.op == "linear_w4" else GEMV_W8) if pdl or not c.pdl]
            if self._hgemv_offered(m, on_cuda):
                gemv = [c.name for c in HGEMV_W4 if pdl or not c.pdl] + gemv
            if on_cuda:
                ints = KGEMV_W4 + IGEMV_W4 if self.op == "linear_w4" else KGEMV_W8 + IGEMV_W8
                gemv = [c.name for c in ints if (pdl or not c.pdl) and self._gemv_applies(c, m, k or 8, dtype or torch.bfloat16)] + gemv
            return (gemv + dmv if on_cuda else dmv + gemv) + [TORCH]
        return [GEMM_CONFIGS[2].name, GEMM_CONFIGS[1].name, GEMM_CONFIGS[4].name, TORCH]

    def problem_key(self, m: int, k: int, dtype: torch.dtype, q: torch.Tensor) -> str:
        """The autotune key of this linear at M rows of K."""
        return (f"{self.op}|{str(dtype).removeprefix('torch.')}|{self.activation}|g{self.group_size}|"
                f"asym={int(self.asymmetric)}|static={int(self.act_scale > 0)}|bias={int(self.has_bias)}|M{bucket(m)}|N{q.shape[0]}|K{k}")

    def prologue_candidates(self, x: torch.Tensor, q: torch.Tensor) -> list[str]:
        """The candidates that can read the prologue's input x themselves (prologue.py)."""
        m = x.numel() // max(x.shape[-1], 1)
        return [name for name in self.candidates(m, x.is_cuda, self._k(q), x.dtype) if self.takes_prologue(name, x)]

    def _choose(self, ins: tuple) -> str:
        x, q = ins[0], ins[1]
        m = x.numel() // max(x.shape[-1], 1)
        key = self.problem_key(m, x.shape[-1], x.dtype, q)
        hit = self.chosen.get(key)
        if hit is None:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                return TORCH  # never time inside graph capture; not remembered, so a later call tunes
            cands: dict[str, Callable[[], object]] = {name: (lambda name=name: self.run(name, ins))
                                                      for name in self.candidates(m, x.is_cuda, x.shape[-1], x.dtype)}
            hit = self.chosen[key] = choose(key, cands, on_cuda=x.is_cuda)
        self._by_shape[(x.shape, x.dtype)] = hit
        return hit


def quant_linear_kernel(node: Any, config: str | None = None) -> QuantLinearLauncher | None:
    """A launcher for a linear_w8 / linear_w4 / linear_w8a8 / linear_fp8 node with fp32, fp16 or
    bf16 activations, else None (the node stays in PyTorch). int4 needs a power-of-two group >= 32
    (every group kiln's quantizer makes); `config` pins a candidate instead of autotuning. PDL
    configs run as such only when every operand but x is a graph constant (`constant_weights`)."""
    if node.op.name not in OPS:
        return None
    attrs = dict(node.attrs)
    if set(attrs) - _KNOWN_ATTRS:  # an attribute these kernels do not implement: stay in PyTorch
        return None
    if node.inputs[0].type.dtype.torch not in _DTYPES or attrs["activation"] not in _ACT:
        return None
    group = int(attrs.get("group_size", 0))
    if node.op.name == "linear_w4" and (group < 32 or group & (group - 1)):
        return None
    has_bias = len(node.inputs) == 4 + bool(attrs.get("asymmetric", False))
    constant = all(v.kind == "const" for v in node.inputs[1:])
    return QuantLinearLauncher(node.op.name, attrs, has_bias, config, constant_weights=constant)
