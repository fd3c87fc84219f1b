"""The plan's arena: generated kernels write into one preallocated buffer laid out by liveness.

On CPU the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import kiln  # noqa: E402
from kiln import ir  # noqa: E402
from kiln.ir.dtypes import from_torch  # noqa: E402
from kiln.passes.memory import liveness  # noqa: E402
from kiln.runtime.arena import arena_values, may_alias  # noqa: E402
from kiln.runtime.plan import build_plan  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Block(torch.nn.Module):
    """Norms and elementwise chains (kernels) around a linear (a PyTorch fallback)."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.ln = torch.nn.LayerNorm(d)
        self.lin = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.ln(x)) * 2.0 + 1.0
        y = self.lin(h)
        z = torch.nn.functional.silu(y) * h
        return torch.softmax(z, dim=-1).reshape(x.shape[0], -1)


def _compiled(model: torch.nn.Module, x: torch.Tensor, **opts: object) -> kiln.CompiledModule:
    fn = kiln.compile(model, options=kiln.CompileOptions(backend="triton", cuda_graphs=False, **opts))
    fn(x)
    return fn


def _plan(fn: kiln.CompiledModule):  # noqa: ANN202
    return fn._entries[-1].plan


def test_arena_backed_plan_matches_eager_and_keeps_outputs_out_of_the_arena() -> None:
    torch.manual_seed(0)
    model = Block().to(DEVICE).eval()
    x1, x2 = torch.randn(4, 8, 32, device=DEVICE), torch.randn(4, 8, 32, device=DEVICE)
    fn = _compiled(model, x1)
    plan = _plan(fn)
    assert plan.arena is not None and plan.arena.values, "kernel outputs should live in the arena"
    with torch.no_grad():
        out1 = fn(x1)
        kept = out1.clone()
        out2 = fn(x2)
        torch.testing.assert_close(out1, model(x1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out2, model(x2), rtol=1e-5, atol=1e-6)
    assert torch.equal(out1, kept), "a second call overwrote the first call's output"
    storages = {s.untyped_storage().data_ptr() for s in plan.arena.storages}
    assert out1.untyped_storage().data_ptr() not in storages


def test_arena_serves_new_symbol_bindings_with_one_growing_storage() -> None:
    torch.manual_seed(1)
    model = Block().to(DEVICE).eval()
    fn = _compiled(model, torch.randn(2, 8, 32, device=DEVICE))
    with torch.no_grad():
        for b, s in [(2, 8), (3, 5), (5, 16), (2, 8)]:
            x = torch.randn(b, s, 32, device=DEVICE)
            torch.testing.assert_close(fn(x), model(x), rtol=1e-5, atol=1e-6)
    plan = _plan(fn)
    assert fn.stats.traces == 1
    assert len(plan.arena.views) == 3  # one layout per binding, reused
    sizes = [s.numel() for s in plan.arena.storages]
    assert sizes == sorted(sizes) and plan.arena.nbytes <= sizes[-1]


def test_arena_is_off_with_the_option_and_results_agree() -> None:
    torch.manual_seed(2)
    model = Block().to(DEVICE).eval()
    x = torch.randn(3, 4, 32, device=DEVICE)
    on, off = _compiled(model, x), _compiled(model, x, arena=False)
    assert _plan(off).arena is None
    with torch.no_grad():
        torch.testing.assert_close(on(x), off(x), rtol=0, atol=0)


def test_values_aliased_by_outputs_or_read_by_writes_stay_out_of_the_arena() -> None:
    g = ir.Graph()
    f32 = from_torch(torch.float32)
    x = g.add_input("x", ir.TensorType(f32, (4, 8)))
    a = g.add_node("exp", [x]).outputs[0]
    b = g.add_node("neg", [a]).outputs[0]
    view = g.add_node("reshape", [b], {"shape": (32,)}).outputs[0]
    c = g.add_node("sin", [a]).outputs[0]
    g.outputs = [view, c]
    picked = arena_values(g, [0, 1, 3], set())
    assert picked == [a], "b escapes through the output view; c is an output"


def test_a_may_alias_node_keeps_its_inputs_alive_as_long_as_its_outputs() -> None:
    g = ir.Graph()
    f32 = from_torch(torch.float32)
    x = g.add_input("x", ir.TensorType(f32, (4, 8)))
    a = g.add_node("exp", [x]).outputs[0]
    v = g.add_node("permute", [a], {"dims": (1, 0)}).outputs[0]
    b = g.add_node("exp", [x]).outputs[0]
    w = g.add_node("reshape", [b], {"shape": (8, 4)}).outputs[0]
    c = g.add_node("add", [v, w]).outputs[0]
    g.outputs = [c]
    live = liveness(g, may_alias)
    assert live[a][1] == live[v][1] == 4, "a must live while its view is read"
    assert may_alias(g.nodes[1]) and not may_alias(g.nodes[0])
    assert build_plan(g, torch.device("cpu")).arena is None  # no kernels, no arena
