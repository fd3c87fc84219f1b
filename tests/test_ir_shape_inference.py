"""Shape/dtype inference agrees with each op's PyTorch reference.

Every test draws concrete shapes (and dtypes), builds the node over *symbolic* input types (each
chosen concrete size >= 2 becomes a symbol D<n>, attributes use the same symbols), runs the graph
with `ir.run_graph` on random tensors, and checks the inferred types, with the symbols bound to
their sizes, against the real outputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import pytest
import sympy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln import ir
from kiln.ir.dtypes import DType, b8, f32, f64, i64
from kiln.ir.opset.elementwise import BINARY, UNARY
from kiln.ir.symbolic import evaluate_dim
from kiln.ir.types import SymIntType, TensorType

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
NUMERIC = [f32, f64, i64]


class Case:
    """One drawn case: concrete sizes, which sizes are symbolic, and a seeded generator."""

    def __init__(self, draw: Any):
        self.draw = draw
        self.symbolic = draw(st.sets(st.integers(2, 5)))
        self.gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def dim(self, n: int) -> Any:
        return ir.symbol(f"D{n}") if n in self.symbolic else n

    def type_of(self, x: torch.Tensor) -> TensorType:
        return TensorType(ir.from_torch(x.dtype), tuple(self.dim(n) for n in x.shape))

    def shape(self, min_rank: int = 0, max_rank: int = 3, max_size: int = 5) -> tuple[int, ...]:
        return tuple(self.draw(st.lists(st.integers(1, max_size), min_size=min_rank, max_size=max_rank)))

    def dtype(self, choices: Sequence[DType] = NUMERIC) -> DType:
        return self.draw(st.sampled_from(list(choices)))

    def tensor(self, shape: Sequence[int], dtype: DType = f32) -> torch.Tensor:
        """Random, never all-zero: floats from randn, ints in [1, 6), bools with a True."""
        shape = tuple(shape)
        if dtype.is_float:
            return torch.randn(shape, generator=self.gen, dtype=dtype.torch)
        if dtype is b8:
            t = torch.rand(shape, generator=self.gen) < 0.5
            if t.numel():
                t.view(-1)[0] = True
            return t
        return torch.randint(1, 6, shape, generator=self.gen, dtype=dtype.torch)

    def index(self, shape: Sequence[int], high: int) -> torch.Tensor:
        return torch.randint(0, high, tuple(shape), generator=self.gen, dtype=torch.int64)

    def check(self, op: str, xs: Sequence[torch.Tensor], attrs: dict[str, Any] | None = None, *, rejects_like_reference: bool = True) -> None:
        """Build `op` over symbolic types, run it, compare inferred and actual types.

        If inference rejects the inputs (InferenceError), the reference must reject them too.
        """
        g = ir.Graph()
        ins = [g.add_input(f"x{i}", self.type_of(x)) for i, x in enumerate(xs)]
        syms = sorted(self.symbolic)
        for n in syms:  # bind every symbol (attributes may use ones no tensor input has)
            g.add_input(f"n{n}", SymIntType(ir.symbol(f"D{n}")))
        try:
            node = g.add_node(op, ins, attrs or {})
        except ir.InferenceError:
            if rejects_like_reference:
                env = {ir.symbol(f"D{n}"): n for n in syms}
                concrete = ir.Graph()
                cins = [concrete.add_input(f"x{i}", TensorType(ir.from_torch(x.dtype), tuple(x.shape))) for i, x in enumerate(xs)]
                op_ = ir.get_op(op)
                cattrs = {k: _subst(v, env) for k, v in op_.normalize_attrs(attrs or {}).items()}
                cnode = concrete.add_node(op_, cins, cattrs, out_types=[TensorType(f32, ())] * max(op_.num_outputs, 1))
                concrete.outputs = list(cnode.outputs)
                with pytest.raises(Exception):  # noqa: B017 - any error the reference raises
                    ir.run_graph(concrete, list(xs))
            return
        g.outputs = list(node.outputs)
        ir.verify(g)
        outs = ir.run_graph(g, list(xs) + syms)
        assert len(outs) == len(node.outputs)
        env = {ir.symbol(f"D{n}"): n for n in syms}
        for v, out in zip(node.outputs, outs, strict=True):
            want = tuple(evaluate_dim(d, env) for d in v.type.shape)
            assert want == tuple(out.shape), f"{op}: inferred {v.type}, got shape {tuple(out.shape)}"
            assert v.type.dtype is ir.from_torch(out.dtype), f"{op}: inferred {v.type}, got dtype {out.dtype}"


def _subst(v: Any, env: dict) -> Any:
    if isinstance(v, sympy.Expr):
        return evaluate_dim(v, env)
    if isinstance(v, tuple):
        return tuple(_subst(x, env) for x in v)
    return v


def cases() -> st.SearchStrategy:
    return st.data()  # each test wraps it: c = Case(data.draw)


def broadcast_partner(c: Case, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts with `shape`: a suffix of it with some dims set to 1."""
    k = c.draw(st.integers(0, len(shape)))
    return tuple(1 if c.draw(st.booleans()) else n for n in shape[len(shape) - k:])


