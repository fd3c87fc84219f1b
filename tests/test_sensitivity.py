"""Mixed precision on the trained tiny Llama: per-layer overrides, the sensitivity scan, the
proposed plan and the size / accuracy / speed reports."""

from __future__ import annotations

import pytest
import torch

import kiln
from kiln.passes import QuantScheme
from kiln.report import pass_report
from kiln.report.layers import layer_rows
from kiln.report.render import markdown
from kiln.report.sensitivity import SensitivityReport, logit_error

LINEARS = ("linear", "linear_add", "linear_w8", "linear_w4", "linear_w8a8", "linear_fp8")


def _ops_by_module(fn: kiln.CompiledModule) -> dict[str, str]:
    return {n.source.module: n.op.name for n in fn.graph.nodes if n.op.name in LINEARS and n.inputs[1].kind == "const"}


def _compiled_logits(model: torch.nn.Module, scheme: QuantScheme | None, ids: torch.Tensor) -> torch.Tensor:
    fn = kiln.compile(model, options=kiln.CompileOptions(quantization=scheme))
    with torch.no_grad():
        return fn(ids).logits


@pytest.fixture(scope="module")
def calib(trained_lm) -> torch.Tensor:  # noqa: ANN001
    return trained_lm.train_ids[: 4 * trained_lm.context].view(4, trained_lm.context)


@pytest.fixture(scope="module")
def heldout(trained_lm) -> torch.Tensor:  # noqa: ANN001
    return trained_lm.heldout_ids[: 4 * trained_lm.context].view(4, trained_lm.context)


@pytest.fixture(scope="module")
def scan(trained_lm, calib: torch.Tensor) -> SensitivityReport:  # noqa: ANN001
    return kiln.sensitivity_scan(trained_lm.model.eval(), calib, schemes=("int4", "int8"))


