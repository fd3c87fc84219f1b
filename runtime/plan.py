"""The compiled plan: one generated straight-line Python function per graph.

The hot path is that function alone: it checks each input's class, dtype, device and shape,
binds the shape symbols, then calls every node's implementation in order and frees each
intermediate after its last use. No graph walking, dict lookups or re-verification per call.

Generated source is built only from identifiers kiln makes (`a0`, `v3`, `f2`, `k5`, `s0`),
integer literals and kiln's own dim grammar; every object (callables, tensors, user-derived
values such as strings) is bound through the function's namespace, never spliced in as code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import sympy
import torch

from ..ir.graph import Graph, Value
from ..ir.symbolic import format_dim
from ..ir.types import SymIntType, TensorType


class GuardMismatch(Exception):
    """An input does not fit the plan. `kind`: type | dtype | device | rank | shape."""

    def __init__(self, index: int, kind: str):
        super().__init__(index, kind)
        self.index, self.kind = index, kind


@dataclass
class Plan:
    fn: Callable[..., tuple]
    source: str
    graph: Graph
    num_calls: int  # PyTorch calls one run makes (fusion-group bodies counted op by op)
    symbol_ranges: dict = field(default_factory=dict)
    device: torch.device | None = None
    cached_nodes: int = 0  # nodes computed once per symbol binding (see build_plan)
    cached_calls: int = 0  # the PyTorch calls those nodes make (fusion-group bodies op by op)
    kernels: int = 0  # fusion groups that run as one generated kernel
    arena: Any = None  # runtime.arena.Arena holding kernel outputs, when there is one
    launched: frozenset[int] = frozenset()  # indices of the graph's nodes run by backend launchers

    def retained(self) -> tuple:
        """Everything a CUDA graph captured over this plan may point to besides its inputs and
        outputs (cached shape-only values, arena storage): graph runners keep it alive."""
        cache = self.fn.__globals__.get("_cache", {})
        return (tuple(cache.values()), self.arena.retained() if self.arena is not None else ())

    @property
    def calls_per_run(self) -> int:
        """PyTorch calls one steady-state run makes (cached shape-only work excluded)."""
        return self.num_calls - self.cached_calls

    def __call__(self, *inputs: Any) -> tuple:
        return self.fn(*inputs)


def _is_literal(v: Any) -> bool:
    if isinstance(v, bool) or v is None:
        return True
    if isinstance(v, int):
        return True
    return isinstance(v, float) and math.isfinite(v)


class _Emitter:
    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"Max": max, "Min": min, "_Tensor": torch.Tensor, "_Mismatch": GuardMismatch}
        self.ids: dict[int, str] = {}
        self.lines: list[str] = []

    def bind(self, obj: Any, prefix: str) -> str:
        key = id(obj)
        if key not in self.ids:
            name = f"{prefix}{len(self.ids)}"
            self.ids[key] = name
            self.ns[name] = obj
        return self.ids[key]

    def const(self, v: Any) -> str:
        return repr(v) if _is_literal(v) else self.bind(v, "k")


def build_plan(
    g: Graph, device: torch.device | None = None, symbol_ranges: dict | None = None, cache_size: int = 8,
    kernel_for: Callable[[Any], Any] | None = None, arena: bool = True,
) -> Plan:
    """Generate the plan function for `g`; `device` is what tensor inputs must live on.

    Nodes that depend only on constants and shape symbols (an HF causal mask built from
    arange/expand/cumsum, say) move into a second generated function whose results are cached
    per symbol binding (at most `cache_size` bindings, oldest dropped first): the hot path does
    one dict lookup instead of re-running them. Values that are graph outputs or are read by
    in-place writes are never cached, so no caller can mutate a cached tensor.

    `kernel_for(node)` (a backend hook) may return a launcher for a node: the plan then calls it
    instead of the node's PyTorch ops. Launchers with `writes_out` take `out=(tensors...)`; with
    `arena` (and a device) their outputs live in a preallocated arena (see runtime.arena).
    """
    em = _Emitter()
    names: dict[Value, str] = {}
    sym_names: dict[sympy.Symbol, str] = {}
    params = [f"a{i}" for i in range(len(g.inputs))]
    body: list[str] = []
    ranges = symbol_ranges or {}
    for i, v in enumerate(g.inputs):
        names[v] = params[i]
        body += _guard(i, v, params[i], em, sym_names, device, ranges)
    for name, v in g.constants.items():
        names[v] = em.bind(g.constant_data[name], "c")
    launchers = [kernel_for(n) if kernel_for is not None else None for n in g.nodes]
    emit = _NodeEmitter(em, names, sym_names, {id(n): f for n, f in zip(g.nodes, launchers) if f is not None})
    cached = _shape_only(g)
    last_use = _last_uses(g)
    used = {v for vs in last_use.values() for v in vs}
    keep = set(g.outputs)
    for n in g.nodes:  # name every result up front, cached or not
        for o in n.outputs:
            names[o] = f"v{len(names)}"
    read_by_main = {v for i, n in enumerate(g.nodes) if i not in cached for v in n.inputs}
    shared = [o for i, n in enumerate(g.nodes) if i in cached for o in n.outputs if o in read_by_main]
    if shared:
        key = "(" + "".join(f"{sname}, " for sname in sym_names.values()) + ")"
        fill = [ln for i, n in enumerate(g.nodes) if i in cached for ln in emit.node(n)]
        fill += _note_cached(g, shared, names, em)
        fill.append(f"_r = ({''.join(names[o] + ', ' for o in shared)})")
        fill.append(f"if len(_cache) >= {int(cache_size)}: del _cache[next(iter(_cache))]")
        fill.append(f"_cache[{key}] = _r")
        fill.append("return _r")
        em.ns["_cache"] = {}
        sym_params = ", ".join(sym_names.values())
        fill_src = f"def kiln_shapes({sym_params}):\n" + "\n".join("    " + ln for ln in fill) + "\n"
        exec(compile(fill_src, "<kiln-plan-shapes>", "exec"), em.ns)  # noqa: S102 - kiln-made source
        body.append(f"_c = _cache.get({key})")
        body.append(f"if _c is None: _c = kiln_shapes({sym_params})")
        body.append(f"{''.join(names[o] + ', ' for o in shared)}= _c")
    else:
        fill_src = ""
    ar = None
    if arena and device is not None:
        ar = _emit_arena(g, launchers, cached, list(sym_names), device, em, emit, body)
    for idx, n in enumerate(g.nodes):
        if idx in cached:
            continue
        body += emit.node(n)
        dead = [names[v] for v in last_use.get(idx, ()) if v.kind == "node" and v not in keep]
        dead += [names[o] for o in n.outputs if o not in keep and o not in used]
        if dead:
            body.append("del " + ", ".join(dict.fromkeys(dead)))
    rets = ", ".join(names[v] for v in g.outputs)
    body.append(f"return ({rets}{',' if len(g.outputs) == 1 else ''})")
    src = f"def kiln_plan({', '.join(params)}):\n" + "\n".join("    " + ln for ln in body) + "\n"
    exec(compile(src, "<kiln-plan>", "exec"), em.ns)  # noqa: S102 - kiln-made source; objects via the namespace
    calls = sum(_calls(n, emit.launched) for n in g.nodes)
    plan = Plan(em.ns["kiln_plan"], fill_src + src, g, calls, dict(ranges), device)
    plan.cached_nodes = len(cached)
    plan.cached_calls = sum(_calls(g.nodes[i], emit.launched) for i in cached)
    plan.kernels = len(emit.launched)
    plan.launched = frozenset(i for i, n in enumerate(g.nodes) if id(n) in emit.launched)
    plan.arena = ar
    return plan


def _emit_arena(g: Graph, launchers: list, cached: set[int], symbols: list, device: Any, em: _Emitter, emit: Any, body: list[str]) -> Any:
    """Bind an Arena for the outputs of `writes_out` launchers and emit the line fetching its
    views for this call's binding; returns the Arena or None when nothing qualifies."""
    from .arena import Arena, arena_values

    writers = [i for i, f in enumerate(launchers) if f is not None and getattr(f, "writes_out", False)]
    launched = {id(n) for n, f in zip(g.nodes, launchers) if f is not None}
    values = arena_values(g, writers, cached, launched)
    if not values:
        return None
    ar = Arena(g, values, symbols, torch.device(device), launched)
    names = [f"r{k}" for k in range(len(values))]
    emit.out_names = dict(zip(values, names))
    body.append(f"{''.join(n + ', ' for n in names)}= {em.bind(ar, 'f')}({', '.join(emit.sym_names[s] for s in symbols)})")
    return ar


