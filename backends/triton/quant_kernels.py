"""Triton source for the quantized linears (`linear_w8`, `linear_w4`, `linear_w8a8`), fused dequant.

No float copy of a weight ever exists: each kernel loads the packed codes, turns them into floats
in registers and multiplies. Formats are those of ir/opset/quant.py: int8 codes per output channel
(i8 q, or u8 codes with a zero point per channel), int4 codes two per byte (low nibble = even
column, high nibble = odd column; q + 8, or codes with a zero point per group).

Codes become floats through the exponent trick `bitcast(0x4B000000 | c) - 2^23 = c` for integer
0 <= c < 2^23 (`decode`): an OR and a subtract at full rate instead of an int->float conversion,
which runs at a quarter of the fp32 rate on H100 and would otherwise cap the int8 matvec near
HBM speed. The zero point (or the +128 / +8 bias of the signed formats) folds into the subtracted
constant, so `(code - zero)` costs nothing extra.

* `mv_w8` / `mv_w4` (decode, M <= 16): memory-bound. Bytes = N*K (int8) or N*K/2 + N*K/group*2
  (int4, bf16 scales) + x + y. 1.1B Llama down-projection N=2048, K=5632: int8 11.5 MB, 2.7 us at
  4.25 TB/s; int4 5.8 MB + 0.18 MB scales, 1.4 us. Each program streams a [BLOCK_N, BLOCK_K] slab of
  codes with K contiguous (16-byte vector loads), accumulating fp32 products in a register tile
  reduced over K once at the end. int8: the channel scale multiplies the reduced fp32 sum once;
  int4: BLOCK_K divides the group, so a step lies in one group and its [BLOCK_N] scales dequantize
  the slab in registers; even/odd columns are two half-products against x's even/odd elements
  (no interleave). Split-K as in matmul.py: fp32 partials [SPLIT, M, N] summed in a fixed order by
  `finish` (deterministic).
* `dmv_w8` / `dmv_w4` (decode, M <= 16, the candidates that win on an H200; bench/quant_sweep.py):
  x's rows padded to one 16-row tile, the code tile dequantized in registers to x's dtype (int8:
  exact integers q - zero, channel scale on the fp32 result; int4: (q - zero) * group scale rounded
  once, as the reference) and multiplied on tensor cores with `tl.dot`; split-K with `finish`.
* `gemv_w8` / `gemv_w4` (batch-1 decode, M <= 4): the latency-bound case. A 2048 x 2048 int8
  matvec is 4.2 MB, 1 us at 4.25 TB/s, yet dmv takes ~6 us (launch, ramp-up, the first DRAM round
  trip). Each program owns BLOCK_N columns of all M rows (no 16-row padding); K is a compile-time
  constant, so K <= BLOCK_K is one load of the whole [BLOCK_N, K] code tile and no loop; products
  on CUDA cores in fp32, `tl.sum` per row. int4 loads a step as [BLOCK_N, groups, group / 2]
  bytes so a group's scale multiplies its reduced sum once. With `PDL` (programmatic dependent
  launch, sm90+) the codes of the first step, scales, zero points and bias are loaded before
  `gdc_wait()`: that DRAM round trip overlaps the previous kernel's tail, and x (its output) is
  read after. bench/pdl_probe.py, 88 chained int8 2048 x 2048 matvecs in a CUDA graph on an H200:
  4.06 us each plain, 2.86 us with PDL and weights before the wait (cuBLAS bf16 6.04 us).
* `hgemv_w4` (batch-1 symmetric int4 on CUDA, bf16 / fp16 activations): the int4 gemv is bound by
  its per-weight arithmetic, not by DRAM (bench/RESULTS.md, 2026-11-22: 1.0-1.4 TB/s at 7B). Here
  nothing is widened per weight: byte permutes and lop3 turn eight codes into exact f16x2 values,
  `fma.rn.f16x2` multiplies two weights per instruction, and the f16 sums are widened to fp32 every
  FLUSH steps. x is scaled by a power of two and the group scales by the tensor's power of two
  (`rescale` undoes both), so no f16 value can overflow. H200 (bench/gemv_sweep.py): 7B gate/up
  22.4 us against 32.3 for the best `gemv_w4`, down 15.9 against 23.0, 1.1B gate/up 6.4 against
  9.1; error 2-3e-3 of the output range (bf16's rounding). Inline PTX: the interpreter cannot run it, so CPU never offers it.
* `gemv_f8` (batch-1 `linear_fp8`, M <= 4): the reference quantizes x per token and runs
  `torch._scaled_mm`, about eight launches per linear (1.1B decode at 0.3x of bf16). Here one
  gemv: each program finds its rows' token scales, rounds x / s to e4m3 in fp32 arithmetic
  (`round_e4m3`: ties to even like torch's cast, and the same on the interpreter), widens the fp8
  weights and sums the exact products in fp32.
* `tgemv_f8` (batch-1 fp8 with bf16 / fp16 x, CUDA): gemv_f8's per-weight widening (~3 instructions
  per weight) bounds it near 1.1-1.4 TB/s; here the products run on fp8 tensor cores. The dot is
  y^T = W x^T: BLOCK_N = 64 weight rows per four warps (the wgmma M side) against x's rows as the
  MMA's 16 columns (the columns past M repeat row 0, never stored), the weight stream pipelined
  through shared memory by Triton. Hopper's fp8 MMA sums with fewer accumulator bits than fp32,
  so the accumulator is promoted to fp32 every IMPRECISE products (32 or 256); fp32 x keeps
  gemv_f8. Where N gives too few column blocks, K is split over SPLIT programs per block: each
  stores its fp32 partial, and the last to arrive (an acq_rel counter per block, which it resets)
  adds them in a fixed order and runs the epilogue, so no second launch. H200: 7B gate/up 23.8 us
  (3.8 TB/s), q/k/v 16.4, down 21.9 -> 15.8 with split 4, 1.1B gate/up 9.6-9.8, down 10.0 ->
  7.9 (bench/RESULTS.md).
* `gemv_i8` (batch-1 symmetric int8 codes, M <= 4, CUDA cores in integer arithmetic): the codes
  are read as int32 words and multiplied four at a time by `dp4a.s32.s32` (emulated with shifts
  where interpreted), summed exactly in int32. Each program quantizes its x itself: for W8A8 the
  reference's per-token int8 codes (one kernel instead of quant_rows + the 16-row GEMM: 1.1B
  decode 0.64x -> 1.2-1.4x of bf16); for weight-only int8 (bf16 / fp16 x) x in 15-bit fixed
  point under a per-row power of two, split into its high and low bytes, two dp4a per four
  codes. Per weight that is 1/4 or 1/2 instruction instead of the fp32 decode's ~3, which bound
  gemv_w8 (2.4 TB/s at most). H200, 1.1B q/k/v 3.40 -> 2.86 us, gate/up 8.73 -> 7.75, down
  5.28 -> 5.01, 7B gate/up 24.4 -> 22.3 (bench/gemv_sweep.py, bench/RESULTS.md).
* `gemv_i4` (batch-1 symmetric int4 with bf16 / fp16 x): the same in int4. A word of packed
  codes holds eight columns; an AND and a shift give the even and the odd columns' codes (0..15)
  one per byte, `dp4a.u32.s32` multiplies them by x's fixed-point bytes (four per eight weights)
  and each group takes off 8 * (its sum of x's codes) for the offset, then its scale. H200: 1.1B
  q/k/v 3.63 -> 2.82 us, o 3.75 -> 2.66, down 6.18 -> 5.63, 7B down 15.9 -> 14.0; gate/up stays
  with `hgemv_w4` (6.50 vs 7.24).
* `kgemv_i4` / `kgemv_i8` (weight-only, the same arithmetic with every thread along K): a step is
  (BLOCK_N rows, BW words) and each thread holds one 16-byte vector (four words) per row and
  chunk, so the rows are registers. x's bytes are made once per thread and step for all rows (the
  code is the low 16 bits of x * 2^shift + 1.5 * 2^23; `prmt` packs four bytes), each row and
  chunk is one dp4a chain (int4: started from -8 x the chunk's sum of x's bytes, so the offset
  costs nothing per row), and threads reduce once at the end. gemv_i4's tile split groups over
  threads and rows over warps: per step it reduced every group across threads and recomputed x
  per warp, ~40 instructions per int4 word; here ~16 (sm90 SASS), and the 7B int4 gate/up goes
  22.1 -> 14.6 us (3.2 TB/s), q/k/v to 10.3 (H200, bench/RESULTS.md session 6).
* `gemm_w8` / `gemm_w4` (prefill): the W.T tile's codes are dequantized to the activation dtype in
  registers and fed to `tl.dot` (int8: integers (q - zero), exact in bf16, channel scale on the fp32
  accumulator at the end; int4: (q - zero) * group scale, rounded once to the activation dtype,
  exactly the reference's dequantized weight). int4 uses two dots per step: x's even columns
  against the low nibbles, odd columns against the high nibbles.
* W8A8: `quant_rows` quantizes each row of x to int8 with its f32 scale (per row, or the static
  calibrated `act_scale` for all rows; division `div_rn` and round-half-to-even via the
  1.5 * 2^23 trick, bit-exact with torch.round(x / s)), then `gemm_a8` runs an int8 x int8 -> int32 `tl.dot` and the epilogue y = (acc * s_row * scale) rounded to
  the output dtype, then bias, then activation (the reference's order and roundings).
"""

from __future__ import annotations

from .matmul import _ACT, GEMV_COMMON, _loops, dot_expr

