"""Per-layer quantization sensitivity and mixed-precision plans.

`sensitivity_scan(model, example_inputs, schemes=("int4", "int8"))` traces the model once, runs
the pipeline up to `quantize_weights` once, then for every quantizable weight and scheme runs
`quantize_weights` with only that weight quantized (`QuantScheme(skip=("*",), overrides={weight:
scheme})`), plans the result and compares its logits with the full-precision plan on the same
inputs. So each row is exactly what the pass would do to that layer, with everything else in
full precision, and the error is quantization error alone (both sides run the same graph).
A fused weight (QKV, gate/up) is one layer: the pass quantizes it as one.

`propose_plan(report, error_budget)` turns a scan into a `QuantScheme` with per-layer overrides
and verifies it end to end (see its docstring for the heuristic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..api import _split_inputs
from ..ir import Graph
from ..options import CompileOptions
from ..passes import PIPELINE, PassContext, QuantScheme, quantize_weights, run_pipeline
from ..passes.quantize import _candidates
from ..runtime.plan import build_plan
from .build import _outputs, _Setup, _trace
from .layers import LayerRow, layer_rows

METRICS = ("kl", "max_abs", "mean_abs", "top1")  # every one: larger is worse


@dataclass(frozen=True, slots=True)
class LogitError:
    """Variant logits vs reference logits over `positions` rows (last dim = classes), as
    `report/accuracy.compare_logits` defines them: max / mean |Δlogit|, mean KL(ref || test),
    top-1 agreement."""

    max_abs_err: float
    mean_abs_err: float
    kl_div: float
    top1_agreement: float
    positions: int

    def value(self, metric: str) -> float:
        """The named error metric (`METRICS`); larger is worse."""
        return {"kl": self.kl_div, "max_abs": self.max_abs_err, "mean_abs": self.mean_abs_err,
                "top1": 1.0 - self.top1_agreement}[metric]


def logit_error(test: torch.Tensor, ref: torch.Tensor) -> LogitError:
    """Compare two logit tensors of one shape (..., V), in float32."""
    t, r = test.detach().float().flatten(0, -2), ref.detach().float().flatten(0, -2)  # (N, V)
    err = (t - r).abs()
    kl = F.kl_div(t.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="sum").item() / r.shape[0]
    agree = (t.argmax(-1) == r.argmax(-1)).float().mean().item()
    return LogitError(err.max().item(), err.mean().item(), max(0.0, kl), agree, r.shape[0])


def scheme_label(scheme: str | QuantScheme) -> str:
    """A short name: "int8", "int4 g32", "w8a8", "fp8", with " asym" for zero points."""
    s = QuantScheme.parse(scheme)
    label = "w8a8" if s.activations == "int8" else s.weights
    if s.weights == "int4":
        label += f" g{s.group_size}"
    return label + ("" if s.symmetric else " asym")


@dataclass
class _Scanner:
    """The traced model, its graph just before quantize_weights and the reference logits."""

    setup: _Setup
    graph: Graph
    ref: torch.Tensor

    def run(self, scheme: QuantScheme | None) -> tuple[Graph, LogitError]:
        """quantize_weights(scheme) on the pre-quantization graph: the result and its logit error."""
        g = self.graph
        if scheme is not None:
            ctx = PassContext(replace(self.setup.options, quantization=scheme), symbol_values=dict(self.setup.symbols), device=self.setup.device)
            g = quantize_weights(g, ctx)
        return g, logit_error(_logits(self.setup, g), self.ref)


def _logits(setup: _Setup, g: Graph) -> torch.Tensor:
    """The first floating tensor the graph returns (an HF model's logits)."""
    outs = _outputs(setup, build_plan(g, setup.device, setup.traced.symbol_ranges))
    return next(x for x in outs if isinstance(x, torch.Tensor) and x.is_floating_point())


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's scan results: `errors[label]` and `bytes[label]` per scheme label (absent
    where that scheme cannot take the layer, e.g. int4 with K not a multiple of the group)."""

    layer: LayerRow  # the layer in full precision (name, weight, fused, params, bytes_fp)
    errors: dict[str, LogitError]
    bytes: dict[str, int]

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass(frozen=True)
class SensitivityReport:
    """Rows sorted most sensitive first by `metric` under the first scheme."""

    rows: tuple[LayerSensitivity, ...]
    schemes: dict[str, QuantScheme]  # label -> scheme, in the order given to the scan
    metric: str
    positions: int
    _scanner: _Scanner = field(repr=False, compare=False)

    def measure(self, scheme: QuantScheme | str | None) -> tuple[list[LayerRow], LogitError]:
        """Quantize the scanned model with `scheme` (None: not at all) on the scan's inputs: the
        resulting layers and the logit error vs full precision."""
        g, err = self._scanner.run(None if scheme is None else QuantScheme.parse(scheme))
        return layer_rows(g), err

    def to_markdown(self) -> str:
        labels = list(self.schemes)
        head = ["layer", "fused", "params", "fp KiB"] + [c for lb in labels for c in (f"{lb} KiB", f"{lb} KL", f"{lb} max abs Δ", f"{lb} mean abs Δ", f"{lb} top-1")]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.name, str(r.layer.fused), str(r.layer.params), f"{r.layer.bytes_fp / 1024:.1f}"]
            for lb in labels:
                e = r.errors.get(lb)
                cells += ["-"] * 5 if e is None else [f"{r.bytes[lb] / 1024:.1f}", f"{e.kl_div:.2e}", f"{e.max_abs_err:.3g}", f"{e.mean_abs_err:.3g}", f"{e.top1_agreement:.2%}"]
            lines.append("| " + " | ".join(cells) + " |")
        note = f"Sorted most sensitive first by {self.metric} under {labels[0]}; one layer quantized at a time, {self.positions} positions.\n"
        return note + "\n" + "\n".join(lines) + "\n"


def sensitivity_scan(
    model: Any, example_inputs: Any, *, schemes: Sequence[str | QuantScheme] = ("int4", "int8"),
    metric: str = "kl", options: CompileOptions | None = None,
) -> SensitivityReport:
    """Quantize one layer at a time with each scheme and measure the logit error vs full precision.

    `example_inputs`: the calibration inputs, as the model is called (a tuple of args, a dict of
    kwargs or one tensor); the model's first floating output is taken as the logits. The layers
    are the weights the first scheme (with its skip list) would quantize, plus those the others
    would. `metric` ("kl", "max_abs", "mean_abs", "top1" = 1 - top-1 agreement) sorts the rows.
    Cost: one trace, one pipeline run, then per layer and scheme one quantize + plan + forward.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    by_label = {scheme_label(s): QuantScheme.parse(s) for s in schemes}
    if not by_label:
        raise ValueError("sensitivity_scan needs at least one scheme")
    scanner = _prepare(model, example_inputs, options or CompileOptions())
    fp_rows = {r.weight: r for r in layer_rows(scanner.graph)}
    todo: dict[str, dict[str, QuantScheme]] = {}  # weight name -> label -> single-layer scheme
    for label, s in by_label.items():
        for w in _candidates(scanner.graph, s, PassContext(scanner.setup.options)):
            todo.setdefault(w.name, {})[label] = QuantScheme(skip=("*",), overrides={w.name: s})
    rows = []
    for wname, per in todo.items():
        errors, nbytes = {}, {}
        for label, single in per.items():
            g, errors[label] = scanner.run(single)
            nbytes[label] = next(r.bytes for r in layer_rows(g) if r.weight == wname)
        rows.append(LayerSensitivity(fp_rows[wname], errors, nbytes))
    first = next(iter(by_label))
    rows.sort(key=lambda r: -r.errors[first].value(metric) if first in r.errors else math.inf)
    return SensitivityReport(tuple(rows), by_label, metric, int(scanner.ref.flatten(0, -2).shape[0]), scanner)


