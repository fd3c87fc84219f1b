"""The `kiln` command line: `kiln demo`, `kiln compile`, `kiln report`."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Any, Sequence

import torch


def _median_ms(fn: Any, arg: torch.Tensor, iters: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(3):
            fn(arg)
        for _ in range(iters):
            t = time.perf_counter()
            fn(arg)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def cmd_demo(args: argparse.Namespace) -> int:
    """Compile the built-in TinyGPT on CPU, run it at two lengths, check it, time it."""
    import kiln
    from kiln.models import get_model

    model = get_model("tiny-gpt")
    cfg = model.cfg
    print(f"kiln demo: TinyGPT ({cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_heads} heads, vocab {cfg.vocab_size}), random weights, CPU")
    gen = torch.Generator().manual_seed(0)
    fn = kiln.compile(model, dump_dir=args.dump_dir)
    for seq in (args.seq, args.seq + 17):
        x = torch.randint(0, cfg.vocab_size, (args.batch, seq), generator=gen)
        t = time.perf_counter()
        out = fn(x)
        call_s = time.perf_counter() - t
        with torch.no_grad():
            ref = model(x)
        err = (out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
        print(f"  input {list(x.shape)}: call {call_s * 1e3:8.1f} ms   max rel. error vs eager {err:.1e}   traces so far: {fn.stats.traces}")
        if err > 1e-5:
            print("  ERROR: compiled output differs from eager", file=sys.stderr)
            return 1
    g = fn.graph
    s = fn.stats
    print(f"captured via torch.{s.path}: {len(g.nodes)} nodes, {len(g.constants)} named constants, "
          f"{s.recompiles} recompiles; export {s.seconds.get('export', 0):.2f}s, convert {s.seconds.get('convert', 0):.3f}s, "
          f"passes {s.seconds.get('passes', 0):.3f}s, plan {s.seconds.get('plan', 0):.3f}s")
    for r in s.passes:
        detail = ", ".join(f"{k} {v}" for k, v in r.stats.items() if v) or "no change"
        print(f"  pass {r.name:32s} {r.nodes_before:4d} -> {r.nodes_after:4d} nodes  {r.seconds * 1e3:6.1f} ms  ({detail})")
    ops = sorted(g.op_counts().items(), key=lambda kv: -kv[1])
    print("ops: " + ", ".join(f"{k} x{v}" for k, v in ops))
    print(f"opaque (PyTorch fallback) ops: {s.opaque_ops or 'none'}")
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen)
    eager_ms, kiln_ms = _median_ms(model, x, args.iters), _median_ms(fn, x, args.iters)
    print(f"steady state, median of {args.iters}: eager {eager_ms:.3f} ms, kiln {kiln_ms:.3f} ms ({eager_ms / kiln_ms:.2f}x eager)")
    print("first lines of the IR:")
    print("\n".join("  " + ln for ln in str(g).splitlines()[:1] + [ln for ln in str(g).splitlines() if "const" not in ln][1:12]))
    if args.dump_dir:
        print(f"IR and plan source dumped to {args.dump_dir}/")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile a built-in model or a transformers checkpoint directory and print its IR."""
    import kiln

    model = _load(args.model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or getattr(getattr(model, "cfg", None), "vocab_size", 100)
    x = torch.randint(0, vocab, (args.batch, args.seq))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        fn = kiln.compile(model, {"input_ids": x} if hasattr(model, "config") else (x,), strict=args.strict, dump_dir=args.dump_dir)
    print(fn.graph if args.print_ir else f"{len(fn.graph.nodes)} nodes; stats: {fn.stats}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Pass-by-pass report of a model: one measured stage per pass, written to --out."""
    from kiln.report import load_target, pass_report, write_report

    model, inputs, kwargs = load_target(args.model, args.batch, args.seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = pass_report(model, inputs, kwargs, name=args.model, iters=args.iters, rounds=args.rounds, leave_one_out=not args.no_leave_one_out)
    paths = write_report(report, args.out)
    from kiln.report.render import markdown_table, verdict

    print(markdown_table(report))
    print(verdict(report))
    print("wrote " + ", ".join(paths.values()))
    return 0


def _load(name: str) -> Any:
    import os

    from kiln.models import get_model

    if os.path.isdir(name):
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(name)
        cls = AutoModelForCausalLM if getattr(cfg, "is_decoder", False) or cfg.architectures and "CausalLM" in cfg.architectures[0] else AutoModel
        return cls.from_pretrained(name, use_safetensors=True).eval()
    return get_model(name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kiln", description="kiln: a graph compiler for PyTorch inference")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="compile and run the built-in TinyGPT on CPU")
    d.add_argument("--batch", type=int, default=2)
    d.add_argument("--seq", type=int, default=32)
    d.add_argument("--iters", type=int, default=50)
    d.add_argument("--dump-dir", default=None)
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("compile", help="compile a built-in model name or a transformers checkpoint dir")
    c.add_argument("model", nargs="?", default="tiny-gpt")
    c.add_argument("--batch", type=int, default=2)  # >= 2: size-1 dims are specialised
    c.add_argument("--seq", type=int, default=16)
    c.add_argument("--strict", action="store_true")
    c.add_argument("--print-ir", action="store_true")
    c.add_argument("--dump-dir", default=None)
    c.set_defaults(func=cmd_compile)
    r = sub.add_parser("report", help="pass-by-pass benchmark report: MODEL is a built-in name, a checkpoint dir or module:function")
    r.add_argument("model")
    r.add_argument("--out", required=True, help="directory for report.json/.md/.html and the PNG plots")
    r.add_argument("--batch", type=int, default=2)
    r.add_argument("--seq", type=int, default=32)
    r.add_argument("--iters", type=int, default=20, help="timed calls per stage per round")
    r.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    r.add_argument("--no-leave-one-out", action="store_true", help="skip the full-pipeline-minus-one-pass timings")
    r.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
