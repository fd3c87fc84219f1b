"""Size / accuracy / CPU speed of compression variants of the trained tiny Llama.

Trains the tiny Llama of `kiln.models.trained_tiny` on tests/data/corpus.txt (~10 s, one core),
scans per-layer int4 / int8 sensitivity on 4 x 64 training-text tokens, proposes a mixed plan
under a KL budget (verified on the same tokens), then prints `kiln.compression_report` over the
held-out ids for: fp32, int8, int4 g32, w8a8, unstructured 50% pruning, 2:4 pruning and the
mixed plan. Latencies are medians of the compiled forward at 1 x 64 tokens, all variants
interleaved: a report of this machine, not a claim.

Run from the repo root:  .venv/bin/python bench/compression.py [--budget 0.002] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import time
import warnings
from pathlib import Path

import torch

import kiln
from kiln.models.trained_tiny import train_tiny_lm
from kiln.passes import PruneScheme, QuantScheme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.002, help="mixed plan's KL budget (nats, mean per position)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    text = (Path(__file__).resolve().parent.parent / "tests" / "data" / "corpus.txt").read_text(encoding="utf-8")
    t0 = time.perf_counter()
    lm = train_tiny_lm(text, steps=200, seed=0)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    torch.set_num_threads(args.threads)
    calib = lm.train_ids[: 4 * lm.context].view(4, lm.context)
    t0 = time.perf_counter()
    scan = kiln.sensitivity_scan(lm.model, calib, schemes=("int4", "int8"))
    plan = kiln.propose_plan(scan, error_budget=args.budget)
    print(f"scan + plan in {time.perf_counter() - t0:.1f} s\n\n{scan.to_markdown()}\n{plan.to_markdown()}")
    variants = {
        "fp32": None, "int8": "int8", "int4 g32": QuantScheme(weights="int4", group_size=32), "w8a8": "w8a8",
        "prune 50%": PruneScheme(sparsity=0.5), "2:4": PruneScheme(pattern="2:4"), "mixed plan": plan.scheme,
    }
    t0 = time.perf_counter()
    report = kiln.compression_report(lm.model, lm.heldout_ids, variants, window=lm.context, iters=args.iters, rounds=args.rounds)
    print(f"compression report in {time.perf_counter() - t0:.1f} s, {datetime.date.today()}, torch {torch.__version__}\n")
    print(report.to_markdown())


if __name__ == "__main__":
    main()
