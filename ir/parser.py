"""Parse kiln's canonical IR text (see `ir.printer`) back into a Graph.

Hand-written and eval-free: text from a dump or a bug report can never run code. Constants get
their types from the text; pass `constants={name: tensor}` to attach data (else they hold None).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from .dtypes import DTYPES, by_name
from .graph import Graph, Value
from .ops import AttrKind, get_op
from .symbolic import parse_dim
from .types import SymIntType, TensorType, ValueType

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<ref>%[A-Za-z0-9_.]+)
    | (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<num>\d+\.\d*(?:e[-+]?\d+)?|\d+e[-+]?\d+|\d+)
    | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<op>//|[-+*%(),=:{}\[\]])
    )""",
    re.VERBOSE,
)


class ParseError(ValueError):
    pass


def _tokenize(line: str, lineno: int) -> list[tuple[str, str]]:
    out, pos = [], 0
    line = _strip_comment(line)
    while pos < len(line):
        if not line[pos:].strip():
            break
        m = _TOKEN.match(line, pos)
        if not m:
            raise ParseError(f"line {lineno}: cannot read {line[pos:pos + 20]!r}")
        kind = m.lastgroup or "op"
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _strip_comment(line: str) -> str:
    in_str = False
    for i, c in enumerate(line):
        if c == '"' and (i == 0 or line[i - 1] != "\\"):
            in_str = not in_str
        elif c == "#" and not in_str:
            return line[:i]
    return line


class _Line:
    def __init__(self, tokens: list[tuple[str, str]], lineno: int, text: str):
        self.t, self.i, self.lineno, self.text = tokens, 0, lineno, text

    def error(self, msg: str) -> ParseError:
        return ParseError(f"line {self.lineno}: {msg}: {self.text.strip()!r}")

    def peek(self) -> str | None:
        return self.t[self.i][1] if self.i < len(self.t) else None

    def kind(self) -> str | None:
        return self.t[self.i][0] if self.i < len(self.t) else None

    def take(self, expect: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expect is not None and tok != expect):
            raise self.error(f"expected {expect!r}, found {tok!r}")
        self.i += 1
        return tok

    def done(self) -> bool:
        return self.i >= len(self.t)

    def until(self, stops: set[str]) -> list[str]:
        """Tokens up to a stop token at bracket depth 0."""
        out, depth = [], 0
        while not self.done():
            tok = self.peek()
            if depth == 0 and tok in stops:
                break
            depth += tok in ("(", "[") or 0
            depth -= tok in (")", "]") or 0
            out.append(self.take())
        return out

    def type(self) -> ValueType:
        tok = self.take()
        if tok == "sym":
            self.take("(")
            expr = parse_dim(" ".join(self.until({")"})))
            self.take(")")
            return SymIntType(expr)
        if tok not in DTYPES:
            raise self.error(f"unknown element type {tok!r}")
        self.take("[")
        dims = []
        while self.peek() != "]":
            dims.append(parse_dim(" ".join(self.until({",", "]"}))))
            if self.peek() == ",":
                self.take(",")
        self.take("]")
        return TensorType(by_name(tok), tuple(dims))

    def value(self) -> Any:
        if self.peek() == "[":
            self.take("[")
            items = []
            while self.peek() != "]":
                items.append(self.value())
                if self.peek() == ",":
                    self.take(",")
            self.take("]")
            return tuple(items)
        toks = self.until({",", "]", "}"})
        if not toks:
            raise self.error("missing attribute value")
        return _literal(toks, self)


def _literal(toks: list[str], line: _Line) -> Any:
    text = " ".join(toks)
    if len(toks) == 1:
        t = toks[0]
        if t.startswith('"'):
            return json.loads(t)
        if t in ("none", "true", "false"):
            return {"none": None, "true": True, "false": False}[t]
        if t in ("inf", "nan"):
            return float(t)
        if t in DTYPES:
            return by_name(t)
    if toks in (["-", "inf"],):
        return float("-inf")
    body = toks[1:] if toks[0] == "-" and len(toks) == 2 else toks
    if len(body) == 1 and re.fullmatch(r"\d+\.\d*(e[-+]?\d+)?|\d+e[-+]?\d+", body[0]):
        return float(text.replace(" ", ""))
    try:
        return parse_dim(text)
    except ValueError as e:
        raise line.error(str(e)) from None


