"""ONNX ModelProto -> kiln Graph.

Graph inputs become kiln inputs (a `dim_param` becomes a kiln symbol of that name, an unnamed dim a
fresh one), initializers and `Constant` nodes become named constants, and every node goes through
a converter registered on its op type (`onnx_math.py`, `onnx_tensor.py`). An op with no converter
but a function body in the ONNX standard (LeakyRelu, Selu, HardSwish, ...) is expanded into that
body; anything else is an `OnnxImportError` naming the op type and node.

Values known at import time (initializers, constants, and the shape arithmetic built on `Shape`)
stay on the host as `Host` numpy arrays; integer arrays of dims may hold sympy expressions, so
`Shape -> Gather -> Concat -> Reshape` folds into one `reshape {shape=[B, S, 12, 64]}`. A Host
value becomes a graph constant only where a tensor consumes it. A shape-like argument that is a
graph input (the node tests feed Reshape's shape that way) raises `NeedsInputValue`; callers that
have the input's value re-import with it bound (`bind=`), specialising the graph on it.

Loading from a path checks every external-data location first (see `load_model`): a location that
leaves the model's directory (`../`, absolute, a symlink out) is refused before any byte is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from ..errors import OnnxImportError, UnsafeExternalDataError
from ..ir import Graph, SourceInfo, TensorType, Value
from ..ir.dtypes import DType, by_name, from_torch
from ..ir.ops import InferenceError, Op, get_op
from ..ir.symbolic import symbol

# ONNX TensorProto element type -> kiln dtype name (types kiln cannot hold are absent)
ONNX_DTYPES: dict[int, str] = {
    1: "f32", 2: "u8", 3: "i8", 5: "i16", 6: "i32", 7: "i64", 9: "b8", 10: "f16", 11: "f64", 16: "bf16",
}
_ONNX_NAMES = {
    0: "UNDEFINED", 4: "UINT16", 8: "STRING", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
    17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4",
}
HOST_MAX_ELEMENTS = 4096  # integer values up to this size are evaluated at import time

Converter = Callable[["OnnxCtx", Any, list, dict], Any]
CONVERTERS: dict[str, Converter] = {}
HOST_EVAL: dict[str, Callable[["OnnxCtx", Any, list, dict], Any]] = {}


def onnx_op(*op_types: str) -> Callable[[Converter], Converter]:
    """Register the converter of these ONNX op types (default domain)."""

    def wrap(fn: Converter) -> Converter:
        for t in op_types:
            CONVERTERS[t] = fn
        return fn

    return wrap


def host_op(*op_types: str) -> Callable:
    """Register an import-time evaluation of these op types on Host (small integer) inputs."""

    def wrap(fn: Callable) -> Callable:
        for t in op_types:
            HOST_EVAL[t] = fn
        return fn

    return wrap


def kiln_dtype(elem_type: int, what: str = "") -> DType:
    name = ONNX_DTYPES.get(elem_type)
    if name is None:
        raise OnnxImportError(f"element type {_ONNX_NAMES.get(elem_type, elem_type)}{' of ' + what if what else ''} has no kiln dtype")
    return by_name(name)


@dataclass(frozen=True, eq=False)
class Host:
    """A value known at import time: a numpy array (dtype object when it holds sympy dims)."""

    data: np.ndarray
    dtype: DType

    @property
    def symbolic(self) -> bool:
        return self.data.dtype == object


class NeedsInputValue(OnnxImportError):
    """A graph input decides a shape (Reshape's target, Slice's bounds, ...): the graph can be
    imported only with that input's value bound (`bind={name: array}`)."""

    def __init__(self, name: str, op_type: str, node: str):
        self.input_name = name
        super().__init__(
            f"input {name!r} decides an output shape; kiln needs its value at import time "
            "(make it an initializer, or pass it in `bind`)", op_type, node,
        )


@dataclass
class ImportedOnnx:
    """The kiln graph of an ONNX model plus the names the ONNX side uses for its inputs/outputs."""

    graph: Graph
    input_names: list[str]  # ONNX names of graph.inputs, in order
    output_names: list[str]
    opset: int
    bound: dict[str, np.ndarray] = field(default_factory=dict)  # inputs specialised on their value


