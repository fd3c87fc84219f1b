"""Batch-1 (and batched) greedy decode throughput of kiln.LLM on one GPU, HF generate beside it.

Random bf16 weights, a Llama-shaped 1.1B (dim 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632,
vocab 32000) built from a `transformers` config: nothing downloaded. Prompt 16 tokens, 128 new
tokens, greedy, EOS ignored. Peers in the same run: HF `generate` (eager, dynamic cache). The
gpt-fast recipe figures in ../shared/BENCHMARKS.md were measured separately (quoted, not re-run).

    python3 bench/gpu_generate.py [--batch 1 16] [--new 128] [--systems hf kiln]
"""

from __future__ import annotations

import argparse
import datetime
import time
import warnings

import torch
import transformers

import kiln


def build() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    return model


def hf_tokens_per_s(model: torch.nn.Module, prompts: torch.Tensor, new: int) -> tuple[float, list[int]]:
    with torch.no_grad():
        model.generate(prompts, max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(prompts, max_new_tokens=new, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return prompts.shape[0] * new / dt, out[0, prompts.shape[1]:].tolist()


def kiln_tokens_per_s(llm: kiln.LLM, prompts: torch.Tensor, new: int) -> tuple[float, list[int]]:
    params = kiln.SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    ids = prompts.tolist()
    llm.generate(ids, kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))  # warm-up (captures graphs)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate(ids, params)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return sum(len(o.outputs[0].token_ids) for o in outs) / dt, outs[0].outputs[0].token_ids


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--systems", nargs="+", default=["hf", "kiln"])
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    model = build()
    print(f"kiln decode | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {torch.cuda.get_device_name()} | "
          f"torch {torch.__version__} | transformers {transformers.__version__} | prompt {args.prompt}, {args.new} new tokens, greedy\n")
    llm = None
    if "kiln" in args.systems:
        t0 = time.perf_counter()
        llm = kiln.LLM(model, max_model_len=2048, kv_cache_memory=0.5)
        print(f"kiln.LLM build (trace + passes + plan): {time.perf_counter() - t0:.1f} s; {llm.runner.num_blocks} KV blocks of {llm.runner.block_size} tokens\n")
    print("| batch | HF generate tok/s | kiln tok/s | kiln / HF | first 8 tokens agree |")
    print("|---|---|---|---|---|")
    for b in args.batch:
        prompts = torch.randint(1, 32000, (b, args.prompt), generator=torch.Generator().manual_seed(b)).cuda()
        hf = hf_tokens_per_s(model, prompts, args.new) if "hf" in args.systems else (float("nan"), [])
        kn = kiln_tokens_per_s(llm, prompts, args.new) if llm is not None else (float("nan"), [])
        agree = hf[1][:8] == kn[1][:8] if hf[1] and kn[1] else "-"
        print(f"| {b} | {hf[0]:.0f} | {kn[0]:.0f} | {kn[0] / hf[0]:.2f}x | {agree} |", flush=True)
    if llm is not None:
        print(f"\nkiln stats: {llm.stats}")


if __name__ == "__main__":
    main()