class _NodeEmitter:
    """Renders one node as a line of Python over kiln-made names."""

    def __init__(self, em: _Emitter, names: dict[Value, str], sym_names: dict, launchers: dict | None = None):
        self.em, self.names, self.sym_names = em, names, sym_names
        self.launchers = launchers or {}  # id(node) -> the backend's launcher for it
        self.launched: set[int] = set()  # ids of nodes launched as one generated kernel
        self.out_names: dict[Value, str] = {}  # arena-backed outputs -> the name of their view

    def dim(self, d: Any) -> str:
        return format_dim(d, lambda s: self.sym_names[s]) if isinstance(d, sympy.Expr) else str(d)

    def render(self, item: tuple, ins: list[str]) -> str:
        tag, val = item
        if tag == "in":
            return ins[val]
        if tag == "const":
            return self.em.const(val)
        if tag == "list":
            return "[" + ", ".join(self.render(x, ins) for x in val) + "]"
        if isinstance(val, (tuple, list)):
            return "[" + ", ".join(self.dim(d) if isinstance(d, (int, sympy.Expr)) else self.em.const(d) for d in val) + "]"
        return self.dim(val)

    def node(self, n: Any) -> list[str]:
        from ..ir.interpret import node_call

        launcher = self.launchers.get(id(n))
        if launcher is not None:
            self.launched.add(id(n))
            args = [self.names[v] for v in n.inputs]
            if n.outputs and n.outputs[0] in self.out_names:
                args.append(f"out=({''.join(self.out_names[o] + ', ' for o in n.outputs)})")
            call = f"{self.em.bind(launcher, 'f')}({', '.join(args)})"
            return [f"{', '.join(self.names[o] for o in n.outputs)} = {call}"]
        if n.subgraph is not None:
            return self.inline(n)
        call = node_call(n)
        ins = [self.names[v] for v in n.inputs]
        args = [self.render(a, ins) for a in call.args]
        for key, a in call.kwargs:
            if not key.isidentifier():
                raise ValueError(f"keyword {key!r} of {n.op.name} is not an identifier")
            args.append(f"{key}={self.render(a, ins)}")
        expr = f"{self.em.bind(call.fn, 'f')}({', '.join(args)})"
        outs = [self.names[o] for o in n.outputs]
        return [expr if not outs else f"{', '.join(outs)} = {expr}"]


    def inline(self, n: Any) -> list[str]:
        """A fusion group's body, inlined: its values get names `<outer>_<k>` of their own."""
        body = n.subgraph
        inner: dict[Value, str] = dict(zip(body.inputs, (self.names[v] for v in n.inputs)))
        for name, v in body.constants.items():
            inner[v] = self.em.bind(body.constant_data[name], "c")
        prefix = self.names[n.outputs[0]] if n.outputs else f"g{len(self.names)}"
        k = 0
        for m in body.nodes:
            for o in m.outputs:
                inner[o] = f"{prefix}_{k}"
                k += 1
        sub = _NodeEmitter(self.em, inner, self.sym_names)
        last = _last_uses(body)
        keep = set(body.outputs)
        lines: list[str] = []
        for i, m in enumerate(body.nodes):
            lines += sub.node(m)
            dead = [inner[v] for v in last.get(i, ()) if v.kind == "node" and v not in keep]
            if dead:
                lines.append("del " + ", ".join(dict.fromkeys(dead)))
        outs = [self.names[o] for o in n.outputs]
        if outs:
            results = [inner[v] for v in body.outputs]
            lines.append(f"{', '.join(outs)} = {', '.join(results)}")
            temps = [r for r, v in zip(results, body.outputs) if v.kind == "node"]
            if temps:
                lines.append("del " + ", ".join(dict.fromkeys(temps)))
        return lines


