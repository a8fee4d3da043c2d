"""Figures (matplotlib, headless). Each function takes the plain dicts of :func:`exitnet.analysis.report`
(optionally with a ``pareto_front`` list of ``{flops, accuracy}``) and writes one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["accuracy_vs_cost", "exit_histogram", "per_exit_accuracy", "overthinking", "write_figures", "FIGURES"]


def _scale(report: dict[str, Any]) -> tuple[float, str]:
    return (1e6, "MFLOPs") if report.get("baseline_flops", 0) >= 1e5 else (1.0, "cost units")


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def accuracy_vs_cost(
    report: dict[str, Any],
    path: str | Path,
    *,
    curve: Sequence[tuple[float, float]] | None = None,
    title: str = "Accuracy vs. cost",
) -> Path:
    """Accuracy against mean FLOPs per sample: every exit alone, the policy's Pareto curve, its operating point,
    and the oracle.

    Args:
        report: a dict from :func:`exitnet.analysis.report` (with a policy's ``exit_index``); its
            ``pareto_front`` (list of ``{flops, accuracy}``) is drawn when present.
        path: the PNG to write.
        curve: optional (flops, accuracy) points of a trade-off curve (drawn instead of ``pareto_front``).
        title: figure title.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    mf, unit = _scale(report)
    xs = [e["flops"] / mf for e in report["per_exit"]]
    ys = [100 * e["accuracy"] for e in report["per_exit"]]
    ax.plot(xs, ys, "o-", color="tab:blue", label="each exit alone")
    for e, x, y in zip(report["per_exit"], xs, ys, strict=True):
        ax.annotate(e["name"], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    points = list(curve) if curve else [(p["flops"], p["accuracy"]) for p in report.get("pareto_front") or []]
    if points:
        cx, cy = zip(*sorted(points), strict=True)
        ax.step([c / mf for c in cx], [100 * a for a in cy], where="post", color="tab:gray", lw=1.2,
                label="policy's Pareto front" if not curve else "trade-off curve")  # fmt: skip
    if "early_exit_accuracy" in report:
        ax.plot(report["mean_flops"] / mf, 100 * report["early_exit_accuracy"], "*", ms=14, color="tab:red",
                label="early exit (calibrated)")  # fmt: skip
    oracle = report.get("oracle")
    if oracle:
        ax.plot(oracle["mean_flops"] / mf, 100 * oracle["accuracy"], "D", color="tab:green", label="oracle")
    ax.axvline(report["baseline_flops"] / mf, color="k", ls=":", lw=1, label="backbone alone")
    ax.set_xlabel(f"mean {unit} per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def exit_histogram(report: dict[str, Any], path: str | Path, *, title: str = "Where samples leave") -> Path:
    """Fraction of samples leaving at each exit: the policy's next to the oracle's."""
    names = [e["name"] for e in report["per_exit"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    pos = list(range(len(names)))
    width = 0.4
    policy = [e["fraction"] for e in report["per_exit"]]
    if all(f is not None for f in policy):
        ax.bar([p - width / 2 for p in pos], [100 * f for f in policy], width, color="tab:red", label="policy")
    ax.bar([p + width / 2 for p in pos], [100 * f for f in report["oracle"]["exit_fractions"]], width,
           color="tab:green", alpha=0.7, label="oracle")  # fmt: skip
    ax.set_xticks(pos, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("samples leaving here (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_exit_accuracy(report: dict[str, Any], path: str | Path, *, title: str = "Accuracy of each exit") -> Path:
    """Accuracy of every exit on all samples, with the final exit's accuracy as a line."""
    names = [e["name"] for e in report["per_exit"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    acc = [100 * e["accuracy"] for e in report["per_exit"]]
    ax.bar(range(len(names)), acc, color="tab:blue")
    for i, a in enumerate(acc):
        ax.annotate(f"{a:.1f}", (i, a), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
    ax.axhline(100 * report["final_accuracy"], color="k", ls=":", lw=1, label="final exit")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(max(0.0, min(acc) - 10), 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def overthinking(report: dict[str, Any], path: str | Path, *, title: str = "Overthinking") -> Path:
    """Per exit: the share of samples it gets right while the final exit gets them wrong."""
    names = [e["name"] for e in report["per_exit"]][:-1]
    values = [100 * (e.get("overthinking") or 0.0) for e in report["per_exit"]][:-1]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    ax.bar(range(len(names)), values, color="tab:purple")
    ax.axhline(100 * report["overthinking_rate"], color="k", ls=":", lw=1, label="right at some exit, wrong at the end")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("right here, wrong at the final exit (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


#: file name -> (caption, function) of the figures a report folder holds.
FIGURES = {
    "accuracy_vs_flops.png": ("Accuracy vs. FLOPs", accuracy_vs_cost),
    "exit_histogram.png": ("Exit histogram", exit_histogram),
    "per_exit_accuracy.png": ("Per-exit accuracy", per_exit_accuracy),
    "overthinking.png": ("Overthinking", overthinking),
}


def write_figures(report: dict[str, Any], folder: str | Path) -> dict[str, str]:
    """Write every figure of :data:`FIGURES` into ``folder``; return caption -> file name."""
    folder = Path(folder)
    out = {}
    for name, (caption, fn) in FIGURES.items():
        fn(report, folder / name)
        out[caption] = name
    return out
