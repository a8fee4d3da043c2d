"""Figures: each writes a real PNG from a report dict."""

from __future__ import annotations

import torch

from exitnet.analysis import report
from exitnet.plots import FIGURES, accuracy_vs_cost, exit_histogram, overthinking, per_exit_accuracy, write_figures


def _report() -> dict:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (60,), generator=g)
    stack = torch.randn(3, 60, 4, generator=g)
    stack[2, torch.arange(60), y] += 2.0
    rep = report(stack, y, exit_index=torch.randint(0, 3, (60,), generator=g), cost=[1e6, 2e6, 3e6])
    rep["pareto_front"] = [{"flops": 1e6, "accuracy": 0.3}, {"flops": 2e6, "accuracy": 0.6}]
    return rep


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_each_figure_writes_a_png(tmp_path) -> None:
    rep = _report()
    for fn in (accuracy_vs_cost, exit_histogram, per_exit_accuracy, overthinking):
        assert _is_png(fn(rep, tmp_path / f"{fn.__name__}.png"))
    assert _is_png(accuracy_vs_cost(rep, tmp_path / "curve.png", curve=[(1e6, 0.3), (3e6, 0.7)], title="t"))


def test_write_figures_writes_every_figure(tmp_path) -> None:
    rep = _report()
    rep["per_exit"][0]["fraction"] = None  # a report without a policy still draws the oracle
    written = write_figures(rep, tmp_path)
    assert sorted(written.values()) == sorted(FIGURES) and all(_is_png(tmp_path / n) for n in FIGURES)
