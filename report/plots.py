"""The report's two PNG plots, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

LATENCY_PNG, NODES_PNG = "latency_by_pass.png", "nodes_by_pass.png"


def _labels(report: dict) -> list[str]:
    return [f"{r['stage']}: {r['label']}" for r in report["stages"]]


def plot_latency(report: dict, path: str) -> None:
    """Median latency per stage (bars), eager as a dashed line, leave-one-out latency as dots."""
    rows, labels = report["stages"], _labels(report)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4.0))
    ax.bar(labels, [r["latency_ms"] for r in rows], color="#4c72b0", label="up to this pass")
    loo = [(lab, r["loo_latency_ms"]) for lab, r in zip(labels, rows) if r["loo_latency_ms"] is not None]
    if loo:
        ax.scatter([lab for lab, _ in loo], [v for _, v in loo], color="#dd8452", zorder=3, label="full pipeline without this pass")
    ax.axhline(report["eager_latency_ms"], color="gray", linestyle="--", label="eager PyTorch")
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title(f"{report['model']}: latency by pass ({report['device']})")
    ax.legend(fontsize=8)
    _finish(fig, ax, path)


def plot_nodes(report: dict, path: str) -> None:
    """Nodes in the graph, kernels executed per call and fusion groups, per stage."""
    rows, labels = report["stages"], _labels(report)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4.0))
    ax.plot(labels, [r["nodes_after"] for r in rows], marker="o", label="nodes")
    ax.plot(labels, [r["kernels_per_call"] for r in rows], marker="s", label="kernels per call")
    ax.plot(labels, [r["fusion_groups"] for r in rows], marker="^", label="fusion groups")
    ax.set_ylabel("count")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{report['model']}: graph size by pass")
    ax.legend(fontsize=8)
    _finish(fig, ax, path)


def _finish(fig: "plt.Figure", ax: "plt.Axes", path: str) -> None:
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(report: dict, out_dir: str) -> dict[str, str]:
    paths = {"latency": os.path.join(out_dir, LATENCY_PNG), "nodes": os.path.join(out_dir, NODES_PNG)}
    plot_latency(report, paths["latency"])
    plot_nodes(report, paths["nodes"])
    return paths
