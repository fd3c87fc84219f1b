"""FX (ATen-level) graph -> kiln Graph.

Shared by the torch.export path and the torch.compile backend. Placeholders become graph inputs
or named constants; SymInt arithmetic becomes sympy dims (no IR nodes); every call goes through a
converter registered on its ATen overload, and an overload without one (or whose converter
declines) becomes an opaque node calling that overload. Traced FX types are the ground truth:
a declared op whose inferred type disagrees with the trace is demoted to opaque, never trusted.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import sympy
import torch
import torch.fx

from ..errors import ConversionError
from ..ir import Graph, SourceInfo, TensorType, Value
from ..ir.aten import attr_from_torch, format_targs, is_tensor_arg, opaque_op
from ..ir.dtypes import from_torch
from ..ir.ops import InferenceError, Op, get_op
from ..ir.symbolic import symbol
from ..ir.types import SymIntType
from ..ir.verifier import _types_equal

Converter = Callable[["Ctx", torch.fx.Node, tuple, dict], Any]
CONVERTERS: dict[Any, Converter] = {}


def converter(*targets: Any) -> Callable[[Converter], Converter]:
    """Register `fn` as the converter of these ATen overloads (one small function per op)."""

    def wrap(fn: Converter) -> Converter:
        for t in targets:
            CONVERTERS[t] = fn
        return fn

    return wrap


class Decline(Exception):
    """A converter's way of saying "not this form": the node becomes opaque instead."""


DROPPED = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "sym_constrain_range", "_assert_async"}


@dataclass
class InputSpec:
    kind: str  # "input" | "const" | "sym"
    name: str
    tensor: torch.Tensor | None = None


@dataclass
class OutputSpec:
    kind: str  # "output" | "mutate" | "literal" (a constant the runtime returns itself)
    target: str = ""  # for "mutate": the constant or input name written


@dataclass
class Imported:
    graph: Graph
    opaque: list[tuple[str, str, str]] = field(default_factory=list)  # (op, node, source)
    symbols: dict = field(default_factory=dict)  # torch shape symbol -> kiln dim


class Ctx:
    """Conversion state for one FX graph."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.env: dict[torch.fx.Node, Any] = {}
        self.symbols: dict[sympy.Symbol, sympy.Expr] = {}  # torch symbol -> kiln expression
        self.fx_node: torch.fx.Node | None = None
        self.opaque: list[tuple[str, str, str]] = []

    # --- values -------------------------------------------------------------------------------
    def dim(self, d: Any) -> Any:
        """A torch int/SymInt as a kiln dim (int or sympy expression over kiln symbols)."""
        if isinstance(d, bool):
            return d
        if isinstance(d, int):
            return d
        if isinstance(d, torch.SymInt):
            return self.expr(d.node.expr)
        if isinstance(d, sympy.Expr):
            return d
        raise ConversionError(f"expected an int or SymInt, got {d!r}")

    def expr(self, e: sympy.Expr) -> Any:
        unknown = [s for s in e.free_symbols if s not in self.symbols]
        if unknown:
            raise Decline(f"shape depends on data-dependent or unknown symbols {unknown}")
        out = _from_torch_sympy(e).xreplace(self.symbols)
        return int(out) if out.is_Integer else out

    def ttype(self, val: Any) -> TensorType:
        if not isinstance(val, torch.Tensor):
            raise Decline(f"expected a tensor value, got {type(val).__name__}")
        return TensorType(from_torch(val.dtype), tuple(self.dim(d) for d in val.shape))

    def out_types(self, node: torch.fx.Node) -> list[TensorType]:
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else [val]
        return [self.ttype(v) for v in vals]

    # --- emitting -----------------------------------------------------------------------------
    def emit(self, op: Op | str, inputs: Sequence[Value], node: torch.fx.Node | None = None, **attrs: Any) -> Any:
        """Add a declared op; its inferred types must equal the trace's (else Decline)."""
        node = node or self.fx_node
        op = get_op(op) if isinstance(op, str) else op
        try:
            n = self.g.add_node(op, inputs, attrs, source=source_info(node))
        except (InferenceError, TypeError) as e:
            raise Decline(f"{op.name}: {e}") from None
        if node is self.fx_node:
            traced = self.out_types(node)
            if len(traced) == len(n.outputs) and not all(_types_equal(a, b.type) for a, b in zip(traced, n.outputs)):
                self.g.nodes.pop()
                raise Decline(f"{op.name} inferred {[str(o.type) for o in n.outputs]} but trace says {[str(t) for t in traced]}")
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def value(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(x) for x in a)
        return a


def _from_torch_sympy(e: sympy.Expr) -> sympy.Expr:
    """Replace torch's sympy functions (FloorDiv, PythonMod, ...) with plain sympy."""
    from torch.utils._sympy import functions as F

    table = {
        "FloorDiv": lambda a, b: sympy.floor(a / b), "CleanDiv": lambda a, b: sympy.floor(a / b),
        "PythonMod": sympy.Mod, "Mod": sympy.Mod, "Max": sympy.Max, "Min": sympy.Min,
    }
    for name, fn in table.items():
        cls = getattr(F, name, None)
        if cls is not None and e.has(cls):
            e = e.replace(cls, fn)
    return e


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)')


