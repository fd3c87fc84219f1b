"""The canonical IR text: printer/parser round trips, the dim grammar, and parse errors."""

from __future__ import annotations

import math

import pytest
import sympy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln import ir
from kiln.ir.dtypes import DTYPES, b8, f16, f32, f64, i32, i64
from kiln.ir.ops import InferenceError
from kiln.ir.types import SymIntType, TensorType

B, S = ir.symbol("B"), ir.symbol("S")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- a strategy for random valid graphs ----------------------------------------------------

dims = st.one_of(st.sampled_from([B, S, B * S, B + 1]), st.integers(1, 6))
input_types = st.builds(
    lambda dt, shape: TensorType(dt, tuple(shape)),
    st.sampled_from([f32, f64, f16, i64, i32, b8]),
    st.lists(dims, min_size=0, max_size=4),
)
scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, -0.0, 1e-7, -2.5, 1e16]),
    st.booleans(),
    st.sampled_from([B, S - 1, 2 * B]),
)
UNARY = sorted(["neg", "abs", "exp", "sqrt", "relu", "sigmoid", "logical_not", "isnan", "floor", "tanh"])
BINARY = ["add", "sub", "mul", "div", "eq", "lt", "ge", "maximum", "pow", "bitwise_and"]


def _pick(draw, values):  # noqa: ANN001, ANN202
    return draw(st.sampled_from(values))


def _step(g: ir.Graph, pool: list, draw) -> None:  # noqa: ANN001
    """Append one random node over values in `pool` (skipping combinations the op rejects)."""
    tensors = [v for v in pool if isinstance(v.type, TensorType)]
    x = _pick(draw, tensors)
    t = x.type
    kind = draw(st.sampled_from([
        "unary", "binary", "scalar", "reshape", "permute", "slice", "sum", "cast", "max_dim",
        "split", "cat", "opaque", "full", "var", "layer_norm",
    ]))
    if kind == "unary":
        outs = g.add_node(_pick(draw, UNARY), [x]).outputs
    elif kind == "binary":
        outs = g.add_node(_pick(draw, BINARY), [x, _pick(draw, tensors)]).outputs
    elif kind == "scalar":
        side = _pick(draw, ["lhs", "rhs"])
        outs = g.add_node(_pick(draw, ["add", "sub", "mul", "div", "lt", "pow"]), [x], {side: draw(scalars)}).outputs
    elif kind == "reshape":
        assert t.rank >= 1
        if t.rank >= 2:
            shape = (t.shape[0] * t.shape[1],) + t.shape[2:]
        else:
            shape = (1,) + t.shape
        outs = g.add_node("reshape", [x], {"shape": list(shape)}).outputs
    elif kind == "permute":
        perm = draw(st.permutations(list(range(t.rank))))
        outs = g.add_node("permute", [x], {"dims": perm}).outputs
    elif kind == "slice":
        assert t.rank >= 1
        d = draw(st.integers(0, t.rank - 1))
        size = t.shape[d]
        end = size - 1 if not isinstance(size, int) else draw(st.integers(1, size))
        outs = g.add_node("slice", [x], {"dim": d, "start": 0, "end": end, "step": draw(st.integers(1, 3))}).outputs
    elif kind == "sum":
        ds = draw(st.lists(st.integers(0, max(t.rank - 1, 0)), unique=True, max_size=t.rank))
        outs = g.add_node("sum", [x], {"dims": ds, "keepdim": draw(st.booleans())}).outputs
    elif kind == "cast":
        outs = g.add_node("cast", [x], {"dtype": _pick(draw, [f32, f64, f16, i64, b8])}).outputs
    elif kind == "max_dim":
        assert t.rank >= 1
        outs = g.add_node("max_dim", [x], {"dim": draw(st.integers(-t.rank, t.rank - 1)), "keepdim": draw(st.booleans())}).outputs
    elif kind == "split":
        assert t.rank >= 1
        d = draw(st.integers(0, t.rank - 1))
        size = t.shape[d]
        if isinstance(size, int):
            assert size >= 2
            sizes = [1, size - 1]
        else:
            sizes = [1, size - 1, 0] if draw(st.booleans()) else [size]
        outs = g.add_node("split", [x], {"sizes": sizes, "dim": d}).outputs
    elif kind == "cat":
        assert t.rank >= 1
        outs = g.add_node("cat", [x, x, x], {"dim": draw(st.integers(0, t.rank - 1))}).outputs
    elif kind == "opaque":
        assert t.rank >= 1 and t.dtype.is_float
        k = draw(st.integers(1, 3))
        shape = t.shape[:-1] + (k,)
        outs = g.add_node(
            "aten.topk.default", [x], {"targs": "t", "k": k, "largest": draw(st.booleans())},
            out_types=[TensorType(t.dtype, shape), TensorType(i64, shape)],
        ).outputs
    elif kind == "full":
        outs = g.add_node("full", [], {"shape": [B, 2, S + 1], "value": draw(scalars), "dtype": _pick(draw, [f32, i64])}).outputs
    elif kind == "var":
        outs = g.add_node("var", [x], {"correction": draw(st.sampled_from([0, 1, 0.5, 2.0]))}).outputs
    else:  # layer_norm over the last dim (types only: this graph is never run)
        assert t.rank >= 1 and t.dtype.is_float
        outs = g.add_node("layer_norm", [x, x, x], {"shape": [t.shape[-1]], "eps": draw(st.sampled_from([1e-5, 1, 1e-6]))}).outputs
    pool.extend(outs)


