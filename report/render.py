"""Write a pass report: report.json, report.md (one table row per stage), report.html
(self-contained: the same table and the plots as base64 PNGs) and the two PNGs."""

from __future__ import annotations

import base64
import html
import json
import math
import os
from typing import Any

from .plots import write_plots

# The documented schema (README, "Pass-by-pass report"); tests check report.json against it.
TOP_KEYS = (
    "schema_version", "model", "created_utc", "torch_version", "device", "threads", "inputs", "symbol_values",
    "passes", "timing", "leave_one_out", "capture_s", "eager_latency_ms", "full_latency_ms", "tolerance_rel",
    "first_stage_over_tolerance", "first_pass_over_tolerance", "peak_memory_note", "stages", "quantization",
)
STAGE_KEYS = (
    "stage", "pass", "label", "changed", "compile_s", "plan_s", "nodes_before", "nodes_after", "fusion_groups",
    "kernels_per_call", "cached_nodes", "flops_per_call", "bytes_per_call", "latency_ms", "latency_spread",
    "loo_latency_ms", "loo_delta_ms", "max_abs_err", "max_rel_err", "within_tolerance", "peak_bytes_est",
    "peak_source", "pass_stats",
)
NOISY = 2.0  # p90/p10 of a stage's timings above which the report adds a note
HEADER = (
    "stage", "pass", "compile ms", "nodes before→after", "fusion groups", "kernels/call", "MFLOP/call", "MB moved/call",
    "latency ms", "Δ without pass ms", "max abs err", "max rel err", "peak KiB (est.)",
)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table_rows(report: dict) -> list[list[str]]:
    """One list of cells per stage, in HEADER order."""
    out = []
    for r in report["stages"]:
        mark = "" if r["within_tolerance"] else " ✗"
        out.append([
            str(r["stage"]), r["label"] + ("" if r["changed"] is not False else " (no change)"),
            f"{r['compile_s'] * 1e3:.2f}", f"{r['nodes_before']}→{r['nodes_after']}", str(r["fusion_groups"]),
            str(r["kernels_per_call"]), f"{r['flops_per_call'] / 1e6:.2f}", f"{r['bytes_per_call'] / 1e6:.2f}",
            f"{r['latency_ms']:.3f}", _num(r["loo_delta_ms"], "+.3f"), f"{r['max_abs_err']:.1e}",
            f"{r['max_rel_err']:.1e}{mark}", _num(None if r["peak_bytes_est"] is None else r["peak_bytes_est"] / 1024, ".1f"),
        ])
    return out


def verdict(report: dict) -> str:
    tol = report["tolerance_rel"]
    name = report["first_pass_over_tolerance"]
    if name is None:
        return f"No stage exceeds the relative-error tolerance {tol:g} vs eager."
    return f"First stage over the relative-error tolerance {tol:g} vs eager: stage {report['first_stage_over_tolerance']} ({name})."


def noise_note(report: dict) -> str | None:
    """A warning naming stages whose timings spread more than NOISY (p90/p10)."""
    noisy = [f"{r['stage']} ({r['latency_spread']:.1f}x)" for r in report["stages"] if (r["latency_spread"] or 1.0) > NOISY]
    if not noisy:
        return None
    return f"Noisy timings (p90/p10 > {NOISY}) at stages {', '.join(noisy)}: the machine was busy; rerun with more --rounds to confirm small deltas."


def summary_lines(report: dict) -> list[str]:
    t = report["timing"]
    ins = ", ".join(f"{i['name']}: {i['type']}" for i in report["inputs"])
    syms = ", ".join(f"{k}={v}" for k, v in report["symbol_values"].items())
    return [
        f"model `{report['model']}` on {report['device']} ({report['threads']} threads), torch {report['torch_version']}, {report['created_utc']}",
        f"inputs {ins} at {syms or 'static shapes'}; capture {report['capture_s']:.2f} s",
        f"latency: median of {t['rounds']} interleaved rounds x {t['iters']} calls after a round-robin warm-up (>= {t['warmup_calls']} calls each, >= {t['warmup_s']} s in all); "
        f"eager {report['eager_latency_ms']:.3f} ms, full pipeline {report['full_latency_ms']:.3f} ms",
        verdict(report),
        *filter(None, [noise_note(report)]),
        "Peak memory is an estimate: the plan_memory arena at the traced shapes, not a measured peak. "
        "FLOPs and bytes are napkin estimates (kiln/report/cost.py). Δ without pass = latency of the full "
        "pipeline minus only that pass, minus the full pipeline's latency (positive: the pass saves time).",
    ]


