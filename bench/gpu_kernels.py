"""Generated Triton kernels alone vs their PyTorch equivalents, against the measured copy ceiling.

Napkin math: every case is memory-bound (a few FLOPs per element), so the floor is
bytes / copy bandwidth, bytes = every input read once + every output written once. Timing is
`triton.testing.do_bench` (CUDA events, warm-up, median), inputs random (never zeros), several
input sets rotated so the L2 cannot hold them. Run on a GPU machine:

    python3 bench/gpu_kernels.py                   (needs CUDA and triton)
    python3 bench/gpu_kernels.py --backend cuda    (also the CUDA C++ backend's elementwise and
                                                    reduction kernels; needs nvcc and ninja)
    python3 bench/gpu_kernels.py --no-matmul       (skip the matmul rows)

The matmul rows are the exception: the GEMM with its fused epilogue is compute-bound (TFLOP/s
next to the measured bf16 dense peak, 791 TFLOP/s on an H200), the M = 1 matvec memory-bound
(bytes = the weight read once, GB/s next to the copy ceiling). Each row reports the fastest kiln
config (the autotuner also offers PyTorch itself, so kiln never runs slower than the eager column).
The quantized matvec rows (int8 per channel, int4 group 128, dequantization fused) count the
quantized bytes (codes + scales) and compare against the dense bf16 F.linear of the same shape.
The 2:4 rows time PyTorch's semi-structured sparse kernel (kiln's "sparse24" matmul candidate, the
weight compressed once) against dense F.linear on the same pruned bf16 weight.
"""

from __future__ import annotations

import argparse
import datetime

import torch
import triton

from kiln import ir
from kiln.backends.triton.codegen import generate
from kiln.backends.triton.launch import GroupLauncher
from kiln.backends.triton.reduce import generate_reduction
from kiln.ir.dtypes import from_torch


def _launcher(g: ir.Graph, backend: str, reduction: bool):  # noqa: ANN202
    """The group's kernel from the Triton backend or the CUDA C++ backend (each case builds its own
    CUDA extension: one nvcc + g++ run per case)."""
    if backend == "cuda":
        from kiln.backends.cuda.build import KernelSet, Launcher
        from kiln.backends.cuda.codegen import generate as cuda_generate
        from kiln.backends.cuda.reduce import generate_reduction as cuda_generate_reduction

        kset = KernelSet()
        idx, k = kset.add(lambda p: (cuda_generate_reduction if reduction else cuda_generate)(g, p))
        return Launcher(kset, idx, k)
    return GroupLauncher(generate_reduction(g) if reduction else generate(g))


def median_ms(fn, sets: list) -> float:  # noqa: ANN001
    k = [0]

    def step() -> None:
        fn(*sets[k[0] % len(sets)])
        k[0] += 1

    return triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")