@st.composite
def graphs(draw) -> ir.Graph:  # noqa: ANN001
    g = ir.Graph()
    pool = []
    # every symbol is bound by an input of its own
    pool.append(g.add_input("x", TensorType(f32, (B, S))))
    for i, t in enumerate(draw(st.lists(input_types, min_size=0, max_size=3))):
        pool.append(g.add_input(f"in{i}", t))
    if draw(st.booleans()):
        g.add_input("n", SymIntType(B))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    pool.append(g.add_constant("layer.weight", torch.randn(4, 3, generator=gen)))
    if draw(st.booleans()):
        pool.append(g.add_constant("bias_1", torch.randint(1, 9, (3,), generator=gen)))
    for _ in range(draw(st.integers(1, 8))):
        n_before = len(g.nodes)
        try:
            _step(g, pool, draw)
        except (TypeError, InferenceError, AssertionError):
            del g.nodes[n_before:]  # the op rejected this combination: drop any partial nodes
    g.outputs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    ir.verify(g)
    return g


@SETTINGS
@given(graphs())
def test_parser_round_trips_generated_graphs(g: ir.Graph) -> None:
    text = ir.format_graph(g)
    again = ir.parse_graph(text)
    assert ir.format_graph(again) == text


@SETTINGS
@given(graphs())
def test_reparsed_generated_graphs_verify(g: ir.Graph) -> None:
    again = ir.parse_graph(ir.format_graph(g))
    ir.verify(again)
    assert [n.op for n in again.nodes] == [n.op for n in g.nodes]
    assert [str(v.type) for v in again.outputs] == [str(v.type) for v in g.outputs]


@SETTINGS
@given(graphs())
def test_source_comments_do_not_change_the_parse(g: ir.Graph) -> None:
    for n in g.nodes:
        n.source = ir.SourceInfo(file="model.py", line=7, module="h.0.attn")
    with_comments = ir.format_graph(g, source=True)
    assert "# model.py:7 (h.0.attn)" in with_comments or not g.nodes
    assert ir.format_graph(ir.parse_graph(with_comments)) == ir.format_graph(g)


def test_parser_attaches_constant_data_by_name() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=gen)
    g = ir.Graph()
    x = g.add_input("x", TensorType(f32, (B, 3)))
    c = g.add_constant("layer.weight", w)
    g.outputs = [g.call("linear", x, c)]
    again = ir.parse_graph(ir.format_graph(g), constants={"layer.weight": w})
    assert again.constant_data["layer.weight"] is w
    xin = torch.randn(2, 3, generator=gen)
    torch.testing.assert_close(ir.run_graph(again, [xin])[0], xin @ w.T)