def markdown_table(report: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    return "\n".join(lines) + "\n"


QUANT_HEADER = ("layer", "weight", "fused", "format", "params", "fp KiB", "stored KiB")


def quant_rows(report: dict) -> list[list[str]]:
    """One list of cells per linear weight of the quantization section (QUANT_HEADER order), plus a total."""
    q = report.get("quantization")
    if not q:
        return []
    out = [[r["name"], r["weight"], str(r["fused"]), r["format"], str(r["params"]), f"{r['bytes_fp'] / 1024:.1f}", f"{r['bytes'] / 1024:.1f}"] for r in q["layers"]]
    out.append(["total", "", "", "", str(sum(r["params"] for r in q["layers"])), f"{q['bytes_fp'] / 1024:.1f}", f"{q['bytes'] / 1024:.1f} ({q['bytes'] / max(q['bytes_fp'], 1):.1%})"])
    return out


def quant_summary(report: dict) -> str:
    q = report["quantization"]
    return (f"quantize_weights (stage {q['stage']}): linear weights {q['bytes_fp'] / 1024:.1f} KiB in full precision -> "
            f"{q['bytes'] / 1024:.1f} KiB stored; max abs err {q['max_abs_err']:.1e}, max rel err {q['max_rel_err']:.1e} vs eager.")


def markdown(report: dict) -> str:
    head = f"# Pass-by-pass report: {report['model']}\n\n" + "".join(f"- {ln}\n" for ln in summary_lines(report))
    body = head + "\n" + markdown_table(report)
    rows = quant_rows(report)
    if rows:
        body += "\n## Quantization\n\n" + quant_summary(report) + "\n\n| " + " | ".join(QUANT_HEADER) + " |\n|" + "---|" * len(QUANT_HEADER) + "\n"
        body += "".join("| " + " | ".join(cells) + " |\n" for cells in rows)
    return body


def _png_b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def html_page(report: dict, pngs: dict[str, str]) -> str:
    """One offline page: no scripts, styles inline, images as data: URIs."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>\n" for cells in table_rows(report))
    items = "".join(f"<li>{e(ln)}</li>" for ln in summary_lines(report))
    qrows = quant_rows(report)
    quant = "" if not qrows else (
        f"<h2>Quantization</h2>\n<p>{e(quant_summary(report))}</p>\n<table><thead><tr>{''.join(f'<th>{e(h)}</th>' for h in QUANT_HEADER)}</tr></thead><tbody>\n"
        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>\n" for cells in qrows) + "</tbody></table>\n")
    imgs = "".join(f'<p><img alt="{e(k)}" src="data:image/png;base64,{_png_b64(p)}"></p>\n' for k, p in pngs.items())
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>kiln pass report: {e(report['model'])}</title>"
        f"<style>{style}</style></head>\n<body><h1>Pass-by-pass report: {e(report['model'])}</h1>\n<ul>{items}</ul>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n{quant}{imgs}</body></html>\n"
    )


def _jsonable(x: Any) -> Any:
    """Non-finite floats become the strings "nan" / "inf" / "-inf" (JSON has no such numbers)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_report(report: dict, out_dir: str) -> dict[str, str]:
    """Write every output file into `out_dir` (created if needed); returns name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"report.{k}") for k in ("json", "md", "html")}
    pngs = write_plots(report, out_dir)
    with open(paths["json"], "w") as f:
        json.dump(_jsonable(report), f, indent=1, allow_nan=False)
    with open(paths["md"], "w") as f:
        f.write(markdown(report))
    with open(paths["html"], "w") as f:
        f.write(html_page(report, pngs))
    return {**paths, **pngs}
