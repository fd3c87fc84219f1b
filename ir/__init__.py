"""kiln IR: typed SSA graphs of registry ops over tensors with symbolic (sympy) shapes.

Takes nothing; gives the data structures every other layer uses: Graph/Node/Value, TensorType,
the op registry (each op declared once: attributes, inference, effects, reference impl), the
canonical printer and parser, the verifier, a networkx view and the reference interpreter.
"""

from . import opset  # noqa: F401  (registers kiln's ops)
from .dtypes import DType, by_name, from_torch
from .graph import Graph, Node, SourceInfo, Value
from .interpret import run_graph
from .ops import REGISTRY, Attr, AttrKind, Effect, InferenceError, Op, declare, get_op
from .parser import ParseError, parse_graph
from .printer import format_graph
from .symbolic import format_dim, parse_dim, symbol
from .types import SymIntType, TensorType
from .verifier import VerificationError, verify

__all__ = [
    "REGISTRY", "Attr", "AttrKind", "DType", "Effect", "Graph", "InferenceError", "Node", "Op",
    "ParseError", "SourceInfo", "SymIntType", "TensorType", "Value", "VerificationError", "by_name",
    "declare", "format_dim", "format_graph", "from_torch", "get_op", "parse_dim", "parse_graph",
    "run_graph", "symbol", "verify",
]
