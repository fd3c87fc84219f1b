"""A fused flash-style attention kernel for kiln's `attention` op (forward only).

    o = softmax(q @ k^T * scale + mask) @ v      q: [B, H, Sq, D], k/v: [B, Hkv, Sk, D] -> [B, H, Sq, D]

One program per (BLOCK_M query rows, batch * head). It walks the keys in BLOCK_N tiles with an
online softmax in float32 (running row max m, running sum l, rescaled accumulator), so the
[Sq, Sk] score matrix never reaches memory. Query head h reads kv head h // (H // Hkv) (GQA).
Causal is SDPA's top-left aligned lower triangle (query i sees keys j <= i): tiles right of the
diagonal are skipped, tiles left of it run without the causal compare. A mask (boolean, True =
keep, or additive float) is read through its strides expanded to [B, H, Sq, Sk] (stride 0 on
broadcast dims), never materialised; q/k/v are read through their own strides (HF hands over
transposed views). Head dims up to 128 are padded to a power of two (>= 16) with masked loads.

Fully masked rows (every key masked out by the mask): the output row is 0. That is what the
reference (`F.scaled_dot_product_attention`, PyTorch >= 2.5) gives for both a boolean mask and
an all -inf float mask; the kernel gets it by never subtracting an -inf row max (so no NaN)
and dividing by a zero sum as 0.

Napkin math (per call):
    FLOPs = 4 * B * H * Sq * Sk * D (two matmuls), about half that with causal;
    bytes = (q + o) * B*H*Sq*D + (k + v) * B*Hkv*Sk*D elements once (+ the mask's distinct bytes).
    Llama-1.1B prefill (B=1, H=32, Hkv=4, S=2048, D=64, bf16, causal): 17.6 GFLOP over ~19 MB,
    ~900 FLOP/byte, far beyond the H200's ~160 FLOP/byte ridge: compute-bound; the ceiling is
    the ~791 TFLOP/s bf16 dense peak measured on the H200 (expect 40-60% of it from Triton).

Dispatch: the first launch per problem key (dtype, D, causal, mask kind, GQA ratio, buckets of
Sq and Sk) autotunes over a few Triton configs plus PyTorch's SDPA itself ("torch"), so kiln
never runs slower than the op it replaces. Timing never happens during CUDA-graph capture (the
choice so far, or "torch", is used then); after the choice a launch does no host sync and
allocates its output with torch.empty, so it is capture-safe. On CPU (Triton's interpreter)
`choose` takes the first candidate, which is a Triton config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...ir.opset.nn import _is_causal_mask
from .autotune import bucket, choose
from .cache import load_module

MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MASK_NONE, _MASK_BOOL, _MASK_FLOAT = 0, 1, 2

_SOURCE = '''import triton
import triton.language as tl


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr, INTERPRETED: tl.constexpr):
    if INTERPRETED:  # the interpreter's tl.dot multiplies bf16 bit patterns (uint16): go through fp32
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:  # fp32 inputs: full-precision products (no TF32), to meet fp32 tolerances
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def tile(acc, l_i, m_i, qt, start, offs_m, offs_n0, offs_d, m_ok, d_ok, kb, vb, mb, skn, skd, svn, svd,
         smm, smn, SK, qk_scale, CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr,
         INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = start + offs_n0
    n_ok = offs_n < SK
    kt = tl.load(kb + offs_n[None, :] * skn + offs_d[:, None] * skd, mask=n_ok[None, :] & d_ok[:, None], other=0)
    # scores in the log2 domain: qk_scale = scale * log2(e), so exp2(s) == exp(q.k * scale)
    s = dot(qt, kt, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE, INTERPRETED) * qk_scale
    keep = n_ok[None, :]
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None])
    if MASK == 1:
        mv = tl.load(mb + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=m_ok[:, None] & n_ok[None, :], other=0)
        keep = keep & (mv != 0)
    if MASK == 2:
        mv = tl.load(mb + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=m_ok[:, None] & n_ok[None, :], other=0)
        s = s + mv.to(tl.float32) * 1.4426950408889634
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing kept yet: no -inf - -inf
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    vt = tl.load(vb + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=n_ok[:, None] & d_ok[None, :], other=0)
    acc = acc * alpha[:, None]
    acc = dot(p.to(vt.dtype), vt, acc, IEEE, INTERPRETED)
    return acc, l_i, m_new


# Key tiles [lo, hi). Triton 3.6's interpreter cannot take a runtime `range` bound under
# numpy >= 2.4 (triton-lang/triton#9171), so interpreted runs walk the same tiles with a while
# loop; compiled runs keep the for loop, which Triton software-pipelines (num_stages).
@triton.jit
def span(acc, l_i, m_i, qt, lo, hi, offs_m, offs_n0, offs_d, m_ok, d_ok, kb, vb, mb, skn, skd, svn, svd, smm, smn,
         SK, qk_scale, CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr, INTERPRETED: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    if INTERPRETED:
        start = lo
        while start < hi:
            acc, l_i, m_i = tile(acc, l_i, m_i, qt, start, offs_m, offs_n0, offs_d, m_ok, d_ok, kb, vb, mb, skn, skd,
                                 svn, svd, smm, smn, SK, qk_scale, CAUSAL, MASK, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
            start += BLOCK_N
    else:
        for start in range(lo, hi, BLOCK_N):
            acc, l_i, m_i = tile(acc, l_i, m_i, qt, start, offs_m, offs_n0, offs_d, m_ok, d_ok, kb, vb, mb, skn, skd,
                                 svn, svd, smm, smn, SK, qk_scale, CAUSAL, MASK, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
    return acc, l_i, m_i


@triton.jit
def kernel(q, k, v, mb, o, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
           smb, smh, smm, smn, sob, soh, som, sod, H, GROUP, SQ, SK, D, qk_scale,
           CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr, INTERPRETED: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    if CAUSAL:
        pid = tl.num_programs(0) - 1 - pid  # longest rows first: better tail balance
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < SQ
    d_ok = offs_d < D
    qt = tl.load(q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=m_ok[:, None] & d_ok[None, :], other=0)
    kb = k + b * skb + hk * skh
    vb = v + b * svb + hk * svh
    mb = mb + b * smb + h * smh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        hi = tl.minimum(SK, (pid + 1) * BLOCK_M)  # keys past the block's last row are all masked
        full = tl.minimum(hi, (pid * BLOCK_M) // BLOCK_N * BLOCK_N)  # keys before its first row all kept
        acc, l_i, m_i = span(acc, l_i, m_i, qt, 0, full, offs_m, offs_n0, offs_d, m_ok, d_ok, kb, vb, mb, skn, skd,
                             svn, svd, smm, smn, SK, qk_scale, False, MASK, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
        acc, l_i, m_i = span(acc, l_i, m_i, qt, full, hi, offs_m, offs_n0, offs_d, m_ok, d_ok, kb, vb, mb, skn, skd,
                             svn, svd, smm, smn, SK, qk_scale, True, MASK, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
    else:
        acc, l_i, m_i = span(acc, l_i, m_i, qt, 0, SK, offs_m, offs_n0, offs_d, m_ok, d_ok, kb, vb, mb, skn, skd,
                             svn, svd, smm, smn, SK, qk_scale, False, MASK, IEEE, INTERPRETED, BLOCK_M, BLOCK_N)
    out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)  # fully masked row: 0
    tl.store(o + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, out.to(o.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
'''


@dataclass(frozen=True, slots=True)
class AttnConfig:
    """One Triton launch configuration (tile sizes and scheduling)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    @property
    def name(self) -> str:
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}"