# --- elementwise ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(UNARY))
@SETTINGS
@given(data=cases())
def test_unary_inference_matches_reference(op: str, data: st.DataObject) -> None:
    c = Case(data.draw)
    choices = [i64, b8] if op == "bitwise_not" else NUMERIC + [b8] if op == "logical_not" else NUMERIC
    if op == "silu":
        choices = [f32, f64]  # see test_inference_rejects_what_the_reference_rejects
    c.check(op, [c.tensor(c.shape(), c.dtype(choices))])


@SETTINGS
@given(data=cases())
def test_gelu_clamp_and_cast_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(), c.dtype())
    if x.is_floating_point():
        c.check("gelu", [x], {"approximate": c.draw(st.sampled_from(["none", "tanh"]))})
    lo = c.draw(st.one_of(st.none(), st.integers(-3, 0), st.floats(-3, 0)))
    hi = c.draw(st.one_of(st.none(), st.integers(1, 4), st.floats(1, 4)))
    if lo is not None or hi is not None:
        c.check("clamp", [x], {"min": lo, "max": hi})
    c.check("cast", [x], {"dtype": c.dtype([f32, f64, i64, b8, ir.by_name("f16"), ir.by_name("i32")])})


scalars = st.one_of(st.integers(1, 5), st.integers(-5, -1), st.floats(-4, 4).filter(lambda f: abs(f) > 0.1), st.just(True))


@pytest.mark.parametrize("op", sorted(BINARY))
@SETTINGS
@given(data=cases())
def test_binary_inference_matches_reference(op: str, data: st.DataObject) -> None:
    c = Case(data.draw)
    bitwise = op.startswith("bitwise")
    choices = [i64, b8] if bitwise else NUMERIC
    shape = c.shape()
    a = c.tensor(shape, c.dtype(choices))
    form = c.draw(st.sampled_from(["tensors", "lhs", "rhs"]))
    if form == "tensors":
        b = c.tensor(broadcast_partner(c, shape), c.dtype(choices))
        xs = [a, b] if c.draw(st.booleans()) else [b, a]
        c.check(op, xs)
    else:
        s = c.draw(st.one_of(st.integers(1, 5), st.just(True)) if bitwise else scalars)
        if op == "sub" and s is True:
            s = 1  # see test_inference_rejects_what_the_reference_rejects
        if op == "pow" and form == "rhs" and not a.is_floating_point() and isinstance(s, int) and s < 0:
            s = -s  # integers to negative integer powers are a value error, not a type error
        c.check(op, [a], {form: s})


def test_binary_inference_distinguishes_int_float_and_bool_scalars() -> None:
    g = ir.Graph()
    x = g.add_input("x", TensorType(i64, (3,)))
    y = g.add_input("y", TensorType(b8, (3,)))
    # one after the other, so a cache keyed on 1 == 1.0 == True would answer wrongly
    assert g.call("add", x, rhs=1.0).type.dtype is f32
    assert g.call("add", x, rhs=1).type.dtype is i64
    assert g.call("add", y, rhs=True).type.dtype is b8
    assert g.call("add", y, rhs=1).type.dtype is i64
    assert g.call("mul", y, lhs=True).type.dtype is b8
    assert g.call("mul", y, lhs=2.0).type.dtype is f32


@SETTINGS
@given(data=cases())
def test_where_and_masked_fill_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    shape = c.shape()
    cond = c.tensor(broadcast_partner(c, shape), b8)
    a = c.tensor(shape, c.dtype())
    b = c.tensor(broadcast_partner(c, shape), c.dtype())
    order = c.draw(st.permutations([a, b]))
    c.check("where", [cond, *order])
    value = c.draw(st.one_of(st.integers(-3, 3), st.floats(-3, 3), st.booleans()))
    c.check("masked_fill", [a, c.tensor(broadcast_partner(c, shape), b8)], {"value": value})


