"""Symbolic dims: sympy expressions over named, positive integer symbols.

One grammar serves the text form, error messages and generated code:
    expr := term (("+" | "-") term)*      term := factor (("*" | "//" | "%") factor)*
    factor := INT | NAME | "(" expr ")" | "-" factor | ("Max" | "Min") "(" expr "," expr ")"
Parsing is a hand-written recursive descent (never `eval`/`sympify`), so IR text from a file can
never run code.
"""

from __future__ import annotations

import re
from typing import Callable

import sympy

Dim = int | sympy.Expr

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\s*(\d+|[A-Za-z_][A-Za-z0-9_]*|//|[-+*%(),])")


def symbol(name: str) -> sympy.Symbol:
    """The kiln symbol called `name` (every dim symbol is a positive integer)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad symbol name {name!r}: use letters, digits and _")
    return sympy.Symbol(name, integer=True, positive=True)


def simplify_dim(d: Dim) -> Dim:
    """An int when the expression is a constant, else the expression itself."""
    if isinstance(d, sympy.Expr):
        if d.is_Integer:
            return int(d)
        return d
    if isinstance(d, bool) or not isinstance(d, int):
        raise TypeError(f"a dim must be an int or sympy expression, got {d!r}")
    return d


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def dim_symbols(d: Dim) -> set[sympy.Symbol]:
    return set() if isinstance(d, int) else set(d.free_symbols)


def format_dim(d: Dim, name: Callable[[sympy.Symbol], str] = lambda s: s.name) -> str:
    """Print a dim in kiln's grammar; `name` renames symbols (codegen uses kiln-made names)."""
    return _fmt(sympy.Integer(d) if isinstance(d, int) else d, name, 0)


_PREC_ADD, _PREC_MUL, _PREC_ATOM = 1, 2, 3


def _fmt(e: sympy.Expr, name: Callable[[sympy.Symbol], str], outer: int) -> str:
    text, prec = _fmt_prec(e, name)
    return f"({text})" if prec < outer else text


def _fmt_prec(e: sympy.Expr, name: Callable[[sympy.Symbol], str]) -> tuple[str, int]:
    if e.is_Integer:
        v = int(e)
        return (str(v), _PREC_ATOM) if v >= 0 else (f"-{-v}", _PREC_ADD)
    if e.is_Symbol:
        return name(e), _PREC_ATOM
    if isinstance(e, sympy.Add):
        terms = sorted(e.args, key=_order_key)
        out = _fmt(terms[0], name, _PREC_ADD)
        for t in terms[1:]:
            coeff, rest = t.as_coeff_Mul()
            if coeff.is_negative:
                out += " - " + _fmt(-t, name, _PREC_MUL)
            else:
                out += " + " + _fmt(t, name, _PREC_MUL)
        return out, _PREC_ADD
    if isinstance(e, sympy.Mul):
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1:
            return "-" + _fmt(rest, name, _PREC_ATOM), _PREC_ADD
        if not coeff.is_Integer:
            raise ValueError(f"dim {e} is not an integer expression")
        factors = sorted(sympy.Mul.make_args(e), key=lambda f: (0 if f.is_Number else 1, _order_key(f)))
        return "*".join(_fmt(f, name, _PREC_ATOM) for f in factors), _PREC_MUL
    if isinstance(e, sympy.Pow) and e.exp.is_Integer and int(e.exp) > 0:
        return "*".join([_fmt(e.base, name, _PREC_ATOM)] * int(e.exp)), _PREC_MUL
    if isinstance(e, sympy.floor):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        return f"{_fmt(num, name, _PREC_MUL)} // {_fmt(den, name, _PREC_ATOM)}", _PREC_MUL
    if isinstance(e, sympy.Mod):
        return f"{_fmt(e.args[0], name, _PREC_MUL)} % {_fmt(e.args[1], name, _PREC_ATOM)}", _PREC_MUL
    if isinstance(e, (sympy.Max, sympy.Min)):
        fn = "Max" if isinstance(e, sympy.Max) else "Min"
        args = [_fmt(a, name, 0) for a in sorted(e.args, key=_order_key)]
        out = args[0]
        for a in args[1:]:  # n-ary Max nests as binary calls
            out = f"{fn}({out}, {a})"
        return out, _PREC_ATOM
    raise ValueError(f"dim expression {e} uses an operation kiln's grammar lacks")


def _order_key(e: sympy.Expr) -> tuple:
    # Deterministic order: symbols by name, constants last in sums.
    return (1 if e.is_Number else 0, sympy.default_sort_key(e))


def parse_dim(text: str) -> Dim:
    """Parse a dim written in kiln's grammar."""
    tokens = _tokenize(text)
    p = _Parser(tokens, text)
    e = p.expr()
    if p.i != len(tokens):
        raise ValueError(f"unexpected {tokens[p.i]!r} in dim {text!r}")
    return simplify_dim(sympy.Integer(e) if isinstance(e, int) else e)


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"bad character {text[pos]!r} in dim {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], text: str):
        self.t, self.i, self.text = tokens, 0, text

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, expect: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expect is not None and tok != expect):
            raise ValueError(f"expected {expect or 'more'} in dim {self.text!r}")
        self.i += 1
        return tok

    def expr(self) -> sympy.Expr:
        e = self.term()
        while self.peek() in ("+", "-"):
            e = e + self.term() if self.take() == "+" else e - self.term()
        return e

    def term(self) -> sympy.Expr:
        e = self.factor()
        while self.peek() in ("*", "//", "%"):
            op, rhs = self.take(), self.factor()
            e = e * rhs if op == "*" else sympy.floor(e / rhs) if op == "//" else sympy.Mod(e, rhs)
        return e

    def factor(self) -> sympy.Expr:
        tok = self.take()
        if tok == "-":
            return -self.factor()
        if tok == "(":
            e = self.expr()
            self.take(")")
            return e
        if tok.isdigit():
            return sympy.Integer(int(tok))
        if tok in ("Max", "Min") and self.peek() == "(":
            self.take("(")
            a = self.expr()
            self.take(",")
            b = self.expr()
            self.take(")")
            return sympy.Max(a, b) if tok == "Max" else sympy.Min(a, b)
        if _NAME.fullmatch(tok):
            return symbol(tok)
        raise ValueError(f"unexpected {tok!r} in dim {self.text!r}")


def evaluate_dim(d: Dim, env: dict[sympy.Symbol, int]) -> int:
    """The value of a dim once its symbols are bound (slow path: tests and inference checks)."""
    if isinstance(d, int):
        return d
    v = d.xreplace({s: sympy.Integer(env[s]) for s in d.free_symbols})
    if not v.is_Integer:
        raise ValueError(f"dim {d} did not evaluate to an integer with {env}")
    return int(v)
