"""kiln.LLM on one GPU against its peers, same run: batch-1 decode, many-request throughput, quantized decode.

Model: the Llama-shaped 1.1B (dim 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32000)
with random bf16 weights, built from a `transformers` config (nothing downloaded); greedy, EOS
ignored. Sections (all by default):

* decode: prompt 16, 128 new tokens, batch 1: tok/s and time per output token of kiln, HF eager
  `generate`, HF static cache + compiled `generate`, and the static-KV loop under
  torch.compile(mode="reduce-overhead") (the gpt-fast recipe, bench/peers.py); first-token
  latency (prompt 16 and 512) and engine start-up (build; first generate incl. autotune/capture).
* throughput: 256 requests, prompt lengths uniform in [32, 512], outputs uniform in [32, 256],
  all submitted at once: output tok/s of kiln (a second pass: the first, cold one is reported
  too) vs HF eager generate (batched by bench/peers.py),
  mean time to first token, KV-slot utilisation (live tokens / slots of allocated blocks, mean
  over steps) and peak pool use.
* quant: batch-1 decode of kiln bf16, int8, int4 (g128), w8a8, fp8, bf16 2:4-pruned, and the gpt-fast int8 recipe.

Model: `--shape 7b` builds the Llama-2-7B shape instead (bench/tp.py's SHAPES: dim 4096, 32 layers,
32 heads and KV heads, MLP 11008); `--schemes` picks the quant section's rows.

    python3 bench/llm.py [--sections decode throughput quant] [--requests 256] [--shape 7b] [--schemes bf16 int8 int4]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import random
import statistics
import sys
import time
import warnings

import torch
import transformers

import kiln

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from tp import SHAPES  # noqa: E402  (the model shapes, LlamaConfig fields)

VOCAB = 32000


SCHEMES = ("bf16", "int8", "int4", "w8a8", "fp8", "2:4", "gpt-fast")


def build(shape: str = "1b") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], vocab_size=VOCAB, max_position_embeddings=2048)
    with torch.device("cuda"):  # random init on the GPU: a 7B init on the host takes minutes
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    return model


def sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def greedy(n: int) -> kiln.SamplingParams:
    return kiln.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def kiln_decode(llm: kiln.LLM, prompt: list[int], new: int) -> tuple[float, list[int]]:
    """(decode tok/s excluding the prefill step, tokens) for one request."""
    eng = llm.engine
    rid = eng.add_request(prompt, greedy(new))
    eng.step()  # prefill + first token
    t1 = sync_time()
    while not eng.is_finished(rid):
        eng.step()
    t2 = sync_time()
    out = eng.output(rid).outputs[0].token_ids
    eng.release(rid)
    return (len(out) - 1) / (t2 - t1), out


def ttft(llm: kiln.LLM, prompt: list[int]) -> float:
    eng = llm.engine
    t0 = sync_time()
    rid = eng.add_request(prompt, greedy(1))
    while not eng.is_finished(rid):
        eng.step()
    t = sync_time() - t0
    eng.release(rid)
    return t


DISABLED: frozenset[str] = frozenset()  # --disable-passes


def make_llm(model: torch.nn.Module, **kw) -> tuple[kiln.LLM, float, float]:
    """(llm, build seconds, first-generate seconds)."""
    t0 = sync_time()
    llm = kiln.LLM(model, max_model_len=2048, **kw)
    t1 = sync_time()
    p = [random.Random(1).randrange(1, VOCAB) for _ in range(16)]
    llm.generate([p], greedy(8))
    llm.generate([p], greedy(8))  # second call: CUDA graphs captured
    return llm, t1 - t0, sync_time() - t1


def free(*objs: object) -> None:
    del objs
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def section_decode(model: torch.nn.Module, new: int) -> None:
    rng = random.Random(0)
    prompt = [rng.randrange(1, VOCAB) for _ in range(16)]
    llm, build_s, first_s = make_llm(model, kv_cache_memory=8 << 30)
    kiln_tps = statistics.median(kiln_decode(llm, prompt, new)[0] for _ in range(3))
    kiln_toks = kiln_decode(llm, prompt, new)[1]
    t16 = statistics.median(ttft(llm, [rng.randrange(1, VOCAB) for _ in range(16)]) for _ in range(5))
    ttft(llm, [rng.randrange(1, VOCAB) for _ in range(512)])  # warm the 512-token shapes
    t512 = statistics.median(ttft(llm, [rng.randrange(1, VOCAB) for _ in range(512)]) for _ in range(5))
    free(llm)

    toks, sec = peers.hf_eager_generate(model, [prompt], new)
    hf_tps = new / sec
    agree_hf = toks[0][:16] == kiln_toks[:16]
    try:
        stoks, ssec, sfirst = peers.hf_static_compiled_generate(model, prompt, new)
        static_tps, static_note = new / ssec, f"first call {sfirst:.1f} s"
    except Exception as e:  # a peer that fails is reported, not fatal
        static_tps, static_note = float("nan"), f"failed: {type(e).__name__}: {str(e)[:80]}"
    loop = peers.StaticKVLoop(model, max_len=256)
    loop.generate(prompt, new)
    gtoks, gsec = loop.generate(prompt, new)
    gpt_tps = new / gsec
    free(loop)

    print(f"## batch-1 decode (prompt 16, {new} new tokens; kiln: decode steps only, peers: whole generate)\n")
    print("| system | tok/s | ms per output token | kiln / system | note |\n|---|---|---|---|---|")
    rows = [("kiln.LLM", kiln_tps, f"build {build_s:.1f} s, first generate {first_s:.1f} s"),
            ("HF generate, eager", hf_tps, f"first 16 tokens equal kiln's: {agree_hf}"),
            ("HF generate, static cache + torch.compile", static_tps, static_note),
            ("static-KV loop, torch.compile reduce-overhead (gpt-fast recipe)", gpt_tps,
             f"first call {loop.first_call_s:.1f} s; first 16 tokens equal kiln's: {gtoks[:16] == kiln_toks[:16]}")]
    for name, tps, note in rows:
        print(f"| {name} | {tps:.0f} | {1e3 / tps:.2f} | {kiln_tps / tps:.2f}x | {note} |")
    print(f"\nkiln first-token latency: prompt 16 {t16 * 1e3:.1f} ms, prompt 512 {t512 * 1e3:.1f} ms\n", flush=True)


def section_throughput(model: torch.nn.Module, n_req: int) -> None:
    rng = random.Random(42)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(32, 512))] for _ in range(n_req)]
    news = [rng.randint(32, 256) for _ in range(n_req)]
    llm, _, _ = make_llm(model, kv_cache_memory=16 << 30, max_num_seqs=256, max_num_batched_tokens=4096)
    eng, alloc, bs = llm.engine, llm.engine.alloc, llm.runner.block_size
    cold = None
    for _ in range(2):  # the first pass is cold (autotuning new shapes, graph captures): reported, then timed again
        alloc.reset_prefix_cache()
        util, peak = [], 0.0
        first: dict[str, float] = {}
        t0 = sync_time()
        ids = [eng.add_request(p, greedy(m)) for p, m in zip(prompts, news)]
        while eng.has_unfinished():
            got = eng.step()
            now = time.perf_counter()
            for r in got:
                first.setdefault(r, now - t0)
            live = sum(alloc.sequence(s.seq_id).num_tokens for s in eng.scheduler.running if s.seq_id in alloc)
            used = alloc.num_used_blocks
            if used:
                util.append(live / (used * bs))
                peak = max(peak, alloc.usage)
        if cold is None:
            cold = sync_time() - t0
            for r in ids:
                eng.release(r)
    dt = sync_time() - t0
    total = sum(len(eng.output(r).outputs[0].token_ids) for r in ids)
    assert total == sum(news), (total, sum(news))
    kiln_tps = total / dt
    stats = llm.stats
    free(llm)
    _, hsec = peers.hf_eager_generate(model, prompts, news, batch_size=32)
    hf_tps = sum(news) / hsec
    print(f"## throughput: {n_req} requests, prompts 32-512, outputs 32-256 ({sum(news)} output tokens), submitted at once\n")
    print("| system | seconds | output tok/s | kiln / system |\n|---|---|---|---|")
    print(f"| kiln.LLM | {dt:.1f} | {kiln_tps:.0f} | 1.00x |")
    print(f"| kiln.LLM, first (cold) pass: autotuning and graph captures included | {cold:.1f} | {sum(news) / cold:.0f} | - |")
    print(f"| HF generate, eager (batches of 32, sorted by output length) | {hsec:.1f} | {hf_tps:.0f} | {kiln_tps / hf_tps:.1f}x |")
    print(f"\nkiln: mean time to first token {statistics.mean(first.values()):.2f} s (all {n_req} queued at t=0); "
          f"KV-slot utilisation mean {statistics.mean(util) * 100:.1f}% (min {min(util) * 100:.1f}%); "
          f"peak pool use {peak * 100:.1f}% of {alloc.num_blocks} blocks; stats {stats}\n", flush=True)


def section_quant(model: torch.nn.Module, new: int, schemes: tuple[str, ...] = SCHEMES) -> None:
    rng = random.Random(0)
    prompt = [rng.randrange(1, VOCAB) for _ in range(16)]
    rows = []
    base_toks = None
    for scheme in [None if s == "bf16" else s for s in schemes if s != "gpt-fast"]:
        try:
            opts = kiln.CompileOptions(pruning="2:4" if scheme == "2:4" else None, disable_passes=DISABLED)
            kw = {"options": opts} if scheme == "2:4" else {"quantization": scheme, "options": opts}
            llm, build_s, _ = make_llm(model, kv_cache_memory=4 << 30, **kw)
            tps = statistics.median(kiln_decode(llm, prompt, new)[0] for _ in range(3))
            toks = kiln_decode(llm, prompt, new)[1]
            base_toks = toks if scheme is None else base_toks
            same = sum(a == b for a, b in zip(toks, base_toks)) if base_toks else 0
            rows.append((f"kiln {'bf16 2:4 sparse' if scheme == '2:4' else scheme or 'bf16'}", tps, f"build {build_s:.1f} s; {same}/{len(toks)} tokens equal bf16's"))
            free(llm)
        except Exception as e:  # report and go on
            rows.append((f"kiln {scheme}", float("nan"), f"failed: {type(e).__name__}: {str(e)[:100]}"))
    if "gpt-fast" in schemes:
        loop = peers.StaticKVLoop(model, max_len=256, int8=True)
        loop.generate(prompt, new)
        _, sec = loop.generate(prompt, new)
        rows.append(("gpt-fast int8 recipe (dequant in PyTorch, torch.compile)", new / sec, f"first call {loop.first_call_s:.1f} s"))
        free(loop)
    bf16 = next((tps for name, tps, _ in rows if name == "kiln bf16"), float("nan"))  # ratios need the bf16 row
    print(f"## quantized batch-1 decode (prompt 16, {new} new tokens)\n")
    print("| system | tok/s | vs kiln bf16 | note |\n|---|---|---|---|")
    for name, tps, note in rows:
        print(f"| {name} | {tps:.0f} | {tps / bf16:.2f}x | {note} |")
    print(flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sections", nargs="+", default=["decode", "throughput", "quant"])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--shape", default="1b", choices=list(SHAPES))
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES, help="the quant section's rows (bf16 first)")
    p.add_argument("--disable-passes", nargs="*", default=[], help="kiln passes to turn off in the quant section (A/B runs)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    global DISABLED
    DISABLED = frozenset(args.disable_passes)
    model = build(args.shape)
    print(f"kiln LLM bench | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {torch.cuda.get_device_name()} | "
          f"torch {torch.__version__} | transformers {transformers.__version__} | Llama {'1.1B' if args.shape == '1b' else args.shape.upper()} shape, random bf16, greedy\n", flush=True)
    for s in args.sections:
        {"decode": lambda: section_decode(model, args.new), "throughput": lambda: section_throughput(model, args.requests),
         "quant": lambda: section_quant(model, args.new, tuple(args.schemes))}[s]()


if __name__ == "__main__":
    main()