# --- reductions ----------------------------------------------------------------------------


def _dims(c: Case, rank: int) -> list[int]:
    ds = c.draw(st.lists(st.integers(0, max(rank - 1, 0)), unique=True, max_size=rank)) if rank else []
    return [d - rank if c.draw(st.booleans()) else d for d in ds]


@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin", "any"])
@SETTINGS
@given(data=cases())
def test_reduction_inference_matches_reference(op: str, data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(), c.dtype(NUMERIC + [b8] if op == "any" else NUMERIC))
    attrs: dict[str, Any] = {"dims": _dims(c, x.dim()), "keepdim": c.draw(st.booleans())}
    if op in ("sum", "mean") and c.draw(st.booleans()):
        attrs["dtype"] = c.dtype([f32, f64])
    c.check(op, [x], attrs)


@SETTINGS
@given(data=cases())
def test_var_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype([f32, f64]))
    c.check("var", [x], {"dims": _dims(c, x.dim()), "correction": c.draw(st.sampled_from([0, 1, 0.5])), "keepdim": c.draw(st.booleans())})


@pytest.mark.parametrize("op", ["max_dim", "argmax"])
@SETTINGS
@given(data=cases())
def test_dim_reduction_inference_matches_reference(op: str, data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype())
    c.check(op, [x], {"dim": c.draw(st.integers(-x.dim(), x.dim() - 1)), "keepdim": c.draw(st.booleans())})


@SETTINGS
@given(data=cases())
def test_cumsum_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype(NUMERIC + [b8]))
    c.check("cumsum", [x], {"dim": c.draw(st.integers(-x.dim(), x.dim() - 1)), "dtype": c.draw(st.sampled_from([None, f64, i64]))})


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@SETTINGS
@given(data=cases())
def test_softmax_inference_matches_reference(op: str, data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype([f32, f64]))
    c.check(op, [x], {"dim": c.draw(st.integers(-x.dim(), x.dim() - 1))})


def test_softmax_inference_rejects_integer_inputs() -> None:
    g = ir.Graph()
    x = g.add_input("x", TensorType(i64, (3,)))
    with pytest.raises(ir.InferenceError, match="floating-point"):
        g.call("softmax", x, dim=0)


# --- shapes and data movement --------------------------------------------------------------


@SETTINGS
@given(data=cases())
def test_reshape_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1, max_rank=4), c.dtype())
    dims = [c.dim(n) for n in x.shape]
    # merge random runs of adjacent dims (products of symbols) and sprinkle in 1s
    out: list[Any] = []
    for d in dims:
        if out and c.draw(st.booleans()):
            out[-1] = out[-1] * d
        else:
            out.append(d)
        if c.draw(st.integers(0, 4)) == 0:
            out.append(1)
    c.check("reshape", [x], {"shape": out})


@SETTINGS
@given(data=cases())
def test_permute_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(), c.dtype())
    perm = c.draw(st.permutations(range(x.dim())))
    c.check("permute", [x], {"dims": [p - x.dim() if c.draw(st.booleans()) else p for p in perm]})


@SETTINGS
@given(data=cases())
def test_expand_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    target = c.shape(min_rank=0, max_rank=4)
    x = c.tensor(broadcast_partner(c, target), c.dtype())
    c.check("expand", [x], {"shape": [c.dim(n) for n in target]})


@SETTINGS
@given(data=cases())
def test_unsqueeze_and_squeeze_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(), c.dtype())
    c.check("unsqueeze", [x], {"dim": c.draw(st.integers(-x.dim() - 1, x.dim()))})
    y = c.tensor(tuple(1 if c.draw(st.booleans()) else n for n in c.shape(min_rank=1)), c.dtype())
    c.check("squeeze", [y], {"dims": _dims(c, y.dim())})


@SETTINGS
@given(data=cases())
def test_slice_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype())
    d = c.draw(st.integers(0, x.dim() - 1))
    n = x.shape[d]
    start = c.draw(st.integers(0, n))
    back = c.draw(st.integers(0, n - start))  # end = size - back >= start
    end = c.dim(n) - back
    c.check("slice", [x], {"dim": d - x.dim() if c.draw(st.booleans()) else d, "start": start, "end": end, "step": c.draw(st.integers(1, 3))})


@SETTINGS
@given(data=cases())
def test_select_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype())
    d = c.draw(st.integers(0, x.dim() - 1))
    back = c.draw(st.integers(1, x.shape[d]))
    c.check("select", [x], {"dim": d, "index": c.dim(x.shape[d]) - back})


