"""Figures (matplotlib, headless). Each function takes the plain dicts of :func:`exitnet.analysis.report`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["accuracy_vs_cost"]


def accuracy_vs_cost(
    report: dict[str, Any],
    path: str | Path,
    *,
    curve: Sequence[tuple[float, float]] | None = None,
    title: str = "Accuracy vs. cost",
) -> Path:
    """Accuracy against mean FLOPs per sample: every exit, the policy's operating point, the oracle.

    Args:
        report: a dict from :func:`exitnet.analysis.report` (with a policy's ``exit_index``).
        path: the PNG to write.
        curve: optional (flops, accuracy) points of a trade-off curve (e.g. a threshold sweep).
        title: figure title.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    mflops = 1e6
    xs = [e["flops"] / mflops for e in report["per_exit"]]
    ys = [100 * e["accuracy"] for e in report["per_exit"]]
    ax.plot(xs, ys, "o-", color="tab:blue", label="each exit alone")
    for e, x, y in zip(report["per_exit"], xs, ys, strict=True):
        ax.annotate(e["name"], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if curve:
        cx, cy = zip(*sorted(curve), strict=True)
        ax.plot(
            [c / mflops for c in cx],
            [100 * a for a in cy],
            "-",
            color="tab:gray",
            lw=1,
            label="threshold sweep",
        )
    if "early_exit_accuracy" in report:
        ax.plot(
            report["mean_flops"] / mflops,
            100 * report["early_exit_accuracy"],
            "*",
            ms=14,
            color="tab:red",
            label="early exit (calibrated)",
        )
    oracle = report.get("oracle")
    if oracle:
        ax.plot(oracle["mean_flops"] / mflops, 100 * oracle["accuracy"], "D", color="tab:green", label="oracle")
    ax.axvline(report["baseline_flops"] / mflops, color="k", ls=":", lw=1, label="backbone alone")
    ax.set_xlabel("mean MFLOPs per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