def source_info(node: torch.fx.Node | None) -> SourceInfo | None:
    if node is None:
        return None
    stack = node.meta.get("stack_trace") or ""
    frames = _FRAME.findall(stack)
    file, line, code = frames[-1] if frames else ("", "0", "")
    mstack = node.meta.get("nn_module_stack") or {}
    module = ""
    if mstack:
        path = list(mstack.values())[-1][0]
        module = re.sub(r"^L\['self'\]\.?|^L__self___?", "", str(path))
    aten = str(node.target) if node.op == "call_function" else ""
    return SourceInfo(file=file, line=int(line), module=module, code=code.strip(), aten=aten)


def _name_symbols(ctx: Ctx, specs: Sequence[InputSpec], placeholders: Sequence[torch.fx.Node]) -> None:
    """Give torch's shape symbols readable kiln names: dim 0 -> B, dim 1 -> S, others D<i>."""
    used: set[str] = set()
    for spec, ph in zip(specs, placeholders):
        val = ph.meta.get("val")
        dims = []
        if spec.kind == "input" and isinstance(val, torch.Tensor):
            dims = list(enumerate(val.shape))
        elif spec.kind == "sym" and isinstance(val, torch.SymInt):
            dims = [(2, val)]
        for i, d in dims:
            if isinstance(d, torch.SymInt) and isinstance(d.node.expr, sympy.Symbol) and d.node.expr not in ctx.symbols:
                base = {0: "B", 1: "S"}.get(i, f"D{i}")
                name, k = base, 1
                while name in used:
                    k += 1
                    name = f"{base}{k}"
                used.add(name)
                ctx.symbols[d.node.expr] = symbol(name)


def import_fx(gm: torch.fx.GraphModule, inputs: Sequence[InputSpec], outputs: Sequence[OutputSpec]) -> Imported:
    """Convert `gm` (ATen-level, functional) to a kiln Graph; see the module docstring."""
    from . import converters  # noqa: F401  (registers the converters)

    g = Graph()
    ctx = Ctx(g)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ConversionError(f"{len(placeholders)} placeholders but {len(inputs)} input specs")
    _name_symbols(ctx, inputs, placeholders)
    by_name: dict[str, Value] = {}
    for spec, ph in zip(inputs, placeholders):
        if spec.kind == "const":
            ctx.env[ph] = g.add_constant(spec.name, spec.tensor)
        elif spec.kind == "sym":
            ctx.env[ph] = g.add_input(spec.name, SymIntType(ctx.dim(ph.meta["val"])))
        else:
            ctx.env[ph] = g.add_input(spec.name, ctx.ttype(ph.meta["val"]))
        by_name[spec.name] = ctx.env[ph]
    for node in gm.graph.nodes:
        if node.op == "call_function":
            _convert_call(ctx, node)
        elif node.op == "get_attr":
            t = getattr(gm, node.target)
            ctx.env[node] = g.add_constant(str(node.target), t) if isinstance(t, torch.Tensor) else t
        elif node.op == "output":
            _convert_outputs(ctx, node, outputs, by_name)
    return Imported(g, ctx.opaque, ctx.symbols)


def _convert_call(ctx: Ctx, node: torch.fx.Node) -> None:
    target = node.target
    ctx.fx_node = node
    val = node.meta.get("val")
    if target is operator.getitem:
        base = ctx.env[node.args[0]]
        ctx.env[node] = base[node.args[1]] if isinstance(base, (tuple, list)) else ctx.dim(val)
        return
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)) and not isinstance(val, torch.Tensor):
        # Host scalar arithmetic on shapes (sym_size, operator.mul, ...): a sympy dim, no node.
        ctx.env[node] = ctx.dim(val) if isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool) else val
        return
    name = getattr(target, "__name__", str(target)).split(".")[0]
    if name in DROPPED:
        return
    if not isinstance(target, torch._ops.OpOverload):
        raise ConversionError(f"node {node.name} calls {target}, which is not an ATen op")
    args, kwargs = ctx.value(node.args), {k: ctx.value(v) for k, v in node.kwargs.items()}
    functional = _functional_variant(target)
    if functional is not None and isinstance(args[0], Value):
        _convert_inplace(ctx, node, functional, args, kwargs)
        return
    fn = CONVERTERS.get(target)
    if fn is not None:
        mark = len(ctx.g.nodes)
        try:
            ctx.env[node] = fn(ctx, node, args, kwargs)
            return
        except Decline:
            del ctx.g.nodes[mark:]
    try:
        ctx.env[node] = _opaque(ctx, node, args, kwargs)
    except Decline as e:
        raise ConversionError(f"node {node.name} ({target}) cannot be represented: {e}") from None


