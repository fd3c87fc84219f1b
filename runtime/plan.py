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
    num_calls: int
    symbol_ranges: dict = field(default_factory=dict)
    device: torch.device | None = None

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


def build_plan(g: Graph, device: torch.device | None = None, symbol_ranges: dict | None = None) -> Plan:
    """Generate the plan function for `g`; `device` is what tensor inputs must live on."""
    from ..ir.interpret import node_call

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

    def dim_code(d: Any) -> str:
        return format_dim(d, lambda s: sym_names[s]) if isinstance(d, sympy.Expr) else str(d)

    def render(item: tuple, n_inputs: list[str]) -> str:
        tag, val = item
        if tag == "in":
            return n_inputs[val]
        if tag == "const":
            return em.const(val)
        if tag == "list":
            return "[" + ", ".join(render(x, n_inputs) for x in val) + "]"
        if isinstance(val, (tuple, list)):
            return "[" + ", ".join(dim_code(d) if isinstance(d, (int, sympy.Expr)) else em.const(d) for d in val) + "]"
        return dim_code(val)

    last_use = _last_uses(g)
    used = {v for vs in last_use.values() for v in vs}
    keep = set(g.outputs)
    k = 0
    for idx, n in enumerate(g.nodes):
        call = node_call(n)
        ins = [names[v] for v in n.inputs]
        args = [render(a, ins) for a in call.args]
        for key, a in call.kwargs:
            if not key.isidentifier():
                raise ValueError(f"keyword {key!r} of {n.op.name} is not an identifier")
            args.append(f"{key}={render(a, ins)}")
        expr = f"{em.bind(call.fn, 'f')}({', '.join(args)})"
        outs = []
        for o in n.outputs:
            names[o] = f"v{k}"
            outs.append(names[o])
            k += 1
        if not outs:
            body.append(expr)
        elif len(outs) == 1:
            body.append(f"{outs[0]} = {expr}")
        else:
            body.append(f"{', '.join(outs)} = {expr}")
        dead = [names[v] for v in last_use.get(idx, ()) if v.kind == "node" and v not in keep]
        dead += [names[o] for o in n.outputs if o not in keep and o not in used]
        if dead:
            body.append("del " + ", ".join(dict.fromkeys(dead)))
    rets = ", ".join(names[v] for v in g.outputs)
    body.append(f"return ({rets}{',' if len(g.outputs) == 1 else ''})")
    src = f"def kiln_plan({', '.join(params)}):\n" + "\n".join("    " + ln for ln in body) + "\n"
    code = compile(src, "<kiln-plan>", "exec")
    exec(code, em.ns)  # noqa: S102 - kiln-made source; objects bound via the namespace only
    return Plan(em.ns["kiln_plan"], src, g, len(g.nodes), dict(ranges), device)


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