def _prepare(model: Any, example_inputs: Any, options: CompileOptions) -> _Scanner:
    args, kwargs = _split_inputs(example_inputs)
    options = replace(options, quantization=None)
    setup, _ = _trace(model, args, kwargs, options)
    upto = [p for p in PIPELINE[: PIPELINE.index(quantize_weights)] if p.name not in options.disable_passes]
    graph, _ = run_pipeline(setup.traced.graph, upto, options, symbol_values=setup.symbols)
    with torch.no_grad():
        ref = _logits(setup, graph)
    return _Scanner(setup, graph, ref)


@dataclass(frozen=True)
class MixedPlan:
    """A per-layer quantization plan and its verified error.

    `scheme` compiles it (`CompileOptions(quantization=plan.scheme)`); `assignment` maps layer
    name -> scheme label or "fp"; `predicted` is the summed single-layer error of the plan,
    `measured` the whole plan's error on the scan's inputs, `demoted` the layers the verification
    step moved to a less aggressive format to get under the budget.
    """

    scheme: QuantScheme
    assignment: dict[str, str]
    metric: str
    error_budget: float
    predicted: float
    measured: LogitError
    bytes_fp: int
    bytes: int
    demoted: tuple[str, ...]

    @property
    def within_budget(self) -> bool:
        return self.measured.value(self.metric) <= self.error_budget

    def to_markdown(self) -> str:
        e = self.measured
        lines = [
            f"Mixed plan: {self.bytes / 1024:.1f} KiB of {self.bytes_fp / 1024:.1f} KiB ({self.bytes / max(self.bytes_fp, 1):.1%}) of the scanned layers; "
            f"{self.metric} budget {self.error_budget:g}, predicted {self.predicted:.3g}, measured {e.value(self.metric):.3g} "
            f"(KL {e.kl_div:.3g}, max abs Δlogit {e.max_abs_err:.3g}, top-1 {e.top1_agreement:.2%})"
            + (f"; demoted after verifying: {', '.join(self.demoted)}" if self.demoted else ""),
            "", "| layer | format |", "|---|---|",
        ]
        lines += [f"| {name} | {fmt} |" for name, fmt in self.assignment.items()]
        return "\n".join(lines) + "\n"


