"""CPU: onnxruntime latency on kiln's ONNX export vs on torch.onnx's export, for the zoo models.

Per model (bench/cpu_zoo.py's tiny random-weight GPT-2, Llama and BERT, batch 2 x 32) it exports
- kiln, target="standard" (standard ops only) and target="onnxruntime" (contrib ops);
- torch.onnx.export with dynamo=True, and if that fails the legacy TorchScript exporter;
each with symbolic batch and sequence dims, opens one onnxruntime CPU session per export
(ORT_ENABLE_ALL, 2 intra-op threads, no spinning) and times `session.run` on the same input ids, interleaved
round-robin with eager PyTorch (--rounds x --iters calls each; medians). The max abs difference
from eager is checked on the main output; a failed export is reported in the table with its
reason instead of stopping the run.

Run from the repo root:  .venv/bin/python bench/onnx_export.py [--models gpt2 llama bert] [--iters 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_zoo import build_zoo, main_output, short  # noqa: E402

import kiln  # noqa: E402


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    # no busy-waiting between runs: spinning ORT threads would steal the 2 cores from the other runners
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def export_torch(model: torch.nn.Module, ids: torch.Tensor, path: str, dynamo: bool) -> None:
    kwargs: dict[str, Any] = {"input_names": ["input_ids"], "opset_version": 18, "dynamo": dynamo}
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("B"), 1: torch.export.Dim("S")},)
    else:
        kwargs["dynamic_axes"] = {"input_ids": {0: "B", 1: "S"}}
    with torch.no_grad():
        torch.onnx.export(model, (ids,), path, **kwargs)


class Entry:
    """One way of running the model: export seconds, timed samples, or why it failed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.run: Callable[[], Any] | None = None
        self.export_s: float | None = None
        self.samples: list[float] = []
        self.diff: float | None = None
        self.error: str | None = None
        self.nodes: int | None = None

    @property
    def ms(self) -> float | None:
        return statistics.median(self.samples) * 1e3 if self.samples else None


def prepare(name: str, model: torch.nn.Module, kw: dict, tmp: str) -> list[Entry]:
    ids = kw["input_ids"]
    with torch.no_grad():
        ref = main_output(model(**kw)).numpy()
    eager = Entry("eager PyTorch")
    eager.run = lambda: model(**kw)
    entries = [eager]
    feeds = {"input_ids": ids.numpy()}

    def add(label: str, do_export: Callable[[str], None]) -> Entry:
        e = Entry(label)
        path = os.path.join(tmp, f"{name}_{len(entries)}.onnx")
        try:
            t0 = time.perf_counter()
            do_export(path)
            e.export_s = time.perf_counter() - t0
            sess = session(path)
            e.diff = float(np.abs(sess.run(None, feeds)[0] - ref).max())
            import onnx

            e.nodes = len(onnx.load(path, load_external_data=False).graph.node)
            e.run = lambda: sess.run(None, feeds)
        except Exception as exc:  # a benchmark reports failures, it does not stop on them
            e.error = short(exc)
        entries.append(e)
        return e

    for target in ("standard", "onnxruntime"):
        add(f"kiln export ({target})", lambda p, t=target: kiln.export_onnx(model, kw, p, target=t))
    dyn = add("torch.onnx (dynamo=True)", lambda p: export_torch(model, ids, p, True))
    if dyn.error:
        add("torch.onnx (legacy)", lambda p: export_torch(model, ids, p, False))
    return entries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["gpt2", "llama", "bert"])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    zoo = build_zoo()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"kiln onnx export bench | {stamp} | torch {torch.__version__} | onnxruntime {ort.__version__} | "
          f"transformers {transformers.__version__} | cpus {os.cpu_count()} | batch 2x32 | {args.rounds} rounds x {args.iters} iters, medians\n")
    print("| model | runner | export s | ONNX nodes | ms | vs eager | max abs diff | note |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models:
            model, kw = zoo[name]
            entries = prepare(name, model, kw, tmp)
            live = [e for e in entries if e.run is not None]
            for e in live:
                for _ in range(5):
                    e.run()
            with torch.no_grad():
                for _ in range(args.rounds):
                    for e in live:
                        for _ in range(args.iters):
                            t0 = time.perf_counter()
                            e.run()
                            e.samples.append(time.perf_counter() - t0)
            base = entries[0].ms
            for e in entries:
                cells = [name, e.name, f"{e.export_s:.2f}" if e.export_s is not None else "",
                         str(e.nodes or ""), f"{e.ms:.3f}" if e.ms else "—",
                         f"{base / e.ms:.2f}x" if e.ms and base else "—",
                         f"{e.diff:.1e}" if e.diff is not None else "", e.error or ""]
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
