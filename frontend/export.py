"""Whole-graph capture through torch.export, for ahead-of-time use.

One export trace (PyTorch's training IR, functional ATen) is converted straight into kiln IR:
ops kiln declares (linear, layer_norm, SDPA, ...) are taken as they are rather than decomposed
and re-fused; `decompose=True` additionally runs PyTorch's core decompositions for every op
kiln does not convert (a second trace, ~1 s on a small model). Parameters and buffers become
named constants; buffer and input mutations become explicit `copy_to` nodes.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch.utils import _pytree as pytree

from ..ir import Graph
from .fx_import import CONVERTERS, InputSpec, OutputSpec, import_fx


@dataclass
class Traced:
    """A captured program: the kiln graph plus how to map Python calls onto it."""

    graph: Graph
    in_spec: Any  # pytree spec of (args, kwargs)
    leaf_roles: list[tuple[str, Any]]  # per input leaf: ("input", graph input index) | ("literal", value)
    out_spec: Any
    out_template: list[tuple[str, Any]]  # per output leaf: ("value", graph output index) | ("literal", v)
    symbol_ranges: dict = field(default_factory=dict)
    opaque: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


class _FnModule(torch.nn.Module):
    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _dynamic_shapes(mod: torch.nn.Module, args: tuple, kwargs: dict, dynamic: bool) -> Any:
    """Dim.AUTO for every tensor dim (export keeps a dim symbolic unless the code pins it)."""
    if not dynamic:
        return None
    from torch.export import Dim

    def spec(x: Any) -> Any:
        return {i: Dim.AUTO for i in range(x.dim())} if isinstance(x, torch.Tensor) else None

    sig = inspect.signature(mod.forward)
    bound = sig.bind(*args, **kwargs)
    return {name: pytree.tree_map(spec, val) for name, val in bound.arguments.items()}


def trace_export(target: Any, args: tuple, kwargs: dict, *, dynamic: bool = True, decompose: bool = False) -> Traced:
    """Capture `target` (a module or function) on these example inputs."""
    mod = target if isinstance(target, torch.nn.Module) else _FnModule(target)
    t0 = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(mod, tuple(args), dict(kwargs), dynamic_shapes=_dynamic_shapes(mod, args, kwargs, dynamic))
        if decompose:
            table = torch.export.default_decompositions()
            for op in list(CONVERTERS):
                table.pop(op, None)
            ep = ep.run_decompositions(table)
    t1 = time.perf_counter()
    traced = _from_exported(ep, args, kwargs)
    traced.seconds = {"export": t1 - t0, "convert": time.perf_counter() - t1}
    return traced


def _from_exported(ep: Any, args: tuple, kwargs: dict) -> Traced:
    from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind, SymIntArgument, TensorArgument

    sig = ep.graph_signature
    inputs: list[InputSpec] = []
    user: list[tuple[str, Any]] = []
    n_graph_inputs = 0
    for spec in sig.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            t = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
            inputs.append(InputSpec("const", spec.target, t))
        elif spec.kind == InputKind.USER_INPUT:
            if isinstance(spec.arg, TensorArgument):
                inputs.append(InputSpec("input", spec.arg.name))
                user.append(("input", n_graph_inputs))
                n_graph_inputs += 1
            elif isinstance(spec.arg, SymIntArgument):
                inputs.append(InputSpec("sym", spec.arg.name))
                user.append(("input", n_graph_inputs))
                n_graph_inputs += 1
            elif isinstance(spec.arg, ConstantArgument):
                inputs.append(InputSpec("literal", spec.arg.name))
                user.append(("literal", spec.arg.value))
            else:
                raise NotImplementedError(f"export input {spec.arg} is not supported")
        else:
            raise NotImplementedError(f"export input kind {spec.kind} is not supported")
    gm = ep.graph_module
    _drop_literal_placeholders(gm, inputs)
    inputs = [s for s in inputs if s.kind != "literal"]
    outputs: list[OutputSpec] = []
    out_template: list[tuple[str, Any]] = []
    n_out = 0
    for spec in sig.output_specs:
        if spec.kind == OutputKind.BUFFER_MUTATION:
            outputs.append(OutputSpec("mutate", spec.target))
        elif spec.kind == OutputKind.USER_INPUT_MUTATION:
            outputs.append(OutputSpec("mutate", spec.target))
        elif spec.kind == OutputKind.USER_OUTPUT:
            if isinstance(spec.arg, ConstantArgument):
                outputs.append(OutputSpec("literal"))
                out_template.append(("literal", spec.arg.value))
            else:
                outputs.append(OutputSpec("output"))
                out_template.append(("value", n_out))
                n_out += 1
        else:
            raise NotImplementedError(f"export output kind {spec.kind} is not supported")
    imported = import_fx(gm, inputs, outputs)
    leaves, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    if len(leaves) != len(user):
        raise NotImplementedError(f"export saw {len(user)} user inputs but the call has {len(leaves)} leaves")
    ranges = _ranges(ep, imported)
    return Traced(imported.graph, in_spec, user, ep.call_spec.out_spec, out_template, ranges, imported.opaque)


def _drop_literal_placeholders(gm: Any, inputs: list[InputSpec]) -> None:
    """Constant user inputs were baked in by export; their placeholders have no users."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for spec, ph in zip(inputs, phs):
        if spec.kind == "literal":
            if ph.users:
                raise NotImplementedError(f"constant input {spec.name} is still used in the graph")
            gm.graph.erase_node(ph)


def _ranges(ep: Any, imported: Any) -> dict:
    """Kiln symbol -> (lo, hi) value range export assumed (e.g. S >= 2); guards enforce them."""
    out = {}
    for sym, vr in ep.range_constraints.items():
        kiln_sym = imported.symbols.get(sym)
        if isinstance(kiln_sym, sympy.Symbol):
            lo = int(vr.lower) if getattr(vr.lower, "is_Integer", False) else 1
            hi = int(vr.upper) if getattr(vr.upper, "is_Integer", False) and int(vr.upper) < 2**62 else None
            out[kiln_sym] = (lo, hi)
    return out


__all__ = ["Traced", "trace_export"]