class OnnxCtx:
    """Conversion state for one ONNX graph: the kiln graph being built and the ONNX value env."""

    def __init__(self, graph: Graph, opset: int, bound_inputs: set[str]):
        self.g = graph
        self.opset = opset
        self.env: dict[str, Value | Host] = {}
        self.node: Any = None  # the NodeProto being converted
        self.bound_inputs = bound_inputs  # graph inputs given as Host values
        self.input_names: dict[Value, str] = {}  # kiln graph input -> its ONNX name
        self._names: set[str] = set()
        self._fresh = 0

    # --- errors and names -------------------------------------------------------------------
    def error(self, message: str) -> OnnxImportError:
        n = self.node
        return OnnxImportError(message, n.op_type if n is not None else "", (n.name or n.output[0]) if n is not None else "")

    def unique(self, base: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.]", "_", base) or "v"
        if not re.match(r"[A-Za-z_]", name):
            name = "v_" + name
        out, k = name, 1
        while out in self._names:
            k += 1
            out = f"{name}_{k}"
        self._names.add(out)
        return out

    def fresh_symbol(self) -> sympy.Symbol:
        self._fresh += 1
        return symbol(self.unique(f"D{self._fresh}"))

    # --- values -------------------------------------------------------------------------------
    def tensor(self, x: Value | Host) -> Value:
        """A kiln value for `x`: Host arrays become constants (or `full` nodes when symbolic)."""
        if isinstance(x, Value):
            return x
        if x.symbolic:
            return self._materialize_symbolic(x)
        return self.g.add_constant(self.unique("onnx_const"), _to_torch(x.data, x.dtype))

    def _materialize_symbolic(self, x: Host) -> Value:
        items = [self.emit("full", [], shape=(1,), value=_dim(v), dtype=x.dtype) for v in x.data.reshape(-1)]
        flat = items[0] if len(items) == 1 else self.emit("cat", items, dim=0)
        return self.emit("reshape", [flat], shape=tuple(x.data.shape))

    def host(self, x: Value | Host | None, what: str) -> np.ndarray:
        """The import-time value of an argument that decides shapes (Reshape's shape, ...)."""
        if isinstance(x, Host):
            return x.data
        source = _graph_input_behind(x) if x is not None else None
        if source is not None:  # bound on re-import, the value folds on the host
            raise NeedsInputValue(self.input_names.get(source, source.name), self.node.op_type, self.node.name or self.node.output[0])
        raise self.error(f"{what} is computed from data at run time; kiln needs it known at import time")

    def ints(self, x: Value | Host | None, what: str) -> list:
        """A 0/1-dim integer argument as a list of dims (ints or sympy expressions)."""
        return [_dim(v) for v in np.asarray(self.host(x, what)).reshape(-1)]

    def type_of(self, x: Value | Host) -> TensorType:
        if isinstance(x, Host):
            return TensorType(x.dtype, tuple(x.data.shape))
        return x.type

    # --- emitting -----------------------------------------------------------------------------
    def emit(self, op: Op | str, inputs: Sequence[Value | Host], **attrs: Any) -> Any:
        """Add a declared kiln op (outputs: one Value, or a tuple for multi-output ops)."""
        op = get_op(op) if isinstance(op, str) else op
        ins = [self.tensor(x) for x in inputs]
        try:
            n = self.g.add_node(op, ins, attrs, source=self._source())
        except (InferenceError, TypeError) as e:
            raise self.error(f"kiln {op.name} rejects it: {e}") from None
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def aten(self, overload: Any, inputs: Sequence[Value | Host], out_types: Sequence[TensorType] | None = None, **attrs: Any) -> Any:
        """An opaque node calling an ATen overload (tensor arguments in schema order, all present);
        output types are inferred on meta tensors when every input shape is static."""
        from ..ir.aten import format_targs, is_tensor_arg, opaque_op

        ins = [self.tensor(x) for x in inputs]
        if out_types is None:
            out_types = self._meta_types(overload, ins, attrs)
        layout = [True for a in overload._schema.arguments if is_tensor_arg(a)][: len(ins)]
        layout += [False] * (sum(is_tensor_arg(a) for a in overload._schema.arguments) - len(layout))
        try:
            n = self.g.add_node(opaque_op(overload), ins, {"targs": format_targs(layout), **attrs}, out_types=out_types, source=self._source())
        except TypeError as e:
            raise self.error(str(e)) from None
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def _meta_types(self, overload: Any, ins: list[Value], attrs: dict) -> list[TensorType]:
        from ..ir.aten import is_tensor_arg

        if not all(v.type.is_static for v in ins):
            raise self.error("needs static input shapes here (symbolic dims are not supported for this op)")
        it = iter(torch.empty(v.type.shape, dtype=v.type.dtype.torch, device="meta") for v in ins)
        args = [next(it, None) if is_tensor_arg(a) else attrs.get(a.name, a.default_value if a.has_default_value() else None)
                for a in overload._schema.arguments if not a.kwarg_only]
        kwargs = {a.name: attrs[a.name] for a in overload._schema.arguments if a.kwarg_only and a.name in attrs}
        try:
            out = overload(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - PyTorch rejects the arguments
            raise self.error(f"{overload} rejects these arguments: {type(e).__name__}: {e}") from None
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [TensorType(from_torch(t.dtype), tuple(t.shape)) for t in outs]

    def _source(self) -> SourceInfo | None:
        n = self.node
        return SourceInfo(module=n.name, aten=f"onnx::{n.op_type}") if n is not None else None


def _graph_input_behind(v: Value) -> Value | None:
    """A graph input that `v` is computed from (depth-first), or None."""
    seen, stack = set(), [v]
    while stack:
        v = stack.pop()
        if v.kind == "input":
            return v
        if v.kind == "node" and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v.node.inputs)
    return None


