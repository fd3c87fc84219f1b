"""Property tests: every pass (and the whole pipeline) keeps a random graph's results.

Hypothesis draws small graphs built with the Graph API: elementwise, reduction, view, cast,
creation, index and matmul nodes over inputs (some with a symbolic batch dim) and constants, with
duplicated subexpressions, constant-only subgraphs, dead nodes, no-op identities (x + 0, x * 1,
same-shape reshapes, cancelling permutes), RNG draws and a buffer write (read before it, as the
frontend emits). Each pass must leave its input untouched and give a verified graph that computes
the same outputs on the reference interpreter over two calls (the second reads the buffer the
first wrote), with the same final buffer; DCE and CSE must be idempotent (a second run returns
its input object).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln import passes
from kiln.ir import Graph, InferenceError, TensorType, Value, format_graph, run_graph, symbol, verify
from kiln.ir.dtypes import f32, f64, i64
from kiln.options import CompileOptions

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
B = symbol("B")
RUNTIME_B = 3

RECIPES = [
    "unary", "binary", "scalar", "identity", "reduce", "reshape", "permute", "slice", "cast",
    "full", "arange_index", "matmul", "dup", "random", "linear", "norm", "gelu_tanh",
]


def _rand(shape: tuple, gen: torch.Generator) -> torch.Tensor:
    t = torch.randn(shape, generator=gen)
    return torch.where(t == 0, torch.ones_like(t), t)  # never an exact zero


def _broadcastable(a: tuple, b: tuple) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def _shape(v: Value) -> tuple:
    return tuple(v.type.shape)


class Builder:
    """Interprets drawn (recipe, operand picks, variant) steps into nodes; invalid steps are skipped."""

    def __init__(self, symbolic: bool, seed: int) -> None:
        self.g = Graph()
        self.gen = torch.Generator().manual_seed(seed)
        n = B if symbolic else 3
        self.pool: list[Value] = [
            self.g.add_input("x", TensorType(f32, (n, 4))),
            self.g.add_input("y", TensorType(f32, (1, 4))),
            self.g.add_input("s", TensorType(f32, ())),
        ]
        self.pool += [
            self.g.add_constant("w", _rand((4, 4), self.gen)),
            self.g.add_constant("b", _rand((1, 4), self.gen)),
            self.g.add_constant("c", _rand((4,), self.gen)),
        ]
        self.idx = self.g.add_constant("idx", torch.tensor([3, 0, 2, 0], dtype=torch.int64))
        self.buf = self.g.add_constant("buf", _rand((1, 4), self.gen))  # maybe written at the end
        self.pool.append(self.buf)

    def pick(self, k: int) -> Value:
        return self.pool[k % len(self.pool)]

    def call(self, op: str, *ins: Value | None, **attrs: Any) -> Value | None:
        if any(v is None for v in ins):  # an earlier step of a multi-node recipe was skipped
            return None
        try:
            v = self.g.call(op, *ins, **attrs)
        except (InferenceError, TypeError, ValueError):
            return None
        if isinstance(v.type, TensorType) and v.type.dtype is f32:
            self.pool.append(v)
        return v

    def step(self, recipe: str, a: int, b: int, variant: int) -> None:
        x, y = self.pick(a), self.pick(b)
        shape = _shape(x)
        if recipe == "unary":
            self.call(["neg", "tanh", "sigmoid", "relu", "abs", "sin"][variant % 6], x)
        elif recipe == "binary":
            if _broadcastable(shape, _shape(y)):
                self.call(["add", "sub", "mul", "maximum"][variant % 4], x, y)
            else:
                self.call("add", x, rhs=0.5)
        elif recipe == "scalar":
            op, kw = [("add", {"rhs": 0.25}), ("mul", {"lhs": 2}), ("sub", {"lhs": 1.0}), ("div", {"rhs": 2.0}), ("pow", {"rhs": 2}),
                      ("mul", {"rhs": 0.0}), ("mul", {"rhs": -0.0}), ("div", {"lhs": 1.0})][variant % 8]
            self.call(op, x, **kw)
        elif recipe == "identity":
            op, kw = [("add", {"rhs": 0}), ("add", {"lhs": 0.0}), ("mul", {"rhs": 1}), ("mul", {"rhs": 1.0}),
                      ("sub", {"rhs": 0}), ("div", {"rhs": 1}), ("pow", {"rhs": 1}), ("cast", {"dtype": f32}),
                      ("expand", {"shape": shape}), ("neg", {})][variant % 10]
            v = self.call(op, x, **kw)
            if op == "neg" and v is not None:
                self.call("neg", v)
        elif recipe == "reduce":
            if x.type.rank:
                self.call(["sum", "mean", "amax"][variant % 3], x, dims=[variant % x.type.rank], keepdim=variant % 2 == 0)
            else:
                self.call("sum", x)
        elif recipe == "reshape":
            if variant % 2 or not shape:
                self.call("reshape", x, shape=shape)  # to the same shape
            else:
                n: Any = 1
                for d in shape:
                    n = n * d
                flat = self.call("reshape", x, shape=[n])
                if flat is not None:
                    self.call("reshape", flat, shape=shape)
        elif recipe == "permute":
            if x.type.rank == 2:
                p = self.call("permute", x, dims=[1, 0])
                if p is not None and variant % 2:
                    self.call("permute", p, dims=[1, 0])
            elif x.type.rank == 1:
                self.call("permute", x, dims=[0])
            else:
                u = self.call("unsqueeze", x, dim=0)
                if u is not None:
                    self.call("squeeze", u, dims=[0])
        elif recipe == "slice":
            if x.type.rank and isinstance(shape[-1], int) and shape[-1] > 1:
                end = shape[-1] if variant % 2 else shape[-1] - 1
                self.call("slice", x, dim=x.type.rank - 1, start=0, end=end)
        elif recipe == "cast":
            if variant % 2:
                self.call("cast", x, dtype=f32)
            else:
                h = self.call("cast", x, dtype=f64)
                if h is not None:
                    self.call("cast", h, dtype=f32)
        elif recipe == "full":
            f = self.call("full", shape=[1, 4], value=[0.5, 1, 2.0][variant % 3], dtype=f32)
            if f is not None and _broadcastable(shape, (1, 4)):
                self.call("mul", x, f)
        elif recipe == "arange_index":
            r = self.call("arange", end=4, dtype=i64)
            assert r is not None
            ix = [r, self.idx][variant % 2]
            if variant % 3 == 0:  # i64 index arithmetic: (arange + idx) % 4
                ix = self.call("remainder", self.call("add", r, self.idx), rhs=4)
            if x.type.rank and shape[-1] == 4:
                self.call("index_select", x, ix, dim=x.type.rank - 1)
            else:
                self.call("cast", ix, dtype=f32)
        elif recipe == "matmul":
            if x.type.rank in (1, 2) and shape[-1] == 4:
                self.call("matmul", x, self.g.constants["wc"[variant % 2]])
        elif recipe == "dup":
            n = self.g.nodes[-1] if self.g.nodes else None
            if n is not None and n.outputs:
                try:
                    new = self.g.add_node(n.op, n.inputs, dict(n.attrs), [o.type for o in n.outputs] if n.op.infer is None else None)
                except (InferenceError, TypeError, ValueError):
                    return
                if isinstance(new.outputs[0].type, TensorType) and new.outputs[0].type.dtype is f32:
                    self.pool.append(new.outputs[0])
        elif recipe == "linear":  # a linear (+ bias) with an activation, and a sibling on the same input
            if x.type.rank and shape[-1] == 4:
                w, bias = self.g.constants["w"], self.g.constants["c"]
                lin = self.call("linear", x, w, *([bias] if variant % 2 else []))
                if lin is not None:
                    self.call(["relu", "silu", "gelu", "neg"][variant % 4], lin)
                if variant % 3 == 0:
                    self.call("linear", x, self.g.constants["wc"[variant % 2]] if variant % 2 == 0 else w, *([bias] if variant % 2 else []))
        elif recipe == "norm":  # written-out RMSNorm, or residual add + layer_norm
            if x.type.rank and shape[-1] == 4 and _shape(y) == shape:
                if variant % 2:
                    r = self.call("rsqrt", self.call("add", self.call("mean", self.call("mul", x, x), dims=[x.type.rank - 1], keepdim=True), rhs=1e-6))
                    if r is not None:
                        self.call("mul", self.g.constants["c"], self.call("mul", x, r))
                else:
                    h = self.call("add", x, y)
                    if h is not None:
                        self.call("layer_norm", h, self.g.constants["c"], self.g.constants["c"], shape=[4], eps=1e-5)
        elif recipe == "gelu_tanh":  # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
            cube = self.call("mul", self.call("pow", x, rhs=3.0), rhs=0.044715)
            inner = self.call("mul", self.call("add", x, cube), rhs=0.7978845608028654) if cube is not None else None
            if inner is not None:
                self.call("mul", self.call("mul", x, rhs=0.5), self.call("add", self.call("tanh", inner), rhs=1.0))
        elif recipe == "random":
            v = self.g.add_node("aten.rand_like.default", [x], {"targs": "t"}, [x.type]).output
            if variant % 2:
                self.pool.append(v)

    def finish(self, outs: list[int], write: int | None) -> Graph:
        self.g.outputs = [self.pool[-1]] + [self.pick(k) for k in outs]
        if write is not None:  # a step-counter-like update: reads of buf, then buf = buf + src
            src = [v for v in self.pool if _shape(v) == (1, 4)]
            self.g.outputs.append(self.g.call("neg", self.buf))
            self.g.add_node("copy_to", [self.buf, self.g.call("add", self.buf, src[write % len(src)])])
        return self.g


step = st.tuples(st.sampled_from(RECIPES), st.integers(0, 40), st.integers(0, 40), st.integers(0, 40))
graphs = st.builds(
    lambda symbolic, seed, steps, outs, write: _build(symbolic, seed, steps, outs, write),
    st.booleans(), st.integers(0, 2**16), st.lists(step, min_size=1, max_size=12),
    st.lists(st.integers(0, 40), max_size=2), st.one_of(st.none(), st.integers(0, 40)),
)


def _build(symbolic: bool, seed: int, steps: list, outs: list, write: int | None) -> Graph:
    b = Builder(symbolic, seed)
    for recipe, a, c, variant in steps:
        b.step(recipe, a, c, variant)
    g = b.finish(outs, write)
    verify(g)
    return g


def _inputs(g: Graph, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [_rand(tuple(RUNTIME_B if d == B else d for d in v.type.shape), gen) for v in g.inputs]


def _run(g: Graph, inputs: list, original_buf: torch.Tensor) -> list:
    """Outputs of two calls (the second sees the first's buffer write) and the buffer after them,
    on private copies of inputs and constants, from one RNG seed."""
    consts = {k: t.clone() for k, t in g.constant_data.items()}
    torch.manual_seed(0)
    first = run_graph(g, [x.clone() for x in inputs], consts)
    second = run_graph(g, [x.clone() for x in inputs], consts)
    return first + second + [consts.get("buf", original_buf)]  # a pass drops the buffer only when unused


def _same_results(g: Graph, out: Graph, seed: int) -> None:
    inputs = _inputs(g, seed)
    buf = g.constant_data["buf"]
    ref, got = _run(g, inputs, buf), _run(out, inputs, buf)
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6, equal_nan=True), (a, b)


PASSES = list(passes.PIPELINE)  # every pass, each on its own
IDEMPOTENT = {"eliminate_dead_nodes", "eliminate_common_subexpressions"}


@pytest.mark.parametrize("p", PASSES, ids=lambda p: p.name)
@SETTINGS
@given(g=graphs, seed=st.integers(0, 2**16))
def test_pass_preserves_results(p: passes.Pass, g: Graph, seed: int) -> None:
    text = format_graph(g)
    ctx = passes.PassContext(CompileOptions())
    out = p(g, ctx)
    assert format_graph(g) == text, "the pass changed its input graph"
    verify(out)
    _same_results(g, out, seed)
    if p.name in IDEMPOTENT:
        assert p(out, passes.PassContext(CompileOptions())) is out, f"{p.name} changed its own output:\n{format_graph(out)}"


@SETTINGS
@given(g=graphs, seed=st.integers(0, 2**16))
def test_pipeline_preserves_results(g: Graph, seed: int) -> None:
    text = format_graph(g)
    out, records = passes.run_pipeline(g, passes.PIPELINE, CompileOptions())
    assert format_graph(g) == text
    assert [r.name for r in records] == [p.name for p in passes.PIPELINE]
    verify(out)
    _same_results(g, out, seed)