def test_float_attrs_given_as_ints_round_trip() -> None:
    g = ir.Graph()
    x = g.add_input("x", TensorType(f32, (B, 4)))
    g.outputs = [g.call("var", x, correction=0), g.call("layer_norm", x, g.call("abs", x), g.call("abs", x), shape=[4], eps=1)]
    text = ir.format_graph(g)
    assert "correction=0.0" in text and "eps=1.0" in text
    assert ir.format_graph(ir.parse_graph(text)) == text


@pytest.mark.parametrize("value", [1, 1.0, True, -3, -2.5, math.inf, -math.inf, 1e-7, 1e16, B, S - 1])
def test_scalar_attrs_keep_their_kind_through_text(value: object) -> None:
    g = ir.Graph()
    x = g.add_input("x", TensorType(i64, (B, S)))
    g.outputs = [g.call("add", x, rhs=value)]
    again = ir.parse_graph(ir.format_graph(g))
    got = again.nodes[0].attrs["rhs"]
    assert type(got) is type(value) or (isinstance(value, sympy.Expr) and isinstance(got, sympy.Expr))
    assert got == value
    assert again.outputs[0].type == g.outputs[0].type


# --- the dim grammar -----------------------------------------------------------------------

DIM_TEXTS = [
    "B", "7", "B*S", "B + 1", "-B + 2", "B // 2", "(B + 1) // 2", "B % 4", "(B + 1) % 4",
    "Max(B, S)", "Max(B, S) + 1", "Max(Max(B, S), 4)", "Min(B, 3)", "3*(B // 2)", "B*B",
    "-(B*S)", "B // 2 % 3", "B % 3 // 2", "B // (S // 2)", "B*S - S", "2*B*S + 3",
]


@pytest.mark.parametrize("text", DIM_TEXTS)
def test_format_dim_round_trips_parse_dim(text: str) -> None:
    d = ir.parse_dim(text)
    printed = ir.format_dim(d)
    assert sympy.simplify(ir.parse_dim(printed) - d) == 0
    assert ir.format_dim(ir.parse_dim(printed)) == printed


@pytest.mark.parametrize("text", ["B // 2", "(B + S) // 3", "B % 4", "Max(B, S)", "Min(B, 3) * S", "-B + 9"])
def test_parse_dim_means_python_integer_arithmetic(text: str) -> None:
    d = ir.parse_dim(text)
    for b in range(1, 9):
        for s in range(1, 5):
            py = text.replace("Max", "max").replace("Min", "min").replace("B", str(b)).replace("S", str(s))
            assert ir.symbolic.evaluate_dim(d, {B: b, S: s}) == eval(py)  # noqa: S307 - trusted test text


