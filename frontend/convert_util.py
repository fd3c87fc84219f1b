"""Helpers shared by the per-op converter modules (frontend/convert_*.py and converters.py)."""

from __future__ import annotations

from typing import Any

import torch

from ..ir import Value
from .fx_import import Ctx, Decline

aten = torch.ops.aten


aten = torch.ops.aten


def out_type(ctx: Ctx, node: Any, i: int = 0) -> Any:
    return ctx.out_types(node)[i]


def is_value(x: Any) -> bool:
    return isinstance(x, Value)


def scalar(x: Any) -> Any:
    if isinstance(x, Value):
        raise Decline("expected a scalar")
    if isinstance(x, torch.Tensor):
        raise Decline("tensor literal operand")
    return x


def plain(ctx: Ctx, op: str, inputs: list, **attrs: Any) -> Value:
    """An intermediate node with no traced counterpart (inference alone gives its type)."""
    from .fx_import import source_info

    return ctx.g.add_node(op, inputs, attrs, source=source_info(ctx.fx_node)).output
