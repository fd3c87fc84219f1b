"""Opaque ATen ops: any ATen overload without a kiln declaration still runs.

An opaque node calls its overload directly. Its non-tensor arguments become typed attributes
(kinds read from the overload's schema) and its tensor arguments become the node's inputs, in
schema order, with the attribute `targs` recording how they map back: one entry per tensor-like
argument, `t` present, `_` absent (None), `[..]` a list. Opaque nodes are barriers to fusion and
take their output types from the trace.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import torch

from .dtypes import from_torch
from .ops import Attr, AttrKind, Call, Effect, Op

_KINDS = {
    # SymInt reads as "int" in schema types, so integer arguments may hold symbolic dims.
    "int": AttrKind.DIM, "float": AttrKind.FLOAT, "bool": AttrKind.BOOL, "str": AttrKind.STR,
    "number": AttrKind.SCALAR, "Scalar": AttrKind.SCALAR, "ScalarType": AttrKind.DTYPE,
    "Device": AttrKind.DEVICE, "Layout": AttrKind.LAYOUT, "MemoryFormat": AttrKind.MEMORY_FORMAT,
    "int[]": AttrKind.DIMS, "float[]": AttrKind.FLOATS,
}


def _arg_kind(arg: Any) -> tuple[AttrKind, bool]:
    """(attribute kind, optional) of a non-tensor schema argument."""
    t = str(getattr(arg, "real_type", arg.type))
    optional = t.startswith("Optional[")
    if optional:
        t = t[len("Optional["):-1]
    list_of = re.fullmatch(r"List\[(.*)\]", t)
    if list_of:
        t = list_of.group(1) + "[]"
    return _KINDS.get(t, AttrKind.ANY), optional


def is_tensor_arg(arg: Any) -> bool:
    return "Tensor" in str(arg.type)


@functools.lru_cache(maxsize=None)
def opaque_op(overload: torch._ops.OpOverload) -> Op:
    """The opaque kiln op wrapping one ATen overload (made once per overload)."""
    schema = overload._schema
    attrs = [Attr("targs", AttrKind.STR)]
    for a in schema.arguments:
        if is_tensor_arg(a):
            continue
        kind, optional = _arg_kind(a)
        attrs.append(Attr(a.name, kind, None if optional else _default(a), optional=optional or a.has_default_value()))
    writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    random = torch.Tag.nondeterministic_seeded in overload.tags
    effect = Effect.WRITE if writes else Effect.RANDOM if random else Effect.PURE
    return Op(
        name=opaque_name(overload),
        inputs=("*tensors",),
        attrs=tuple(attrs),
        infer=None,
        impl=overload,
        effect=effect,
        category="opaque",
        doc=f"opaque call of {overload}",
        num_outputs=len(schema.returns),
        lower=functools.partial(_lower, overload),
    )


def attr_from_torch(v: Any, dim: Any = None) -> Any:
    """A torch argument value as a kiln attribute value (dtype -> DType, device -> str, ...).

    `dim` converts SymInts (the frontend passes its symbol mapping); lists become tuples.
    """
    if isinstance(v, torch.dtype):
        return from_torch(v)
    if isinstance(v, (torch.layout, torch.memory_format)):
        return str(v).removeprefix("torch.")
    if isinstance(v, torch.device):
        return str(v)
    if isinstance(v, (list, tuple)):
        return tuple(attr_from_torch(x, dim) for x in v)
    if isinstance(v, torch.SymInt) and dim is not None:
        return dim(v)
    return v


def _default(a: Any) -> Any:
    if not a.has_default_value():
        from .ops import _REQUIRED

        return _REQUIRED
    return attr_from_torch(a.default_value)


def opaque_name(overload: torch._ops.OpOverload) -> str:
    return f"aten.{overload._schema.name.split('::')[1]}.{overload._overloadname}"


def opaque_op_by_name(name: str) -> Op:
    _, packet, overload = name.split(".", 2)
    try:
        ov = getattr(getattr(torch.ops.aten, packet), overload)
    except AttributeError:
        raise KeyError(f"unknown ATen op {name!r}") from None
    return opaque_op(ov)


def _lower(overload: torch._ops.OpOverload, node: Any) -> Call:
    """Rebuild the overload's arguments: node inputs by `targs`, attributes by name."""
    from .ops import is_symbolic, runtime_attr

    layout = _parse_targs(node.attrs["targs"])
    op = node.op
    args: list = []
    kwargs: list = []
    next_in, li = 0, 0
    for a in overload._schema.arguments:
        if is_tensor_arg(a):
            spec = layout[li]
            li += 1
            if isinstance(spec, list):
                items = []
                for present in spec:
                    items.append(("in", next_in) if present else ("const", None))
                    next_in += present
                item: Any = ("list", items)
            elif spec:
                item, next_in = ("in", next_in), next_in + 1
            else:
                item = ("const", None)
        else:
            attr = op.attr_index[a.name]
            value = node.attrs[a.name]
            item = ("dims", value) if is_symbolic(value) else ("const", runtime_attr(attr.kind, value))
        (kwargs.append((a.name, item)) if a.kwarg_only else args.append(item))
    return Call(overload, tuple(args), tuple(kwargs))


def _parse_targs(text: str) -> list:
    out: list = []
    for part in text.split(",") if text else []:
        if part.startswith("["):
            out.append([c == "t" for c in part[1:-1]])
        else:
            out.append(part == "t")
    return out


def format_targs(layout: list) -> str:
    parts = []
    for spec in layout:
        if isinstance(spec, list):
            parts.append("[" + "".join("t" if p else "_" for p in spec) + "]")
        else:
            parts.append("t" if spec else "_")
    return ",".join(parts)