_SOURCE = '''import triton
import triton.language as tl


@triton.jit
def decode(code, off):
    # integer codes 0 <= code < 2^23 (int32) minus `off`, as fp32: OR into the mantissa of 2^23
    f = (code | 0x4B000000).to(tl.float32, bitcast=True)
    return f - (off + 8388608.0)


@triton.jit
def mm(a, b, acc):
    return {dot}


@triton.jit
def epilogue(acc, rm, rn, M, N, b, y, HAS_BIAS: tl.constexpr):
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        acc += tl.load(b + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
{act}    tl.store(y + rm[:, None] * N + rn[None, :], acc.to(y.dtype.element_ty), mask=mask)


@triton.jit
def finish(part, b, y, M, N, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in tl.static_range(SPLIT):  # a fixed order: deterministic sums
        acc += tl.load(part + s * M * N + rm[:, None] * N + rn[None, :], mask=mask, other=0.0)
    epilogue(acc, rm, rn, M, N, b, y, HAS_BIAS)


@triton.jit
def partial_or_epilogue(out, rm, rn, pid_k, M, N, b, y, part, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    if SPLIT == 1:
        epilogue(out, rm, rn, M, N, b, y, HAS_BIAS)
    else:
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(part + pid_k * M * N + rm[:, None] * N + rn[None, :], out, mask=mask)


@triton.jit
def mv_w8(x, w, sc, zp, b, y, part, M, N, K, K_SPLIT, sxm, sxk, swn, swk,
          HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_k = tl.program_id(1)
    rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # ragged edges: loads past M / N are masked (loop-invariant masks), the stores drop them
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    ncol = rn[:, None] < N  # (BLOCK_N, 1)
    if ASYM:
        off = tl.load(zp + rn, mask=rn < N, other=0).to(tl.float32)[:, None]  # (BLOCK_N, 1) zero-point codes
    else:
        off = 128.0  # signed q is shifted by +128 into a code below
    k_lo = pid_k * K_SPLIT
    xp = x + rm[:, None] * sxm + (k_lo + rk)[None, :] * sxk  # (BLOCK_M, BLOCK_K)
    wp = w + rn[:, None] * swn + (k_lo + rk)[None, :] * swk  # (BLOCK_N, BLOCK_K), K contiguous
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    k_hi = min(k_lo + K_SPLIT, K)
{loop:k0:k_lo:k_hi}
        if EVEN_K:
            code = tl.load(wp, mask=ncol, other=0).to(tl.int32)
            xv = tl.load(xp, mask=mrow, other=0.0)
        else:  # past K: x is 0, so whatever the code decodes to adds nothing
            code = tl.load(wp, mask=ncol & (rk[None, :] < K - k0), other=0).to(tl.int32)
            xv = tl.load(xp, mask=mrow & (rk[None, :] < K - k0), other=0.0)
        if not ASYM:
            code += 128
        acc += xv.to(tl.float32)[:, None, :] * decode(code, off)[None, :, :]
        xp += BLOCK_K * sxk
        wp += BLOCK_K * swk
{step:k0}    out = tl.sum(acc, axis=2) * tl.load(sc + rn, mask=rn < N, other=0).to(tl.float32)[None, :]  # (BLOCK_M, BLOCK_N)
    partial_or_epilogue(out, rm, rn, pid_k, M, N, b, y, part, HAS_BIAS, SPLIT)


@triton.jit
def mv_w4(x, w, sc, zp, b, y, part, M, N, K, K_SPLIT, sxm, sxk, swn, swk, ssn, ssg,
          HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, GS: tl.constexpr, SPLIT: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # BLOCK_K (unpacked columns per step) divides GS, and GS divides K: no ragged step
    HALF: tl.constexpr = BLOCK_K // 2
    pid_k = tl.program_id(1)
    rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, HALF)
    # ragged edges: loads past M / N are masked (loop-invariant masks), the stores drop them
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    nmask = rn < N  # (BLOCK_N,)
    k_lo = pid_k * K_SPLIT
    xp = x + rm[:, None] * sxm + (k_lo + 2 * rj)[None, :] * sxk  # (BLOCK_M, HALF): even columns
    wp = w + rn[:, None] * swn + (k_lo // 2 + rj)[None, :] * swk  # (BLOCK_N, HALF) bytes, contiguous
    acc = tl.zeros((BLOCK_M, BLOCK_N, HALF), dtype=tl.float32)
    k_hi = min(k_lo + K_SPLIT, K)
{loop:k0:k_lo:k_hi}
        byte = tl.load(wp, mask=nmask[:, None], other=0).to(tl.int32)
        xe = tl.load(xp, mask=mrow, other=0.0).to(tl.float32)
        xo = tl.load(xp + sxk, mask=mrow, other=0.0).to(tl.float32)
        g = rn * ssn + (k0 // GS) * ssg  # (BLOCK_N,) this step's group
        s = tl.load(sc + g, mask=nmask, other=0).to(tl.float32)[:, None]
        if ASYM:
            off = tl.load(zp + g, mask=nmask, other=0).to(tl.float32)[:, None]
        else:
            off = 8.0
        lo = decode(byte & 15, off) * s  # (BLOCK_N, HALF) even columns
        hi = decode(byte >> 4, off) * s  # odd columns
        acc += xe[:, None, :] * lo[None, :, :] + xo[:, None, :] * hi[None, :, :]
        xp += BLOCK_K * sxk
        wp += HALF * swk
{step:k0}    out = tl.sum(acc, axis=2)
    partial_or_epilogue(out, rm, rn, pid_k, M, N, b, y, part, HAS_BIAS, SPLIT)


@triton.jit
def dmv_w8(x, w, sc, zp, b, y, part, M, N, K, K_SPLIT, sxm, sxk, swn, swk,
           HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # decode on tensor cores: x's M <= 16 rows padded to a 16-row tile, the [BLOCK_N, BLOCK_K]
    # code tile turned into exact integers (q - zero) of x's dtype, one tl.dot per step
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # ragged edges: loads past M / N are masked (loop-invariant masks), the stores drop them
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    ncol = rn[:, None] < N  # (BLOCK_N, 1)
    if ASYM:
        off = tl.load(zp + rn, mask=rn < N, other=0).to(tl.float32)[:, None]
    else:
        off = 0.0
    k_lo = pid_k * K_SPLIT
    xp = x + rm[:, None] * sxm + (k_lo + rk)[None, :] * sxk  # (BLOCK_M, BLOCK_K)
    wp = w + rn[:, None] * swn + (k_lo + rk)[None, :] * swk  # (BLOCK_N, BLOCK_K), K contiguous
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_hi = min(k_lo + K_SPLIT, K)
{loop:k0:k_lo:k_hi}
        if EVEN_K:
            wq = tl.load(wp, mask=ncol, other=0)
            xv = tl.load(xp, mask=mrow, other=0.0)
        else:  # past K: x is 0, so the code there adds nothing
            wq = tl.load(wp, mask=ncol & (rk[None, :] < K - k0), other=0)
            xv = tl.load(xp, mask=mrow & (rk[None, :] < K - k0), other=0.0)
        wf = (wq.to(tl.float32) - off).to(xv.dtype)
        acc = mm(xv, tl.trans(wf), acc)
        xp += BLOCK_K * sxk
        wp += BLOCK_K * swk
{step:k0}    out = acc * tl.load(sc + rn, mask=rn < N, other=0).to(tl.float32)[None, :]
    partial_or_epilogue(out, rm, rn, pid_k, M, N, b, y, part, HAS_BIAS, SPLIT)


@triton.jit
def dmv_w4(x, w, sc, zp, b, y, part, M, N, K, K_SPLIT, sxm, sxk, swn, swk, ssn, ssg,
           HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, GS: tl.constexpr, SPLIT: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # as dmv_w8; BLOCK_K divides the group, so a step has one scale (and zero) per row: the
    # nibbles become (code - zero) * scale rounded to x's dtype (the reference's weight), two
    # dots per step (x's even columns with the low nibbles, odd columns with the high ones)
    HALF: tl.constexpr = BLOCK_K // 2
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, HALF)
    # ragged edges: loads past M / N are masked (loop-invariant masks), the stores drop them
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    nmask = rn < N  # (BLOCK_N,)
    k_lo = pid_k * K_SPLIT
    xp = x + rm[:, None] * sxm + (k_lo + 2 * rj)[None, :] * sxk  # (BLOCK_M, HALF): even columns
    wp = w + rn[:, None] * swn + (k_lo // 2 + rj)[None, :] * swk  # (BLOCK_N, HALF) bytes
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_hi = min(k_lo + K_SPLIT, K)
{loop:k0:k_lo:k_hi}
        byte = tl.load(wp, mask=nmask[:, None], other=0).to(tl.int32)
        xe = tl.load(xp, mask=mrow, other=0.0)
        xo = tl.load(xp + sxk, mask=mrow, other=0.0)
        g = rn * ssn + (k0 // GS) * ssg
        s = tl.load(sc + g, mask=nmask, other=0).to(tl.float32)[:, None]
        if ASYM:
            off = tl.load(zp + g, mask=nmask, other=0).to(tl.float32)[:, None]
        else:
            off = 8.0
        lo = (((byte & 15).to(tl.float32) - off) * s).to(xe.dtype)
        hi = (((byte >> 4).to(tl.float32) - off) * s).to(xe.dtype)
        acc = mm(xe, tl.trans(lo), acc)
        acc = mm(xo, tl.trans(hi), acc)
        xp += BLOCK_K * sxk
        wp += HALF * swk
{step:k0}    partial_or_epilogue(acc, rm, rn, pid_k, M, N, b, y, part, HAS_BIAS, SPLIT)


{gemv_common}@triton.jit
def gemv_w8(x, w, sc, zp, b, y, pr, pg, ps, eps, N, sxm, sxk, swn, swk, M: tl.constexpr, K: tl.constexpr,
            HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # batch-1 decode on CUDA cores, no x padding: each program owns BLOCK_N columns of all M
    # rows; K is a compile-time constant, so K <= BLOCK_K is one load of the whole code tile and
    # no loop. Everything no earlier kernel writes (the first step's codes, scales, zero points,
    # bias) is loaded before the PDL wait, x and every store after it.
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # ragged edges: loads past N / K are masked, the store drops columns past N
    nmask = rn < N  # (BLOCK_N,)
    wp = w + rn[:, None] * swn + rk[None, :] * swk  # (BLOCK_N, BLOCK_K), K contiguous
    code = load_step(wp, nmask, rk, K, K % BLOCK_K == 0)
    s = tl.load(sc + rn, mask=nmask, other=0).to(tl.float32)
    if ASYM:
        off = tl.load(zp + rn, mask=nmask, other=0).to(tl.float32)[:, None]  # (BLOCK_N, 1) zero-point codes
    else:
        off = 128.0  # signed q is shifted by +128 into a code below
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)  # a norm prologue's sums of squares
    code = code.to(tl.int32)
    if not ASYM:
        code += 128
    acc, ss = gemv_rows(acc, ss, decode(code, off), x, pr, pg, ps, rm, rk, rk < K, sxm, sxk, M, PRO, K)
{loop:k0:BLOCK_K:K}
        wp += BLOCK_K * swk
        code = load_step(wp, nmask, rk, K - k0, K % BLOCK_K == 0).to(tl.int32)  # past K: x is 0, adds nothing
        if not ASYM:
            code += 128
        acc, ss = gemv_rows(acc, ss, decode(code, off), x, pr, pg, ps, rm, k0 + rk, rk < K - k0, sxm, sxk, M, PRO, K)
{step:k0}    out = norm_rows(acc, ss, eps, PRO, K) * s[None, :]  # the channel scale, once on the reduced sums
    if HAS_BIAS:
        out += bias[None, :]
    epilogue(out, rm, rn, M, N, b, y, False)


@triton.jit
def gemv_rows_w4(acc, ss, lo, hi, s, x, pr, pg, ps, rm, kx, kin, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr,
                 K: tl.constexpr):
    # acc[i, :] += sum over groups g of s[:, g] * (lo . x_even + hi . x_odd)[:, g] for each row:
    # lo / hi are the (BLOCK_N, G, GS / 2) codes - zero of the even / odd columns, kx the
    # (G, GS / 2) even columns of x (read through the prologue; ss: a norm's sums of squares);
    # each group's scale multiplies its reduced sum once
    for i in tl.static_range(M):
        xe, ve = load_x(x, pr, pg, ps, i, kx, kin, sxm, sxk, PRO, K, True)
        xo, vo = load_x(x, pr, pg, ps, i, kx + 1, kin, sxm, sxk, PRO, K, True)
        per_group = tl.sum(lo * xe[None, :, :] + hi * xo[None, :, :], axis=2) * s  # (BLOCK_N, G)
        acc += tl.where(rm[:, None] == i, tl.sum(per_group, axis=1)[None, :], 0.0)
        if PRO >= 2:
            ss += tl.where(rm == i, tl.sum(tl.sum(ve * ve + vo * vo, axis=1), axis=0), 0.0)
    return acc, ss


@triton.jit
def group_mask(nmask, rg, left, GS: tl.constexpr, EVEN: tl.constexpr):
    # a step's (BLOCK_N, G) group mask: rows past N, and whole groups at or past `left` (the K
    # still to go) unless every step is whole (EVEN). One return: the GPU compiler refuses an
    # early return under a constexpr if, which the interpreter takes
    mask = nmask[:, None] & (rg[None, :] >= 0)
    if not EVEN:
        mask = mask & (rg[None, :] < left // GS)
    return mask


@triton.jit
def gemv_w4(x, w, sc, zp, b, y, pr, pg, ps, eps, N, sxm, sxk, swn, swk, ssn, ssg, M: tl.constexpr, K: tl.constexpr,
            HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr, GS: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # as gemv_w8; BLOCK_K (unpacked columns per step) is a multiple of GS and GS divides K, so a
    # step is G whole groups: the bytes load as a (BLOCK_N, G, GS / 2) tile, each group's scale
    # and zero broadcast over its bytes, and steps past K are masked by whole groups
    G: tl.constexpr = BLOCK_K // GS
    HALF: tl.constexpr = GS // 2
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rg = tl.arange(0, G)
    rj = tl.arange(0, HALF)
    nmask = rn < N  # (BLOCK_N,)
    wp = w + rn[:, None, None] * swn + (rg[None, :, None] * HALF + rj[None, None, :]) * swk  # bytes, contiguous
    sp = rn[:, None] * ssn + rg[None, :] * ssg  # (BLOCK_N, G) offsets of this step's scales / zeros
    kx = rg[:, None] * GS + 2 * rj[None, :]  # (G, HALF) even columns of x in a step
    gmask = group_mask(nmask, rg, K, GS, K % BLOCK_K == 0)
    byte = tl.load(wp, mask=gmask[:, :, None], other=0)
    s = tl.load(sc + sp, mask=gmask, other=0).to(tl.float32)
    if ASYM:
        off = tl.load(zp + sp, mask=gmask, other=0).to(tl.float32)[:, :, None]  # (BLOCK_N, G, 1)
    else:
        off = 8.0
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    byte = byte.to(tl.int32)
    acc, ss = gemv_rows_w4(acc, ss, decode(byte & 15, off), decode(byte >> 4, off), s, x, pr, pg, ps, rm, kx, kx < K,
                           sxm, sxk, M, PRO, K)
{loop:k0:BLOCK_K:K}
        wp += (BLOCK_K // 2) * swk
        sp += G * ssg
        gmask = group_mask(nmask, rg, K - k0, GS, K % BLOCK_K == 0)
        byte = tl.load(wp, mask=gmask[:, :, None], other=0).to(tl.int32)
        s = tl.load(sc + sp, mask=gmask, other=0).to(tl.float32)
        if ASYM:
            off = tl.load(zp + sp, mask=gmask, other=0).to(tl.float32)[:, :, None]
        acc, ss = gemv_rows_w4(acc, ss, decode(byte & 15, off), decode(byte >> 4, off), s, x, pr, pg, ps, rm, k0 + kx,
                               kx < K - k0, sxm, sxk, M, PRO, K)
{step:k0}    acc = norm_rows(acc, ss, eps, PRO, K)
    if HAS_BIAS:
        acc += bias[None, :]
    epilogue(acc, rm, rn, M, N, b, y, False)


@triton.jit
def round_e4m3(v):
    # v (fp32) clamped to +-448 and rounded to the nearest fp8 e4m3 value, ties to even, as
    # torch's float8_e4m3fn cast rounds: the spacing is 2^(exponent - 3), 2^-9 below 2^-6
    # (subnormals); v times the spacing's reciprocal (a power of two: exact, no division) is below
    # 16, so the 1.5 * 2^23 trick rounds it
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    ex = (v.to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased exponent
    sp = tl.maximum(ex, 121) - 3  # the spacing's biased exponent, 118..132
    spacing = (sp << 23).to(tl.float32, bitcast=True)
    inverse = ((254 - sp) << 23).to(tl.float32, bitcast=True)
    return ((v * inverse + 12582912.0) - 12582912.0) * spacing


@triton.jit
def gemv_f8(x, w, sc, b, y, pr, pg, ps, eps, N, sxm, sxk, swn, swk, M: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
            HAS_BIAS: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_K: tl.constexpr):
    # batch-1 fp8 decode: fp8 e4m3 weights per channel, each row of x quantized to e4m3 per token
    # in the kernel (s = max|x_row| / 448, x_q = e4m3(x / s), as the reference) and the exact
    # fp8 products summed in fp32; y = (acc * s * scale) in x's dtype, then bias, then activation,
    # each rounded as the reference rounds it. Codes, scales and bias load before the PDL wait.
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < N
    wp = w + rn[:, None] * swn + rk[None, :] * swk  # (BLOCK_N, BLOCK_K), K contiguous
    code = load_step(wp, nmask, rk, K, K % BLOCK_K == 0)
    scale, bias = f8_channel(sc, b, rn, nmask, HAS_BIAS)
    wait_for_input(PDL)
    s_rows, ss, safe = f8_token_scales(x, pr, pg, ps, rm, sxm, sxk, M, PRO, K, KP)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = gemv_rows_f8(acc, code.to(tl.float32), x, pr, pg, ps, rm, rk, rk < K, safe, sxm, sxk, M, PRO, K)
{loop:k0:BLOCK_K:K}
        wp += BLOCK_K * swk
        code = load_step(wp, nmask, rk, K - k0, K % BLOCK_K == 0)
        acc = gemv_rows_f8(acc, code.to(tl.float32), x, pr, pg, ps, rm, k0 + rk, rk < K - k0, safe, sxm, sxk, M, PRO, K)
{step:k0}    f8_epilogue(acc, s_rows, ss, scale, bias, eps, rm, rn, M, N, b, y, HAS_BIAS, PRO, K)


@triton.jit
def gemv_rows_f8(acc, wf, x, pr, pg, ps, rm, kx, kin, safe, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr, K: tl.constexpr):
    # acc[i, :] += wf . e4m3(x[i, kx] / s_i) for each of the M rows (products of e4m3 values are
    # exact in fp32), x read through the prologue (its sum stored by the scale pass)
    for i in tl.static_range(M):
        xq = x_row_e4m3(x, pr, pg, ps, i, kx, kin, safe, rm, sxm, sxk, PRO, K)
        acc += tl.where(rm[:, None] == i, tl.sum(wf * xq[None, :], axis=1)[None, :], 0.0)
    return acc


@triton.jit
def x_row_e4m3(x, pr, pg, ps, i, kx, kin, safe, rm, sxm, sxk, PRO: tl.constexpr, K: tl.constexpr):
    # e4m3(x[i, kx] / s_i) as exact fp32 values (s_i: row i of `safe`, the token scales with 0
    # replaced by 1), x read through the prologue
    si = tl.sum(tl.where(rm == i, safe, 0.0), axis=0)
    xv, _ = load_x(x, pr, pg, ps, i, kx, kin, sxm, sxk, PRO, K, False)
    return round_e4m3(tl.math.div_rn(xv, tl.zeros_like(xv) + si))


@triton.jit
def mm8(a, b, acc, IMPRECISE: tl.constexpr):
    # fp8 codes a (BLOCK_N, BLOCK_K) times b (BLOCK_K, 16), exact e4m3 values in fp32 (cast to
    # e4m3 here: exact), on tensor cores; the accumulator is promoted to fp32 every IMPRECISE
    # products (Hopper's fp8 MMA keeps fewer accumulator bits)
    return {dot8}


@triton.jit
def x_tile_f8(x, pr, pg, ps, rt, kx, safe, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr, K: tl.constexpr):
    # x's rows at columns kx as the (BLOCK_K, 16) right-hand side of the fp8 dot: column i holds
    # e4m3(x[i, kx] / s_i) for i < M, the columns past M repeat row 0 (their products are never
    # stored); x read through the prologue (a norm's 1 / rms is applied to the reduced sums)
    xt = tl.broadcast_to(x_row_e4m3(x, pr, pg, ps, 0, kx, kx < K, safe, rt, sxm, sxk, PRO, K)[:, None], (kx.shape[0], 16))
    for i in tl.static_range(1, M):
        xt = tl.where(rt[None, :] == i, x_row_e4m3(x, pr, pg, ps, i, kx, kx < K, safe, rt, sxm, sxk, PRO, K)[:, None], xt)
    return xt


@triton.jit
def tgemv_f8(x, w, sc, b, y, pr, pg, ps, eps, ws, cnt, N, sxm, sxk, swn, swk, M: tl.constexpr, K: tl.constexpr,
             KP: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IMPRECISE: tl.constexpr, SPLIT: tl.constexpr,
             K_SPLIT: tl.constexpr):
    # batch-1 fp8 decode on tensor cores: gemv_f8's arithmetic (per-token e4m3 x, exact fp8
    # products, per-channel scale at the end) with the products summed by the MMA instead of
    # widened per weight on CUDA cores. The dot is y^T = W x^T: BLOCK_N weight rows against x's
    # rows as 16 columns (the MMA's smallest width); the weight stream is software-pipelined.
    # SPLIT > 1: program (n, k) sums K_SPLIT columns (a multiple of BLOCK_K) into ws[k] (fp32
    # [SPLIT, N, M]); the last of a column block's programs to arrive (cnt, one counter per block,
    # left at 0) adds the SPLIT partials in order (deterministic) and runs the epilogue
    rt = tl.arange(0, 16)
    pid_n = tl.program_id(0)
    k_lo = tl.program_id(1) * K_SPLIT
    k_hi = tl.minimum(k_lo + K_SPLIT, K)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < N
    wp = w + rn[:, None] * swn + (k_lo + rk)[None, :] * swk  # (BLOCK_N, BLOCK_K), K contiguous
    scale, bias = f8_channel(sc, b, rn, nmask, HAS_BIAS)
    wait_for_input(PDL)
    s_rows, ss, safe = f8_token_scales(x, pr, pg, ps, rt, sxm, sxk, M, PRO, K, KP)
    acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
{loop:k0:k_lo:k_hi}
        code = load_step(wp, nmask, rk, K - k0, K % BLOCK_K == 0)
        acc = mm8(code, x_tile_f8(x, pr, pg, ps, rt, k0 + rk, safe, sxm, sxk, M, PRO, K), acc, IMPRECISE)
        wp += BLOCK_K * swk
{step:k0}    if SPLIT == 1:
        f8_epilogue(tl.trans(acc), s_rows, ss, scale, bias, eps, rt, rn, M, N, b, y, HAS_BIAS, PRO, K)
    else:
        part = ws + rn[:, None] * M + rt[None, :]
        pmask = nmask[:, None] & (rt[None, :] < M)
        tl.store(part + tl.program_id(1) * N * M, acc, mask=pmask)
        tl.debug_barrier()  # every thread's partial is stored before the arrival is counted
        if tl.atomic_add(cnt + pid_n, 1, sem="acq_rel") == SPLIT - 1:
            acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
            for i in tl.static_range(SPLIT):
                acc += tl.load(part + i * N * M, mask=pmask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(cnt + pid_n, 0)  # for the next launch
            f8_epilogue(tl.trans(acc), s_rows, ss, scale, bias, eps, rt, rn, M, N, b, y, HAS_BIAS, PRO, K)


@triton.jit
def f8_channel(sc, b, rn, nmask, HAS_BIAS: tl.constexpr):
    # gemv_f8's / tgemv_f8's channel scales and bias (constants: loaded before the PDL wait)
    scale = tl.load(sc + rn, mask=nmask, other=0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    else:
        bias = scale  # unused
    return scale, bias


@triton.jit
def f8_token_scales(x, pr, pg, ps, rows, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr, K: tl.constexpr, KP: tl.constexpr):
    # each row's token scale s of x as the prologue gives it (a norm's 1 / rms, one factor per row,
    # is applied at the end: the scale is relative, so the e4m3 codes are the same), a norm's sums
    # of squares, and s with 0 as 1 (the divisor: that row's x is all 0)
    s_rows, _, ss = row_scales(x, pr, pg, ps, rows, sxm, sxk, M, PRO, K, KP, False, 448.0)
    return s_rows, ss, tl.where(s_rows == 0.0, 1.0, s_rows)


@triton.jit
def f8_epilogue(acc, s_rows, ss, scale, bias, eps, rt, rn, M, N, b, y, HAS_BIAS: tl.constexpr, PRO: tl.constexpr,
                K: tl.constexpr):
    # gemv_f8's / tgemv_f8's y from the sums acc (rows of x, columns of y): token and channel scales
    # (a norm's 1 / rms), each step rounded to y's dtype as the reference rounds it, then bias and
    # activation
    dt = y.dtype.element_ty
    out = (norm_rows(acc, ss, eps, PRO, K) * s_rows[:, None] * scale[None, :]).to(dt).to(tl.float32)
    if HAS_BIAS:
        out = (out + bias[None, :]).to(dt).to(tl.float32)
    epilogue(out, rt, rn, M, N, b, y, False)


@triton.jit
def dp4a(a, b, c, ASM: tl.constexpr, UNSIGNED_A: tl.constexpr = False):
    # c + the dot product of the four bytes of int32 words a and b, per element, b's signed and a's
    # signed (or unsigned: UNSIGNED_A): one `dp4a` on CUDA (ASM), else the same sum from shifts
    # (the interpreter runs no inline PTX)
    if ASM:
        if UNSIGNED_A:
            return tl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32,
                                             is_pure=True, pack=1)
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32,
                                         is_pure=True, pack=1)
    for j in tl.static_range(4):
        if UNSIGNED_A:
            ab = (a >> (8 * j)) & 0xFF
        else:
            ab = (a << (24 - 8 * j)) >> 24
        c += ab * ((b << (24 - 8 * j)) >> 24)
    return c


@triton.jit
def x_codes(x, pr, pg, ps, i, kx, si, sxm, sxk, PRO: tl.constexpr, K: tl.constexpr, WEIGHT_ONLY: tl.constexpr):
    # row i of x at columns kx (W, 4) as int32 codes, columns past K as 0.
    # W8A8: the int8 codes of the reference with the token scale si (`round_int8`). Weight-only: x in 15-bit fixed point, round(x * si) with si = 2^shift (exact
    # product), |code| < 2^14
    xv, _ = load_x(x, pr, pg, ps, i, kx, kx < K, sxm, sxk, PRO, K, False)
    if WEIGHT_ONLY:
        return ((xv * si + 12582912.0) - 12582912.0).to(tl.int32)
    return round_int8(xv, tl.zeros_like(xv) + si).to(tl.int32)


@triton.jit
def round_int8(v, s):
    # clamp(round_half_even(v / s), -127, 127) in fp32, as torch.round(v / s).clamp(...): div_rn,
    # then the 1.5 * 2^23 trick, exact for |v / s| < 2^22; beyond that (a static s, saturating)
    # the clamp decides
    r = (tl.math.div_rn(v, s) + 12582912.0) - 12582912.0
    return tl.minimum(tl.maximum(r, -127.0), 127.0)


@triton.jit
def row_scales(x, pr, pg, ps, rm, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
               WEIGHT_ONLY: tl.constexpr, QMAX: tl.constexpr = 127.0):
    # (scale, nan, sum of squares) per row of x as the prologue gives it (a norm's 1 / rms, one
    # factor per row, is applied at the end: the scales are relative). W8A8 / fp8: the token scale
    # max|x_i| / QMAX (127 / 448). Weight-only: 2^shift, shift = 13 - exponent(max|x_i|) clamped to +-126 (bit
    # arithmetic: exact), and nan = NaN where the row holds inf or NaN (else 0)
    rall = tl.arange(0, KP)
    s_rows = tl.zeros(rm.shape, dtype=tl.float32)
    nan = tl.zeros(rm.shape, dtype=tl.float32)
    ss = tl.zeros(rm.shape, dtype=tl.float32)
    for i in tl.static_range(M):
        xa, va = load_x(x, pr, pg, ps, i, rall, rall < K, sxm, sxk, PRO, K, True)
        amax = tl.max(tl.abs(xa))
        if WEIGHT_ONLY:
            ex = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
            sh = tl.minimum(tl.maximum(13 - ex, -126), 126)
            s_rows = tl.where(rm == i, ((sh + 127) << 23).to(tl.float32, bitcast=True), s_rows)
            nan = tl.where(rm == i, tl.sum(xa * 0.0), nan)
        else:
            s_rows = tl.where(rm == i, tl.math.div_rn(amax, QMAX), s_rows)
        ss = tl.where(rm == i, tl.sum(va * va), ss)
    return s_rows, nan, ss


@triton.jit
def unfix(total, shift, nan):
    # fixed-point sums (BLOCK_M, BLOCK_N) back to x's scale: times 2^-shift per row (the exponent
    # negated: exact), NaN for the rows that held inf or NaN
    unshift = ((254 - ((shift.to(tl.int32, bitcast=True) >> 23) & 0xFF)) << 23).to(tl.float32, bitcast=True)
    return total * unshift[:, None] + nan[:, None]


@triton.jit
def pack4(c):
    # (W, 4) int32 -> (W,) int32 words of their low bytes, column 0 the lowest (the bytes do not overlap)
    return tl.sum((c & 0xFF) << (8 * tl.arange(0, 4))[None, :], axis=1)


@triton.jit
def gemv_rows_i8(acc, acc_hi, words, x, pr, pg, ps, rm, k0, rw, safe, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr,
                 K: tl.constexpr, WEIGHT_ONLY: tl.constexpr, ASM: tl.constexpr):
    # acc[i, :] += codes . x_codes(row i) for each of the M rows, exact in int32; words (BLOCK_N,
    # BLOCK_K / 4) hold four int8 weight codes each. Weight-only splits each 15-bit x code c into
    # bytes, c = 256 * hi + lo with lo = the signed low byte and hi = (c + 128) >> 8 (|hi| <= 64):
    # acc gathers the lo products, acc_hi the hi products (two int32 sums: one would overflow)
    for i in tl.static_range(M):
        si = tl.sum(tl.where(rm == i, safe, 0.0), axis=0)
        c = x_codes(x, pr, pg, ps, i, k0 + 4 * rw[:, None] + tl.arange(0, 4)[None, :], si, sxm, sxk, PRO, K, WEIGHT_ONLY)
        d = dp4a(words, tl.broadcast_to(pack4(c)[None, :], words.shape), tl.zeros_like(words), ASM)
        acc += tl.where(rm[:, None] == i, tl.sum(d, axis=1)[None, :], 0)
        if WEIGHT_ONLY:
            d = dp4a(words, tl.broadcast_to(pack4((c + 128) >> 8)[None, :], words.shape), tl.zeros_like(words), ASM)
            acc_hi += tl.where(rm[:, None] == i, tl.sum(d, axis=1)[None, :], 0)
    return acc, acc_hi


@triton.jit
def gemv_i8(x, w, sc, b, y, pr, pg, ps, eps, N, sxm, sxk, swn, act_scale, M: tl.constexpr, K: tl.constexpr,
            KP: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr, WEIGHT_ONLY: tl.constexpr,
            STATIC: tl.constexpr, ASM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # batch-1 decode on symmetric int8 codes in integer arithmetic: w is the codes [N, K] read as
    # int32 words [N, K / 4] (K % 4 == 0), four products per dp4a. Each program quantizes its rows
    # of x itself, per row i:
    # * W8A8 (linear_w8a8): the reference's token scale s = max|x_i| / 127 (or the static
    #   act_scale) and int8 codes; y = (acc * s * scale) in x's dtype, then bias, then activation,
    #   each rounded as the reference rounds it.
    # * WEIGHT_ONLY (linear_w8, bf16 / fp16 x): x_i in 15-bit fixed point under 2^shift, the
    #   power of two that puts max|x_i| in [2^13, 2^14): rounding moves each element by at most
    #   2^-15 of max|x_i| (bf16 rounds the largest by up to 2^-9 of itself); shift is clamped to
    #   +-126, so rows whose max|x| is below 2^-112 lose precision. y = acc * 2^-shift * scale
    #   (+ bias) as gemv_w8; a row holding inf or NaN gives NaN.
    # Codes, scales and bias load before the PDL wait.
    W: tl.constexpr = BLOCK_K // 4
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rw = tl.arange(0, W)
    nmask = rn < N
    wp = w + rn[:, None] * swn + rw[None, :]  # (BLOCK_N, W) words, contiguous
    words = load_step(wp, nmask, rw, K // 4, K % BLOCK_K == 0)
    scale = tl.load(sc + rn, mask=nmask, other=0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    if STATIC:  # one calibrated scale: no pass over x (no norm prologue either: its 1 / rms would change the codes)
        s_rows = tl.zeros((BLOCK_M,), dtype=tl.float32) + act_scale
        nan = tl.zeros((BLOCK_M,), dtype=tl.float32)
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    else:
        s_rows, nan, ss = row_scales(x, pr, pg, ps, rm, sxm, sxk, M, PRO, K, KP, WEIGHT_ONLY)
    safe = tl.where(s_rows == 0.0, 1.0, s_rows)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc_hi = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc, acc_hi = gemv_rows_i8(acc, acc_hi, words, x, pr, pg, ps, rm, 0, rw, safe, sxm, sxk, M, PRO, K, WEIGHT_ONLY, ASM)
{loop:k0:BLOCK_K:K}
        wp += W
        words = load_step(wp, nmask, rw, (K - k0) // 4, K % BLOCK_K == 0)
        acc, acc_hi = gemv_rows_i8(acc, acc_hi, words, x, pr, pg, ps, rm, k0, rw, safe, sxm, sxk, M, PRO, K, WEIGHT_ONLY, ASM)
{step:k0}    if WEIGHT_ONLY:
        total = acc_hi.to(tl.float32) * 256.0 + acc.to(tl.float32)
        out = norm_rows(unfix(total, safe, nan), ss, eps, PRO, K) * scale[None, :]
        if HAS_BIAS:
            out += bias[None, :]
    else:
        dt = y.dtype.element_ty
        out = (norm_rows(acc.to(tl.float32), ss, eps, PRO, K) * s_rows[:, None] * scale[None, :]).to(dt).to(tl.float32)
        if HAS_BIAS:
            out = (out + bias[None, :]).to(dt).to(tl.float32)
    epilogue(out, rm, rn, M, N, b, y, False)


@triton.jit
def gemv_rows_i4(acc, lo, hi, s, x, pr, pg, ps, rm, k0, safe, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr,
                 K: tl.constexpr, GS: tl.constexpr, ASM: tl.constexpr):
    # acc[i, :] += sum over groups g of s[:, g] * ((codes - 8) . x_codes(row i))[:, g]: lo / hi are
    # the (BLOCK_N, G, GS / 8) words of the even / odd columns' codes (0..15, one per byte); x's
    # 15-bit codes split into bytes as gemv_rows_i8's, four unsigned-by-signed dp4a per eight
    # weights, and the codes' offset 8 taken off once per group as 8 * the sum of x's codes
    G: tl.constexpr = lo.shape[1]
    WG: tl.constexpr = GS // 8
    rr = tl.arange(0, G * WG)
    ke = k0 + 8 * rr[:, None] + 2 * tl.arange(0, 4)[None, :]  # (G * WG, 4) even columns, word by word
    for i in tl.static_range(M):
        si = tl.sum(tl.where(rm == i, safe, 0.0), axis=0)
        ce = x_codes(x, pr, pg, ps, i, ke, si, sxm, sxk, PRO, K, True)
        co = x_codes(x, pr, pg, ps, i, ke + 1, si, sxm, sxk, PRO, K, True)
        xsum = tl.sum(tl.reshape(tl.sum(ce + co, axis=1), (G, WG)), axis=1)  # (G,)
        a_lo = dp4a(lo, tl.broadcast_to(tl.reshape(pack4(ce), (G, WG))[None, :, :], lo.shape), tl.zeros_like(lo), ASM, True)
        a_lo = dp4a(hi, tl.broadcast_to(tl.reshape(pack4(co), (G, WG))[None, :, :], hi.shape), a_lo, ASM, True)
        a_hi = dp4a(lo, tl.broadcast_to(tl.reshape(pack4((ce + 128) >> 8), (G, WG))[None, :, :], lo.shape), tl.zeros_like(lo),
                    ASM, True)
        a_hi = dp4a(hi, tl.broadcast_to(tl.reshape(pack4((co + 128) >> 8), (G, WG))[None, :, :], hi.shape), a_hi, ASM, True)
        per_group = tl.sum(a_hi, axis=2) * 256 + tl.sum(a_lo, axis=2) - 8 * xsum[None, :]  # (BLOCK_N, G), exact
        acc += tl.where(rm[:, None] == i, tl.sum(per_group.to(tl.float32) * s, axis=1)[None, :], 0.0)
    return acc


@triton.jit
def gemv_i4(x, w, sc, b, y, pr, pg, ps, eps, N, sxm, sxk, swn, ssn, ssg, M: tl.constexpr, K: tl.constexpr,
            KP: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr, ASM: tl.constexpr,
            GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # batch-1 symmetric int4 (q + 8 two per byte, groups of GS) with bf16 / fp16 x in integer
    # arithmetic, as gemv_i8's weight-only mode: w is the packed codes read as int32 words
    # [N, K / 8] (eight codes each: bytes 0..3 hold columns 0..7, low nibble the even column);
    # an AND and a shift split a word into the even and the odd columns' codes, one per byte.
    # BLOCK_K is whole groups; steps past K are masked by whole groups (x past K reads 0).
    # Codes, scales and bias load before the PDL wait.
    G: tl.constexpr = BLOCK_K // GS
    WG: tl.constexpr = GS // 8
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rg = tl.arange(0, G)
    rw = tl.arange(0, WG)
    nmask = rn < N
    wp = w + rn[:, None, None] * swn + rg[None, :, None] * WG + rw[None, None, :]  # (BLOCK_N, G, WG) words, contiguous
    sp = rn[:, None] * ssn + rg[None, :] * ssg  # (BLOCK_N, G) offsets of this step's group scales
    gmask = group_mask(nmask, rg, K, GS, K % BLOCK_K == 0)
    words = tl.load(wp, mask=gmask[:, :, None], other=0)
    s = tl.load(sc + sp, mask=gmask, other=0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    shift, nan, ss = row_scales(x, pr, pg, ps, rm, sxm, sxk, M, PRO, K, KP, True)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = gemv_rows_i4(acc, words & 0x0F0F0F0F, (words >> 4) & 0x0F0F0F0F, s, x, pr, pg, ps, rm, 0, shift, sxm, sxk, M,
                       PRO, K, GS, ASM)
{loop:k0:BLOCK_K:K}
        wp += G * WG
        sp += G * ssg
        gmask = group_mask(nmask, rg, K - k0, GS, K % BLOCK_K == 0)
        words = tl.load(wp, mask=gmask[:, :, None], other=0)
        s = tl.load(sc + sp, mask=gmask, other=0).to(tl.float32)
        acc = gemv_rows_i4(acc, words & 0x0F0F0F0F, (words >> 4) & 0x0F0F0F0F, s, x, pr, pg, ps, rm, k0, shift, sxm, sxk,
                           M, PRO, K, GS, ASM)
{step:k0}    out = norm_rows(unfix(acc, shift, nan), ss, eps, PRO, K)
    if HAS_BIAS:
        out += bias[None, :]
    epilogue(out, rm, rn, M, N, b, y, False)


@triton.jit
def pack_bytes(c0, c1, c2, c3, B: tl.constexpr, ASM: tl.constexpr):
    # an int32 word of byte B of each of c0..c3 (c0's the lowest byte): three prmt on CUDA (ASM),
    # else shifts (the interpreter runs no inline PTX)
    if ASM:
        if B == 0:
            return tl.inline_asm_elementwise("{\\n.reg .b32 t, u;\\nprmt.b32 t, $1, $2, 0x40;\\nprmt.b32 u, $3, $4, 0x40;\\n"
                                             "prmt.b32 $0, t, u, 0x5410;\\n}", "=r,r,r,r,r", [c0, c1, c2, c3],
                                             dtype=tl.int32, is_pure=True, pack=1)
        return tl.inline_asm_elementwise("{\\n.reg .b32 t, u;\\nprmt.b32 t, $1, $2, 0x51;\\nprmt.b32 u, $3, $4, 0x51;\\n"
                                         "prmt.b32 $0, t, u, 0x5410;\\n}", "=r,r,r,r,r", [c0, c1, c2, c3],
                                         dtype=tl.int32, is_pure=True, pack=1)
    return (((c0 >> 8 * B) & 0xFF) | (((c1 >> 8 * B) & 0xFF) << 8) | (((c2 >> 8 * B) & 0xFF) << 16)
            | (((c3 >> 8 * B) & 0xFF) << 24))


@triton.jit
def quarters(t):
    # the four slices of a tensor's last axis (of size 4), in order: register picks where a thread
    # holds the whole axis
    p, q = tl.split(tl.reshape(t, t.shape[:-1] + (2, 2)))  # p: slices 0 and 2, q: 1 and 3
    t0, t2 = tl.split(p)
    t1, t3 = tl.split(q)
    return t0, t1, t2, t3


@triton.jit
def fixed_words(f, ASM: tl.constexpr):
    # (..., 4) fixed-point codes c, as the bits of the fp32 values c + 1.5 * 2^23 (whose low 16
    # bits are c's), to two int32 words per 4: the low bytes of c (signed) and the high bytes of
    # c + 128, so that c = 256 * hi + lo for |c| < 2^14
    c0, c1, c2, c3 = quarters(f)
    return pack_bytes(c0, c1, c2, c3, 0, ASM), pack_bytes(c0 + 128, c1 + 128, c2 + 128, c3 + 128, 1, ASM)


@triton.jit
def kgemv_i4(x, w, sc, b, y, pr, pg, ps, eps, N, sxm, sxk, swn, ssn, ssg, M: tl.constexpr, K: tl.constexpr,
             KP: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr, ASM: tl.constexpr,
             GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # gemv_i4's arithmetic with every thread along K: a step is (BLOCK_N rows, BW words), each
    # thread four consecutive words (32 columns, inside one group) per row and chunk of 4 x 32 x
    # warps words, so the rows live in registers and x's codes are made once per thread and step
    # for all rows (gemv_i4 repeats them across the warps that split its rows, and reduces every
    # group across threads each step). Per word and row: an AND, a shift and an AND, four dp4a
    # (the chains start from -8 * the sum of x's codes: the codes' offset 8), then per four words
    # one conversion and one multiply by the group scale; threads reduce once, at the end.
    BW: tl.constexpr = BLOCK_K // 8
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    rw = tl.arange(0, BW)  # a step's words in one row
    rc = tl.arange(0, BW // 4)  # its 32-column chunks (one per thread and repetition)
    wp = w + rn[:, None] * swn + rw[None, :]
    kx = rw[:, None] * 8 + tl.arange(0, 8)[None, :]  # (BW, 8) columns of x
    neg8 = tl.full((BW // 4,), -117901064, tl.int32)  # 0xF8F8F8F8: -8 in every byte
    smask = nmask[:, None] & (rc[None, :] < K // 32)  # whole chunks past K masked
    wmask = nmask[:, None] & (rw[None, :] // 4 < K // 32)
    words = tl.load(wp, mask=wmask)  # masked words stay undefined: x codes past K are 0, rows past N are not stored
    s = tl.load(sc + rn[:, None] * ssn + (rc[None, :] * 32 // GS) * ssg, mask=smask, other=0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    shift, nan, ss = row_scales(x, pr, pg, ps, rm, sxm, sxk, M, PRO, K, KP, True)
    acc = tl.zeros((BLOCK_M, BLOCK_N, BW // 4), dtype=tl.float32)
    acc = kgemv_rows_i4(acc, words, s, x, pr, pg, ps, rm, kx, shift, neg8, sxm, sxk, M, PRO, K, ASM)
{loop:k0:BLOCK_K:K}
        wp += BW
        smask = nmask[:, None] & (rc[None, :] < (K - k0) // 32)
        wmask = nmask[:, None] & (rw[None, :] // 4 < (K - k0) // 32)
        words = tl.load(wp, mask=wmask)
        s = tl.load(sc + rn[:, None] * ssn + ((k0 + rc[None, :] * 32) // GS) * ssg, mask=smask, other=0).to(tl.float32)
        acc = kgemv_rows_i4(acc, words, s, x, pr, pg, ps, rm, k0 + kx, shift, neg8, sxm, sxk, M, PRO, K, ASM)
{step:k0}    out = norm_rows(unfix(tl.sum(acc, axis=2), shift, nan), ss, eps, PRO, K)
    if HAS_BIAS:
        out += bias[None, :]
    epilogue(out, rm, rn, M, N, b, y, False)


@triton.jit
def kgemv_rows_i4(acc, words, s, x, pr, pg, ps, rm, kx, shift, neg8, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr,
                  K: tl.constexpr, ASM: tl.constexpr):
    # acc[i] += the step's (BLOCK_N, chunks) partial dot products of row i, scaled per group: per
    # row and chunk two dp4a chains of eight (x's low / high bytes against the four words' even
    # and odd codes), each started from -8 * the chunk's sum of those bytes (once per step, not
    # per row), then one conversion and one multiply by the group scale
    R: tl.constexpr = words.shape[0]
    C: tl.constexpr = words.shape[1] // 4
    lo = quarters(tl.reshape(words & 0x0F0F0F0F, (R, C, 4)))  # even columns' codes, one per byte: (R, C) x 4 words
    hi = quarters(tl.reshape((words >> 4) & 0x0F0F0F0F, (R, C, 4)))  # odd columns'
    for i in tl.static_range(M):
        si = tl.sum(tl.where(rm == i, shift, 0.0), axis=0)
        xv, _ = load_x(x, pr, pg, ps, i, kx, kx < K, sxm, sxk, PRO, K, False)
        f = tl.reshape((xv * si + 12582912.0).to(tl.int32, bitcast=True), (C, 4, 4, 2))  # low 16 bits: the codes
        fe, fo = tl.split(f)
        e_lo, e_hi = fixed_words(fe, ASM)  # (C, 4 words)
        o_lo, o_hi = fixed_words(fo, ASM)
        e_lo, e_hi, o_lo, o_hi = quarters(e_lo), quarters(e_hi), quarters(o_lo), quarters(o_hi)
        d_lo = tl.zeros((C,), dtype=tl.int32)
        d_hi = tl.zeros((C,), dtype=tl.int32)
        for j in tl.static_range(4):
            d_lo = dp4a(o_lo[j], neg8, dp4a(e_lo[j], neg8, d_lo, ASM), ASM)
            d_hi = dp4a(o_hi[j], neg8, dp4a(e_hi[j], neg8, d_hi, ASM), ASM)
        d_lo = tl.broadcast_to(d_lo[None], (R, C))
        d_hi = tl.broadcast_to(d_hi[None], (R, C))
        for j in tl.static_range(4):
            d_lo = dp4a(hi[j], tl.broadcast_to(o_lo[j][None], (R, C)),
                        dp4a(lo[j], tl.broadcast_to(e_lo[j][None], (R, C)), d_lo, ASM, True), ASM, True)
            d_hi = dp4a(hi[j], tl.broadcast_to(o_hi[j][None], (R, C)),
                        dp4a(lo[j], tl.broadcast_to(e_hi[j][None], (R, C)), d_hi, ASM, True), ASM, True)
        part = (d_hi * 256 + d_lo).to(tl.float32) * s  # (BLOCK_N, C)
        if M == 1:
            acc += part[None]
        else:
            acc = tl.where(rm[:, None, None] == i, acc + part[None], acc)
    return acc


@triton.jit
def kgemv_i8(x, w, sc, b, y, pr, pg, ps, eps, N, sxm, sxk, swn, M: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
             HAS_BIAS: tl.constexpr, PDL: tl.constexpr, PRO: tl.constexpr, ASM: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # gemv_i8's weight-only mode (x in 15-bit fixed point, its high and low bytes) with every
    # thread along K, as kgemv_i4: a step is (BLOCK_N rows, BW words), each thread four
    # consecutive words (16 columns) per row and chunk of 4 x 32 x warps words; x's codes are made
    # once per thread and step for all rows, the int32 sums stay per thread until one reduction at
    # the end. (W8A8 stays on gemv_i8: its one dp4a per word left nothing for this layout to win.)
    BW: tl.constexpr = BLOCK_K // 4
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    rw = tl.arange(0, BW)
    wp = w + rn[:, None] * swn + rw[None, :]
    kx = rw[:, None] * 4 + tl.arange(0, 4)[None, :]  # (BW, 4) columns of x
    words = tl.load(wp, mask=nmask[:, None] & (rw[None, :] < K // 4))  # masked words stay undefined: x codes past K are 0, rows past N are not stored
    scale = tl.load(sc + rn, mask=nmask, other=0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    shift, nan, ss = row_scales(x, pr, pg, ps, rm, sxm, sxk, M, PRO, K, KP, True)
    acc = tl.zeros((BLOCK_M, BLOCK_N, BW // 4), dtype=tl.int32)
    acc_hi = tl.zeros((BLOCK_M, BLOCK_N, BW // 4), dtype=tl.int32)
    acc, acc_hi = kgemv_rows_i8(acc, acc_hi, words, x, pr, pg, ps, rm, kx, shift, sxm, sxk, M, PRO, K, ASM)
{loop:k0:BLOCK_K:K}
        wp += BW
        words = tl.load(wp, mask=nmask[:, None] & (rw[None, :] < (K - k0) // 4))
        acc, acc_hi = kgemv_rows_i8(acc, acc_hi, words, x, pr, pg, ps, rm, k0 + kx, shift, sxm, sxk, M, PRO, K, ASM)
{step:k0}    total = tl.sum(acc_hi.to(tl.float32) * 256.0 + acc.to(tl.float32), axis=2)
    out = norm_rows(unfix(total, shift, nan), ss, eps, PRO, K) * scale[None, :]
    if HAS_BIAS:
        out += bias[None, :]
    epilogue(out, rm, rn, M, N, b, y, False)


@triton.jit
def kgemv_rows_i8(acc, acc_hi, words, x, pr, pg, ps, rm, kx, shift, sxm, sxk, M: tl.constexpr, PRO: tl.constexpr,
                  K: tl.constexpr, ASM: tl.constexpr):
    # acc[i] and acc_hi[i] += the step's (BLOCK_N, chunks) int32 sums of row i against x's low and
    # high bytes: one dp4a chain of four per row, chunk and byte
    R: tl.constexpr = words.shape[0]
    C: tl.constexpr = words.shape[1] // 4
    w = quarters(tl.reshape(words, (R, C, 4)))  # (R, C) x 4 words
    for i in tl.static_range(M):
        si = tl.sum(tl.where(rm == i, shift, 0.0), axis=0)
        xv, _ = load_x(x, pr, pg, ps, i, kx, kx < K, sxm, sxk, PRO, K, False)
        f = (xv * si + 12582912.0).to(tl.int32, bitcast=True)  # low 16 bits: the fixed-point code
        lo, hi = fixed_words(tl.reshape(f, (C, 4, 4)), ASM)
        acc = dp4a_rows(acc, w, quarters(lo), rm, i, ASM)
        acc_hi = dp4a_rows(acc_hi, w, quarters(hi), rm, i, ASM)
    return acc, acc_hi


@triton.jit
def dp4a_rows(acc, w, xw, rm, i: tl.constexpr, ASM: tl.constexpr):
    # acc[i] (BLOCK_M, R, C) + the dp4a chain of the four words w[j] (R, C) against x's words
    # xw[j] (C,); one row (BLOCK_M == 1): the chain starts from acc itself (no zeros, no add)
    R: tl.constexpr = acc.shape[1]
    C: tl.constexpr = acc.shape[2]
    if acc.shape[0] == 1:
        d = tl.reshape(acc, (R, C))
    else:
        d = tl.zeros((R, C), dtype=tl.int32)
    for j in tl.static_range(4):
        d = dp4a(w[j], tl.broadcast_to(xw[j][None], (R, C)), d, ASM)
    if acc.shape[0] == 1:
        out = tl.reshape(d, (1, R, C))
    else:
        out = tl.where(rm[:, None, None] == i, acc + d[None], acc)
    return out


@triton.jit
def fma_w4_f16x2(byte, xe, xo, s, acc):
    # acc + s * (q - 8) . x in f16x2 for four bytes = eight int4 codes (low nibble the even column,
    # high nibble the odd one). prmt orders the bytes b0 b2 b1 b3, so lop3 with 0x000f000f /
    # 0x00f000f0 (| 0x6400) yields f16 pairs 1024 + c / 1024 + 16 c of columns (0, 2) / (1, 3),
    # after a shift by 8 (4, 6) / (5, 7): x's even / odd pairs as they pack. Exact codes - 8 by
    # sub.f16x2 1032 and fma.f16x2 (v / 16 - 72); times the group scale s; two fma per x pair.
    return tl.inline_asm_elementwise(
        "{\\n.reg .b32 t, a, b, c, d, k8, k16, k72;\\n"
        "mov.b32 k8, 0x64086408;\\nmov.b32 k16, 0x2C002C00;\\nmov.b32 k72, 0xD480D480;\\n"
        "prmt.b32 t, $2, 0, 0x3120;\\n"
        "lop3.b32 a, t, 0x000f000f, 0x64006400, 0xea;\\nlop3.b32 b, t, 0x00f000f0, 0x64006400, 0xea;\\n"
        "shr.u32 t, t, 8;\\n"
        "lop3.b32 c, t, 0x000f000f, 0x64006400, 0xea;\\nlop3.b32 d, t, 0x00f000f0, 0x64006400, 0xea;\\n"
        "sub.f16x2 a, a, k8;\\nfma.rn.f16x2 b, b, k16, k72;\\nsub.f16x2 c, c, k8;\\nfma.rn.f16x2 d, d, k16, k72;\\n"
        "mul.f16x2 a, a, $7;\\nmul.f16x2 b, b, $7;\\nmul.f16x2 c, c, $7;\\nmul.f16x2 d, d, $7;\\n"
        "fma.rn.f16x2 $0, a, $3, $9;\\nfma.rn.f16x2 $0, b, $5, $0;\\n"
        "fma.rn.f16x2 $1, c, $4, $10;\\nfma.rn.f16x2 $1, d, $6, $1;\\n}",
        "=r,=r,r,r,r,r,r,r,r,r,r", [byte, xe, xo, s, acc], dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def hgemv_w4(x, w, s16, b, y, N, rescale, sxk, swn, ssn, K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr,
             PDL: tl.constexpr, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FLUSH: tl.constexpr):
    # batch-1 symmetric int4 decode with packed f16 arithmetic (CUDA only: inline PTX). x is scaled
    # by 2^-e (max |x| / 2^e in [8, 16)) and rounded to f16; s16 holds the group scales times the
    # tensor's power of two 1 / rescale (max in [1, 2)), so every product is below 256 and the f16
    # sums of FLUSH steps (two products per element per step) stay below 65504 before widening to
    # fp32. A step is BLOCK_K / GS whole groups; in a last, partial step the groups past K load
    # scale 0 and x 0, so their (masked) codes add nothing. Bytes and scales are K-contiguous.
    G: tl.constexpr = BLOCK_K // GS
    HALF: tl.constexpr = GS // 2
    STEPS: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    shape: tl.constexpr = (BLOCK_N, G, HALF)
    rm = tl.arange(0, 1)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rg = tl.arange(0, G)
    rj = tl.arange(0, HALF)
    nmask = rn < N
    wp = w + rn[:, None, None] * swn + (rg[:, None] * HALF + rj[None, :])[None, :, :]  # (BLOCK_N, G, HALF) bytes
    sp = s16 + rn[:, None] * ssn + rg[None, :]  # (BLOCK_N, G) this step's group scales
    if K >= BLOCK_K:
        gmask = nmask[:, None]  # (BLOCK_N, 1)
    else:
        gmask = nmask[:, None] & (rg[None, :] < K // GS)  # (BLOCK_N, G)
    byte = tl.load(wp, mask=gmask[:, :, None], other=0)
    s = tl.load(sp, mask=gmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(b + rn, mask=nmask, other=0.0).to(tl.float32)
    wait_for_input(PDL)
    rk = tl.arange(0, KP)
    amax = tl.max(tl.abs(tl.load(x + rk * sxk, mask=rk < K, other=0.0).to(tl.float32)))
    e = tl.maximum(tl.ceil(tl.log2(tl.maximum(amax, 1e-30))) - 4.0, -100.0)
    inv = tl.exp2(-e)
    kx = (rg[:, None] * GS + 2 * rj[None, :])[:, :, None] + tl.arange(0, 2)[None, None, :]  # (G, HALF, 2) a step's columns
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    h = tl.zeros(shape, dtype=tl.float16)
    for i in tl.static_range(0, STEPS):
        if (i + 1) * BLOCK_K <= K:
            if i > 0:
                byte = tl.load(wp + i * (BLOCK_K // 2), mask=nmask[:, None, None], other=0)
                s = tl.load(sp + i * G, mask=nmask[:, None], other=0.0)
            xv = tl.load(x + (i * BLOCK_K + kx) * sxk)
        else:  # the last step, partial: whole groups past K masked
            if i > 0:
                gmask = nmask[:, None] & (rg[None, :] < (K - i * BLOCK_K) // GS)
                byte = tl.load(wp + i * (BLOCK_K // 2), mask=gmask[:, :, None], other=0)
                s = tl.load(sp + i * G, mask=gmask, other=0.0)
            xv = tl.load(x + (i * BLOCK_K + kx) * sxk, mask=i * BLOCK_K + kx < K, other=0.0)
        xe, xo = tl.split((xv.to(tl.float32) * inv).to(tl.float16))  # (G, HALF) even / odd columns
        h = fma_w4_f16x2(byte, tl.broadcast_to(xe[None, :, :], shape), tl.broadcast_to(xo[None, :, :], shape),
                         tl.broadcast_to(s[:, :, None], shape), h)
        if (i + 1) % FLUSH == 0:
            acc += tl.sum(tl.sum(h.to(tl.float32), axis=2), axis=1)
            h = tl.zeros(shape, dtype=tl.float16)
    if STEPS % FLUSH != 0:
        acc += tl.sum(tl.sum(h.to(tl.float32), axis=2), axis=1)
    out = (acc * (tl.exp2(e) * rescale))[None, :]
    if HAS_BIAS:
        out += bias[None, :]
    epilogue(out, rm, rn, 1, N, b, y, False)


@triton.jit
def tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # programs in groups of GROUP_M tile rows, so the W tiles a group reads stay in L2
    pid = tl.program_id(0)
    width = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // width) * GROUP_M
    rows = min(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    rm = (first_m + (pid % width) % rows) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = ((pid % width) // rows) * BLOCK_N + tl.arange(0, BLOCK_N)
    # plain offsets (Triton infers their true contiguity / divisibility): rows / columns past
    # M / N are masked by the callers' loads (loop-invariant masks) and by the store
    return rm, rn


@triton.jit
def gemm_w8(x, w, sc, zp, b, y, M, N, K, sxm, sxk, swn, swk,
            HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, EVEN_K: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    rm, rn = tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    ncol = rn[None, :] < N  # (1, BLOCK_N)
    if ASYM:
        off = tl.load(zp + rn, mask=rn < N, other=0).to(tl.float32)[None, :]
    else:
        off = 128.0
    xp = x + rm[:, None] * sxm + rk[None, :] * sxk  # (BLOCK_M, BLOCK_K)
    wp = w + rn[None, :] * swn + rk[:, None] * swk  # (BLOCK_K, BLOCK_N): a tile of W.T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
{loop:k0:0:K}
        if EVEN_K:
            a = tl.load(xp, mask=mrow, other=0.0)
            code = tl.load(wp, mask=ncol, other=0).to(tl.int32)
        else:
            a = tl.load(xp, mask=mrow & (rk[None, :] < K - k0), other=0.0)
            code = tl.load(wp, mask=ncol & (rk[:, None] < K - k0), other=0).to(tl.int32)
        if not ASYM:
            code += 128
        acc = mm(a, decode(code, off).to(x.dtype.element_ty), acc)  # q - zero: exact integers
        xp += BLOCK_K * sxk
        wp += BLOCK_K * swk
{step:k0}    acc = acc * tl.load(sc + rn, mask=rn < N, other=0).to(tl.float32)[None, :]
    epilogue(acc, rm, rn, M, N, b, y, HAS_BIAS)


@triton.jit
def gemm_w4(x, w, sc, zp, b, y, M, N, K, sxm, sxk, swn, swk, ssn, ssg,
            HAS_BIAS: tl.constexpr, ASYM: tl.constexpr, GS: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    HALF: tl.constexpr = BLOCK_K // 2
    rm, rn = tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rj = tl.arange(0, HALF)
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    nmask = rn < N  # (BLOCK_N,)
    xp = x + rm[:, None] * sxm + (2 * rj)[None, :] * sxk  # (BLOCK_M, HALF): even columns
    wp = w + rn[None, :] * swn + rj[:, None] * swk  # (HALF, BLOCK_N) bytes of W.T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
{loop:k0:0:K}
        byte = tl.load(wp, mask=nmask[None, :], other=0).to(tl.int32)
        g = rn * ssn + (k0 // GS) * ssg
        s = tl.load(sc + g, mask=nmask, other=0).to(tl.float32)[None, :]
        if ASYM:
            off = tl.load(zp + g, mask=nmask, other=0).to(tl.float32)[None, :]
        else:
            off = 8.0
        lo = (decode(byte & 15, off) * s).to(x.dtype.element_ty)
        hi = (decode(byte >> 4, off) * s).to(x.dtype.element_ty)
        acc = mm(tl.load(xp, mask=mrow, other=0.0), lo, acc)
        acc = mm(tl.load(xp + sxk, mask=mrow, other=0.0), hi, acc)
        xp += BLOCK_K * sxk
        wp += HALF * swk
{step:k0}    epilogue(acc, rm, rn, M, N, b, y, HAS_BIAS)


@triton.jit
def quant_rows(x, xq, s, K, K_AMAX, sxm, sxk, STATIC: tl.constexpr, BLOCK_K: tl.constexpr):
    # one program per row: s = max|x| / 127 (f32), or the given static s (then K_AMAX = 0 skips the
    # max pass); xq = clamp(round_half_even(x / s), -127, 127)
    row = tl.program_id(0)
    rk = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
{loop:k0:0:K_AMAX}
        v = tl.load(x + row * sxm + (k0 + rk) * sxk, mask=rk < K - k0, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
{step:k0}    if STATIC:
        sr = tl.load(s + row)
    else:
        sr = tl.math.div_rn(tl.max(amax, axis=0), 127.0)
    safe = tl.zeros((BLOCK_K,), dtype=tl.float32) + tl.where(sr == 0.0, 1.0, sr)
{loop:k1:0:K}
        v = tl.load(x + row * sxm + (k1 + rk) * sxk, mask=rk < K - k1, other=0.0).to(tl.float32)
        tl.store(xq + row * K + k1 + rk, round_int8(v, safe).to(tl.int8), mask=rk < K - k1)
{step:k1}    tl.store(s + row, sr)


@triton.jit
def gemm_a8(xq, w, s, sc, b, y, M, N, K, swn, swk,
            HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    rm, rn = tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    mrow = rm[:, None] < M  # (BLOCK_M, 1)
    ncol = rn[None, :] < N  # (1, BLOCK_N)
    xp = xq + rm[:, None] * K + rk[None, :]  # (BLOCK_M, BLOCK_K) int8, rows K bytes apart
    wp = w + rn[None, :] * swn + rk[:, None] * swk  # (BLOCK_K, BLOCK_N) int8 tile of W.T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
{loop:k0:0:K}
        if EVEN_K:
            a = tl.load(xp, mask=mrow, other=0)
            bt = tl.load(wp, mask=ncol, other=0)
        else:
            a = tl.load(xp, mask=mrow & (rk[None, :] < K - k0), other=0)
            bt = tl.load(wp, mask=ncol & (rk[:, None] < K - k0), other=0)
        acc = tl.dot(a, bt, acc, out_dtype=tl.int32)  # exact int32 accumulation
        xp += BLOCK_K
        wp += BLOCK_K * swk
{step:k0}    s_row = tl.load(s + rm, mask=rm < M, other=0.0)[:, None]
    out = acc.to(tl.float32) * s_row * tl.load(sc + rn, mask=rn < N, other=0).to(tl.float32)[None, :]
    out = out.to(y.dtype.element_ty).to(tl.float32)  # the reference rounds before the bias
    if HAS_BIAS:
        out = (out + tl.load(b + rn, mask=rn < N, other=0).to(tl.float32)[None, :]).to(y.dtype.element_ty).to(tl.float32)
    epilogue(out, rm, rn, M, N, b, y, False)
'''


# mm8's dot: fp8 x fp8 on tensor cores; interpreted, the same exact values in fp32 (the
# interpreter multiplies fp8 tiles as raw bytes)
_DOT8 = {False: "tl.dot(a, b.to(tl.float8e4nv), acc, max_num_imprecise_acc=IMPRECISE)",
         True: 'tl.dot(a.to(tl.float32), b, acc, input_precision="ieee")'}


def kernel_source(activation: str, fp32: bool, interpreted: bool = False) -> str:
    """The Triton module for one activation (fp32 activations get IEEE-exact float dots)."""
    return _loops(_SOURCE.replace("{gemv_common}", GEMV_COMMON).replace("{act}", _ACT[activation]).replace("{dot}", dot_expr("a", "b", fp32, interpreted))
                  .replace("{dot8}", _DOT8[interpreted]), interpreted)