def _functional_variant(target: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """`aten.x_.o` -> `aten.x.o` for in-place ops writing their first argument (not copy_)."""
    schema = target._schema
    name = schema.name.split("::")[1]
    if not name.endswith("_") or name == "copy_" or not schema.arguments:
        return None
    alias = schema.arguments[0].alias_info
    if alias is None or not alias.is_write:
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    return getattr(packet, target._overloadname, None) if packet is not None else None


def _convert_inplace(ctx: Ctx, node: torch.fx.Node, functional: torch._ops.OpOverload, args: tuple, kwargs: dict) -> None:
    """Functionalise `dst.op_(...)`: new = op(dst, ...); copy_to(dst, new); later reads see new."""
    dst = args[0]
    inplace, node.target = node.target, functional
    try:
        fn = CONVERTERS.get(functional)
        new = None
        if fn is not None:
            mark = len(ctx.g.nodes)
            try:
                new = fn(ctx, node, args, kwargs)
            except Decline:
                del ctx.g.nodes[mark:]
        if new is None:
            new = _opaque(ctx, node, args, kwargs)
    finally:
        node.target = inplace
    write_back(ctx, dst, new)
    ctx.env[node] = new


def write_back(ctx: Ctx, dst: Value, new: Value) -> None:
    """Make every later read of `dst` read `new`; when dst is persistent state (a buffer or an
    input, or a view of one) also write `new` into it with an explicit `copy_to`."""
    if _persistent(dst):
        ctx.g.add_node("copy_to", [dst, new], source=source_info(ctx.fx_node))
    for k, v in list(ctx.env.items()):
        if v is dst:
            ctx.env[k] = new


def _persistent(v: Value) -> bool:
    """Whether writing v changes state that outlives the call (walks back through views)."""
    while v.kind == "node" and v.node.op.category == "view" and v.node.inputs:
        v = v.node.inputs[0]
    return v.kind in ("const", "input")


def _opaque(ctx: Ctx, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    """A node calling the ATen overload itself: tensors as inputs, the rest as attributes."""
    overload: torch._ops.OpOverload = node.target  # type: ignore[assignment]
    op = opaque_op(overload)
    schema = overload._schema
    bound = _bind(schema, args, kwargs)
    inputs: list[Value] = []
    layout: list = []
    attrs: dict[str, Any] = {}
    for a in schema.arguments:
        v = bound.get(a.name, _MISSING)
        if is_tensor_arg(a):
            if isinstance(v, (list, tuple)):
                layout.append([x is not None for x in v])
                inputs += [x for x in v if x is not None]
            else:
                present = v is not _MISSING and v is not None
                layout.append(present)
                if present:
                    if not isinstance(v, Value):
                        raise ConversionError(f"node {node.name}: argument {a.name} is {v!r}, not a graph tensor")
                    inputs.append(v)
        elif v is not _MISSING:
            attrs[a.name] = _attr_value(ctx, v)
    attrs["targs"] = format_targs(layout)
    val = node.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else [val] if val is not None else []
    if any(not isinstance(x, torch.Tensor) for x in vals):
        raise ConversionError(f"node {node.name} ({overload}) returns non-tensor values; kiln cannot represent it")
    types = [ctx.ttype(x) for x in vals]
    try:
        n = ctx.g.add_node(op, inputs, attrs, out_types=types, source=source_info(node))
    except TypeError as e:
        raise Decline(str(e)) from None
    info = n.source
    ctx.opaque.append((op.name, node.name, f"{info.file}:{info.line}" if info and info.file else ""))
    if isinstance(val, (tuple, list)):
        return n.outputs
    return n.outputs[0] if n.outputs else None


_MISSING = object()


def _bind(schema: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    out = {}
    positional = [a for a in schema.arguments if not a.kwarg_only]
    for a, v in zip(positional, args):
        out[a.name] = v
    out.update(kwargs)
    return out


def _attr_value(ctx: Ctx, v: Any) -> Any:
    if isinstance(v, (torch.SymFloat, torch.SymBool)):
        raise Decline("symbolic float/bool arguments are not supported")
    return attr_from_torch(v, ctx.dim)


def _convert_outputs(ctx: Ctx, node: torch.fx.Node, outputs: Sequence[OutputSpec], by_name: dict[str, Value]) -> None:
    results = node.args[0]
    results = list(results) if isinstance(results, (tuple, list)) else [results]
    if len(results) != len(outputs):
        raise ConversionError(f"graph returns {len(results)} values but {len(outputs)} output specs")
    ctx.fx_node = None
    for spec, r in zip(outputs, results):
        if spec.kind == "literal":
            continue
        v = ctx.value(r)
        if spec.kind == "mutate":
            dst = by_name[spec.target]
            ctx.g.add_node("copy_to", [dst, v], source=SourceInfo(module=spec.target))
        else:
            if not isinstance(v, Value):
                raise ConversionError(f"graph output {r!r} is not a tensor value")
            ctx.g.outputs.append(v)