small_dims = st.recursive(
    st.one_of(st.sampled_from([B, S]), st.integers(1, 9).map(sympy.Integer)),
    lambda inner: st.one_of(
        st.builds(lambda a, b: a + b, inner, inner),
        st.builds(lambda a, b: a * b, inner, inner),
        st.builds(lambda a, b: a - b, inner, inner),
        st.builds(lambda a, k: sympy.floor(a / k), inner, st.integers(2, 5)),
        st.builds(lambda a, k: sympy.Mod(a, k), inner, st.integers(2, 5)),
        st.builds(sympy.Max, inner, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=50, deadline=None)
@given(small_dims)
def test_format_dim_of_generated_expressions_parses_back_to_an_equal_value(d: sympy.Expr) -> None:
    try:
        text = ir.format_dim(d)
    except ValueError:
        return  # an expression outside the grammar (e.g. sympy rewrote floor into ceiling)
    back = ir.parse_dim(text)
    for b, s in [(1, 1), (2, 3), (5, 2), (7, 11)]:
        env = {B: b, S: s}
        want = d.xreplace({B: b, S: s})
        assert ir.symbolic.evaluate_dim(back, env) == int(want)


@pytest.mark.parametrize("text", ['__import__("os")', "__import__('os').system('true')", "B; 1", "B ** 2", "lambda: 1", "B.real", "", "B +", "Max(B)", "(B"])
def test_parse_dim_rejects_text_outside_the_grammar_without_eval(text: str) -> None:
    with pytest.raises(ValueError):
        ir.parse_dim(text)


def test_parse_graph_never_evals_a_dim() -> None:
    text = 'graph(%x: f32[__import__("os").system("false")]) {\n  return %x\n}\n'
    with pytest.raises((ir.ParseError, ValueError)):
        ir.parse_graph(text)


def test_parse_graph_never_evals_an_attribute() -> None:
    text = 'graph(%x: f32[B]) {\n  %0 = add(%x) {rhs=__import__("os")} : f32[B]\n  return %0\n}\n'
    with pytest.raises(ir.ParseError, match="line 2"):
        ir.parse_graph(text)


# --- parse errors name the line ------------------------------------------------------------

GOOD = "graph(%x: f32[B, 4]) {\n  %0 = neg(%x) : f32[B, 4]\n  return %0\n}\n"


def test_good_text_parses() -> None:
    assert ir.format_graph(ir.parse_graph(GOOD)) == GOOD


def test_parser_rejects_an_undefined_value_naming_the_line() -> None:
    text = GOOD.replace("neg(%x)", "neg(%y)")
    with pytest.raises(ir.ParseError, match=r"line 2: use of undefined value %y"):
        ir.parse_graph(text)


def test_parser_rejects_an_undefined_return_value_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 3: use of undefined value %7"):
        ir.parse_graph(GOOD.replace("return %0", "return %7"))


def test_parser_rejects_an_unknown_op_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 2: .*unknown op 'frobnicate'"):
        ir.parse_graph(GOOD.replace("neg(", "frobnicate("))


def test_parser_rejects_an_unknown_aten_op_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 2: .*aten.nosuchop.default"):
        ir.parse_graph(GOOD.replace("neg(", "aten.nosuchop.default("))


def test_parser_rejects_a_wrong_result_count_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 2: 2 results but 1 types"):
        ir.parse_graph(GOOD.replace("%0 = neg", "%0, %1 = neg"))


def test_parser_rejects_a_value_defined_twice_naming_the_line() -> None:
    text = "graph(%x: f32[4]) {\n  %0 = neg(%x) : f32[4]\n  %0 = abs(%x) : f32[4]\n  return %0\n}\n"
    with pytest.raises(ir.ParseError, match=r"line 3: %0 is defined twice"):
        ir.parse_graph(text)


def test_parser_rejects_an_unknown_element_type_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 2: unknown element type 'f31'"):
        ir.parse_graph(GOOD.replace(": f32[B, 4]\n", ": f31[B, 4]\n"))


def test_parser_rejects_a_wrong_arity_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 2: op neg takes 1 inputs, got 2"):
        ir.parse_graph(GOOD.replace("neg(%x)", "neg(%x, %x)"))


def test_parser_rejects_an_unknown_attribute_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 2: .*no attribute"):
        ir.parse_graph(GOOD.replace("neg(%x)", "neg(%x) {bogus=1}"))


def test_parser_rejects_unreadable_characters_naming_the_line() -> None:
    with pytest.raises(ir.ParseError, match=r"line 2: cannot read"):
        ir.parse_graph(GOOD.replace("neg(%x)", "neg(%x) @ $"))


def test_parser_rejects_empty_text() -> None:
    with pytest.raises(ir.ParseError, match="empty"):
        ir.parse_graph("  \n# only a comment\n")


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(ir.ParseError, ValueError)


def test_every_dtype_name_round_trips_through_a_type() -> None:
    for name, dt in DTYPES.items():
        text = f"graph(%x: {name}[B, 2]) {{\n  return %x\n}}\n"
        g = ir.parse_graph(text)
        assert g.inputs[0].type == TensorType(dt, (B, 2))
        assert ir.format_graph(g) == text
