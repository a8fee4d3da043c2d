from __future__ import annotations

import json
import subprocess
import sys

from exitnet.cli import main


def test_demo_writes_report_and_figure(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("final_accuracy", "early_exit_accuracy", "flops_saved", "speedup_flops", "speedup_wall", "per_exit"):
        assert key in rep
    assert len(rep["per_exit"]) == 5 and {"accuracy", "flops", "fraction"} <= set(rep["per_exit"][0])
    assert abs(sum(e["fraction"] for e in rep["per_exit"]) - 1) < 1e-9
    assert rep["runtime_matches_policy"] is True
    assert rep["flops_saved"] == 1 - rep["mean_flops"] / rep["baseline_flops"]
    assert (out / "accuracy_vs_cost.png").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    printed = capsys.readouterr().out
    assert "FLOPs saved" in printed and "layer1.2" in printed


def test_user_error_is_one_line_without_traceback(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exitnet.cli", "demo", "--dataset", "cifar", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "cifar" in proc.stderr