def test_overrides_give_matching_layers_their_own_format(trained_lm, calib: torch.Tensor) -> None:  # noqa: ANN001
    scheme = QuantScheme(weights="int4", overrides={"model.layers.0.*": "int8", "*.down_proj": "skip"})
    ops = _ops_by_module(kiln.compile(trained_lm.model.eval(), calib, options=kiln.CompileOptions(quantization=scheme)))
    assert ops["model.layers.1.mlp.down_proj"] in ("linear", "linear_add")  # skip: full precision (maybe with its residual add)
    assert ops["model.layers.0.mlp.down_proj"] == "linear_w8"  # the first matching pattern wins
    assert {m: op for m, op in ops.items() if m.startswith("model.layers.0.")} == dict.fromkeys(
        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj"], "linear_w8")
    assert [op for m, op in ops.items() if m.startswith("model.layers.1.") and not m.endswith("down_proj")] == ["linear_w4"] * 3
    assert ops["lm_head"] == "linear"  # still on the default skip list


def test_override_values_are_validated_and_normalised() -> None:
    with pytest.raises(ValueError, match=r"overrides\['\*\.q_proj'\]"):
        QuantScheme(overrides={"*.q_proj": "int3"})
    with pytest.raises(ValueError, match=r"overrides\['x'\]"):
        QuantScheme(overrides={"x": QuantScheme(overrides={"y": "int8"})})
    a = QuantScheme(weights="int4", group_size=32, overrides={"a.*": "int4", "b": "skip"})
    assert a == QuantScheme(weights="int4", group_size=32, overrides=[("a.*", QuantScheme(weights="int4", group_size=32)), ("b", None)])
    assert hash(a) == hash(QuantScheme(weights="int4", group_size=32, overrides={"a.*": "int4", "b": None}))
    assert a.scheme_for("a.q_proj") == QuantScheme(weights="int4", group_size=32) and a.scheme_for("x.b") is None
    assert QuantScheme().overrides == () and QuantScheme.parse("int4") == QuantScheme(weights="int4")  # defaults unchanged
    with pytest.raises(AttributeError):
        a.overrides = ()  # frozen


def test_scan_has_one_row_per_quantizable_layer_sorted_by_error(trained_lm, scan) -> None:  # noqa: ANN001
    int4 = kiln.compile(trained_lm.model.eval(), trained_lm.train_ids[:16][None], options=kiln.CompileOptions(quantization="int4"))
    quantized = sorted(r.name for r in layer_rows(int4.graph) if r.format.startswith("int4"))
    assert sorted(r.name for r in scan.rows) == quantized and len(quantized) == 8  # 2 layers x (QKV, o, gate/up, down)
    kls = [r.errors["int4 g128"].kl_div for r in scan.rows]
    assert kls == sorted(kls, reverse=True)
    for r in scan.rows:
        for e in r.errors.values():
            assert e.kl_div >= 0 and e.max_abs_err >= e.mean_abs_err >= 0 and 0 <= e.top1_agreement <= 1
        assert r.bytes["int4 g128"] < r.bytes["int8"] < r.layer.bytes_fp


def test_most_sensitive_layer_alone_costs_more_than_least_sensitive(trained_lm, scan, heldout: torch.Tensor) -> None:  # noqa: ANN001
    model = trained_lm.model.eval()
    ref = _compiled_logits(model, None, heldout)  # held-out text: not the scan's inputs

    def alone(name: str) -> float:
        return logit_error(_compiled_logits(model, QuantScheme(weights="int4", skip=("*",), overrides={name: "int4"}), heldout), ref).kl_div

    assert alone(scan.rows[0].name) > alone(scan.rows[-1].name) > 0


def test_proposed_plan_meets_its_budget_and_is_smaller(trained_lm, scan, calib: torch.Tensor) -> None:  # noqa: ANN001
    budget = 0.002
    plan = kiln.propose_plan(scan, error_budget=budget)
    assert plan.within_budget and plan.measured.kl_div <= budget
    assert plan.bytes < plan.bytes_fp
    assert set(plan.assignment) == {r.name for r in scan.rows}
    # compiled by kiln.compile on its own, the plan mixes formats and stays under the budget
    model = trained_lm.model.eval()
    fn = kiln.compile(model, calib, options=kiln.CompileOptions(quantization=plan.scheme))
    assert {"linear_w4", "linear_w8"} <= set(_ops_by_module(fn).values())
    with torch.no_grad():
        assert logit_error(fn(calib).logits, _compiled_logits(model, None, calib)).kl_div <= budget
    assert "| layer | format |" in plan.to_markdown()


def test_reports_render_markdown_with_expected_columns(trained_lm, scan) -> None:  # noqa: ANN001
    head = scan.to_markdown()
    assert all(c in head for c in ("| layer | fused | params | fp KiB |", "int4 g128 KL", "int8 top-1"))
    rep = kiln.compression_report(trained_lm.model, trained_lm.heldout_ids[:257], {"fp32": None, "int8": "int8"}, window=64, iters=2, rounds=1)
    md = rep.to_markdown()
    assert "| variant | all weights KiB | linear KiB | linear vs fp | zeros | top-1 | KL | ppl | Δppl | max abs Δlogit | latency ms |" in md
    fp32, int8 = rep.rows
    assert fp32.accuracy.top1_agreement == 1.0 and int8.bytes_linear < fp32.bytes_linear / 2 and int8.latency_ms > 0


def test_pass_report_lists_each_layers_format_and_bytes(trained_lm) -> None:  # noqa: ANN001
    scheme = QuantScheme(weights="int4", overrides={"*.down_proj": "int8"})
    rep = pass_report(trained_lm.model.eval(), (trained_lm.train_ids[:32][None],), options=kiln.CompileOptions(quantization=scheme),
                                  iters=1, rounds=1, leave_one_out=False)
    formats = {r["name"]: r["format"] for r in rep["quantization"]["layers"]}
    assert formats["model.layers.0.mlp.down_proj"] == "int8" and formats["model.layers.1.self_attn.o_proj"] == "int4 g128"
    assert formats["lm_head"] == "f32"
    assert rep["quantization"]["bytes"] < rep["quantization"]["bytes_fp"]
    assert "## Quantization" in markdown(rep) and "| layer | weight | fused | format | params | fp KiB | stored KiB |" in markdown(rep)