def propose_plan(report: SensitivityReport, error_budget: float, schemes: Sequence[str] | None = None, *, metric: str | None = None) -> MixedPlan:
    """A mixed-precision plan under `error_budget` (in `metric`, default the report's), verified.

    Heuristic (greedy, the single-layer errors taken as additive, which holds for small
    independent perturbations such as KL near 0): visit layers least sensitive first (by their
    error under the first, most aggressive scheme); give each the first scheme of `schemes`
    (default: the report's, in scan order, e.g. int4 then int8) whose single-layer error still fits
    in the budget left, else full precision. Then verify: quantize the whole plan and measure it
    on the scan's inputs; while the measured error exceeds the budget, demote the layer with the
    largest single-layer error one step (int4 -> int8 -> full precision) and measure again.
    """
    metric = metric or report.metric
    labels = list(schemes or report.schemes)
    if metric not in METRICS or any(lb not in report.schemes for lb in labels):
        raise ValueError(f"metric must be one of {METRICS} and schemes among the scan's {list(report.schemes)}, got {metric!r}, {labels}")
    rows = sorted(report.rows, key=lambda r: r.errors[labels[0]].value(metric) if labels[0] in r.errors else math.inf)
    choice: dict[str, str] = {}
    left = error_budget
    for r in rows:
        fit = next((lb for lb in labels if lb in r.errors and r.errors[lb].value(metric) <= left), "fp")
        choice[r.name] = fit
        left -= r.errors[fit].value(metric) if fit != "fp" else 0.0
    demoted: list[str] = []
    by_name = {r.name: r for r in report.rows}
    while True:
        scheme = _plan_scheme(report, choice)
        layers, measured = report.measure(scheme)
        if measured.value(metric) <= error_budget or all(v == "fp" for v in choice.values()):
            break
        worst = max((n for n, lb in choice.items() if lb != "fp"), key=lambda n: by_name[n].errors[choice[n]].value(metric))
        rest = [lb for lb in labels[labels.index(choice[worst]) + 1:] if lb in by_name[worst].errors]
        choice[worst] = rest[0] if rest else "fp"
        demoted.append(worst)
    predicted = sum(by_name[n].errors[lb].value(metric) for n, lb in choice.items() if lb != "fp")
    scanned = {r.layer.weight for r in report.rows}
    mine = [lr for lr in layers if lr.weight in scanned]
    return MixedPlan(scheme, {r.name: choice[r.name] for r in report.rows}, metric, error_budget, predicted, measured,
                     sum(lr.bytes_fp for lr in mine), sum(lr.bytes for lr in mine), tuple(demoted))


def _plan_scheme(report: SensitivityReport, choice: dict[str, str]) -> QuantScheme:
    """Every scanned layer named explicitly (its module path), the rest as the first scheme skips them."""
    first = next(iter(report.schemes.values()))
    overrides = {name: ("skip" if lb == "fp" else report.schemes[lb]) for name, lb in choice.items()}
    return replace(first, overrides=overrides)
