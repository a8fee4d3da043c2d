"""Markdown and figures of the benchmark results (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = [
    "md_table",
    "pct",
    "figure_accuracy_vs_flops",
    "figure_speedups",
    "figure_convergence",
    "headline",
]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None) -> str:
    """A GitHub Markdown table; by default the first column left-aligned, the others right-aligned.

    ``align`` gives one letter per column instead: ``l``, ``r`` or ``c``.

    Example:
        >>> print(md_table(["a", "b"], [[1, 2]]))
        | a | b |
        |:--|--:|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(str(h) for h in headers) + " |"]
    letters = align or "l" + "r" * (len(headers) - 1)
    if len(letters) != len(headers):
        raise ValueError(f"align has {len(letters)} letters for {len(headers)} columns")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines.append("|" + "|".join(marks[a] for a in letters) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float | None, digits: int = 2) -> str:
    """``0.1234 -> '12.34%'`` (``'—'`` for ``None``)."""
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def figure_accuracy_vs_flops(result: dict[str, Any], path: Path) -> Path:
    """One panel per network: each exit, the threshold curve, the calibrated operating points and the oracle."""
    nets = result["networks"]
    fig, axes = plt.subplots(1, len(nets), figsize=(5.2 * len(nets), 4.2), dpi=110, squeeze=False)
    for ax, (name, r) in zip(axes[0], nets.items(), strict=True):
        base = r["backbone_flops"]
        xs = [100 * e["flops"] / base for e in r["per_exit"]]
        ax.plot(xs, [100 * e["accuracy"] for e in r["per_exit"]], "o--", color="tab:blue", label="each exit alone")
        curve = sorted(r["curve"], key=lambda p: p["mean_flops"])
        ax.plot([100 * p["mean_flops"] / base for p in curve], [100 * p["test_accuracy"] for p in curve], "-",
                color="tab:gray", lw=1.2, label="entropy thresholds (found on val)")  # fmt: skip
        for p, marker in zip(r["operating_points"], ("s", "*", "^"), strict=False):
            ax.plot(100 * p["mean_flops"] / base, 100 * p["test_accuracy"], marker, ms=11, color="tab:red",
                    label=f"calibrated, ≤ {100 * p['max_accuracy_drop']:.1f} pt drop")  # fmt: skip
        o = r["oracle"]
        ax.plot(100 * o["mean_flops"] / base, 100 * o["accuracy"], "D", color="tab:green", label="oracle")
        ax.axhline(100 * r["final_accuracy"], color="k", ls=":", lw=1, label="final exit (backbone)")
        lo = min(100 * r["final_accuracy"] - 6, *(100 * p["test_accuracy"] for p in curve[len(curve) // 3 :]))
        ax.set_ylim(lo, 100 * max(o["accuracy"], r["final_accuracy"]) + 1)
        ax.set_xlim(0, 105)
        ax.set_xlabel("mean FLOPs per sample (% of the backbone)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{name} on {r['dataset']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def figure_speedups(result: dict[str, Any], path: Path) -> Path:
    """Realized vs FLOPs-predicted speed-up per batch size, exitnet and the peers' ways."""
    nets = result["networks"]
    fig, axes = plt.subplots(1, len(nets), figsize=(5.2 * len(nets), 4.0), dpi=110, squeeze=False)
    for ax, (name, r) in zip(axes[0], nets.items(), strict=True):
        rows = r["batches"]
        labels = [str(row["batch_size"]) for row in rows]
        xs = range(len(rows))
        series = [
            ("FLOPs-predicted", [row["speedup_flops"] for row in rows], "tab:gray"),
            ("exitnet (wall)", [row["speedup_wall"]["median"] for row in rows], "tab:red"),
            ("run-all-then-mask (wall)", [row["run_all_then_mask"]["speedup_wall"]["median"] for row in rows],
             "tab:blue"),
            ("batch-level exit (wall)", [row.get("batch_level_exit", {}).get("speedup_wall", {}).get("median", 0.0)
                                         for row in rows], "tab:orange"),
        ]  # fmt: skip
        width = 0.2
        for k, (label, ys, color) in enumerate(series):
            ax.bar([x + (k - 1.5) * width for x in xs], ys, width, label=label, color=color)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(list(xs), labels)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed-up over the backbone alone")
        ax.set_title(name)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def figure_convergence(curves: dict[str, dict[str, list[list[float]]]], path: Path) -> Path:
    """Validation accuracy of the final exit per epoch, one line per seed and arm, one panel per network.

    Args:
        curves: ``{network: {arm: [per-seed list of per-epoch accuracies]}}``.
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 3.8), dpi=110, squeeze=False)
    colors = {"joint": "tab:red", "backbone_only": "tab:blue"}
    for ax, (name, arms) in zip(axes[0], curves.items(), strict=True):
        for arm, seeds in arms.items():
            for k, accs in enumerate(seeds):
                ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], "-o", ms=3, alpha=0.7,
                        color=colors.get(arm, "tab:gray"), label=arm.replace("_", " ") if k == 0 else None)  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_ylabel("final-exit val accuracy (%)")
        ax.set_title(f"deep supervision: {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def headline(results: dict[str, Any]) -> str:
    """The headline table (for the README): per network, accuracy and FLOPs saved, and the speed-ups at 256."""
    acc = results.get("accuracy", {}).get("networks", {})
    rt = results.get("runtime", {}).get("networks", {})
    rows = []
    for name in sorted(set(acc) | set(rt)):
        a, r = acc.get(name), rt.get(name)
        pts = {p["max_accuracy_drop"]: p for p in a["operating_points"]} if a else {}
        by_b = {row["batch_size"]: row for row in r["batches"]} if r else {}
        b256 = by_b.get(256)
        ps = b256.get("exitnet_over_per_sample_throughput") if b256 else None

        def saved(drop: float, pts: dict = pts) -> str:
            p = pts.get(drop)
            return f"{pct(p['flops_saved'], 0)} ({pct(p['test_accuracy'])})" if p else "—"

        rows.append(
            [
                name,
                pct(a["final_accuracy"]) if a else "—",
                saved(0.005),
                saved(0.01),
                f"{b256['speedup_wall']['median']:.2f}× / {b256['speedup_flops']:.2f}×" if b256 else "—",
                f"{b256['realized_over_predicted']:.2f}" if b256 else "—",
                f"{b256['never_exit_overhead']['median']:.3f}" if b256 else "—",
                f"{ps['median']:.0f}×" if ps else "—",
            ]
        )
    headers = [
        "network",
        "final-exit accuracy",
        "FLOPs saved (accuracy) at ≤ 0.5 pt",
        "at ≤ 1 pt",
        "speed-up wall / FLOPs, batch 256",
        "realized ÷ predicted",
        "never-exit ÷ backbone",
        "throughput ÷ per-sample",
    ]
    return md_table(headers, rows)
