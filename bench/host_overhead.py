"""Host overhead per call on CPU: a tiny Llama at 1 x 2 tokens, where the ops cost almost nothing.

Prints the plan's calls per run and the median time per call of kiln.compile's callable, of the
plan function alone, and of eager HF (medians of 5 rounds x N calls after warm-up):

    python bench/host_overhead.py [--iters 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import kiln


def per_call(fn: Callable[[], Any], iters: int) -> float:
    for _ in range(50):
        fn()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        rounds.append((time.perf_counter() - t0) / iters)
    return statistics.median(rounds)


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=500, use_cache=False)
    model = LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 500, (1, 2))
    fn = kiln.compile(model)
    with torch.no_grad():
        fn(input_ids=x)
        plan = fn._entries[-1].plan
        whole = per_call(lambda: fn(input_ids=x), args.iters)
        alone = per_call(lambda: plan(x), args.iters)
        eager = per_call(lambda: model(input_ids=x), args.iters)
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | calls per run {plan.calls_per_run}")
    print(f"kiln.compile call {whole * 1e6:.0f} us | plan alone {alone * 1e6:.0f} us "
          f"({alone / plan.calls_per_run * 1e6:.2f} us per call) | eager {eager * 1e6:.0f} us")


if __name__ == "__main__":
    main()