def _dim(v: Any) -> Any:
    if isinstance(v, sympy.Expr):
        return int(v) if v.is_Integer else v
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    return int(v)


def _to_torch(a: np.ndarray, dtype: DType) -> torch.Tensor:
    if dtype.name == "bf16":  # numpy has no bfloat16: ONNX arrays arrive as ml_dtypes or raw bits
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).astype(np.int16)).view(torch.bfloat16).clone()
    return torch.from_numpy(np.array(a, dtype=np.dtype(str(dtype.torch).removeprefix("torch.")).type if dtype.name != "b8" else np.bool_))


def host_from_tensor_proto(t: Any, what: str) -> Host:
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    if uses_external_data(t):  # never let numpy_helper resolve a location against the cwd
        raise UnsafeExternalDataError(f"{what} has external data that was not loaded: import the model from its file path")
    dtype = kiln_dtype(t.data_type, what)
    return Host(np.asarray(numpy_helper.to_array(t)), dtype)


def attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded, tensors as Host arrays)."""
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


# --- model loading (external data checked before it is read) ----------------------------------
def load_model(path: str | os.PathLike) -> Any:
    """Load an ONNX file; external data only from files inside the model's own directory."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = os.fspath(path)
    model = onnx.load(path, load_external_data=False)
    base = os.path.dirname(os.path.abspath(path))
    if check_external_data(model, base):
        load_external_data_for_model(model, base)
    return model


