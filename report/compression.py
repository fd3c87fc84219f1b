"""The size / accuracy / speed trade-off of compression variants of one model.

`compression_report(model, eval_ids, variants={"fp32": None, "int8": "int8", ...})` compiles the
model once per variant (`kiln.compile` with that variant's CompileOptions: quantization, pruning or
both), then for each: the bytes the compiled graph stores (all constants, and the linear weights
alone: `report/layers.py`), the fraction of zero linear weights (pruning keeps dense storage),
accuracy vs the eager model on `eval_ids` (`report/accuracy.compare_logits`: top-1 agreement,
KL, perplexity) and the median latency of one compiled forward at a fixed shape, all variants
timed interleaved (`report/measure.time_interleaved`). A report, not a test: the latencies are
whatever this machine gave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..options import CompileOptions
from ..passes import PruneScheme, QuantScheme
from .accuracy import AccuracyReport, compare_logits
from .layers import FLOAT_OPS, layer_rows
from .measure import median_ms, spread, syncer, time_interleaved

Variant = CompileOptions | QuantScheme | PruneScheme | str | None


@dataclass(frozen=True, slots=True)
class VariantRow:
    name: str
    bytes_total: int  # every constant the compiled graph holds (embeddings, norms, linears)
    bytes_linear: int  # the linear weights (codes, scales and zero points when quantized)
    bytes_linear_fp: int  # the same weights in full precision
    zero_fraction: float  # zero entries among float linear weights (pruning keeps them dense)
    accuracy: AccuracyReport
    latency_ms: float
    latency_spread: float | None


@dataclass(frozen=True)
class CompressionReport:
    rows: tuple[VariantRow, ...]
    latency_shape: tuple[int, ...]
    threads: int

    def to_markdown(self) -> str:
        head = ("variant", "all weights KiB", "linear KiB", "linear vs fp", "zeros", "top-1", "KL", "ppl", "Δppl", "max abs Δlogit", "latency ms")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            a = r.accuracy
            lines.append("| " + " | ".join([
                r.name, f"{r.bytes_total / 1024:.1f}", f"{r.bytes_linear / 1024:.1f}", f"{r.bytes_linear / max(r.bytes_linear_fp, 1):.1%}",
                f"{r.zero_fraction:.0%}", f"{a.top1_agreement:.2%}", f"{a.kl_div:.2e}", f"{a.ppl_test:.3f}", f"{a.ppl_increase:+.2%}",
                f"{a.max_abs_err:.3g}", f"{r.latency_ms:.3f}",
            ]) + " |")
        note = (f"Accuracy vs the eager fp32 model over {self.rows[0].accuracy.positions} held-out positions (reference ppl "
                f"{self.rows[0].accuracy.ppl_ref:.3f}); latency: median of one compiled forward at input shape {list(self.latency_shape)}, "
                f"{self.threads} threads, variants interleaved.\n")
        return note + "\n" + "\n".join(lines) + "\n"


def as_options(spec: Variant) -> CompileOptions:
    """CompileOptions for a variant: itself, a quantization (scheme or name), a PruneScheme, or None (fp)."""
    if spec is None:
        return CompileOptions()
    if isinstance(spec, CompileOptions):
        return spec
    if isinstance(spec, PruneScheme):
        return CompileOptions(pruning=spec)
    return CompileOptions(quantization=spec)


def compression_report(
    model: Any, eval_ids: torch.Tensor, variants: Mapping[str, Variant], *, window: int | None = None,
    latency_ids: torch.Tensor | None = None, iters: int = 10, rounds: int = 3,
) -> CompressionReport:
    """Compile `model` per variant and tabulate size, accuracy on `eval_ids` and CPU latency.

    `window`: the accuracy window (default the model's context length); `latency_ids`: the input
    the latency is measured on (default the first `window` ids of `eval_ids` as one sequence).
    """
    from ..api import compile as kiln_compile  # lazily: kiln's top level imports this package lazily too

    model = model.eval()
    fns = {name: kiln_compile(model, options=as_options(spec)) for name, spec in variants.items()}
    accuracy = {name: compare_logits(model, lambda ids, fn=fn: fn(ids), eval_ids, window) for name, fn in fns.items()}
    if latency_ids is None:
        latency_ids = torch.as_tensor(eval_ids)[: window or 64][None]
    samples = time_interleaved({name: (lambda fn=fn: fn(latency_ids)) for name, fn in fns.items()}, iters, rounds, syncer(None))
    rows = tuple(_row(name, fn.graph, accuracy[name], samples[name]) for name, fn in fns.items())
    return CompressionReport(rows, tuple(latency_ids.shape), torch.get_num_threads())


def _row(name: str, g: Any, acc: AccuracyReport, samples: list[float]) -> VariantRow:
    layers = layer_rows(g)
    weights = [g.constant_data[n.inputs[1].name] for n in g.nodes if n.op.name in FLOAT_OPS and n.inputs[1].kind == "const"]
    numel = sum(w.numel() for w in weights if w is not None)
    zeros = sum(int((w == 0).sum()) for w in weights if w is not None)
    return VariantRow(
        name=name, bytes_total=sum(t.nbytes for t in g.constant_data.values() if t is not None),
        bytes_linear=sum(r.bytes for r in layers), bytes_linear_fp=sum(r.bytes_fp for r in layers),
        zero_fraction=zeros / numel if numel else 0.0, accuracy=acc, latency_ms=median_ms(samples), latency_spread=spread(samples),
    )
