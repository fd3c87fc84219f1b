"""Golden before/after IR for every pass, plus a numeric check of each fixture.

A fixture is tests/golden/<pass name>/<case>.ir:

    # covers: 0-dim, view          (free-form tags; the coverage test reads them)
    graph(...) { ... }             the input IR
    # after
    graph(...) { ... }             the exact IR the pass must print

A fixture may configure the pass with `# options: {json}` (CompileOptions fields; a
"quantization" object gives QuantScheme's fields). quantize_weights changes results by design:
its fixtures are compared within the scheme's error bound (QUANT_TOLERANCE) instead of exactly.

plan_memory leaves the text unchanged; its fixtures also give `# plan: arena=<bytes> naive=<bytes>`
(at the harness's symbol values) and every plan is checked against the MemoryPlan invariants.

Constants get deterministic random data derived from their name; symbols get random sizes. The
pass must print exactly the "after" text, verify, and compute the same outputs as the input
graph on the reference interpreter (each run on fresh copies of inputs and constants, from the
same torch RNG seed).
"""

from __future__ import annotations

import json
import pathlib
import re
import zlib

import pytest
import torch

from kiln import passes
from kiln.ir import TensorType, format_graph, parse_graph, run_graph, verify
from kiln.ir.symbolic import evaluate_dim
from kiln.options import CompileOptions

GOLDEN = pathlib.Path(__file__).parent / "golden"
PASSES = {
    p.name: p
    for p in [
        passes.eliminate_dead_nodes, passes.eliminate_common_subexpressions, passes.fold_constants, passes.simplify,
        passes.fuse_patterns, passes.fuse_projections, passes.fuse_elementwise, passes.fuse_epilogues, passes.plan_memory,
        passes.quantize_weights,
    ]
}
# max |quantized - exact| / max |exact| allowed per weight format (K <= 64, normal weights)
QUANT_TOLERANCE = {"int8": 2e-2, "int4": 0.3}
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


def fixture_options(path: pathlib.Path) -> CompileOptions:
    """The fixture's `# options: {json}` line as CompileOptions (the defaults without one)."""
    m = re.search(r"^# options: (.*)$", path.read_text(), re.M)
    fields = json.loads(m[1]) if m else {}
    if isinstance(fields.get("quantization"), dict):
        fields["quantization"] = passes.QuantScheme(**fields["quantization"])
    return CompileOptions(**fields)


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
    env = {s: 2 + zlib.crc32(s.name.encode()) % 4 for s in g.symbols()}
    options = fixture_options(path)
    ctx = passes.PassContext(options, symbol_values=env)
    out = PASSES[path.parent.name](g, ctx)
    verify(out)
    assert format_graph(out) == after
    if format_graph(g) == after and out.memory_plan is None:
        assert out is g  # unchanged graphs come back as the same object (plan_memory's carry a plan)
    if path.parent.name == "plan_memory":  # the text is unchanged: the plan is the golden part
        check_memory_plan(out, env)
        golden = re.search(r"^# plan: arena=(\d+) naive=(\d+)$", path.read_text(), re.M)
        assert golden is not None, "plan_memory fixtures give '# plan: arena=<bytes> naive=<bytes>'"
        assert (out.memory_plan.arena_bytes, out.memory_plan.naive_bytes) == (int(golden[1]), int(golden[2]))
    inputs = [_random_tensor(v.type, 100 + i, env) if isinstance(v.type, TensorType) else env[v.type.expr] for i, v in enumerate(g.inputs)]
    ref, got = _run(g, inputs), _run(out, inputs)
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if options.quantization is not None:
            err = (a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)
            assert err <= QUANT_TOLERANCE[options.quantization.weights], err
            continue
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6, equal_nan=True)


def check_memory_plan(g, env: dict) -> None:  # noqa: ANN001
    """The plan covers every node result at its size at `env`, graph outputs live to the end, no
    two buffers live at once share a byte, and reuse never makes the arena bigger than naive."""
    from kiln.passes.memory import ALIGN, liveness

    plan = g.memory_plan
    assert plan is not None and plan.symbol_values == env
    results = [v for n in g.nodes for v in n.outputs]
    live = liveness(g)
    assert [b.value for b in plan.buffers] == list(range(len(results)))
    for b in plan.buffers:
        v = results[b.value]
        n = 1
        for d in v.type.shape:
            n *= evaluate_dim(d, env)
        assert b.nbytes == -(-n * v.type.dtype.itemsize // ALIGN) * ALIGN and b.offset % ALIGN == 0
        assert (b.start, b.end) == live[v]
        if any(v is o for o in g.outputs):
            assert b.end == len(g.nodes)  # outputs live to the end
    for i, a in enumerate(plan.buffers):
        for b in plan.buffers[i + 1:]:
            if a.start <= b.end and b.start <= a.end:  # live at once: disjoint bytes
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)
    assert plan.arena_bytes == max((b.offset + b.nbytes for b in plan.buffers), default=0)
    assert plan.naive_bytes == sum(b.nbytes for b in plan.buffers)
    assert plan.arena_bytes <= plan.naive_bytes


REQUIRED_TAGS = {"0-dim", "size-1 broadcast", "int64 index", "view", "in-place", "output and intermediate", "random"}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_has_eight_fixtures_covering_the_required_cases(name: str) -> None:
    fixtures = sorted((GOLDEN / name).glob("*.ir"))
    assert len(fixtures) >= 8, f"{name} has {len(fixtures)} golden fixtures"
    tags: set[str] = set()
    for f in fixtures:
        tags |= split_fixture(f)[2]
    assert REQUIRED_TAGS <= tags, f"{name} fixtures miss {sorted(REQUIRED_TAGS - tags)}"
