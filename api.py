"""`kiln.compile`: capture, convert, verify and plan a model; call it like the model.

Capture is torch.export (whole graph, parameters as named constants) on the first call or on
the given example inputs. A call whose inputs fit an existing plan runs it; one whose shapes
fall outside every plan's guards is traced again transparently (counted as a recompile); a wrong
dtype, rank, device or input type is an InputError naming the input. Code torch.export cannot
capture falls back to torch.compile with kiln as its backend (graph breaks run in Python), with
one warning naming the reason and the source line.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from . import debug
from .backends import kernel_hook
from .errors import InputError, KilnError, TraceError, UnsupportedOpsError
from .ir import verify
from .options import CompileOptions
from .runtime.plan import GuardMismatch, Plan, build_plan


@dataclass
class CompileStats:
    path: str = ""  # "export" | "dynamo"
    traces: int = 0
    recompile_reasons: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # of the latest trace
    opaque_ops: dict[str, int] = field(default_factory=dict)
    graphs: list = field(default_factory=list, repr=False)  # every kiln graph captured, in order
    passes: list = field(default_factory=list)  # PassRecords of the latest capture (each keeps its graph)
    captured: Any = field(default=None, repr=False)  # the latest capture's graph before any pass

    @property
    def recompiles(self) -> int:
        return max(0, self.traces - 1)


@dataclass
class _Entry:
    traced: Any
    plan: Plan
    fast_key: tuple | None  # (n_args, kwarg names) when every input is a top-level tensor
    run: Any = None  # plan.fn, or a GraphRunner replaying it as CUDA graphs


class CompiledModule:
    """The callable `kiln.compile` returns; keeps the model's signature and output structure."""

    def __init__(self, target: Any, options: CompileOptions, strict: bool, dump_dir: str | None):
        self.target = target
        self.options = options
        self.strict = strict
        self.dump_dir = dump_dir or debug.DUMP_DIR
        self.stats = CompileStats()
        self._entries: list[_Entry] = []
        self._fallback: Any = None
        self._eager_warned = False

    # --- public views -------------------------------------------------------------------
    @property
    def graph(self) -> Any:
        """The kiln graph of the most recent capture (None before the first call)."""
        return self._entries[-1].traced.graph if self._entries else None

    @property
    def plan(self) -> Plan | None:
        return self._entries[-1].plan if self._entries else None

    # --- calling --------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fallback is not None:
            return self._fallback(*args, **kwargs)
        key = (len(args), tuple(kwargs))
        for entry in self._entries:
            if entry.fast_key == key:
                flat = args + tuple(kwargs.values()) if kwargs else args
                try:
                    return self._run(entry, flat)
                except GuardMismatch as m:
                    self._mismatch(entry, m, flat)
        return self._slow_call(args, kwargs)

    def _run(self, entry: _Entry, inputs: tuple) -> Any:
        with torch.no_grad():
            outs = entry.run(*inputs)
        tr = entry.traced
        if self.options.pipeline_parallel is not None and not tr.graph.outputs:
            return None  # a pipeline stage before the last: its results went to the next stage
        flat = [outs[i] if kind == "value" else i for kind, i in tr.out_template]
        return pytree.tree_unflatten(flat, tr.out_spec)

    def _slow_call(self, args: tuple, kwargs: dict) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        reasons = []
        for entry in self._entries:
            tr = entry.traced
            if spec != tr.in_spec:
                reasons.append("the call's argument structure changed")
                continue
            if any(kind == "literal" and leaves[i] != v for i, (kind, v) in enumerate(tr.leaf_roles)):
                reasons.append("a non-tensor argument changed value")
                continue
            inputs = tuple(leaves[i] for i, (kind, _) in enumerate(tr.leaf_roles) if kind == "input")
            try:
                return self._run(entry, inputs)
            except GuardMismatch as m:
                self._mismatch(entry, m, inputs)
                reasons.append(f"input {self._input_name(entry, m.index)!r} has a shape outside the plan")
        if len(self._entries) > self.options.max_recompiles:
            if not self._eager_warned:
                warnings.warn(f"kiln: more than {self.options.max_recompiles} recompiles; new shapes now run eagerly", stacklevel=3)
                self._eager_warned = True
            with torch.no_grad():
                return self.target(*args, **kwargs)
        if self._entries:
            self.stats.recompile_reasons.append("; ".join(dict.fromkeys(reasons)) or "new input structure")
            debug.log.info("recompiling: %s", self.stats.recompile_reasons[-1])
        entry = self._capture(args, kwargs)
        if entry is None:
            return self._fallback(*args, **kwargs)
        inputs = tuple(leaves[i] for i, (kind, _) in enumerate(entry.traced.leaf_roles) if kind == "input")
        try:
            return self._run(entry, inputs)
        except GuardMismatch as m:  # a fresh plan must accept the inputs it was traced on
            raise KilnError(f"internal error: new plan rejects its own example input {self._input_name(entry, m.index)!r} ({m.kind})") from None

    def _input_name(self, entry: _Entry, index: int) -> str:
        return entry.traced.graph.inputs[index].name

    def _mismatch(self, entry: _Entry, m: GuardMismatch, inputs: tuple) -> None:
        """Shape mismatches try the next plan / a retrace; anything else is the caller's error."""
        if m.kind == "shape":
            return
        v = entry.traced.graph.inputs[m.index]
        got = inputs[m.index]
        desc = f"{type(got).__name__}" if not isinstance(got, torch.Tensor) else f"{str(got.dtype).removeprefix('torch.')} tensor of shape {list(got.shape)} on {got.device}"
        expected = f"{v.type}" + (f" on {entry.plan.device}" if entry.plan.device is not None else "")
        raise InputError(
            f"input {v.name!r}: expected {expected}, got {desc} ({m.kind} mismatch). "
            f"Pass a tensor of the expected {m.kind}, or compile a separate function for this {m.kind}."
        )

    # --- capture ---------------------------------------------------------------------------
    def _capture(self, args: tuple, kwargs: dict) -> _Entry | None:
        from .frontend.export import trace_export

        t0 = time.perf_counter()
        try:
            traced = trace_export(self.target, args, kwargs, dynamic=self.options.dynamic, decompose=self.options.decompose)
        except UnsupportedOpsError:
            raise
        except Exception as e:  # export or conversion failed: each means "cannot capture whole"
            self._use_fallback(e)
            return None
        self._check_opaque(traced)
        if self.options.verify:
            verify(traced.graph)
        from .passes import PIPELINE, run_pipeline

        n = self.stats.traces + 1
        from .ir.interpret import bind_symbols

        example = [leaf for leaf, (kind, _) in zip(pytree.tree_leaves((args, kwargs)), traced.leaf_roles) if kind == "input"]
        symbols = bind_symbols(traced.graph, example)
        self.stats.captured = traced.graph
        traced.graph, self.stats.passes = run_pipeline(
            traced.graph, PIPELINE, self.options, self.dump_dir, prefix=f"trace{n}_", symbol_values=symbols, device=_device_of(args, kwargs),
            calibration=_calibration_feed(self.options, traced),
        )
        t1 = time.perf_counter()
        device = _device_of(args, kwargs)
        plan = build_plan(traced.graph, device, traced.symbol_ranges, kernel_for=kernel_hook(self.options.backend, device), arena=self.options.arena)
        t2 = time.perf_counter()
        self.stats.path = "export"
        self.stats.traces += 1
        self.stats.graphs.append(traced.graph)
        self.stats.seconds = {**traced.seconds, "passes": sum(r.seconds for r in self.stats.passes), "plan": t2 - t1, "total": t2 - t0}
        simple = all(kind == "input" for kind, _ in traced.leaf_roles) and _top_level_tensors(args, kwargs)
        entry = _Entry(traced, plan, (len(args), tuple(kwargs)) if simple else None, plan.fn)
        if self.options.cuda_graphs and device is not None and device.type == "cuda":
            from .runtime.cudagraph import GraphRunner

            entry.run = GraphRunner(plan.fn, retained=plan.retained)
        self._entries.append(entry)
        self._dump(entry)
        debug.log.info("captured %d nodes in %.2fs (%s)", len(traced.graph.nodes), t2 - t0, self.stats.seconds)
        return entry

    def _check_opaque(self, traced: Any) -> None:
        counts = Counter(op for op, _, _ in traced.opaque)
        self.stats.opaque_ops = dict(counts)
        if not counts:
            return
        if self.strict:
            raise UnsupportedOpsError(traced.opaque)
        listing = ", ".join(f"{op} x{n}" for op, n in counts.most_common())
        warnings.warn(f"kiln: {sum(counts.values())} node(s) run through PyTorch without kiln support (fusion barriers): {listing}", stacklevel=4)

    def _use_fallback(self, e: Exception) -> None:
        reason, where = _reason(e)
        if self.options.fullgraph:
            raise TraceError(reason, where) from e
        from .frontend.dynamo import make_backend

        warnings.warn(
            f"kiln: torch.export could not capture the whole model ({reason}{' at ' + where if where else ''}); "
            "falling back to torch.compile with the kiln backend, where graph breaks run in Python.",
            stacklevel=4,
        )
        self.stats.path = "dynamo"
        self._fallback = torch.compile(self.target, backend=make_backend(self.options, self.strict, self.stats), dynamic=self.options.dynamic or None)

    def _dump(self, entry: _Entry) -> None:
        if not self.dump_dir:
            return
        from .ir.printer import format_graph

        os.makedirs(self.dump_dir, mode=0o700, exist_ok=True)
        n = self.stats.traces
        with open(os.path.join(self.dump_dir, f"trace{n}_final.txt"), "w") as f:
            f.write(format_graph(entry.traced.graph, source=True))
        with open(os.path.join(self.dump_dir, f"trace{n}_plan.py"), "w") as f:
            f.write(entry.plan.source)
        from .viz import write_passes_html

        write_passes_html(self.dump_dir, f"trace{n}_", self.stats.captured, self.stats.passes)