@SETTINGS
@given(data=cases())
def test_cat_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    shape = c.shape(min_rank=1)
    d = c.draw(st.integers(0, len(shape) - 1))
    sizes = c.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    xs = [c.tensor(shape[:d] + (k,) + shape[d + 1:], c.dtype()) for k in sizes]
    c.check("cat", xs, {"dim": d - len(shape) if c.draw(st.booleans()) else d})


@SETTINGS
@given(data=cases())
def test_split_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype())
    d = c.draw(st.integers(0, x.dim() - 1))
    n = x.shape[d]
    first = c.draw(st.integers(0, n))
    sizes = [first, c.dim(n) - first] if c.draw(st.booleans()) else [c.dim(n)]
    c.check("split", [x], {"sizes": sizes, "dim": d})


@SETTINGS
@given(data=cases())
def test_clone_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    c.check("clone", [c.tensor(c.shape(), c.dtype(NUMERIC + [b8]))])


@SETTINGS
@given(data=cases())
def test_index_select_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype())
    d = c.draw(st.integers(0, x.dim() - 1))
    idx_shape = c.draw(st.sampled_from([(), (c.draw(st.integers(1, 5)),)]))
    c.check("index_select", [x, c.index(idx_shape, x.shape[d])], {"dim": d})


@SETTINGS
@given(data=cases())
def test_gather_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1), c.dtype())
    d = c.draw(st.integers(0, x.dim() - 1))
    idx_shape = tuple(c.draw(st.integers(1, 5)) if i == d else c.draw(st.integers(1, n)) for i, n in enumerate(x.shape))
    c.check("gather", [x, c.index(idx_shape, x.shape[d])], {"dim": d})


@SETTINGS
@given(data=cases())
def test_embedding_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    vocab, width = c.draw(st.integers(1, 6)), c.draw(st.integers(1, 5))
    w = c.tensor((vocab, width), c.dtype([f32, f64]))
    c.check("embedding", [w, c.index(c.shape(), vocab)])


@SETTINGS
@given(data=cases())
def test_index_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=1, max_rank=4), c.dtype())
    positions = c.draw(st.lists(st.integers(0, x.dim() - 1), unique=True, min_size=1, max_size=x.dim()))
    base = c.shape(max_rank=2)
    idx = [c.index(broadcast_partner(c, base), x.shape[p]) for p in positions]
    c.check("index", [x, *idx], {"positions": positions})


@pytest.mark.parametrize("op", ["tril", "triu"])
@SETTINGS
@given(data=cases())
def test_tril_triu_inference_matches_reference(op: str, data: st.DataObject) -> None:
    c = Case(data.draw)
    x = c.tensor(c.shape(min_rank=2, max_rank=4), c.dtype(NUMERIC + [b8]))
    c.check(op, [x], {"diagonal": c.draw(st.integers(-3, 3))})


@pytest.mark.parametrize("op, x, attrs", [
    ("silu", torch.tensor([1, 2, 3]), {}),
    ("sub", torch.tensor([1.5, 2.5]), {"rhs": True}),
])
def test_inference_rejects_what_the_reference_rejects(op: str, x: torch.Tensor, attrs: dict) -> None:
    g = ir.Graph()
    v = g.add_input("x", TensorType(ir.from_torch(x.dtype), tuple(x.shape)))
    try:
        node = g.add_node(op, [v], attrs)
    except ir.InferenceError:
        return
    g.outputs = list(node.outputs)
    ir.run_graph(g, [x])  # raises: inference accepted an op the reference cannot run


# --- matmul family -------------------------------------------------------------------------


@SETTINGS
@given(data=cases())
def test_matmul_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    k = c.draw(st.integers(1, 5))
    batch = c.shape(max_rank=2)
    a_rank, b_rank = c.draw(st.integers(1, 4)), c.draw(st.integers(1, 4))
    a_shape = (k,) if a_rank == 1 else broadcast_partner(c, batch)[: a_rank - 2] + (c.draw(st.integers(1, 5)), k)
    b_shape = (k,) if b_rank == 1 else broadcast_partner(c, batch)[: b_rank - 2] + (k, c.draw(st.integers(1, 5)))
    c.check("matmul", [c.tensor(a_shape, dt), c.tensor(b_shape, dt)])