# Tried in this order; on CPU the first one wins untimed. "torch" (SDPA) is always tried last.
CONFIGS = (AttnConfig(128, 64, 4, 3), AttnConfig(128, 128, 8, 2), AttnConfig(64, 64, 4, 3), AttnConfig(64, 32, 4, 4))


@dataclass(frozen=True, slots=True)
class _Problem:
    """A call's inputs normalised to rank 4, plus what the kernel needs to know about them."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None  # expanded to [B, H, Sq, Sk]; bool masks viewed as uint8
    mask_kind: int
    causal: bool
    scale: float
    squeeze: bool  # the op was rank 3: drop the leading 1 from the output

    @property
    def key(self) -> str:
        b, h, sq, d = self.q.shape
        kind = ("none", "bool", "float")[self.mask_kind]
        return f"attention|{self.q.dtype}|D{d}|causal{int(self.causal)}|{kind}|g{h // self.k.shape[1]}|{bucket(sq)}|{bucket(self.k.shape[2])}"


class AttentionLauncher:
    """Runs one `attention` node: the autotuned choice per problem key, or a forced `config`.

    `config` is None (autotune), "torch" (always SDPA), an `AttnConfig` or a config name from
    `CONFIGS`. Inputs the kernel does not handle (other ranks, head dims > 128, mismatched
    batch/heads, empty tensors) run the op's reference implementation.
    """

    __slots__ = ("kernel", "causal", "scale", "gqa", "reference", "config", "choices", "_by_shape")

    def __init__(self, causal: bool, scale: float | None, gqa: bool, reference: Callable[..., Any],
                 config: AttnConfig | str | None = None):
        self.kernel = load_module(_SOURCE).kernel
        self.causal, self.scale, self.gqa, self.reference = causal, scale, gqa, reference
        if isinstance(config, str) and config != "torch":
            named = [c for c in CONFIGS if c.name == config]
            if not named:
                raise ValueError(f"unknown attention config {config!r}: one of torch, {', '.join(c.name for c in CONFIGS)}")
            config = named[0]
        self.config = config
        self.choices: dict[str, str] = {}  # problem key -> the candidate it runs (tests read it)
        # the steady-state path: (shapes, dtype, mask kind) -> candidate, without building the
        # normalised problem or its key string on every call
        self._by_shape: dict[tuple, str] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        m = mask[0] if mask else None
        fast = (q.shape, k.shape, v.shape, q.dtype, None if m is None else (m.shape, m.dtype, _is_causal_mask(m)))
        if self.config is None and self._by_shape.get(fast) == "torch":
            return self.reference(q, k, v, *mask, self.causal, self.scale, self.gqa)
        prob = self._problem(q, k, v, m)
        if prob is None or self.config == "torch":
            self._by_shape[fast] = "torch"
            return self.reference(q, k, v, *mask, self.causal, self.scale, self.gqa)
        if isinstance(self.config, AttnConfig):
            return self._launch(prob, self.config)
        key = prob.key
        choice = self.choices.get(key)
        if choice is None:
            if q.is_cuda and torch.cuda.is_current_stream_capturing():
                return self.reference(q, k, v, *mask, self.causal, self.scale, self.gqa)  # never time in capture
            # two configs (the H200 bench's winners) + SDPA: each candidate compiles on first call
            cands: dict[str, Callable[[], object]] = {c.name: (lambda c=c: self._launch(prob, c)) for c in CONFIGS[2:]}
            cands["torch"] = lambda: self.reference(q, k, v, *mask, self.causal, self.scale, self.gqa)
            choice = self.choices[key] = choose(key, cands, q.is_cuda)
        self._by_shape[fast] = choice
        if choice == "torch":
            return self.reference(q, k, v, *mask, self.causal, self.scale, self.gqa)
        return self._launch(prob, next(c for c in CONFIGS if c.name == choice))

    def _problem(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> _Problem | None:
        """The call normalised for the kernel, or None when the reference must run it."""
        causal = self.causal
        if mask is not None and not causal and _is_causal_mask(mask):  # as the reference: the causal path
            mask, causal = None, True
        squeeze = q.dim() == 3
        if squeeze:
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
            return None
        b, h, sq, d = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        if k.shape != (b, hkv, sk, d) or v.shape != k.shape or d > MAX_HEAD_DIM or min(q.numel(), k.numel()) == 0:
            return None
        if hkv != h and not (self.gqa and h % hkv == 0):
            return None
        kind = _MASK_NONE
        if mask is not None:
            if mask.dtype == torch.bool:
                kind, mask = _MASK_BOOL, mask.view(torch.uint8)
            elif mask.dtype in _DTYPES:
                kind = _MASK_FLOAT
            else:
                return None
            try:
                mask = mask.expand(b, h, sq, sk)
            except RuntimeError:
                return None
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(d)
        return _Problem(q, k, v, mask, kind, causal, scale, squeeze)

    def _launch(self, p: _Problem, cfg: AttnConfig) -> torch.Tensor:
        q, k, v = p.q, p.k, p.v
        b, h, sq, d = q.shape
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, H, Sq, D), contiguous
        m = p.mask if p.mask is not None else q
        mstrides = p.mask.stride() if p.mask is not None else (0, 0, 0, 0)
        grid = ((sq + cfg.block_m - 1) // cfg.block_m, b * h)
        self.kernel[grid](
            q, k, v, m, out, *q.stride(), *k.stride(), *v.stride(), *mstrides, *out.stride(),
            h, h // k.shape[1], sq, k.shape[2], d, p.scale * LOG2E,
            CAUSAL=p.causal, MASK=p.mask_kind, IEEE=q.dtype == torch.float32, INTERPRETED=not q.is_cuda,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=max(16, 1 << (d - 1).bit_length()),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        return out.squeeze(0) if p.squeeze else out


def attention_kernel(node: Any, config: AttnConfig | str | None = None) -> AttentionLauncher | None:
    """A launcher for an `attention` node, or None when it should stay in PyTorch.

    Declined statically: a mask together with causal=True (SDPA rejects that combination, so
    the reference raises), ranks other than 3 and 4, head dims known to exceed 128 or to differ
    between q and v, and dtypes other than fp16/bf16/fp32.
    """
    if node.op.name != "attention":
        return None
    q, v = node.inputs[0].type, node.inputs[2].type
    if node.attrs["causal"] and len(node.inputs) == 4:
        return None
    if q.rank not in (3, 4) or q.dtype.torch not in _DTYPES:
        return None
    dq, dv = q.shape[-1], v.shape[-1]
    if isinstance(dq, int) and (dq > MAX_HEAD_DIM or (isinstance(dv, int) and dv != dq)):
        return None
    return AttentionLauncher(node.attrs["causal"], node.attrs["scale"], node.attrs["gqa"], node.op.impl, config)