def _note_cached(g: Graph, shared: list[Value], names: dict[Value, str], em: _Emitter) -> list[str]:
    """Calls of ops' `note_cached` hooks on the cached values they read (see ir.ops.Op)."""
    cached = set(shared)
    return [
        f"{em.bind(n.op.note_cached, 'f')}({i}, {names[v]})"
        for n in g.nodes if n.op.note_cached is not None
        for i, v in enumerate(n.inputs) if v in cached
    ]


def _calls(n: Any, launched: set[int]) -> int:
    """Calls a node costs per run: a launched fusion group is one kernel, an inlined one its ops."""
    return len(n.subgraph.nodes) if n.subgraph is not None and id(n) not in launched else 1


def _shape_only(g: Graph) -> set[int]:
    """Indices of pure nodes computed from constants and shape symbols alone, excluding any
    whose results are graph outputs or feed a write (and everything downstream of those).
    A buffer some node writes is state, not a constant: its readers run every call."""
    from ..ir.ops import Effect

    banned: set[Value] = set(g.outputs)
    dynamic: set[Value] = set(g.inputs)  # a banned node's results count as dynamic downstream
    for n in g.nodes:
        if n.op.effect is Effect.WRITE:
            banned.update(n.inputs)
            dynamic.update(v for v in n.inputs if v.kind == "const")
    picked: set[int] = set()
    for i, n in enumerate(g.nodes):
        if n.op.effect is not Effect.PURE or not n.outputs or any(v in dynamic for v in n.inputs) or any(o in banned for o in n.outputs):
            dynamic.update(n.outputs)
        else:
            picked.add(i)
    return picked


