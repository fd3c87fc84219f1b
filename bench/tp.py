"""Tensor-parallel scaling of kiln.LLM on one multi-GPU machine: decode and prefill at TP = 1, 2, 4.

Random bf16 weights in two Llama shapes built from `transformers` configs (nothing downloaded):
1.1B (dim 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632) and Llama-2-7B (dim 4096, 32 layers,
32 heads, 32 KV heads, MLP 11008), vocab 32000. Each model is saved once as safetensors to a temp
directory so every rank loads it itself. Per (shape, TP): batch-1 greedy decode tok/s (128 new
tokens after a 16-token prompt, decode steps only; median of four requests after a first one,
whose range is shown), and prefill throughput (4 prompts x 512 tokens
in one step, tokens/s). Scaling efficiency = speed-up / TP. Bar (issue 7): TP=2 decode of the 7B
shape >= 1.5x TP=1 (gpt-fast reports 1.6x for Llama-2-7B on A100s).

    python3 bench/tp.py [--shapes 1b 7b] [--tp 1 2 4] [--pp 1 2] [--new 128] [--timeout 240] [--all-reduce nccl symm_mem]
Each row runs in its own process under a time limit; KILN_HANG_DUMP_S=60 makes a stuck row print its stacks.
On the device machines keep NVLink multicast off (NCCL_NVLS_ENABLE=0), as their docs require.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

import kiln

SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, intermediate_size=5632),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),  # smoke runs
}
VOCAB = 32000


def save_random(shape: str, directory: str, device: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], vocab_size=VOCAB, max_position_embeddings=2048, torch_dtype="bfloat16")
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def decode_tps(llm: kiln.LLM, new: int, runs: int = 5) -> list[float]:
    """Batch-1 greedy decode tok/s of `runs` requests in turn (the first one also captures the
    CUDA graphs of longer contexts); the table shows their median and range."""
    rng = random.Random(0)
    params = kiln.SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    rates = []
    for _ in range(runs):
        eng = llm.engine
        rid = eng.add_request([rng.randrange(1, VOCAB) for _ in range(16)], params)
        eng.step()  # prefill
        t0 = sync()
        while not eng.is_finished(rid):
            eng.step()
        dt = sync() - t0
        n = len(eng.output(rid).outputs[0].token_ids) - 1
        eng.release(rid)
        rates.append(n / dt)
    return rates


def prefill_tps(llm: kiln.LLM) -> float:
    rng = random.Random(1)
    params = kiln.SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    best = 0.0
    for _ in range(3):
        prompts = [[rng.randrange(1, VOCAB) for _ in range(512)] for _ in range(4)]
        t0 = sync()
        llm.generate(prompts, params)
        best = max(best, 4 * 512 / (sync() - t0))
    return best


def step_breakdown(llm: kiln.LLM, steps: int = 48) -> None:
    """Where rank 0's batch-1 decode step goes: host timers around the step message, the local
    launch and the whole step (no profiler running), then a second run under the profiler for the
    top kernels and host calls per step; printed as BREAKDOWN lines (`--breakdown`)."""
    from torch.profiler import ProfilerActivity, profile

    eng, runner = llm.engine, llm.runner
    spent = {"send": 0.0, "launch": 0.0, "step": 0.0}
    group, local = getattr(llm, "_tp", None), getattr(runner, "local", runner)

    def timed(obj: object, name: str, key: str) -> None:
        fn = getattr(obj, name)

        def wrapper(*a: object, **k: object) -> object:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        setattr(obj, name, wrapper)

    def decode(n: int) -> int:  # n decode steps after an 8-step warm-up; the timers count only those
        rid = eng.add_request(list(range(1, 17)), kiln.SamplingParams(max_tokens=n + 8, temperature=0.0, ignore_eos=True))
        for _ in range(8):
            eng.step()
        for k in spent:
            spent[k] = 0.0
        done = 0
        while not eng.is_finished(rid):
            t = sync()
            eng.step()
            spent["step"] += sync() - t
            done += 1
        eng.release(rid)
        return done

    if group is not None:
        timed(group, "send", "send")
    timed(local, "execute", "launch")
    n = decode(steps)
    us = {k: v / n * 1e6 for k, v in spent.items()}
    print(f"BREAKDOWN per decode step over {n} steps (us, rank 0 host, no profiler): step {us['step']:.0f} | "
          f"step message {us['send']:.0f} | launch (args + replay) {us['launch']:.0f} | rest (wait for logits, "
          f"sampling, scheduling) {us['step'] - us['send'] - us['launch']:.0f}", flush=True)
    if not torch.cuda.is_available():
        return
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        n = decode(steps)
    events = prof.key_averages()
    gpu = sorted((e for e in events if e.device_time_total > 0), key=lambda e: -e.device_time_total)[:16]
    cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    print("BREAKDOWN GPU per step: " + "; ".join(f"{e.key[:48]} x{e.count / n:.0f} {e.device_time_total / n:.0f}us" for e in gpu), flush=True)
    print("BREAKDOWN host per step (profiled): " + "; ".join(f"{e.key[:40]} x{e.count / n:.0f} {e.self_cpu_time_total / n:.0f}us" for e in cpu), flush=True)


def measure(shape: str, tp: int, directory: str, new: int, device: str, all_reduce: str = "nccl", pp: int = 1,
            breakdown: bool = False) -> dict:
    """One (shape, TP, PP) configuration, in its own process (a hang or crash costs one row)."""
    from kiln import debug

    debug.arm_hang_dump()
    t0 = time.perf_counter()
    with kiln.LLM(directory, dtype="bfloat16", device=device, tensor_parallel_size=tp, pipeline_parallel_size=pp, max_model_len=2048,
                  kv_cache_memory=0.3 if device == "cuda" else 1 << 30,
                  options=kiln.CompileOptions(all_reduce=all_reduce)) as llm:
        build = time.perf_counter() - t0
        if breakdown:
            step_breakdown(llm)
        rates = decode_tps(llm, new)
        r = {"decode": statistics.median(rates[1:]), "decode_range": (min(rates[1:]), max(rates[1:])), "prefill": prefill_tps(llm), "build": build,
             "graphs": llm.stats["cuda_graphs"], "capture_failure": llm.stats["capture_failure"]}
        print("RESULT " + json.dumps(r), flush=True)  # before the teardown: a slow close loses nothing
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", default=["1b", "7b"], choices=list(SHAPES))
    p.add_argument("--tp", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--pp", nargs="+", type=int, default=[1], help="pipeline stages (rows for every TP x PP that fits)")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--timeout", type=float, default=240, help="seconds one (shape, TP) row may take")
    p.add_argument("--all-reduce", nargs="+", default=["nccl"], choices=["nccl", "symm_mem", "auto"],
                   help="tensor-parallel all-reduce implementations to compare (rows for TP > 1)")
    p.add_argument("--step-channel", nargs="+", default=["auto"], choices=["auto", "shm", "gloo"],
                   help="how rank 0's step messages reach the workers (KILN_STEP_CHANNEL; rows for parallel runs)")
    p.add_argument("--breakdown", action="store_true", help="print where rank 0's decode step goes (host timers, profiler) per row")
    p.add_argument("--one", nargs=5, metavar=("SHAPE", "TP", "PP", "DIR", "ALL_REDUCE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if args.one:
        measure(args.one[0], int(args.one[1]), args.one[3], args.new, args.device, args.one[4], int(args.one[2]), args.breakdown)
        return
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    name = torch.cuda.get_device_name() if gpus else "cpu"
    print(f"kiln TP bench | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {gpus} x {name} | "
          f"torch {torch.__version__}\n")
    print("| shape | TP x PP | all-reduce, step messages | decode tok/s (batch 1; median, range of 4) | decode vs 1 GPU | efficiency | prefill tok/s | prefill vs 1 GPU | build s | rank-0 CUDA graphs |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as d:
            save_random(shape, d, args.device)
            base: dict | None = None
            for tp, pp in [(t, q) for q in args.pp for t in args.tp]:
                for ar, ch in ([(a, c) for a in args.all_reduce for c in args.step_channel] if tp * pp > 1 else [("-", "-")]):
                    label = f"{tp} x {pp}"
                    if args.device == "cuda" and tp * pp > gpus:
                        print(f"| {shape} | {label} | {ar} | skipped: {gpus} GPUs | | | | | | |")
                        continue
                    r, why, tail = run_row(shape, tp, pp, d, "nccl" if ar == "-" else ar, args, ch)
                    ar = ar if ch == "-" else f"{ar}, {ch} steps"
                    if r is None:
                        print(f"| {shape} | {label} | {ar} | {why} | | | | | | |", flush=True)
                        print(tail[-6000:], file=sys.stderr, flush=True)
                        continue
                    base = base or r
                    dec, pre = r["decode"], r["prefill"]
                    lo, hi = r["decode_range"]
                    print(f"| {shape} | {label} | {ar} | {dec:.0f} ({lo:.0f}-{hi:.0f}) | {dec / base['decode']:.2f}x | {dec / base['decode'] / (tp * pp) * 100:.0f}% | "
                          f"{pre:.0f} | {pre / base['prefill']:.2f}x | {r['build']:.1f} | {r.get('graphs', 0)} |", flush=True)
                    if args.breakdown:
                        print("\n".join(ln for ln in tail.splitlines() if "BREAKDOWN" in ln or ln.startswith("kiln rank")), flush=True)
                    if r.get("capture_failure"):
                        print(f"  ({shape} {label} {ar}: capture failed: {r['capture_failure']})", flush=True)


def run_row(shape: str, tp: int, pp: int, directory: str, all_reduce: str,
            args: argparse.Namespace, channel: str = "-") -> tuple[dict | None, str, str]:
    """One row in a child process under the row time limit: (result or None, why not, stderr)."""
    cmd = [sys.executable, __file__, "--one", shape, str(tp), str(pp), directory, all_reduce, "--new", str(args.new), "--device", args.device]
    cmd += ["--breakdown"] if args.breakdown else []
    try:
        env = dict(os.environ, **({"KILN_STEP_CHANNEL": channel} if channel != "-" else {}))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        out, why, tail = proc.stdout, f"failed (exit {proc.returncode})", proc.stderr
    except subprocess.TimeoutExpired as e:
        def text(b: object) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        out, why, tail = text(e.stdout), f"timed out after {args.timeout:.0f} s", text(e.stderr)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if args.breakdown:
        tail = out + tail
    return (json.loads(lines[-1][7:]) if lines else None), why, tail


if __name__ == "__main__":
    main()
