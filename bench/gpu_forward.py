"""Whole-model forward latency on one GPU: eager, torch.compile (default, max-autotune) and kiln.

Random bf16 weights, models built from `transformers` configs (nothing downloaded): a Llama-shaped
1.1B (dim 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32000) and GPT-2 small. Per
workload: first-call seconds and the median of CUDA-event-timed calls after warm-up, all
systems in one process. Run on a GPU machine:

    python3 bench/gpu_forward.py [--models llama gpt2] [--shapes 1x512 16x512] [--systems eager compile kiln]
"""

from __future__ import annotations

import argparse
import datetime
import time
import warnings
from typing import Any, Callable

import torch
import transformers
from probe_common import timed

import kiln


def build(name: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "llama":
        cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                          intermediate_size=5632, vocab_size=32000, use_cache=False)
        model = LlamaForCausalLM(cfg)
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, use_cache=False,
                                           n_positions=2048, bos_token_id=0, eos_token_id=0))
    return model.to("cuda", torch.bfloat16).eval()


def make(system: str, model: torch.nn.Module) -> Callable[..., Any]:
    torch._dynamo.reset()
    if system == "eager":
        return model
    if system == "compile":
        return torch.compile(model)
    if system == "max-autotune":
        return torch.compile(model, mode="max-autotune-no-cudagraphs")
    return kiln.compile(model)


def run(model: torch.nn.Module, system: str, ids: torch.Tensor, iters: int) -> tuple[float, float, torch.Tensor]:
    fn = make(system, model)
    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(input_ids=ids).logits
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        for _ in range(3):
            fn(input_ids=ids)
        ms = timed(lambda: fn(input_ids=ids), iters)
    return first, ms, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["llama", "gpt2"])
    p.add_argument("--shapes", nargs="+", default=["1x512", "1x2048", "16x512"])
    p.add_argument("--systems", nargs="+", default=["eager", "compile", "max-autotune", "kiln"])
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    print(f"kiln gpu forward | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} | {torch.cuda.get_device_name()} | "
          f"torch {torch.__version__} | transformers {transformers.__version__} | bf16, median of {args.iters} event-timed calls\n")
    cols = [f"{s} ms (first s)" for s in args.systems]
    print("| model | batch x seq | " + " | ".join(cols) + " | kiln vs compile | kiln max rel err vs eager |")
    print("|---|---|" + "---|" * len(cols) + "---|---|")
    for name in args.models:
        model = build(name)
        for shape in args.shapes:
            b, s = (int(v) for v in shape.split("x"))
            ids = torch.randint(1, 32000, (b, s), generator=torch.Generator().manual_seed(1)).cuda()
            res = {}
            for system in args.systems:
                try:
                    res[system] = run(model, system, ids, args.iters)
                except Exception as e:  # a peer failing is a result too
                    res[system] = (float("nan"), float("nan"), None)
                    print(f"  {system} failed on {name} {shape}: {type(e).__name__}: {str(e)[:200]}")
            cells = [f"{res[x][1]:.2f} ({res[x][0]:.1f})" for x in args.systems]
            ratio = res["compile"][1] / res["kiln"][1] if "compile" in res and "kiln" in res else float("nan")
            err = "-"
            if res.get("kiln", (0, 0, None))[2] is not None and res.get("eager", (0, 0, None))[2] is not None:
                k, e = res["kiln"][2].float(), res["eager"][2].float()
                err = f"{((k - e).norm() / e.norm()).item():.1e}"
            print(f"| {name} | {shape} | " + " | ".join(cells) + f" | {ratio:.2f}x | {err} |", flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