def parse_graph(text: str, constants: dict[str, torch.Tensor] | None = None) -> Graph:
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if _strip_comment(ln).strip()]
    if not lines:
        raise ParseError("empty IR text")
    g, end = _parse_block(lines, 0, constants)
    if end != len(lines):
        lineno, raw = lines[end]
        raise ParseError(f"line {lineno}: text after the graph's closing brace: {raw.strip()!r}")
    return g


def _parse_block(lines: list[tuple[int, str]], i: int, constants: dict | None) -> tuple[Graph, int]:
    """Parse `graph(...) { ... }` starting at lines[i]; returns the graph and the next index."""
    g = Graph()
    env: dict[str, Value] = {}
    header = _Line(_tokenize(lines[i][1], lines[i][0]), lines[i][0], lines[i][1])
    header.take("graph")
    header.take("(")
    while header.peek() != ")":
        ref = header.take()
        header.take(":")
        env[ref] = g.add_input(ref[1:], header.type())
        if header.peek() == ",":
            header.take(",")
    header.take(")")
    header.take("{")
    i += 1
    while i < len(lines):
        lineno, raw = lines[i]
        ln = _Line(_tokenize(raw, lineno), lineno, raw)
        first = ln.peek()
        i += 1
        if first == "}":
            return g, i
        if first == "const":
            ln.take()
            ref = ln.take()
            ln.take(":")
            t = ln.type()
            data = (constants or {}).get(ref[1:])
            env[ref] = g.add_constant(ref[1:], data, t)  # type: ignore[arg-type]
        elif first == "return":
            ln.take()
            while not ln.done():
                g.outputs.append(_ref(env, ln.take(), ln))
                if ln.peek() == ",":
                    ln.take(",")
        else:
            i = _parse_node(g, env, ln, lines, i, constants)
    raise ParseError(f"line {lines[-1][0]}: graph is missing its closing brace")


def _ref(env: dict[str, Value], tok: str, ln: _Line) -> Value:
    if tok not in env:
        raise ln.error(f"use of undefined value {tok}")
    return env[tok]


def _parse_node(g: Graph, env: dict[str, Value], ln: _Line, lines: list, i: int, constants: dict | None) -> int:
    """Parse one node line (and a fusion group's nested body); returns the next line index."""
    results: list[str] = []
    if ln.kind() == "ref":
        while ln.peek() != "=":
            results.append(ln.take())
            if ln.peek() == ",":
                ln.take(",")
        ln.take("=")
    try:
        op = get_op(ln.take())
    except KeyError as e:
        raise ln.error(str(e)) from None
    ln.take("(")
    inputs = []
    while ln.peek() != ")":
        inputs.append(_ref(env, ln.take(), ln))
        if ln.peek() == ",":
            ln.take(",")
    ln.take(")")
    attrs: dict[str, Any] = {}
    if ln.peek() == "{":
        ln.take("{")
        while ln.peek() != "}":
            key = ln.take()
            ln.take("=")
            attrs[key] = _coerce(op, key, ln.value())
            if ln.peek() == ",":
                ln.take(",")
        ln.take("}")
    types: list[ValueType] = []
    if results:
        ln.take(":")
        while not ln.done() and ln.peek() != "{":
            types.append(ln.type())
            if ln.peek() == ",":
                ln.take(",")
    body = None
    if not ln.done():
        ln.take("{")
        if not ln.done() or i >= len(lines):
            raise ln.error("a nested graph must start on the next line")
        body, i = _parse_block(lines, i, constants)
        if i >= len(lines) or _strip_comment(lines[i][1]).strip() != "}":
            raise ln.error("a fusion group's body must be closed by a line with `}`")
        i += 1
    if len(types) != len(results):
        raise ln.error(f"{len(results)} results but {len(types)} types")
    try:
        node = g.add_node(op, inputs, attrs, out_types=types, subgraph=body)
    except TypeError as e:
        raise ln.error(str(e)) from None
    for ref, v in zip(results, node.outputs):
        if ref in env:
            raise ln.error(f"{ref} is defined twice")
        env[ref] = v
    return i


def _coerce(op: Any, key: str, value: Any) -> Any:
    attr = op.attr_index.get(key)
    if attr is not None and attr.kind is AttrKind.FLOAT and isinstance(value, int):
        return float(value)
    return value
