"""The pass manager's instruments: naming a failing pass, reproducers, enabling by name, printing."""

from __future__ import annotations

import os

import pytest
import torch

from kiln import ir, passes
from kiln.options import CompileOptions

TEXT = """graph(%x: f32[B, 4]) {
  %0 = add(%x) {rhs=0} : f32[B, 4]
  %1 = neg(%0) : f32[B, 4]
  %2 = exp(%x) : f32[B, 4]
  return %1
}
"""


@passes.graph_pass("always breaks")
def explode(g: ir.Graph, ctx: passes.PassContext) -> ir.Graph:
    raise RuntimeError("boom")


@passes.graph_pass("returns a graph the verifier rejects")
def corrupt(g: ir.Graph, ctx: passes.PassContext) -> ir.Graph:
    out = ir.parse_graph(ir.format_graph(g))
    out.outputs = [g.outputs[0]]  # a value from another graph
    return out


def test_failing_pass_is_named_with_the_passes_before_it_and_leaves_a_reproducer(tmp_path: os.PathLike) -> None:
    g = ir.parse_graph(TEXT)
    pipeline = [passes.eliminate_dead_nodes, passes.simplify, explode]
    with pytest.raises(passes.PassError) as e:
        passes.run_pipeline(g, pipeline, CompileOptions(), dump_dir=str(tmp_path))
    msg = str(e.value)
    assert "pass 'explode' failed: RuntimeError: boom" in msg
    assert "eliminate_dead_nodes, simplify" in msg
    repro = e.value.reproducer
    assert os.path.dirname(repro) == str(tmp_path)
    again = ir.parse_graph(open(repro).read())  # the reproducer is the failing pass's input
    assert ir.format_graph(again).count("neg(") == 1 and "add(" not in ir.format_graph(again)


def test_a_pass_that_breaks_the_verifier_is_caught_at_that_pass() -> None:
    with pytest.raises(passes.PassError, match="pass 'corrupt' failed: VerificationError"):
        passes.run_pipeline(ir.parse_graph(TEXT), [corrupt], CompileOptions())


def test_passes_are_disabled_by_name_and_unknown_names_are_rejected() -> None:
    g = ir.parse_graph(TEXT)
    out, records = passes.run_pipeline(g, passes.PIPELINE, CompileOptions(disable_passes={"simplify"}))
    assert "simplify" not in [r.name for r in records]
    assert "add(" in ir.format_graph(out)  # the x + 0 identity survives without simplify
    with pytest.raises(ValueError, match="unknown pass name"):
        passes.run_pipeline(g, passes.PIPELINE, CompileOptions(disable_passes={"simplfy"}))


def test_unchanged_passes_return_the_same_object_and_records_say_so() -> None:
    g = ir.parse_graph(TEXT)
    _, records = passes.run_pipeline(g, [passes.eliminate_dead_nodes, passes.eliminate_dead_nodes], CompileOptions())
    assert [r.changed for r in records] == [True, False]
    assert records[0].stats == {"nodes_removed": 1, "constants_removed": 0}
    assert records[1].graph is records[0].graph


def test_dumps_numbered_files_after_change_only_unless_asked(tmp_path: os.PathLike) -> None:
    g = ir.parse_graph(TEXT)
    pipeline = [passes.eliminate_dead_nodes, passes.fold_constants]
    passes.run_pipeline(g, pipeline, CompileOptions(), dump_dir=str(tmp_path / "a"))
    assert sorted(f for f in os.listdir(tmp_path / "a") if f.endswith(".txt")) == ["000_captured.txt", "001_eliminate_dead_nodes.txt"]
    passes.run_pipeline(g, pipeline, CompileOptions(dump_all_passes=True), dump_dir=str(tmp_path / "b"))
    assert "002_fold_constants.txt" in os.listdir(tmp_path / "b")
    assert oct(os.stat(tmp_path / "b").st_mode & 0o777) == "0o700"


def test_print_ir_after_change(capsys: pytest.CaptureFixture) -> None:
    g = ir.parse_graph(TEXT)
    passes.run_pipeline(g, [passes.eliminate_dead_nodes, passes.fold_constants], CompileOptions(print_ir="after_change"))
    err = capsys.readouterr().err
    assert "IR after eliminate_dead_nodes (changed)" in err and "fold_constants" not in err
    with pytest.raises(ValueError, match="print_ir"):
        CompileOptions(print_ir="sometimes")


def test_compile_records_every_pass_and_verifies_between_them() -> None:
    import kiln

    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    fn = kiln.compile(m, (torch.randn(2, 4),))
    assert [r.name for r in fn.stats.passes] == [p.name for p in passes.PIPELINE]
    assert any(n.op.name == "linear" and n.attrs["activation"] == "gelu" for n in fn.graph.nodes)
