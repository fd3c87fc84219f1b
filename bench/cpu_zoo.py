"""CPU latency of kiln vs eager PyTorch vs torch.compile (inductor) on a zoo of tiny HF models.

Each model is a small random-weight `transformers` model built from a config (nothing is
downloaded), run in eval mode on a batch of 2 x 32 random token ids. Per model it measures:

- eager: steady-state median latency of `model(**inputs)` under `torch.no_grad()`;
- kiln: seconds of the first call (capture + plan included), steady-state median latency, the
  speed ratio eager/kiln, the capture path, and the max abs difference from eager on the main
  output (logits or last_hidden_state);
- inductor (`torch.compile`, default backend): first-call seconds, steady-state median and the
  ratio eager/inductor; a failure is reported in the table instead of stopping the run.
  Inductor's on-disk caches are disabled, so its first call is a cold compile.

Timed runs are interleaved round-robin (eager, kiln, inductor; --rounds rounds of --iters calls
each) so machine drift affects every runner alike; latencies are medians over all timed calls.

Run from the repo root:  .venv/bin/python bench/cpu_zoo.py [--models gpt2 llama] [--iters 50]
[--rounds 5] [--no-inductor] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch._inductor.config
import transformers

import kiln

BATCH, SEQ, VOCAB = 2, 32, 1000
WARMUP_CALLS, WARMUP_S = 3, 0.25  # after the first call, warm up for at least this many calls and seconds
NOISY = 2.0  # p90/p10 of a runner's timings above which the table gets a note


def build_zoo(seed: int = 0) -> dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
    """{name: (model, example_kwargs)}: tiny random-weight HF models in eval mode, no downloads."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, hidden_size=128, intermediate_size=256)
    configs: dict[str, tuple[Callable[[Any], torch.nn.Module], Any]] = {
        "gpt2": (GPT2LMHeadModel, GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128,
                                             use_cache=False, bos_token_id=1, eos_token_id=2)),
        "llama": (LlamaForCausalLM, LlamaConfig(**common, num_key_value_heads=2, use_cache=False)),
        "bert": (BertModel, BertConfig(**common)),
    }
    zoo = {}
    for name, (cls, config) in configs.items():
        torch.manual_seed(seed)
        model = cls(config).eval()
        input_ids = torch.randint(1, VOCAB, (BATCH, SEQ), dtype=torch.long)
        zoo[name] = (model, {"input_ids": input_ids})
    return zoo


def main_output(out: Any) -> torch.Tensor:
    """The tensor compared against eager: logits, else last_hidden_state, else the first output."""
    for attr in ("logits", "last_hidden_state"):
        if getattr(out, attr, None) is not None:
            return getattr(out, attr)
    return out if isinstance(out, torch.Tensor) else out[0]


def short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:80].replace("|", "/")


class Runner:
    """One way of running a model: first-call time, timed samples, or the reason it failed."""

    def __init__(self, name: str, make: Callable[[], Callable[..., Any]]) -> None:
        self.name, self.make = name, make
        self.fn: Callable[..., Any] | None = None
        self.first_s: float | None = None
        self.samples: list[float] = []
        self.error: str | None = None
        self.output: torch.Tensor | None = None

    def start(self, kwargs: dict[str, torch.Tensor]) -> None:
        try:
            t0 = time.perf_counter()
            fn = self.make()
            with torch.no_grad():
                out = fn(**kwargs)
            self.first_s = time.perf_counter() - t0
            self.output = main_output(out).detach()
            with torch.no_grad():
                t1, n = time.perf_counter(), 0
                while n < WARMUP_CALLS or time.perf_counter() - t1 < WARMUP_S:
                    fn(**kwargs)
                    n += 1
            self.fn = fn
        except Exception as e:  # a benchmark reports failures, it does not stop on them
            self.error = short(e)

    def time(self, kwargs: dict[str, torch.Tensor], iters: int) -> None:
        if self.fn is None:
            return
        try:
            with torch.no_grad():
                for _ in range(iters):
                    t0 = time.perf_counter()
                    self.fn(**kwargs)
                    self.samples.append(time.perf_counter() - t0)
        except Exception as e:
            self.error, self.fn = short(e), None

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples) * 1e3 if self.samples and self.error is None else None

    @property
    def spread(self) -> float:
        """p90 / p10 of the timed calls: near 1 on a quiet machine."""
        if len(self.samples) < 10 or self.error is not None:
            return 1.0
        q = statistics.quantiles(self.samples, n=10)
        return q[-1] / q[0]


