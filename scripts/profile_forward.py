"""Top CUDA kernels of one forward: kiln (no CUDA graphs, so kernels are visible) vs eager.

    python3 scripts/profile_forward.py [gpt2|llama] [BxS]
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import kiln
from kiln.ir.opset import nn as kiln_nn

sys.path.insert(0, "bench")
from gpu_forward import build  # noqa: E402


def top(fn, ids: torch.Tensor, title: str) -> None:  # noqa: ANN001
    with torch.no_grad():
        for _ in range(3):
            fn(input_ids=ids)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(input_ids=ids)
            torch.cuda.synchronize()
    print(f"== {title}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))


def main() -> None:
    warnings.simplefilter("ignore")
    name = sys.argv[1] if len(sys.argv) > 1 else "gpt2"
    b, s = (int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "16x512").split("x"))
    model = build(name)
    ids = torch.randint(1, 32000, (b, s)).cuda()
    fn = kiln.compile(model, options=kiln.CompileOptions(cuda_graphs=False))
    top(fn, ids, f"kiln {name} {b}x{s}")
    print("causal masks noted:", [v[1] for v in kiln_nn._CAUSAL.values()])
    print("ops:", fn.graph.op_counts())
    top(model, ids, f"eager {name} {b}x{s}")


if __name__ == "__main__":
    main()
