"""kiln.compile's contract: structure, graph breaks, strict mode, bad inputs, buffers, dumps."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import kiln
from kiln.frontend.dynamo import make_backend

from conftest import rel_err


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 16)
        self.b = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> dict:
        h = torch.relu(self.a(x))
        return {"out": self.b(h), "pair": (h.sum(-1), x * 2)}


def test_output_structure_is_kept() -> None:
    m = Mlp().eval()
    x = _x(3, 8)
    out = kiln.compile(m)(x)
    ref = m(x)
    assert set(out) == {"out", "pair"} and isinstance(out["pair"], tuple)
    assert rel_err(out["out"], ref["out"]) <= 1e-5
    assert rel_err(out["pair"][0], ref["pair"][0]) <= 1e-5


def test_function_with_graph_break_runs_both_regions_through_kiln() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = torch.sin(x) * 2
        torch._dynamo.graph_break()
        return torch.cos(y) + 1

    torch._dynamo.reset()
    stats = kiln.CompileStats()
    compiled = torch.compile(fn, backend=make_backend(stats=stats))
    x = _x(4, 5)
    assert rel_err(compiled(x), fn(x)) <= 1e-5
    assert stats.traces == 2


def test_untraceable_function_falls_back_with_reason_and_line() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return x * 2
        return x - 1

    compiled = kiln.compile(fn)
    x = _x(6, seed=3).abs() + 0.1
    with pytest.warns(UserWarning, match="falling back to torch.compile"):
        out = compiled(x)
    assert rel_err(out, fn(x)) <= 1e-5
    assert compiled.stats.path == "dynamo"


def test_fullgraph_raises_trace_error_naming_the_source_line() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1

    compiled = kiln.compile(fn, options=kiln.CompileOptions(fullgraph=True))
    with pytest.raises(kiln.TraceError) as e:
        compiled(_x(6, seed=3))
    assert "test_compile_behaviour.py" in str(e.value)


class UsesUnknownOps(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logcumsumexp(x, 0) + torch.flip(x, [1]).sum()


def test_strict_mode_lists_every_undeclared_op_with_node_and_line() -> None:
    with pytest.raises(kiln.UnsupportedOpsError) as e:
        kiln.compile(UsesUnknownOps(), (_x(4, 4),), strict=True)
    text = str(e.value)
    assert "aten.logcumsumexp.default" in text and "aten.flip.default" in text
    assert "test_compile_behaviour.py:" in text
    assert len(e.value.entries) == 2


def test_non_strict_mode_warns_once_and_runs_undeclared_ops() -> None:
    m = UsesUnknownOps()
    x = _x(4, 4, seed=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn = kiln.compile(m, (x,))
    msgs = [str(m.message) for m in w if "kiln" in str(m.message)]
    assert len(msgs) == 1 and "aten.logcumsumexp.default" in msgs[0]
    assert rel_err(fn(x), m(x)) <= 1e-5


def test_wrong_dtype_names_the_input_and_expected_type() -> None:
    fn = kiln.compile(Mlp().eval(), (_x(3, 8),))
    with pytest.raises(kiln.InputError, match=r"input 'x': expected f32\[B, 8\].*dtype"):
        fn(_x(3, 8).double())


def test_wrong_rank_names_the_input() -> None:
    fn = kiln.compile(Mlp().eval(), (_x(3, 8),))
    with pytest.raises(kiln.InputError, match="input 'x'.*rank"):
        fn(_x(2, 3, 8))


def test_static_compile_retraces_transparently_for_a_new_shape() -> None:
    m = Mlp().eval()
    fn = kiln.compile(m, (_x(3, 8),), options=kiln.CompileOptions(dynamic=False))
    x = _x(5, 8, seed=2)
    assert rel_err(fn(x)["out"], m(x)["out"]) <= 1e-5
    assert fn.stats.recompiles == 1
    assert "input 'x'" in fn.stats.recompile_reasons[0]


class StaticCache(torch.nn.Module):
    """Writes each call's keys into a persistent buffer with index_copy_ (a static KV cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(8, 4))

    def forward(self, k: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.cache.index_copy_(0, pos, k)
        return self.cache.sum(0)


def test_buffer_update_is_explicit_in_ir_and_applied() -> None:
    eager, comp = StaticCache(), StaticCache()
    fn = kiln.compile(comp)
    k, pos = _x(2, 4, seed=4), torch.tensor([1, 5])
    out = fn(k, pos)
    ref = eager(k, pos)
    assert rel_err(out, ref) <= 1e-5
    assert torch.equal(comp.cache, eager.cache)
    writes = [n for n in fn.graph.nodes if n.op.name == "copy_to"]
    assert len(writes) == 1 and writes[0].inputs[0].name == "cache"


def test_dump_dir_gets_ir_and_plan(tmp_path: os.PathLike) -> None:
    kiln.compile(Mlp().eval(), (_x(3, 8),), dump_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert any(f.endswith("_captured.txt") for f in files) and any(f.endswith("_plan.py") for f in files)
    text = open(os.path.join(tmp_path, [f for f in files if f.endswith(".txt")][0])).read()
    assert "linear(%x, %a.weight, %a.bias)" in text


def test_plan_is_one_flat_call_per_node() -> None:
    fn = kiln.compile(Mlp().eval(), (_x(3, 8),))
    src = fn.plan.source
    ops = sum(len(n.subgraph.nodes) if n.subgraph is not None else 1 for n in fn.graph.nodes)
    assert fn.plan.num_calls == ops
    assert "for " not in src and "while " not in src
    assert sum(1 for ln in src.splitlines() if "= f" in ln) == ops


class DataDependentShape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.nonzero(x > 0)  # output length depends on the data
        return x.sum() + idx.shape[0]


def test_data_dependent_shapes_fall_back_and_stay_correct() -> None:
    m = DataDependentShape()
    fn = kiln.compile(m)
    x = _x(5, 3, seed=8)
    with pytest.warns(UserWarning, match="kiln"):
        out = fn(x)
    assert rel_err(out, m(x)) <= 1e-5
    assert fn.stats.path == "dynamo"


def test_data_dependent_shapes_with_fullgraph_name_the_node() -> None:
    fn = kiln.compile(DataDependentShape(), options=kiln.CompileOptions(fullgraph=True))
    with pytest.raises(kiln.TraceError, match="nonzero"):
        fn(_x(5, 3, seed=8))


class ShapeMask(torch.nn.Module):
    """Builds a causal mask from the input's shape only: the plan computes it once per shape."""

    def forward(self, x: torch.Tensor) -> tuple:
        t = x.shape[1]
        pos = torch.arange(t)
        causal = pos[None, :] <= pos[:, None]  # (T, T)
        scores = x @ x.transpose(1, 2)
        return scores.masked_fill(~causal, -1e4).softmax(-1), pos * 2


def test_shape_only_subgraph_is_cached_per_shape_and_stays_correct() -> None:
    m = ShapeMask()
    fn = kiln.compile(m)
    for t in (5, 9, 5):
        x = _x(2, t, 3, seed=t)
        out = fn(x)
        ref = m(x)
        assert rel_err(out[0], ref[0]) <= 1e-5 and torch.equal(out[1], ref[1])
    assert fn.plan.cached_nodes > 0 and "_cache.get" in fn.plan.source
    assert fn.stats.traces == 1


def test_cached_values_are_never_returned_to_the_caller() -> None:
    fn = kiln.compile(ShapeMask())
    x = _x(2, 6, 3, seed=1)
    first = fn(x)[1]
    first.add_(100)  # a caller mutating an output must not corrupt later calls
    assert torch.equal(fn(x)[1], torch.arange(6) * 2)


class ReadThenBump(torch.nn.Module):
    """Reads a buffer (a shape-only-looking computation) before updating it in place."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = self.count * 2
        self.count.add_(1.0)
        return x + seen


def test_reads_of_a_written_buffer_are_never_cached_across_calls() -> None:
    eager, comp = ReadThenBump(), ReadThenBump()
    fn = kiln.compile(comp)
    x = _x(3, seed=2)
    for _ in range(3):
        assert torch.equal(fn(x), eager(x))
    assert torch.equal(comp.count, eager.count)


class MutatesALiteral(torch.nn.Module):
    """An in-place update of a tensor literal made in forward (export lifts the literal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([1.0, 2.0, 3.0])
        t.add_(x.sum())
        return t * 2


def test_in_place_update_of_a_literal_does_not_leak_into_the_next_call() -> None:
    m = MutatesALiteral()
    fn = kiln.compile(m)
    x = _x(3, seed=4)
    for _ in range(3):
        assert rel_err(fn(x), m(x)) <= 1e-6
    assert not any(n.op.name == "copy_to" for n in fn.graph.nodes)  # a temporary: no state written


class WindowAttention(torch.nn.Module):
    """Attention with a mask built from shapes alone: causal, or a causal sliding window."""

    def __init__(self, window: int | None) -> None:
        super().__init__()
        self.window = window

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        t = q.shape[-2]
        i = torch.arange(t)
        keep = i[None, :] <= i[:, None]  # (T, T)
        if self.window is not None:
            keep = keep & (i[:, None] - i[None, :] < self.window)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=keep)


@pytest.mark.parametrize("window", [None, 2])
def test_cached_causal_masks_take_the_causal_path_and_others_keep_their_mask(window: int | None) -> None:
    from kiln.ir.opset import nn as kiln_nn

    m = WindowAttention(window)
    fn = kiln.compile(m)
    q = _x(2, 3, 6, 4, seed=9)
    assert rel_err(fn(q), m(q)) <= 1e-5
    mask = next(iter(fn.plan.fn.__globals__["_cache"].values()))[0]
    assert kiln_nn._is_causal_mask(mask) is (window is None)
    assert rel_err(fn(q), m(q)) <= 1e-5  # the second call (cached mask, maybe causal path) agrees too
