"""The pass manager: runs the pipeline with instruments and shows its work.

Instruments (all driven by CompileOptions): verify after each pass, dump numbered IR files
(`003_fold_constants.txt`, with the same graph as `.dot` beside it) after every pass or only after
change, per-pass wall time and the pass's own statistics. A pass that raises (or breaks the verifier) becomes a PassError naming it
and the passes before it, with its input IR written as a reproducer.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..errors import KilnError
from ..ir import Graph, verify
from ..ir.printer import format_graph
from ..options import CompileOptions
from ..viz import write_dot

if TYPE_CHECKING:
    from .calibrate import CalibrationFeed


@dataclass
class PassContext:
    """What a pass may read (options) and write (its statistics counters)."""

    options: CompileOptions
    stats: dict[str, int] = field(default_factory=dict)
    symbol_values: dict = field(default_factory=dict)  # shape symbols at the traced example
    device: object = None  # the target device (inputs' device), when known
    calibration: CalibrationFeed | None = None  # the scheme's calibration examples as graph inputs (quantize_weights)

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


PassFn = Callable[[Graph, PassContext], Graph]


@dataclass(frozen=True)
class Pass:
    name: str  # a verb phrase: fold_constants
    fn: PassFn
    summary: str  # one line

    def __call__(self, g: Graph, ctx: PassContext) -> Graph:
        return self.fn(g, ctx)


def graph_pass(summary: str) -> Callable[[PassFn], Pass]:
    """Decorator: a pure function Graph -> Graph becomes a named Pass."""

    def wrap(fn: PassFn) -> Pass:
        return Pass(fn.__name__, fn, summary)

    return wrap


@dataclass
class PassRecord:
    name: str
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    stats: dict[str, int]
    graph: Graph | None = field(default=None, repr=False)  # the graph after this pass


class PassError(KilnError):
    def __init__(self, name: str, before: list[str], cause: BaseException, reproducer: str):
        self.pass_name, self.before, self.reproducer = name, before, reproducer
        super().__init__(
            f"pass {name!r} failed: {type(cause).__name__}: {cause}\n"
            f"  passes run before it: {', '.join(before) or '(none)'}\n"
            f"  its input IR is saved as a reproducer: {reproducer}"
        )


def run_pipeline(
    g: Graph, passes: list[Pass], options: CompileOptions, dump_dir: str | None = None, prefix: str = "",
    symbol_values: dict | None = None, device: object = None, calibration: CalibrationFeed | None = None,
) -> tuple[Graph, list[PassRecord]]:
    """Run enabled passes in order; returns the final graph and one record per pass run.
    `options.disable_passes` may name any pass of these or of the pipeline (a caller such as
    kiln.LLM runs the pipeline in parts); another name raises ValueError."""
    from .pipeline import PIPELINE  # lazily: pipeline imports this module

    records: list[PassRecord] = []
    enabled = [p for p in passes if p.name not in options.disable_passes]
    known = list(dict.fromkeys(p.name for p in list(passes) + PIPELINE))
    unknown = set(options.disable_passes) - set(known)
    if unknown:
        raise ValueError(f"unknown pass name(s) in disable_passes: {sorted(unknown)}; known: {known}")
    if dump_dir:
        _dump(dump_dir, f"{prefix}000_captured.txt", g)
    for i, p in enumerate(enabled, start=1):
        ctx = PassContext(options, symbol_values=dict(symbol_values or {}), device=device, calibration=calibration)
        t0 = time.perf_counter()
        try:
            out = p(g, ctx)
            if options.verify and out is not g:
                verify(out)
        except Exception as e:
            raise PassError(p.name, [r.name for r in records], e, _reproducer(g, p.name, dump_dir)) from e
        changed = out is not g
        records.append(PassRecord(p.name, changed, time.perf_counter() - t0, len(g.nodes), len(out.nodes), ctx.stats, out))
        if options.print_ir == "always" or (options.print_ir == "after_change" and changed):
            print(f"// ----- IR after {p.name} ({'changed' if changed else 'unchanged'}) -----\n{format_graph(out)}", file=sys.stderr)
        if dump_dir and (changed or options.dump_all_passes):
            _dump(dump_dir, f"{prefix}{i:03d}_{p.name}.txt", out)
        g = out
    return g, records


def _dump(dump_dir: str, name: str, g: Graph) -> None:
    os.makedirs(dump_dir, mode=0o700, exist_ok=True)
    with open(os.path.join(dump_dir, name), "w") as f:
        f.write(format_graph(g, source=True))
    write_dot(dump_dir, name.removesuffix(".txt"), g)  # the same graph as DOT (and SVG with Graphviz)


def _reproducer(g: Graph, name: str, dump_dir: str | None) -> str:
    d = dump_dir or tempfile.mkdtemp(prefix="kiln-repro-")  # mkdtemp makes a private (0700) dir
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, f"reproducer_{name}.txt")
    with open(path, "w") as f:
        f.write(f"# input of pass {name}; parse with kiln.ir.parse_graph\n")
        f.write(format_graph(g, source=True))
    return path
