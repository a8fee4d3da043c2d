"""Accuracy-vs-cost benchmark on Fashion-MNIST: every exit, calibrated early exit, the oracle, overthinking.

For each benchmark network of :mod:`exitnet.bench.zoo` (trained jointly with SDN weights): the test accuracy
and cumulative FLOPs of each exit; entropy thresholds (BranchyNet's rule, eq. (11) of the survey) calibrated on
the *validation* split for at most a 0, 0.5 and 1 point accuracy drop, and what they give on the *test* split
(accuracy, FLOPs saved, eq. (12) of the survey); the oracle (each sample at its earliest correct exit); the
overthinking rate; and the whole threshold trade-off curve (the Pareto front found on validation, evaluated on
test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from exitnet.analysis import report
from exitnet.bench import zoo
from exitnet.bench.report import figure_accuracy_vs_flops, md_table, pct
from exitnet.calibration import calibrate, pareto_front
from exitnet.cost import CostProfile
from exitnet.outputs import ExitOutputs
from exitnet.policies import Entropy

__all__ = ["NAME", "run", "to_markdown", "DROPS"]

NAME = "accuracy"
DROPS = (0.0, 0.005, 0.01)
FIGURE = "accuracy_vs_flops.png"


def _curve(
    val: tuple[ExitOutputs, torch.Tensor], test: tuple[ExitOutputs, torch.Tensor], cost: CostProfile
) -> list[dict[str, float]]:
    """The entropy thresholds' Pareto front found on validation, each point evaluated on test (<= ~120 points)."""
    front = pareto_front(Entropy(), val[0], val[1], cost=cost)
    stack, y = test[0].stack(), test[1]
    correct = stack.argmax(dim=-1) == y.unsqueeze(0)  # [E, N]
    exit_flops = torch.tensor(cost.exit_flops, dtype=torch.float64)
    step = max(1, len(front) // 120)
    points = []
    for p in [*front[::step], front[-1]]:
        exit_index = p.policy.decide(stack)  # [N]
        points.append(
            {
                "val_accuracy": p.accuracy,
                "test_accuracy": float(correct[exit_index, torch.arange(y.numel())].double().mean()),
                "mean_flops": float(exit_flops[exit_index].mean()),
            }
        )
    return points


def evaluate_network(name: str, suite: str, device: str) -> dict[str, Any]:
    """All accuracy-vs-cost numbers of one benchmark network."""
    net, ds = zoo.trained(name, suite, device=device)
    cost = net.cost_profile()
    val = zoo.outputs(name, suite, "val", device=device)
    test = zoo.outputs(name, suite, "test", device=device)
    base = report(*test, cost=cost)
    final_val = float((val[0].predictions()[-1] == val[1]).double().mean())
    points = []
    for drop in DROPS:
        policy = calibrate(Entropy(), *val, max_accuracy_drop=drop, cost=cost)
        r = report(*test, policy=policy, cost=cost)
        points.append(
            {
                "max_accuracy_drop": drop,
                "thresholds": getattr(policy, "thresholds_", None),
                "val_accuracy": policy.calibration_["accuracy"],
                "val_final_accuracy": final_val,
                "test_accuracy": r["early_exit_accuracy"],
                "test_drop_points": 100 * (r["final_accuracy"] - r["early_exit_accuracy"]),
                "mean_flops": r["mean_flops"],
                "flops_saved": r["flops_saved"],
                "speedup_flops": r["speedup_flops"],
                "exit_fractions": [e["fraction"] for e in r["per_exit"]],
            }
        )
    info = zoo.training_info(name, suite)
    rec = zoo.recipe(name, suite)
    return {
        "network": name,
        "dataset": ds.name,
        "num_train": len(ds.train),
        "num_val": len(ds.val),
        "num_test": len(ds.test),
        "recipe": info.get("recipe", {"backbone": rec.backbone, "kwargs": rec.backbone_kwargs, "points": rec.points}),
        "train_seconds": info.get("train_seconds"),
        "best_epoch": info.get("best_epoch"),
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "backbone_flops": cost.backbone_flops,
        "final_accuracy": base["final_accuracy"],
        "per_exit": [{k: e[k] for k in ("name", "accuracy", "flops")} for e in base["per_exit"]],
        "oracle": base["oracle"],
        "overthinking_rate": base["overthinking_rate"],
        "operating_points": points,
        "curve": _curve(val, test, cost),
    }


def run(suite: str, device: str, out_dir: Path) -> dict[str, Any]:
    """Evaluate every benchmark network; write the accuracy-vs-FLOPs figure into ``out_dir``."""
    networks = {name: evaluate_network(name, suite, device) for name in zoo.list_networks()}
    result: dict[str, Any] = {"policy": "entropy (eq. (11)), thresholds calibrated on val", "networks": networks}
    result["figure"] = figure_accuracy_vs_flops(result, Path(out_dir) / FIGURE).name
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """Per network: each exit, the calibrated operating points on test, the oracle and overthinking."""
    lines = []
    for name, r in result["networks"].items():
        base = r["backbone_flops"]
        lines += [
            f"**{name}** on {r['dataset']} ({r['num_train']} train / {r['num_val']} val / {r['num_test']} test; "
            f"{r['num_parameters'] / 1e6:.2f} M parameters; backbone {base / 1e6:.2f} MFLOPs/sample): "
            f"final-exit test accuracy **{pct(r['final_accuracy'])}**, oracle {pct(r['oracle']['accuracy'])} at "
            f"{pct(r['oracle']['flops_saved'], 0)} FLOPs saved, overthinking {pct(r['overthinking_rate'])}.",
            "",
        ]
        rows = [[e["name"], pct(e["accuracy"]), f"{e['flops'] / 1e6:.2f}", pct(e["flops"] / base, 0)]
                for e in r["per_exit"]]  # fmt: skip
        lines += [md_table(["exit", "test accuracy", "MFLOPs", "of backbone"], rows), ""]
        rows = [
            [
                f"≤ {100 * p['max_accuracy_drop']:.1f} pt",
                pct(p["val_accuracy"]),
                pct(p["test_accuracy"]),
                f"{p['test_drop_points']:+.2f} pt".replace("+-", "−"),
                f"**{pct(p['flops_saved'], 1)}**",
                f"{p['speedup_flops']:.2f}×",
            ]
            for p in r["operating_points"]
        ]
        headers = ["target drop (val)", "val accuracy", "test accuracy", "test drop", "FLOPs saved", "speed-up (FLOPs)"]
        lines += [md_table(headers, rows), ""]
        better = [e["name"] for e in r["per_exit"][:-1] if e["accuracy"] > r["final_accuracy"]]
        if better:
            lines += [
                f"Note: exit(s) {', '.join(better)} are more accurate than the final exit, so the backbone is "
                "under-trained here (or overthinks) and a drop measured from the final exit flatters early exit: "
                "the FLOPs saved at a given drop are larger than for a network trained to convergence.",
                "",
            ]
    lines.append(f"![accuracy vs FLOPs]({result['figure']})")
    return "\n".join(lines) + "\n"
