"""`kiln report`: one measured row per stage, documented JSON, plots, and the first bad pass named."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

from kiln.cli import main
from kiln.passes import PIPELINE, Pass, PassContext
from kiln.passes.rewrite import Rebuilder
from kiln.report import load_target, pass_report
from kiln.report.render import STAGE_KEYS, TOP_KEYS

FAST = ["--iters", "3", "--rounds", "1"]
FILES = ("report.json", "report.md", "report.html", "latency_by_pass.png", "nodes_by_pass.png")
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("report"))
    assert main(["report", "tiny-gpt", "--out", out, *FAST]) == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


def test_report_writes_three_files_and_two_plots(tiny_report: tuple[str, dict]) -> None:
    out, _ = tiny_report
    for name in FILES:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "report.html")) as f:
        page = f.read()
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page and 'src="http' not in page


def test_report_json_has_exactly_the_documented_keys(tiny_report: tuple[str, dict]) -> None:
    _, rep = tiny_report
    assert set(rep) == set(TOP_KEYS)
    assert all(set(row) == set(STAGE_KEYS) for row in rep["stages"])
    with open(README) as f:
        section = f.read().split("## Pass-by-pass report", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    assert set(TOP_KEYS) | set(STAGE_KEYS) <= documented


def test_report_has_one_row_per_stage(tiny_report: tuple[str, dict]) -> None:
    out, rep = tiny_report
    assert [r["stage"] for r in rep["stages"]] == list(range(len(PIPELINE) + 1))
    assert [r["pass"] for r in rep["stages"]] == [None] + [p.name for p in PIPELINE]
    with open(os.path.join(out, "report.md")) as f:
        rows = [ln for ln in f if re.match(r"\| \d+ \|", ln)]
    assert len(rows) == len(PIPELINE) + 1


def test_tiny_gpt_errors_are_finite_and_within_tolerance(tiny_report: tuple[str, dict]) -> None:
    _, rep = tiny_report
    for row in rep["stages"]:
        assert math.isfinite(row["max_abs_err"]) and math.isfinite(row["max_rel_err"])
        assert row["max_rel_err"] <= rep["tolerance_rel"] == 1e-5 and row["within_tolerance"]
    assert rep["first_pass_over_tolerance"] is None


def test_report_counts_work_per_call(tiny_report: tuple[str, dict]) -> None:
    _, rep = tiny_report
    last = rep["stages"][-1]
    assert last["flops_per_call"] > 0 and last["bytes_per_call"] > 0 and last["latency_ms"] > 0
    assert last["kernels_per_call"] == last["nodes_after"] - last["cached_nodes"]
    assert last["peak_source"] == "pass" and last["peak_bytes_est"] > 0


MODULE_SRC = '''
import torch

def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    return model, (torch.randn(3, 8),)
'''


def test_module_function_form_loads_and_reports(tmp_path: object) -> None:
    path = tmp_path / "small_model.py"  # type: ignore[operator]
    path.write_text(MODULE_SRC)
    out = str(tmp_path / "out")  # type: ignore[operator]
    assert main(["report", f"{path}:build", "--out", out, *FAST, "--no-leave-one-out"]) == 0
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    assert rep["stages"][-1]["flops_per_call"] >= 2 * 3 * 8 * 16 + 2 * 3 * 16 * 4
    assert all(r["loo_delta_ms"] is None for r in rep["stages"])
    assert rep["first_pass_over_tolerance"] is None


def _scale_first_output(g, ctx: PassContext):  # noqa: ANN001, ANN202 - a deliberately wrong pass
    rb = Rebuilder(g)
    for n in g.nodes:
        rb.copy(n)
    out = rb.finish()
    out.outputs = [out.call("mul", out.outputs[0], rhs=1.01), *out.outputs[1:]]
    return out


def test_report_names_the_first_pass_over_tolerance() -> None:
    wrong = Pass("scale_first_output", _scale_first_output, "multiplies the first output by 1.01")
    passes = [*PIPELINE[:2], wrong, *PIPELINE[2:]]
    model, args, kwargs = load_target("tiny-gpt", batch=2, seq=8)
    rep = pass_report(model, args, kwargs, passes=passes, iters=1, rounds=1, leave_one_out=False)
    assert rep["first_pass_over_tolerance"] == "scale_first_output" and rep["first_stage_over_tolerance"] == 3
    assert [r["within_tolerance"] for r in rep["stages"][:3]] == [True] * 3
    assert rep["stages"][3]["max_rel_err"] == pytest.approx(0.01, rel=1e-3)


def test_token_ids_are_random_not_zero() -> None:
    _, (ids,), _ = load_target("tiny-gpt", batch=2, seq=32)
    assert ids.shape == (2, 32) and ids.dtype == torch.long and (ids != 0).all() and ids.unique().numel() > 1