def bench_model(model: torch.nn.Module, kwargs: dict[str, torch.Tensor], args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    """One table row for a model, and the spread (p90/p10) of each runner's timings."""
    torch._dynamo.reset()
    compiled: dict[str, Any] = {}

    def make_kiln() -> Callable[..., Any]:
        compiled["kiln"] = kiln.compile(model)
        return compiled["kiln"]

    runners = [Runner("eager", lambda: model), Runner("kiln", make_kiln)]
    if not args.no_inductor:
        runners.append(Runner("inductor", lambda: torch.compile(model)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in runners:
            r.start(kwargs)
        for _ in range(args.rounds):
            for r in runners:
                r.time(kwargs, args.iters)
    spreads = {r.name: r.spread for r in runners}
    eager, kl = runners[0], runners[1]
    if eager.error:
        return [f"eager failed: {eager.error}"], spreads
    row = [f"{eager.median_ms:.2f}"]
    row += cells(kl, eager)
    stats = getattr(compiled.get("kiln"), "stats", None)
    row.append(stats.path if stats is not None and stats.path else "-")
    if kl.output is not None and eager.output is not None and kl.output.shape == eager.output.shape:
        row.append(f"{(kl.output.float() - eager.output.float()).abs().max().item():.1e}")
    else:
        row.append("-" if kl.output is None else f"shape {list(kl.output.shape)}")
    if not args.no_inductor:
        row += cells(runners[2], eager)
    torch._dynamo.reset()
    return row, spreads


def cells(r: Runner, eager: Runner) -> list[str]:
    """first-call s | median ms | eager/r ratio, or a failure message."""
    if r.error is not None or r.median_ms is None:
        return [f"failed: {r.error}", "-", "-"]
    return [f"{r.first_s:.2f}", f"{r.median_ms:.2f}", f"{eager.median_ms / r.median_ms:.2f}x"]


def _ratio(cell: str) -> float | None:
    return float(cell[:-1]) if cell.endswith("x") else None


def summary(rows: list[dict[str, str]], with_inductor: bool) -> str:
    """Geomean speedups over eager, and on how many models kiln beats inductor."""
    kl = [_ratio(r["eager/kiln"]) for r in rows]
    text = f"\ngeomean eager/kiln: {_geomean(kl)}"
    if with_inductor:
        ind = [_ratio(r["eager/inductor"]) for r in rows]
        wins = sum(1 for a, b in zip(kl, ind) if a is not None and (b is None or a > b))
        text += f" | geomean eager/inductor: {_geomean(ind)} | kiln ahead of inductor on {wins} of {len(rows)} models"
    return text


def _geomean(xs: list[float | None]) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "-"
    prod = 1.0
    for x in vals:
        prod *= x
    return f"{prod ** (1 / len(vals)):.2f}x" + ("" if len(vals) == len(xs) else f" (of {len(vals)} that ran)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help="subset of: gpt2 llama bert")
    p.add_argument("--iters", type=int, default=50, help="timed calls per runner per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch._inductor.config.force_disable_caches = True  # first-call seconds are cold compiles, not cache hits

    zoo = build_zoo()
    names = args.models or list(zoo)
    unknown = [n for n in names if n not in zoo]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(zoo)}")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"kiln cpu zoo | {now} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"cpus {os.cpu_count()} | threads {torch.get_num_threads()} | batch {BATCH}x{SEQ} | "
          f"{args.rounds} rounds x {args.iters} iters, medians\n")
    header = ["model", "eager ms", "kiln first s", "kiln ms", "eager/kiln", "kiln path", "kiln max abs diff"]
    if not args.no_inductor:
        header += ["inductor first s", "inductor ms", "eager/inductor"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    noisy = []
    rows = []
    for name in names:
        model, kwargs = zoo[name]
        row, spreads = bench_model(model, kwargs, args)
        row += ["-"] * (len(header) - 1 - len(row))
        rows.append(dict(zip(header[1:], row)))
        print("| " + " | ".join([name] + row) + " |", flush=True)
        noisy += [f"{name}/{r} {s:.1f}x" for r, s in spreads.items() if s > NOISY]
    print(summary(rows, with_inductor=not args.no_inductor))
    if noisy:
        print(f"\nnote: noisy timings (p90/p10 > {NOISY}): {', '.join(noisy)}; the machine was busy, rerun to confirm.")


if __name__ == "__main__":
    main()
