"""plan_memory's MemoryPlan: hand-computed layouts and the invariants on random graphs.

The golden fixtures (tests/golden/plan_memory) check the unchanged text, the arena/naive totals
and the invariants (via `check_memory_plan`); these tests pin exact offsets on small cases.
"""

from __future__ import annotations

import random

import pytest
from test_pass_golden import check_memory_plan

from kiln import passes
from kiln.ir import format_graph, parse_graph
from kiln.options import CompileOptions


def plan(text: str, env: dict | None = None):  # noqa: ANN201
    g = parse_graph(text)
    out = passes.plan_memory(g, passes.PassContext(CompileOptions(), symbol_values=dict(env or {})))
    assert format_graph(out) == format_graph(g) and g.memory_plan is None  # nodes untouched, input not mutated
    return g, out


CHAIN = """graph(%x: f32[256]) {
  %0 = exp(%x) : f32[256]
  %1 = neg(%0) : f32[256]
  %2 = sin(%1) : f32[256]
  return %2
}
"""


def test_chain_of_three_1kib_results_reuses_the_first_buffer() -> None:
    _, out = plan(CHAIN)
    p = out.memory_plan
    assert [(b.value, b.nbytes, b.start, b.end, b.offset) for b in p.buffers] == [
        (0, 1024, 0, 1, 0),
        (1, 1024, 1, 2, 1024),  # read at node 1 while %1 is written: may not share %0's bytes
        (2, 1024, 2, 3, 0),  # %0 is dead after node 1: %2 takes its bytes; an output, live to the end
    ]
    assert (p.arena_bytes, p.naive_bytes) == (2048, 3072)
    check_memory_plan(out, {})


def test_sizes_round_up_to_the_alignment_and_follow_the_symbol_values() -> None:
    text = """graph(%x: f32[B, 3]) {
  %0 = sum(%x) : f32[]
  %1 = exp(%x) : f32[B, 3]
  %2 = gt(%1) {rhs=1.0} : b8[B, 3]
  return %0, %2
}
"""
    g = parse_graph(text)
    (b,) = g.symbols()
    for n, big in [(5, 64), (6, 128), (100, 1216)]:  # 4*3*n bytes of f32, rounded up to 64
        _, out = plan(text, {b: n})
        sizes = [x.nbytes for x in out.memory_plan.buffers]
        assert sizes == [64, big, -(-3 * n // 64) * 64]
        check_memory_plan(out, {b: n})


def test_largest_first_best_fit_reuses_dead_bytes() -> None:
    text = """graph(%x: f32[512], %y: f32[256]) {
  %0 = exp(%x) : f32[512]
  %1 = exp(%y) : f32[256]
  %2 = neg(%y) : f32[256]
  %3 = add(%1, %2) : f32[256]
  %4 = sum(%0) : f32[]
  %5 = mul(%3, %4) : f32[256]
  return %5
}
"""
    _, out = plan(text)
    p = out.memory_plan
    assert [(b.value, b.nbytes, b.start, b.end, b.offset) for b in p.buffers] == [
        (0, 2048, 0, 4, 0),  # largest first
        (1, 1024, 1, 3, 2048),
        (2, 1024, 2, 3, 3072),
        (3, 1024, 3, 5, 4096),  # %0, %1, %2 are all still read at node 3
        (4, 64, 4, 5, 2048),  # the 2 KiB gap left by %1 and %2, between %0/%5 and %3
        (5, 1024, 5, 6, 0),  # %0 is dead after node 4: the output takes its bytes
    ]
    assert (p.arena_bytes, p.naive_bytes) == (5120, 6208)
    check_memory_plan(out, {})


def test_unknown_symbol_values_give_no_plan() -> None:
    g = parse_graph("graph(%x: f32[B, 4]) {\n  %0 = exp(%x) : f32[B, 4]\n  return %0\n}\n")
    out = passes.plan_memory(g, passes.PassContext(CompileOptions()))
    assert out is g and out.memory_plan is None


def test_graph_without_nodes_plans_an_empty_arena() -> None:
    _, out = plan("graph(%x: f32[4]) {\n  return %x\n}\n")
    assert out.memory_plan.buffers == () and out.memory_plan.arena_bytes == out.memory_plan.naive_bytes == 0


@pytest.mark.parametrize("seed", range(20))
def test_invariants_on_random_dags(seed: int) -> None:
    """Random DAGs of unary/binary ops over vectors of a few sizes, some results returned."""
    rng = random.Random(seed)
    lines, vals = [], [("x", "4"), ("y", "64"), ("z", "300"), ("u", "N")]
    for i in range(rng.randint(3, 14)):
        a = rng.choice(vals)
        same = [v for v in vals if v[1] == a[1]]
        if rng.random() < 0.5 and len(same) > 1:
            b = rng.choice(same)
            lines.append(f"  %{i} = add(%{a[0]}, %{b[0]}) : f32[{a[1]}]")
            vals.append((str(i), a[1]))
        elif a[1] == "N" and rng.random() < 0.5:
            lines.append(f"  %{i} = cat(%{a[0]}, %{a[0]}) {{dim=0}} : f32[2*N]")
            vals.append((str(i), "2*N"))
        else:
            lines.append(f"  %{i} = {rng.choice(['exp', 'neg', 'sin'])}(%{a[0]}) : f32[{a[1]}]")
            vals.append((str(i), a[1]))
    outs = rng.sample([v[0] for v in vals[4:]], k=rng.randint(1, min(3, len(vals) - 4)))
    text = "graph(%x: f32[4], %y: f32[64], %z: f32[300], %u: f32[N]) {\n" + "\n".join(lines)
    text += "\n  return " + ", ".join("%" + o for o in outs) + "\n}\n"
    env = {s: rng.randint(1, 200) for s in parse_graph(text).symbols()}
    _, out = plan(text, env)
    check_memory_plan(out, env)
