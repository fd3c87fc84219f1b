"""The `kiln` command line: `kiln demo`, `kiln compile`, `kiln report`, `kiln export`, `kiln generate`, `kiln serve`."""

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


def cmd_export(args: argparse.Namespace) -> int:
    """Export a built-in model or a transformers checkpoint directory to ONNX."""
    import os

    import kiln
    from kiln.errors import KilnError

    if os.path.isdir(args.model) or args.model in ("tiny-gpt",):
        model = _load(args.model)
    else:
        from kiln.runtime.builtin import is_builtin, load_builtin

        if not is_builtin(args.model):
            print(f"kiln export: {args.model!r} is neither a directory nor a built-in model (tiny-gpt, tiny-llama)", file=sys.stderr)
            return 2
        model = load_builtin(args.model, dtype="float32").model
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        config.use_cache = False  # the graph takes and returns no cache objects (logits only)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(model, "cfg", None), "vocab_size", 100)
    x = torch.randint(1, vocab, (args.batch, args.seq))
    inputs = {"input_ids": x} if config is not None else (x,)
    options = kiln.CompileOptions(quantization=args.quantization) if args.quantization else None
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_model = kiln.export_onnx(model, inputs, args.out, target=args.target, after_pass=args.after_pass,
                                          opset=args.opset, dynamic=not args.static, options=options)
    except (KilnError, ValueError) as exc:
        print(f"kiln export: {exc}", file=sys.stderr)
        return 1
    ops: dict[str, int] = {}
    for n in onnx_model.graph.node:
        key = f"{n.domain}:{n.op_type}" if n.domain else n.op_type
        ops[key] = ops.get(key, 0) + 1
    ins = ", ".join(i.name for i in onnx_model.graph.input)
    print(f"wrote {args.out} ({len(onnx_model.graph.node)} nodes, opset {args.opset}, target {args.target}, "
          f"inputs: {ins}) in {time.perf_counter() - t0:.2f}s")
    print("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])))
    return 0


def _build_llm(args: argparse.Namespace) -> Any:
    import kiln

    return kiln.LLM(args.model, dtype=args.dtype, device=args.device, max_model_len=args.max_model_len)


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate from one prompt with `kiln.LLM`, printing text to stdout as it is produced."""
    import kiln

    try:
        params = kiln.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                     top_k=args.top_k, min_p=args.min_p, seed=args.seed, stop=args.stop or ())
    except ValueError as exc:
        print(f"kiln generate: {exc}", file=sys.stderr)
        return 2
    llm = _build_llm(args)
    prompt: Any = args.prompt
    if args.chat:
        if llm.tokenizer is None or not getattr(llm.tokenizer, "chat_template", None):
            print(f"kiln generate: model {llm.name!r} has no chat template; drop --chat", file=sys.stderr)
            return 2
        out = llm.tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
        prompt = list(out)
    for delta in llm.stream(prompt, params):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the model over an OpenAI-compatible HTTP API until interrupted."""
    import logging
    import signal
    import threading

    from kiln.runtime.server import OpenAIServer, ServerLimits, is_loopback

    try:
        limits = ServerLimits(max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens_limit, max_n=args.max_n,
                              max_prompt_tokens=args.max_prompt_tokens, max_pending=args.max_pending,
                              max_connections=args.max_connections, socket_timeout_s=args.timeout)
    except ValueError as exc:
        print(f"kiln serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not is_loopback(args.host):
        print(f"kiln serve: WARNING: binding {args.host} makes the server reachable from other machines; "
              "it has no authentication", file=sys.stderr)
    llm = _build_llm(args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the non-loopback warning was printed above
            server = OpenAIServer(llm, host=args.host, port=args.port, limits=limits, model_name=args.served_model_name)
    except OSError as exc:
        print(f"kiln serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"kiln serve: {server.model.name} at {server.url}/v1 (max_model_len {llm.max_model_len}); Ctrl-C stops", flush=True)
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)  # `kill` stops it as cleanly as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    print("kiln serve: stopped", file=sys.stderr)
    return 0


def _add_model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default="tiny-llama", help="a built-in model name or a local HF checkpoint directory (default: tiny-llama)")
    sp.add_argument("--dtype", default=None, help="weights dtype, e.g. float32, bfloat16 (default: the checkpoint's)")
    sp.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sp.add_argument("--max-model-len", type=int, default=None, help="longest prompt + output in tokens (default: the model's)")


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
    e = sub.add_parser("export", help="export a model's kiln graph to ONNX",
                       description="Trace a built-in model or a transformers checkpoint dir, run kiln's passes, write ONNX.")
    e.add_argument("--model", default="tiny-llama", help="tiny-llama, tiny-gpt or a local HF checkpoint directory (default: tiny-llama)")
    e.add_argument("--out", required=True, help="the .onnx file to write (external data, if any, goes beside it)")
    e.add_argument("--batch", type=int, default=2, help="example batch size (default: 2; >= 2 keeps it symbolic)")
    e.add_argument("--seq", type=int, default=16, help="example sequence length (default: 16)")
    e.add_argument("--target", choices=("standard", "onnxruntime"), default="standard",
                   help="standard ONNX ops, or onnxruntime contrib ops where they apply (default: standard)")
    e.add_argument("--after-pass", default=None, help="export the graph after this pass (or 'captured'); default: the final graph")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; fp8 needs >= 19) (default: 18)")
    e.add_argument("--quantization", default=None, help="int8 | int4 | w8a8 | fp8 (default: none)")
    e.add_argument("--static", action="store_true", help="fix every dim at the example's shape instead of named symbolic dims")
    e.set_defaults(func=cmd_export)
    g = sub.add_parser("generate", help="generate text from a prompt, streamed to stdout",
                       description="Generate from one prompt with kiln.LLM and print the text as it is produced.")
    _add_model_args(g)
    g.add_argument("--prompt", required=True, help="the prompt text")
    g.add_argument("--chat", action="store_true", help="send the prompt as one user message through the chat template")
    g.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most (default: 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: 0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0, off)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (default: 0, off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability (default: 0, off)")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    g.set_defaults(func=cmd_generate)
    v = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve /v1/completions, /v1/chat/completions (SSE streaming), /v1/models and /health. "
                                   "Binds 127.0.0.1 unless --host says otherwise; every request is bounded (4xx beyond).")
    _add_model_args(v)
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; others warn: no authentication)")
    v.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    v.add_argument("--served-model-name", default=None, help="the model id clients send and /v1/models lists (default: --model)")
    v.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for (default: 2048)")
    v.add_argument("--max-n", type=int, default=8, help="largest n (samples per prompt) (default: 8)")
    v.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt in tokens (default: max_model_len - 1)")
    v.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB; 413 beyond)")
    v.add_argument("--max-pending", type=int, default=64, help="requests in the engine at once (default: 64; 503 beyond)")
    v.add_argument("--max-connections", type=int, default=64, help="open connections (default: 64; 503 beyond)")
    v.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds for a silent client (default: 30)")
    v.add_argument("--quiet", action="store_true", help="no access log")
    v.set_defaults(func=cmd_serve)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