def copy_ceiling(nbytes: int) -> float:
    """GB/s of a device-to-device copy, counting bytes read plus bytes written."""
    srcs = [torch.randn(nbytes // 4, device="cuda") for _ in range(2)]
    dst = torch.empty_like(srcs[0])
    ms = median_ms(lambda s: dst.copy_(s), [(s,) for s in srcs])
    return 2 * nbytes / ms / 1e6


def elementwise_case(n: int, d: int, dtype: torch.dtype, backend: str = "triton") -> tuple[str, float, float, int]:
    """out = silu(x * w) + y  (x, y: [n, d]; w: [d])"""
    g = ir.Graph()
    kd = from_torch(dtype)
    x, w, y = (g.add_input(k, ir.TensorType(kd, s)) for k, s in (("x", (n, d)), ("w", (d,)), ("y", (n, d))))
    g.outputs = [g.call("add", g.call("silu", g.call("mul", x, w)), y)]
    kern = _launcher(g, backend, reduction=False)
    sets = [(torch.randn(n, d, device="cuda", dtype=dtype), torch.randn(d, device="cuda", dtype=dtype),
             torch.randn(n, d, device="cuda", dtype=dtype)) for _ in range(3)]
    eager = lambda a, b, c: torch.nn.functional.silu(a * b) + c  # noqa: E731
    nbytes = 3 * n * d * dtype.itemsize + d * dtype.itemsize
    torch.testing.assert_close(kern(*sets[0]), eager(*sets[0]), rtol=2e-2, atol=2e-2)
    return f"silu(x*w)+y {dtype} [{n}x{d}] ({backend})", median_ms(kern, sets), median_ms(eager, sets), nbytes


def reduction_case(n: int, d: int, dtype: torch.dtype, backend: str = "triton") -> tuple[str, float, float, int]:
    """h = x * w; returns h and mean(h*h, -1): an RMSNorm-style statistic with its prologue."""
    g = ir.Graph()
    kd = from_torch(dtype)
    x, w = g.add_input("x", ir.TensorType(kd, (n, d))), g.add_input("w", ir.TensorType(kd, (d,)))
    h = g.call("mul", x, w)
    g.outputs = [h, g.call("mean", g.call("mul", h, h), dims=[1], keepdim=True)]
    kern = _launcher(g, backend, reduction=True)
    sets = [(torch.randn(n, d, device="cuda", dtype=dtype), torch.randn(d, device="cuda", dtype=dtype)) for _ in range(3)]

    def eager(a: torch.Tensor, b: torch.Tensor) -> tuple:
        hh = a * b
        return hh, (hh * hh).mean(-1, keepdim=True)

    nbytes = 2 * n * d * dtype.itemsize + d * dtype.itemsize + n * dtype.itemsize
    got, ref = kern(*sets[0]), eager(*sets[0])
    torch.testing.assert_close(got[1].float(), ref[1].float(), rtol=2e-2, atol=2e-2)
    return f"x*w, mean((x*w)^2) {dtype} [{n}x{d}] ({backend})", median_ms(kern, sets), median_ms(eager, sets), nbytes


def norm_case(op: str, n: int, d: int, dtype: torch.dtype) -> tuple[str, float, float, int]:
    """rms_norm (HF Llama's eager formula as the peer) or add_layer_norm (a + b, then F.layer_norm)."""
    from kiln.backends.triton.norms import RowLauncher

    if op == "rms_norm":
        kern = RowLauncher("rms", 1e-6, dtype)
        sets = [(torch.randn(n, d, device="cuda", dtype=dtype), torch.randn(d, device="cuda", dtype=dtype)) for _ in range(3)]

        def eager(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            h = x.float()
            return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)

        nbytes = 2 * n * d * dtype.itemsize + d * dtype.itemsize
    else:
        kern = RowLauncher("add_ln", 1e-5, dtype)
        sets = [tuple(torch.randn(*s, device="cuda", dtype=dtype) for s in ((n, d), (n, d), (d,), (d,))) for _ in range(3)]

        def eager(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> tuple:
            s_ = a + b
            return s_, torch.nn.functional.layer_norm(s_, (d,), w, bias, 1e-5)

        nbytes = 4 * n * d * dtype.itemsize + 2 * d * dtype.itemsize
    got, ref = kern(*sets[0]), eager(*sets[0])
    got, ref = (got if isinstance(got, tuple) else (got,)), (ref if isinstance(ref, tuple) else (ref,))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2)
    return f"{op} {dtype} [{n}x{d}]", median_ms(kern, sets), median_ms(eager, sets), nbytes


BF16_PEAK_TFLOPS = 791.0  # dense bf16 tensor-core peak, measured on an H200
LLAMA_1B_MATVEC = ((2048, 2048), (11264, 2048), (2048, 5632), (32000, 2048))  # (N, K): attn, gate/up, down, lm_head


def _best_config(names: list, make, sets: list) -> tuple[str, float]:  # noqa: ANN001
    """(name, ms) of the fastest pinned matmul config; configs that cannot run here are skipped."""
    best = ("", float("inf"))
    for name in names:
        try:
            ms = median_ms(make(name), sets)
        except Exception:  # noqa: BLE001 - e.g. too much shared memory for this GPU
            continue
        best = min(best, (name, ms), key=lambda t: t[1])
    return best


def _sets(make_one, nbytes: int) -> list:  # noqa: ANN001
    return [make_one() for _ in range(max(3, -(-(256 << 20) // nbytes)))]  # > 2x any L2 in rotation


def gemm_case(m: int, n: int, k: int, dtype: torch.dtype) -> tuple[str, float, float, int, str]:
    """y = silu(x @ W.T + b) + r (one launch) vs F.linear, silu, add (three)."""
    from kiln.backends.triton.matmul import GEMM_CONFIGS, LinearLauncher, torch_linear

    sets = _sets(lambda: (torch.randn(m, k, device="cuda", dtype=dtype), torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5,
                          torch.randn(m, n, device="cuda", dtype=dtype), torch.randn(n, device="cuda", dtype=dtype)),
                 (m * k + n * k + m * n) * dtype.itemsize)
    eager = lambda x, w, r, b: torch_linear(x, w, b, r, "silu")  # noqa: E731
    make = lambda name: LinearLauncher("silu", True, True, config=name)  # noqa: E731
    torch.testing.assert_close(make(GEMM_CONFIGS[1].name)(*sets[0]).float(), eager(*sets[0]).float(), rtol=3e-2, atol=3e-2)
    name, k_ms = _best_config([c.name for c in GEMM_CONFIGS], make, sets)
    return f"silu(x@W.T+b)+r {dtype} [{m}x{k}]@[{k}x{n}]", k_ms, median_ms(eager, sets), 2 * m * n * k, name


def matvec_case(n: int, k: int, dtype: torch.dtype) -> tuple[str, float, float, int, str]:
    """y = x @ W.T at M = 1 (decode) vs F.linear; bytes = the weight + x read, y written."""
    from kiln.backends.triton.matmul import MATVEC_CONFIGS, LinearLauncher

    nbytes = (n * k + k + n) * dtype.itemsize
    sets = _sets(lambda: (torch.randn(1, k, device="cuda", dtype=dtype), torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5), nbytes)
    make = lambda name: LinearLauncher("none", False, False, config=name)  # noqa: E731
    ref = torch.nn.functional.linear(*sets[0]).float()
    torch.testing.assert_close(make(MATVEC_CONFIGS[0].name)(*sets[0]).float(), ref, rtol=3e-2, atol=3e-2)
    name, k_ms = _best_config([c.name for c in MATVEC_CONFIGS], make, sets)
    return f"matvec x@W.T {dtype} M=1 N={n} K={k}", k_ms, median_ms(torch.nn.functional.linear, sets), nbytes, name


def quant_matvec_case(op: str, n: int, k: int) -> tuple[str, float, float, int, str]:
    """y = x @ dequant(W).T at M = 1 in bf16 with the dequantization fused (linear_w8: int8 per
    channel; linear_w4: int4, group 128) vs bf16 F.linear on a dense W of the same shape;
    bytes = the codes + scales read once, x read, y written."""
    from kiln.backends.triton.quant_matmul import GEMM_CONFIGS, MATVEC_CONFIGS, QuantLinearLauncher, torch_reference
    from kiln.ir.opset import quant

    dtype, attrs = torch.bfloat16, {"activation": "none", "group_size": 128}

    def one() -> tuple:
        w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
        codes = quant.quantize_int8_per_channel(w) if op == "linear_w8" else quant.quantize_int4_grouped(w, 128)
        return (torch.randn(1, k, device="cuda", dtype=dtype), *codes)

    first = one()
    nbytes = sum(t.numel() * t.element_size() for t in first) + n * dtype.itemsize
    sets = [first] + _sets(one, nbytes)[1:]
    make = lambda name: QuantLinearLauncher(op, attrs, False, config=name)  # noqa: E731
    ref = torch_reference(op, first, make(MATVEC_CONFIGS[0].name)._attrs).float()
    torch.testing.assert_close(make(MATVEC_CONFIGS[0].name)(*first).float(), ref, rtol=3e-2, atol=3e-2)
    name, k_ms = _best_config([c.name for c in MATVEC_CONFIGS] + [GEMM_CONFIGS[3].name], make, sets)
    del sets, first
    dense = _sets(lambda: (torch.randn(1, k, device="cuda", dtype=dtype), torch.randn(n, k, device="cuda", dtype=dtype)),
                  (n * k + k + n) * dtype.itemsize)
    bits = "int8" if op == "linear_w8" else "int4 g128"
    return f"{op} {bits} matvec bf16 M=1 N={n} K={k}", k_ms, median_ms(torch.nn.functional.linear, dense), nbytes, name


SPARSE24_SHAPES = ((11264, 2048), (2048, 5632))  # (N, K): the 1.1B Llama's fused gate/up and down


def sparse24_case(m: int, n: int, k: int) -> tuple[str, float, float, int, str]:
    """y = x @ W.T in bf16, W 2:4-pruned: kiln's pinned "sparse24" candidate vs dense F.linear on
    the same W. FLOPs are counted dense (2*M*N*K), so the rate is the dense-equivalent one. Each
    input set has its own launcher (one compressed weight per launcher, as in a plan)."""
    from kiln.backends.triton.matmul import LinearLauncher
    from kiln.backends.triton.sparse24 import SPARSE24, backend
    from kiln.passes.prune import PruneScheme, prune_tensor

    dt, scheme = torch.bfloat16, PruneScheme(pattern="2:4")

    def one() -> tuple:
        w = prune_tensor(torch.randn(n, k, device="cuda", dtype=dt) / k**0.5, scheme)
        return torch.randn(m, k, device="cuda", dtype=dt), w, LinearLauncher("none", False, False, config=SPARSE24)

    sets = _sets(one, (m * k + n * k + m * n) * dt.itemsize)
    for x, w, launcher in sets:  # compress every weight before timing; prove the sparse path ran
        torch.testing.assert_close(launcher(x, w).float(), torch.nn.functional.linear(x, w).float(), rtol=3e-2, atol=3e-2)
        assert launcher.sparse.packed is not None, "sparse24 fell back to dense F.linear"
    s_ms = median_ms(lambda x, w, launcher: launcher(x, w), sets)
    d_ms = median_ms(lambda x, w, launcher: torch.nn.functional.linear(x, w), sets)
    del sets
    return f"2:4 sparse x@W.T bf16 M={m} N={n} K={k}", s_ms, d_ms, 2 * m * n * k, getattr(backend(), "BACKEND", "?")


def sparse24_rows() -> None:
    """bf16 2:4 sparse vs dense at decode (M = 1, 16) and prefill (M = 512, 4096) sizes."""
    print("\n| 2:4 sparse linear | sparse ms | dense ms | dense/sparse | sparse TFLOP/s (dense-equivalent) | backend |")
    print("|---|---|---|---|---|---|")
    for n, k in SPARSE24_SHAPES:
        for m in (1, 16, 512, 4096):
            try:
                name, s_ms, d_ms, flops, be = sparse24_case(m, n, k)
            except Exception as e:  # noqa: BLE001 - no sparse kernels in this build / GPU: say so, keep going
                print(f"| 2:4 sparse bf16 M={m} N={n} K={k} | n/a | n/a | n/a | n/a | {type(e).__name__}: {e} |")
                continue
            print(f"| {name} | {s_ms:.4f} | {d_ms:.4f} | {d_ms / s_ms:.2f}x | {flops / s_ms / 1e9:.1f} | {be} |")


def matmul_rows(ceil: float) -> None:
    """The GEMM against the bf16 peak, the 1.1B-Llama decode matvecs against the copy ceiling."""
    print("\n| matmul | kiln ms | eager ms | eager/kiln | kiln rate | % of ceiling | kiln config |")
    print("|---|---|---|---|---|---|---|")
    name, k_ms, e_ms, flops, cfg = gemm_case(8192, 5632, 2048, torch.bfloat16)
    tflops = flops / k_ms / 1e9
    print(f"| {name} | {k_ms:.3f} | {e_ms:.3f} | {e_ms / k_ms:.2f}x | {tflops:.0f} TFLOP/s | "
          f"{100 * tflops / BF16_PEAK_TFLOPS:.0f}% of {BF16_PEAK_TFLOPS:.0f} | {cfg} |")
    for n, k in LLAMA_1B_MATVEC:
        name, k_ms, e_ms, nbytes, cfg = matvec_case(n, k, torch.bfloat16)
        gbs = nbytes / k_ms / 1e6
        print(f"| {name} | {k_ms:.4f} | {e_ms:.4f} | {e_ms / k_ms:.2f}x | {gbs:.0f} GB/s | {100 * gbs / ceil:.0f}% of copy | {cfg} |")
    for op in ("linear_w8", "linear_w4"):  # fused dequant; the eager column is the dense bf16 F.linear
        for n, k in LLAMA_1B_MATVEC:
            name, k_ms, e_ms, nbytes, cfg = quant_matvec_case(op, n, k)
            gbs = nbytes / k_ms / 1e6
            print(f"| {name} | {k_ms:.4f} | {e_ms:.4f} (bf16 dense) | {e_ms / k_ms:.2f}x | {gbs:.0f} GB/s (quantized bytes) | "
                  f"{100 * gbs / ceil:.0f}% of copy | {cfg} |")
    sparse24_rows()


def attention_rows() -> None:
    """Causal bf16 GQA attention at Llama-1.1B shapes (H=32, Hkv=4, D=64): the fastest pinned kiln
    Triton config vs F.scaled_dot_product_attention (its flash kernel). FLOPs = 4*B*H*S*S*D / 2
    (causal); compute-bound, so TFLOP/s is printed next to the measured bf16 peak."""
    from kiln.backends.triton.attention import CONFIGS, AttentionLauncher
    from kiln.ir.opset.nn import _attention

    sdpa = torch.nn.functional.scaled_dot_product_attention
    print("\n| attention (causal, bf16) | kiln ms | sdpa ms | sdpa/kiln | kiln TFLOP/s | % of peak | kiln config |")
    print("|---|---|---|---|---|---|---|")
    for b, s in ((1, 512), (1, 2048), (16, 512)):
        h, hkv, d = 32, 4, 64
        sets = [tuple(torch.randn(b, n, s, d, device="cuda", dtype=torch.bfloat16) for n in (h, hkv, hkv)) for _ in range(3)]
        ref = sdpa(*sets[0], is_causal=True, enable_gqa=True)
        best = ("", float("inf"))
        for cfg in CONFIGS:
            kern = AttentionLauncher(True, None, True, _attention, config=cfg)
            try:
                out = kern(*sets[0])
            except Exception:  # noqa: BLE001 - a config too big for this GPU's shared memory
                continue
            torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
            best = min(best, (cfg.name, median_ms(kern, sets)), key=lambda t: t[1])
        e_ms = median_ms(lambda q, k, v: sdpa(q, k, v, is_causal=True, enable_gqa=True), sets)
        name, k_ms = best
        tflops = 4 * b * h * s * s * d / 2 / k_ms / 1e9
        print(f"| B={b} H={h}/{hkv} S={s} D={d} | {k_ms:.3f} | {e_ms:.3f} | {e_ms / k_ms:.2f}x | {tflops:.0f} | "
              f"{100 * tflops / BF16_PEAK_TFLOPS:.0f}% of {BF16_PEAK_TFLOPS:.0f} | {name} |")


LLAMA_1B_ATTN = (32, 4, 64, 16)  # q heads, kv heads, head dim, block size


def _decode_set(b: int, ctx: int) -> tuple:
    """One decode step's paged_attention inputs: b sequences of ctx tokens (the last one new),
    scrambled block tables, random bf16 caches holding exactly their blocks."""
    h, hkv, d, bs = LLAMA_1B_ATTN
    per = -(-ctx // bs)
    dev, dt = "cuda", torch.bfloat16
    kc, vc = (torch.randn(b * per, bs, hkv, d, device=dev, dtype=dt) for _ in range(2))
    tables = torch.randperm(b * per, device=dev, dtype=torch.int32).view(b, per)
    pos = torch.full((b,), ctx - 1, device=dev)
    slots = tables.gather(1, (pos // bs)[:, None])[:, 0].long() * bs + pos % bs  # the new token's slot
    q = torch.randn(1, b, h, d, device=dev, dtype=dt).transpose(1, 2)
    k, v = (torch.randn(1, b, hkv, d, device=dev, dtype=dt).transpose(1, 2) for _ in range(2))
    lens = torch.full((b,), ctx, device=dev, dtype=torch.int32)
    starts = torch.arange(b + 1, device=dev, dtype=torch.int32)
    return q, k, v, kc, vc, slots, tables, lens, starts


def paged_decode_rows(ceil: float) -> None:
    """Decode paged attention (1.1B Llama: 32 q heads, 4 kv heads, D 64, block 16, bf16) vs the
    op's PyTorch reference and vs SDPA on a contiguous cache of the same length (a practical
    peer: no block table). Bytes = the K and V read once, 2 * B * ctx * Hkv * D * 2 B."""
    from kiln.backends.triton.paged import PagedAttentionLauncher, choose_config
    from kiln.ir.opset.paged import reference_paged_attention

    h, hkv, d, bs = LLAMA_1B_ATTN
    kern = PagedAttentionLauncher(None, reference_paged_attention)
    print("\n| paged decode attention bf16 | kiln ms | reference ms | SDPA (contiguous) ms | kiln GB/s | % of copy | splits |")
    print("|---|---|---|---|---|---|---|")
    for b in (1, 16, 64):
        for ctx in (512, 2048, 8192):
            nbytes = 2 * b * ctx * hkv * d * 2
            sets = [_decode_set(b, ctx) for _ in range(max(2, -(-(256 << 20) // nbytes)))]
            torch.testing.assert_close(kern(*[x.clone() for x in sets[0]]).float(),
                                       reference_paged_attention(*[x.clone() for x in sets[0]], None).float(), rtol=2e-2, atol=2e-2)
            k_ms = median_ms(kern, sets)
            r_ms = median_ms(lambda *a: reference_paged_attention(*a, None), sets[:2])
            del sets
            peer = [(torch.randn(b, h, 1, d, device="cuda", dtype=torch.bfloat16),
                     *(torch.randn(b, hkv, ctx, d, device="cuda", dtype=torch.bfloat16) for _ in range(2)))
                    for _ in range(max(2, -(-(256 << 20) // nbytes)))]
            s_ms = median_ms(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True), peer)
            del peer
            splits = choose_config(b, b, -(-ctx // bs), bs, hkv, h // hkv, torch.device("cuda"))[1]
            gbs = nbytes / k_ms / 1e6
            print(f"| B={b} ctx={ctx} | {k_ms:.4f} | {r_ms:.3f} | {s_ms:.4f} | {gbs:.0f} | {100 * gbs / ceil:.0f}% | {splits} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["triton", "cuda"], action="append", default=None,
                    help="cuda: also time the CUDA C++ backend's elementwise/reduction kernels (Triton rows always run)")
    ap.add_argument("--no-matmul", action="store_true", help="skip the matmul rows (GEMM with fused epilogue, M=1 matvec)")
    args = ap.parse_args()
    backends = args.backend or ["triton"]
    print(f"kiln gpu kernels | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} | "
          f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    ceil = copy_ceiling(1 << 30)
    print(f"copy ceiling (read + write): {ceil:.0f} GB/s\n")
    print("| kernel | kiln ms | eager ms | eager/kiln | kiln GB/s | % of copy |")
    print("|---|---|---|---|---|---|")
    cases = [elementwise_case(8192, 8192, torch.bfloat16), elementwise_case(8192, 8192, torch.float32),
             reduction_case(16384, 4096, torch.bfloat16), reduction_case(16384, 2048, torch.float32),
             norm_case("rms_norm", 16384, 4096, torch.bfloat16), norm_case("add_layer_norm", 16384, 4096, torch.bfloat16),
             norm_case("rms_norm", 16384, 2048, torch.float32)]
    if "cuda" in backends:  # the CUDA C++ backend on the same elementwise and reduction cases
        cases += [elementwise_case(8192, 8192, torch.bfloat16, "cuda"), elementwise_case(8192, 8192, torch.float32, "cuda"),
                  reduction_case(16384, 4096, torch.bfloat16, "cuda"), reduction_case(16384, 2048, torch.float32, "cuda")]
    for name, k_ms, e_ms, nbytes in cases:
        gbs = nbytes / k_ms / 1e6
        print(f"| {name} | {k_ms:.3f} | {e_ms:.3f} | {e_ms / k_ms:.2f}x | {gbs:.0f} | {100 * gbs / ceil:.0f}% |")
    if not args.no_matmul:
        matmul_rows(ceil)
    paged_decode_rows(ceil)
    attention_rows()


if __name__ == "__main__":
    main()