def _last_uses(g: Graph) -> dict[int, list[Value]]:
    """Node index -> values whose last reader is that node."""
    last: dict[Value, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last[v] = i
    out: dict[int, list[Value]] = {}
    for v, i in last.items():
        out.setdefault(i, []).append(v)
    return out


def _guard(i: int, v: Value, a: str, em: _Emitter, sym_names: dict, device: torch.device | None, ranges: dict) -> list[str]:
    """Checks for input i; binds symbols the first time they appear as a plain dim."""
    lines: list[str] = []
    if isinstance(v.type, SymIntType):
        e = v.type.expr
        if isinstance(e, sympy.Symbol) and e not in sym_names:
            sym_names[e] = f"s{len(sym_names)}"
            lines.append(f"{sym_names[e]} = {a}")
        return lines
    t: TensorType = v.type  # type: ignore[assignment]
    lines.append(f"if not isinstance({a}, _Tensor): raise _Mismatch({i}, 'type')")
    lines.append(f"if {a}.dtype is not {em.bind(t.dtype.torch, 'k')}: raise _Mismatch({i}, 'dtype')")
    if device is not None:
        lines.append(f"if {a}.device != {em.bind(device, 'k')}: raise _Mismatch({i}, 'device')")
    lines.append(f"_sh = {a}.shape")
    lines.append(f"if len(_sh) != {t.rank}: raise _Mismatch({i}, 'rank')")
    later: list[tuple[int, Any]] = []
    for j, d in enumerate(t.shape):
        if isinstance(d, sympy.Symbol) and d not in sym_names:
            sym_names[d] = f"s{len(sym_names)}"
            lines.append(f"{sym_names[d]} = _sh[{j}]")
            lo, hi = ranges.get(d, (1, None))
            cond = [f"{sym_names[d]} < {int(lo)}"] + ([f"{sym_names[d]} > {int(hi)}"] if hi is not None else [])
            lines.append(f"if {' or '.join(cond)}: raise _Mismatch({i}, 'shape')")
        else:
            later.append((j, d))
    for j, d in later:
        if isinstance(d, int):
            lines.append(f"if _sh[{j}] != {d}: raise _Mismatch({i}, 'shape')")
        elif d.free_symbols <= set(sym_names):
            lines.append(f"if _sh[{j}] != {format_dim(d, lambda s: sym_names[s])}: raise _Mismatch({i}, 'shape')")
    return lines