def check_external_data(model: Any, base_dir: str) -> bool:
    """Refuse external-data locations outside `base_dir` (`../x`, absolute paths, symlinks that
    resolve outside, non-regular files); returns whether the model has external data at all."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    root = os.path.realpath(base_dir)
    found = False
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        found = True
        loc = ExternalDataInfo(t).location
        if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", loc):
            raise UnsafeExternalDataError(f"tensor {t.name!r}: external data location {loc!r} is not a relative path inside the model directory {root}")
        target = os.path.realpath(os.path.join(root, loc))
        if os.path.commonpath([root, target]) != root:
            raise UnsafeExternalDataError(f"tensor {t.name!r}: external data location {loc!r} resolves to {target}, outside the model directory {root}")
        if not os.path.isfile(target):
            raise UnsafeExternalDataError(f"tensor {t.name!r}: external data file {loc!r} is missing or not a regular file")
    return found


# --- the importer ------------------------------------------------------------------------------
def default_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def onnx_to_graph(model: Any, bind: dict[str, np.ndarray] | None = None) -> ImportedOnnx:
    """Convert a (loaded, external data resolved) ModelProto to a kiln Graph."""
    from onnx import inliner

    from . import onnx_math, onnx_nn, onnx_tensor  # noqa: F401  (register the converters)

    if model.functions:
        model = inliner.inline_local_functions(model)
    opset = default_opset(model)
    bind = dict(bind or {})
    g = Graph()
    ctx = OnnxCtx(g, opset, set(bind))
    gr = model.graph
    inits = {t.name for t in gr.initializer}
    for t in gr.initializer:
        ctx.env[t.name] = host_from_tensor_proto(t, f"initializer {t.name!r}")
    input_names = []
    for vi in gr.input:
        if vi.name in inits:
            continue  # IR < 4 lists initializers as inputs too
        if vi.name in bind:
            dtype = kiln_dtype(vi.type.tensor_type.elem_type, f"input {vi.name!r}")
            ctx.env[vi.name] = Host(np.asarray(bind[vi.name]), dtype)
            continue
        ctx.env[vi.name] = g.add_input(ctx.unique(vi.name), _input_type(ctx, vi))
        ctx.input_names[ctx.env[vi.name]] = vi.name
        input_names.append(vi.name)
    convert_nodes(ctx, gr.node)
    outputs = []
    for vi in gr.output:
        if vi.name not in ctx.env:
            raise OnnxImportError(f"graph output {vi.name!r} is produced by no node")
        outputs.append(vi.name)
        g.outputs.append(ctx.tensor(ctx.env[vi.name]))
    return ImportedOnnx(g, input_names, outputs, opset, bind)


def _input_type(ctx: OnnxCtx, vi: Any) -> TensorType:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise OnnxImportError(f"input {vi.name!r} is not a tensor (sequences, maps and optionals are unsupported)")
    if not tt.HasField("shape"):
        raise OnnxImportError(f"input {vi.name!r} has no shape (rank unknown): give it one in the model")
    dims: list = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            name = re.sub(r"[^A-Za-z0-9_]", "_", d.dim_param)
            dims.append(symbol(name if re.match(r"[A-Za-z_]", name) else "D_" + name))
        else:
            dims.append(ctx.fresh_symbol())
    return TensorType(kiln_dtype(tt.elem_type, f"input {vi.name!r}"), tuple(dims))


def convert_nodes(ctx: OnnxCtx, nodes: Sequence[Any]) -> None:
    for node in nodes:
        ctx.node = node
        if node.domain not in ("", "ai.onnx"):
            raise ctx.error(f"ops of domain {node.domain!r} are unsupported")
        ins = [ctx.env[name] if name else None for name in node.input]
        missing = [name for name in node.input if name and name not in ctx.env]
        if missing:
            raise ctx.error(f"input(s) {missing} are not defined before the node")
        outs = _convert_node(ctx, node, ins)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for name, v in zip(node.output, outs):
            if name:
                ctx.env[name] = v


def _convert_node(ctx: OnnxCtx, node: Any, ins: list) -> Any:
    attrs = attributes(node)
    op_type = node.op_type
    if op_type in HOST_EVAL and _host_ok(ins):
        try:
            return HOST_EVAL[op_type](ctx, node, ins, attrs)
        except _NotOnHost:
            pass
    fn = CONVERTERS.get(op_type)
    if fn is not None:
        return fn(ctx, node, ins, attrs)
    body = _function_body(ctx, node, ins, attrs)
    if body is not None:
        return _expand_function(ctx, node, body, ins)
    raise ctx.error(f"ONNX op {op_type} (opset {ctx.opset}) is not supported by kiln's importer")


class _NotOnHost(Exception):
    """A host evaluation gave up (e.g. a comparison of symbolic dims): convert normally."""


def _host_ok(ins: list) -> bool:
    hosts = [x for x in ins if x is not None]
    return bool(hosts) and all(isinstance(x, Host) and x.data.size <= HOST_MAX_ELEMENTS and x.dtype.name in _HOST_DTYPES for x in hosts)


_HOST_DTYPES = {"i64", "i32", "i16", "i8", "u8", "b8", "f32", "f64"}  # numpy computes these exactly as PyTorch


def _function_body(ctx: OnnxCtx, node: Any, ins: list, attrs: dict) -> Any:
    """The ONNX standard's function body for this op at the model's opset, if it has one."""
    import onnx
    from onnx import defs

    try:
        schema = defs.get_schema(node.op_type, ctx.opset, node.domain)
    except defs.SchemaError:
        return None
    if schema.has_function:
        return schema.function_body
    if schema.has_context_dependent_function:
        types = []
        for x in ins:
            tp = onnx.TypeProto()
            if x is not None:
                t = ctx.type_of(x)
                tp.tensor_type.elem_type = next(k for k, v in ONNX_DTYPES.items() if v == t.dtype.name)
                for d in t.shape:
                    dim = tp.tensor_type.shape.dim.add()
                    if isinstance(d, int):
                        dim.dim_value = d
            types.append(tp.SerializeToString())
        try:
            raw = schema.get_context_dependent_function(node.SerializeToString(), types)
        except Exception:  # noqa: BLE001 - the schema could not build a body for these types
            return None
        fp = onnx.FunctionProto()
        fp.ParseFromString(raw)
        return fp if fp.node else None
    return None


def _expand_function(ctx: OnnxCtx, node: Any, body: Any, ins: list) -> list:
    """Convert a function body in place of `node`: formal names bound to the node's values,
    `ref_attr_name` attributes to the node's attributes (or the op's schema defaults)."""
    import onnx
    from onnx import defs

    schema = defs.get_schema(node.op_type, ctx.opset, node.domain)
    given = {a.name: a for a in node.attribute}
    for name, a in schema.attributes.items():
        if name not in given and a.default_value.type:
            given[name] = a.default_value
    saved = ctx.env
    ctx.env = {formal: actual for formal, actual in zip(body.input, ins) if actual is not None}  # a closed scope
    inner = []
    for n in body.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        del c.attribute[:]
        for a in n.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in given:
                    b = onnx.AttributeProto()
                    b.CopyFrom(given[a.ref_attr_name])
                    b.name = a.name
                    c.attribute.append(b)
            else:
                c.attribute.append(a)
        c.name = f"{node.name or node.op_type}/{n.name or n.op_type}"
        inner.append(c)
    outer = ctx.node
    try:
        convert_nodes(ctx, inner)
        outs = [ctx.env.get(name) for name in body.output]
    finally:
        ctx.env = saved
        ctx.node = outer
    return outs