@SETTINGS
@given(data=cases())
def test_linear_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    k, n = c.draw(st.integers(1, 5)), c.draw(st.integers(1, 5))
    xs = [c.tensor(c.shape(max_rank=2) + (k,), dt), c.tensor((n, k), dt)]
    if c.draw(st.booleans()):
        xs.append(c.tensor((n,), dt))
    c.check("linear", xs)


@SETTINGS
@given(data=cases())
def test_addmm_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    m, k, n = (c.draw(st.integers(1, 5)) for _ in range(3))
    bias = c.tensor(broadcast_partner(c, (m, n)), dt)
    attrs = {"beta": c.draw(st.sampled_from([1, 0.5, 2])), "alpha": c.draw(st.sampled_from([1, -1.5]))}
    c.check("addmm", [bias, c.tensor((m, k), dt), c.tensor((k, n), dt)], attrs)


@SETTINGS
@given(data=cases())
def test_layer_norm_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    shape = c.shape(min_rank=1, max_rank=4)
    norm = shape[len(shape) - c.draw(st.integers(1, len(shape))):]
    xs = [c.tensor(shape, dt), c.tensor(norm, dt), c.tensor(norm, dt)]
    c.check("layer_norm", xs, {"shape": [c.dim(n) for n in norm], "eps": c.draw(st.sampled_from([1e-5, 1e-6, 1]))})


@SETTINGS
@given(data=cases())
def test_rms_norm_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    shape = c.shape(min_rank=1, max_rank=4)
    xs = [c.tensor(shape, c.dtype([f32, f64])), c.tensor(shape[-1:], c.dtype([f32, f64]))]
    c.check("rms_norm", xs, {"eps": c.draw(st.sampled_from([1e-5, 1e-6]))})


@SETTINGS
@given(data=cases())
def test_add_norm_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    shape = c.shape(min_rank=1, max_rank=4)
    a, b, w = c.tensor(shape, dt), c.tensor(shape, dt), c.tensor(shape[-1:], dt)
    if c.draw(st.booleans()):
        c.check("add_layer_norm", [a, b, w, c.tensor(shape[-1:], dt)], {"shape": [c.dim(shape[-1])], "eps": 1e-5})
    else:
        c.check("add_rms_norm", [a, b, w], {"eps": 1e-6})


@SETTINGS
@given(data=cases())
def test_rotary_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    lead = c.shape(min_rank=0, max_rank=3)
    shape = lead + (c.draw(st.sampled_from([6, 8])),)  # a static even last dim (sizes 2-5 may be symbolic)
    # cos/sin broadcast over some leading dims (size 1) and may have fewer dims
    cut = c.draw(st.integers(0, len(lead)))
    bshape = tuple(1 if c.draw(st.booleans()) else n for n in shape[cut:-1]) + shape[-1:]
    c.check("rotary", [c.tensor(shape, dt), c.tensor(bshape, dt), c.tensor(bshape, dt)], {})


@SETTINGS
@given(data=cases(), act=st.sampled_from(["none", "relu", "silu", "gelu", "gelu_tanh"]))
def test_linear_with_activation_inference_matches_reference(data: st.DataObject, act: str) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    k, n = c.draw(st.integers(1, 5)), c.draw(st.integers(1, 5))
    batch = c.shape(max_rank=2)
    c.check("linear", [c.tensor(batch + (k,), dt), c.tensor((n, k), dt), c.tensor((n,), dt)], {"activation": act})


@SETTINGS
@given(data=cases())
def test_attention_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    dt = c.dtype([f32, f64])
    batch = c.shape(max_rank=1, max_size=3)
    hk, groups = c.draw(st.integers(1, 3)), c.draw(st.integers(1, 2))
    gqa = groups > 1 or c.draw(st.booleans())
    L, S, E, Ev = (c.draw(st.integers(1, 5)) for _ in range(4))
    q = c.tensor(batch + (hk * groups, L, E), dt)
    k = c.tensor(batch + (hk, S, E), dt)
    v = c.tensor(batch + (hk, S, Ev), dt)
    if not gqa:
        k, v = k.expand(batch + (hk * groups, S, E)).contiguous(), v.expand(batch + (hk * groups, S, Ev)).contiguous()
    xs = [q, k, v]
    causal = c.draw(st.booleans())
    if not causal and c.draw(st.booleans()):
        xs.append(c.tensor(tuple(1 if c.draw(st.booleans()) else n for n in (L, S)), c.dtype([b8, dt])))
    c.check("attention", xs, {"causal": causal, "scale": c.draw(st.sampled_from([None, 0.5])), "gqa": gqa})


# --- creation ------------------------------------------------------------------------------


