"""Golden before/after IR for every pass, plus a numeric check of each fixture.

A fixture is tests/golden/<pass name>/<case>.ir:

    # covers: 0-dim, view          (free-form tags; the coverage test reads them)
    graph(...) { ... }             the input IR
    # after
    graph(...) { ... }             the exact IR the pass must print

Constants get deterministic random data derived from their name; symbols get random sizes. The
pass must print exactly the "after" text, verify, and compute the same outputs as the input
graph on the reference interpreter (each run on fresh copies of inputs and constants, from the
same torch RNG seed).
"""

from __future__ import annotations

import pathlib
import zlib

import pytest
import torch

from kiln import passes
from kiln.ir import TensorType, format_graph, parse_graph, run_graph, verify
from kiln.ir.symbolic import evaluate_dim
from kiln.options import CompileOptions

GOLDEN = pathlib.Path(__file__).parent / "golden"
PASSES = {p.name: p for p in [passes.eliminate_dead_nodes, passes.eliminate_common_subexpressions, passes.fold_constants, passes.simplify]}
FIXTURES = sorted(GOLDEN.glob("*/*.ir"))


def split_fixture(path: pathlib.Path) -> tuple[str, str, set[str]]:
    text = path.read_text()
    tags: set[str] = set()
    before, after = text.split("\n# after\n")
    for line in before.splitlines():
        if line.startswith("# covers:"):
            tags |= {t.strip() for t in line.split(":", 1)[1].split(",") if t.strip()}
    strip = lambda s: "\n".join(ln for ln in s.splitlines() if not ln.startswith("#")).strip() + "\n"  # noqa: E731
    return strip(before), strip(after), tags


def _random_tensor(t: TensorType, seed: int, env: dict) -> torch.Tensor:
    shape = [evaluate_dim(d, env) for d in t.shape]
    gen = torch.Generator().manual_seed(seed)
    if t.dtype.is_float:
        return torch.randn(shape, generator=gen).to(t.dtype.torch)
    if t.dtype.kind == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    return torch.randint(0, 2, shape, generator=gen).to(t.dtype.torch)  # valid indices for any dim >= 2


def fake_constants(text: str) -> dict[str, torch.Tensor]:
    g = parse_graph(text)
    return {name: _random_tensor(v.type, zlib.crc32(name.encode()), {}) for name, v in g.constants.items()}


def _run(g, inputs: list) -> list:  # noqa: ANN001
    """Run on private copies (writes such as copy_to must not leak into the other run) from the
    same RNG seed (random ops draw the same numbers when the pass keeps them in order)."""
    torch.manual_seed(0)
    fresh = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
    return run_graph(g, fresh, {k: t.clone() for k, t in g.constant_data.items() if t is not None})


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_pass_output_matches_golden_and_preserves_results(path: pathlib.Path) -> None:
    before, after, _ = split_fixture(path)
    g = parse_graph(before, fake_constants(before))
    verify(g)
    ctx = passes.PassContext(CompileOptions())
    out = PASSES[path.parent.name](g, ctx)
    verify(out)
    assert format_graph(out) == after
    if format_graph(g) == after:
        assert out is g  # unchanged graphs come back as the same object
    env = {s: 2 + zlib.crc32(s.name.encode()) % 4 for s in g.symbols()}
    inputs = [_random_tensor(v.type, 100 + i, env) if isinstance(v.type, TensorType) else env[v.type.expr] for i, v in enumerate(g.inputs)]
    ref, got = _run(g, inputs), _run(out, inputs)
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6, equal_nan=True)


REQUIRED_TAGS = {"0-dim", "size-1 broadcast", "int64 index", "view", "in-place", "output and intermediate", "random"}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_has_eight_fixtures_covering_the_required_cases(name: str) -> None:
    fixtures = sorted((GOLDEN / name).glob("*.ir"))
    assert len(fixtures) >= 8, f"{name} has {len(fixtures)} golden fixtures"
    tags: set[str] = set()
    for f in fixtures:
        tags |= split_fixture(f)[2]
    assert REQUIRED_TAGS <= tags, f"{name} fixtures miss {sorted(REQUIRED_TAGS - tags)}"
