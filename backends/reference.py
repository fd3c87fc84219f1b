"""The reference backend: every node runs its op's PyTorch implementation, on any device.

Lowering is `runtime.plan.build_plan`: a flat generated function over the nodes in order.
"""

from __future__ import annotations

import torch

from ..ir.graph import Graph
from ..runtime.plan import Plan, build_plan


def compile_reference(g: Graph, device: torch.device | None = None, symbol_ranges: dict | None = None) -> Plan:
    return build_plan(g, device, symbol_ranges)
