"""Per-step wall times of kiln.LLM batch-1 decode, to find where `bench/llm.py`'s decode tok/s
(total time of 127 steps) and `bench/decode_profile.py`'s (median step) part.

Llama-1.1B shape by default (random bf16 weights, bench/llm.py's models and warm-up), per scheme: three
128-token decodes after the warm-up; per round the total tok/s, the median step, and every step
slower than twice the median with its position and what the runner did (graph captures).

    python3 bench/step_walls.py [--schemes bf16 int4] [--new 128] [--shape 7b]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

import torch
from llm import VOCAB, build, free, greedy, make_llm


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--schemes", nargs="+", default=["bf16", "int4"])
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--shape", default="1b", help="bench/llm.py's model shapes: 1b | 7b")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    model = build(args.shape)
    prompt = [random.Random(0).randrange(1, VOCAB) for _ in range(16)]
    for scheme in args.schemes:
        llm, _, _ = make_llm(model, kv_cache_memory=4 << 30, quantization=None if scheme == "bf16" else scheme)
        eng, graphs = llm.engine, llm.runner.run
        for rnd in range(3):
            rid = eng.add_request(prompt, greedy(args.new))
            eng.step()
            torch.cuda.synchronize()
            walls, caps = [], []
            while not eng.is_finished(rid):
                n0 = len(getattr(graphs, "graphs", {}))
                t0 = time.perf_counter()
                eng.step()
                torch.cuda.synchronize()
                walls.append(time.perf_counter() - t0)
                caps.append(len(getattr(graphs, "graphs", {})) != n0)
            eng.release(rid)
            med = statistics.median(walls)
            slow = [(i + len(prompt) + 1, round(w * 1e3, 2), c) for i, (w, c) in enumerate(zip(walls, caps)) if w > 2 * med]
            print(f"{scheme} round {rnd}: {len(walls) / sum(walls):.0f} tok/s total, median step {med * 1e6:.0f} us "
                  f"({1 / med:.0f} tok/s); slow steps (position, ms, graph set changed): {slow[:12]}", flush=True)
        free(llm)


if __name__ == "__main__":
    main()
