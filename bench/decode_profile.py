"""Where a kiln.LLM decode step goes: host phases, GPU time of the replayed graph, kernel table.

Llama-1.1B shape (random bf16 weights, as bench/gpu_generate.py), batch 1 by default. Prints:
the wall time per decode step, the host time of each engine phase (schedule, input build, graph
call, sampling incl. the wait for the GPU, bookkeeping), the GPU time of one CUDA-graph replay
alone (events, median of 200), and the kernels of a few profiled steps by total time.

    python3 bench/decode_profile.py [--batch 1] [--steps 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import defaultdict

import torch
from llm import build  # bench/llm.py: the same random Llama-1.1B

import kiln
from kiln.runtime import engine as engine_mod


class Phases:
    """Wraps engine/runner methods with host timers (no added syncs)."""

    def __init__(self, llm: kiln.LLM):
        self.t: dict[str, list[float]] = defaultdict(list)
        eng, runner = llm.engine, llm.runner
        self._wrap(eng.scheduler, "schedule", "schedule")
        self._wrap(runner, "run", "graph call (copy in, replay, clone)")
        self._wrap(runner, "execute", "execute (build inputs + graph call)")
        self._wrap(engine_mod, "sample", "sample (waits for the GPU)")
        self._wrap(eng, "_append", "append / stop checks")

    def _wrap(self, obj: object, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def timed(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[label].append(time.perf_counter() - t0)

        setattr(obj, name, timed)

    def reset(self) -> None:
        self.t.clear()


def print_prologue_choices() -> None:
    """How the decode step's prologue groups (passes/fuse_prologues.py) run: per prologue kind
    (1 SiLU-mul, 2 RMSNorm, 3 add + RMSNorm), the chosen candidate ("unfused": the prologue first)."""
    import gc
    from collections import Counter

    from kiln.backends.triton.prologue import PrologueLinearLauncher

    picks = Counter((lau.kind, name) for lau in gc.get_objects() if isinstance(lau, PrologueLinearLauncher)
                    for name in lau.choices().values())
    print("prologue groups (kind, choice): count:", dict(sorted(picks.items())))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--quant", default=None, help="int8 | int4 | w8a8 | fp8")
    p.add_argument("--disable-passes", nargs="*", default=[], help="kiln passes to turn off (A/B runs)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    model = build()
    llm = kiln.LLM(model, max_model_len=2048, kv_cache_memory=4 << 30, quantization=args.quant,
                   options=kiln.CompileOptions(disable_passes=frozenset(args.disable_passes)))
    prompts = torch.randint(1, 32000, (args.batch, 16), generator=torch.Generator().manual_seed(0)).tolist()
    warm = kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    llm.generate(prompts, warm)
    llm.generate(prompts, warm)
    run = llm.runner.run  # before the timers wrap it
    print_prologue_choices()
    phases = Phases(llm)
    params = kiln.SamplingParams(max_tokens=args.steps, temperature=0.0, ignore_eos=True)
    eng = llm.engine
    for ids in prompts:
        eng.add_request(ids, params)
    eng.step()  # prefill
    phases.reset()
    torch.cuda.synchronize()
    walls = []
    while eng.has_unfinished():
        t0 = time.perf_counter()
        eng.step()
        walls.append(time.perf_counter() - t0)
    med = statistics.median(walls) * 1e3
    print(f"decode step wall, batch {args.batch}: median {med:.3f} ms ({args.batch / med * 1e3:.0f} tok/s)")
    print("| phase | median us per step |\n|---|---|")
    for label, ts in phases.t.items():
        print(f"| {label} | {statistics.median(ts) * 1e6:.0f} |")

    graphs = getattr(run, "graphs", {})
    print(f"\nCUDA graphs captured: {len(graphs)}")
    if graphs:
        # the decode graph: the signature with the fewest tokens
        sig = min(graphs, key=lambda s: s[0][0][-1] if isinstance(s[0], tuple) else 0)
        graph = graphs[sig][0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(200):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        gpu = statistics.median(times)
        print(f"one graph replay (GPU, events): median {gpu * 1e3:.0f} us; host share of the step {max(med - gpu, 0) * 1e3:.0f} us")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                graph.replay()
            torch.cuda.synchronize()
        rows = defaultdict(lambda: [0, 0.0])
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                r = rows[e.name[:90]]
                r[0] += 1
                r[1] += e.device_time if hasattr(e, "device_time") else e.cuda_time
        total = sum(r[1] for r in rows.values()) / 10
        count = sum(r[0] for r in rows.values()) / 10
        print(f"kernels per step: {count:.0f}, summed kernel time {total:.0f} us (gaps {gpu * 1e3 - total:.0f} us)")
        print("| kernel | per step | us per step |\n|---|---|---|")
        for name, (n, t) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:30]:
            print(f"| {name} | {n / 10:.0f} | {t / 10:.1f} |")


if __name__ == "__main__":
    main()