@SETTINGS
@given(data=cases())
def test_full_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    shape = [c.dim(n) for n in c.shape()]
    value = c.draw(st.one_of(st.integers(-3, 3).filter(bool), st.floats(-3, 3).filter(bool), st.just(True)))
    c.check("full", [], {"shape": shape, "value": value, "dtype": c.dtype([f32, f64, i64, b8])})


@SETTINGS
@given(data=cases())
def test_arange_inference_matches_reference(data: st.DataObject) -> None:
    c = Case(data.draw)
    n = c.draw(st.integers(2, 5))
    start = c.draw(st.integers(0, n))
    step = c.draw(st.integers(1, 3))
    c.check("arange", [], {"start": start, "end": c.dim(n) * c.draw(st.integers(1, 2)), "step": step, "dtype": c.dtype([f32, i64])})


def test_every_declared_op_is_covered_here() -> None:
    covered = set(UNARY) | set(BINARY) | {
        "gelu", "clamp", "cast", "where", "masked_fill", "sum", "mean", "amax", "amin", "any", "var",
        "max_dim", "argmax", "cumsum", "softmax", "log_softmax", "reshape", "permute", "expand",
        "unsqueeze", "squeeze", "slice", "select", "cat", "split", "clone", "index_select", "gather",
        "embedding", "index", "tril", "triu", "matmul", "linear", "addmm", "layer_norm", "rms_norm", "attention", "roll", "addcmul", "rotary", "add_layer_norm", "add_rms_norm", "full", "arange",
    }
    # copy_to: an in-place write with no outputs; fusion_group: types come from its body (tests/test_fusion_groups.py);
    # paged_attention: writes a KV cache (tests/test_kv_cache_pass.py, tests/test_triton_paged.py);
    # linear_add: checked against its reference in tests/test_triton_matmul.py;
    # linear_w8 / linear_w4: quantized weights, checked against dequantize + F.linear in tests/test_quantize.py;
    # linear_w8a8: against a float W8A8 simulation there; linear_fp8: fp8 codes, against dequantize + F.linear in
    # tests/test_calibration.py
    # all_reduce / all_gather / all_reduce_add_rms_norm: collectives over torch.distributed, checked in one
    # process (group of one, and the gathered shape) and on gloo in 2 and 4 processes in
    # tests/test_tensor_parallel.py
    # send / recv: point-to-point between pipeline stages, chained in one process and on gloo in
    # tests/test_pipeline_parallel.py
    not_generated = {"copy_to", "fusion_group", "paged_attention", "linear_add", "linear_w8", "linear_w4", "linear_w8a8", "linear_fp8",
                     "all_reduce", "all_gather", "all_reduce_add_rms_norm", "send", "recv"}
    assert set(ir.REGISTRY) - covered - not_generated == set()


# --- networkx view -------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=st.deferred(lambda: _graphs()))
def test_networkx_view_has_a_node_per_value_source_and_an_edge_per_use(g: ir.Graph) -> None:
    view = g.to_networkx()
    kinds = [k for _, k in view.nodes(data="kind")]
    assert kinds.count("input") == len(g.inputs)
    assert kinds.count("const") == len(g.constants)
    assert kinds.count("node") == len(g.nodes)
    assert kinds.count("output") == len(g.outputs)
    assert view.number_of_nodes() == len(g.inputs) + len(g.constants) + len(g.nodes) + len(g.outputs)
    uses = sum(len(n.inputs) for n in g.nodes)
    assert view.number_of_edges() == uses + len(g.outputs)
    for i, n in enumerate(g.nodes):
        assert view.nodes["node", i]["op"] == n.op.name
        assert view.in_degree(("node", i)) == len(n.inputs)
        ports = sorted(p for _, _, p in view.in_edges(("node", i), data="port"))
        assert ports == list(range(len(n.inputs)))


def _graphs() -> st.SearchStrategy[ir.Graph]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_ir_text import graphs

    return graphs()


def test_networkx_view_is_read_only_and_follows_edges() -> None:
    import networkx as nx

    g = ir.Graph()
    x = g.add_input("x", TensorType(f32, (ir.symbol("B"), 4)))
    w = g.add_constant("w", torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
    h = g.call("linear", x, w)
    g.outputs = [g.call("add", h, h)]
    view = g.to_networkx()
    assert nx.has_path(view, ("input", "x"), ("output", 0))
    assert view.number_of_edges(("node", 0), ("node", 1)) == 2  # add reads h twice
    with pytest.raises(nx.NetworkXError):
        view.add_node("extra")