def _calibration_feed(options: CompileOptions, traced: Any) -> Any:
    """The quantization scheme's calibration examples (each given as the model is called) as the
    traced graph's flat inputs, or None when the scheme needs no calibration."""
    scheme = options.quantization
    if scheme is None or not scheme.needs_calibration:
        return None
    from .passes.calibrate import CalibrationFeed, flat_inputs

    return CalibrationFeed(tuple(flat_inputs(ex, traced.in_spec, traced.leaf_roles, i) for i, ex in enumerate(scheme.calibration)))


def _top_level_tensors(args: tuple, kwargs: dict) -> bool:
    return all(isinstance(x, torch.Tensor) for x in args) and all(isinstance(x, torch.Tensor) for x in kwargs.values())


def _device_of(args: tuple, kwargs: dict) -> torch.device | None:
    for x in pytree.tree_leaves((args, kwargs)):
        if isinstance(x, torch.Tensor):
            return x.device
    return None


def _reason(e: Exception) -> tuple[str, str]:
    """A one-line reason and the innermost user source line from an export failure."""
    import sys
    import traceback

    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # kiln's own modules by identity (the repository root is the package, so tests and examples
    # live under its directory: a path prefix would hide the user's frame)
    ours = {os.path.abspath(m.__file__) for name, m in list(sys.modules.items())
            if (name == "kiln" or name.startswith("kiln.")) and getattr(m, "__file__", None)}
    where = ""
    for fr in reversed(traceback.extract_tb(e.__traceback__)):
        f = fr.filename
        if "/torch/" not in f and not f.startswith("<") and os.path.abspath(f) not in ours:
            where = f"{f}:{fr.lineno}"
            break
    return f"{type(e).__name__}: {msg}"[:300], where


def compile(
    model_or_fn: Any,
    example_inputs: Any = None,
    *,
    options: CompileOptions | None = None,
    strict: bool = False,
    dump_dir: str | None = None,
) -> CompiledModule:
    """Compile a module or function for inference; see the module docstring.

    `example_inputs`: a tuple of positional args, a dict of keyword args, or one tensor; when
    given, capture happens now instead of on the first call.
    """
    if not callable(model_or_fn):
        raise TypeError(f"kiln.compile needs a module or function, got {type(model_or_fn).__name__}")
    fn = CompiledModule(model_or_fn, options or CompileOptions(), strict, dump_dir)
    if example_inputs is not None:
        args, kwargs = _split_inputs(example_inputs)
        fn._capture(args, kwargs)
    return fn


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}
