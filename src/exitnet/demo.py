"""`exitnet demo`: the whole life of a multi-exit network in under a minute on a CPU.

Train a multi-exit CIFAR-style ResNet on the bundled digits (joint training, SDN weights), calibrate entropy
thresholds on the validation split (at most 0.5 point below the final exit), run the real early-exit
runtime on the test split, and compare with the backbone alone (no auxiliary heads) in the same run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from exitnet import data as datasets
from exitnet._batches import collect_outputs
from exitnet._utils import atomic_directory
from exitnet.analysis import report
from exitnet.backbones import resnet
from exitnet.calibration import calibrate, pareto_front
from exitnet.checkpoint import save
from exitnet.model import MultiExitNetwork
from exitnet.plots import accuracy_vs_cost
from exitnet.policies import Entropy
from exitnet.runtime import measure_speedup, optimize_for_inference, predict
from exitnet.train import Joint, fit

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """Settings of the demo (the CLI flags map onto these)."""

    dataset: str = "digits"
    epochs: int = 15
    seed: int = 0
    depth: int = 20
    width: int = 32
    points: list[str] = field(default_factory=lambda: ["layer1.2", "layer2.0", "layer2.2", "layer3.0"])
    lr: float = 3e-3
    train_batch_size: int = 64
    batch_size: int = 512
    max_accuracy_drop: float = 0.005
    repeats: int = 9
    threads: int | None = None
    limit: int | None = None
    progress: bool = True


def _data_recipe(cfg: DemoConfig) -> dict[str, Any]:
    """How the demo splits its data: stored in the checkpoint so that `exitnet evaluate` uses the same split."""
    if cfg.dataset == "digits":
        return {"name": "digits", "kwargs": {"seed": cfg.seed, "val_fraction": 0.25, "test_fraction": 0.2}}
    if cfg.dataset == "fashion-mnist":
        return {"name": "fashion-mnist", "kwargs": {"seed": cfg.seed, "limit": cfg.limit}}
    raise ValueError(f"unknown dataset {cfg.dataset!r}; choose one of: digits, fashion-mnist")


def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike = "runs/demo") -> dict[str, Any]:
    """Run the demo; write ``report.json``, ``accuracy_vs_cost.png`` and ``model.safetensors`` to ``out_dir``.

    The folder is written whole or not at all: everything goes to a temporary folder beside it, which then
    replaces ``out_dir``.

    Returns:
        The report (also in ``report.json``): ``final_accuracy``, ``early_exit_accuracy``, ``flops_saved``,
        ``speedup_flops``, ``speedup_wall``, ``per_exit`` and more.
    """
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    recipe = _data_recipe(cfg)
    ds = datasets.load_dataset(recipe["name"], **recipe["kwargs"])
    backbone = resnet(depth=cfg.depth, in_chans=ds.shape[0], num_classes=ds.num_classes, width=cfg.width)
    net = MultiExitNetwork.from_module(
        backbone, cfg.points, num_classes=ds.num_classes, sample_input=torch.zeros(1, *ds.shape)
    )
    history = fit(
        net,
        Joint(weights="sdn"),
        ds.train,
        ds.val,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.train_batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    policy = calibrate(Entropy(), net, ds.val, max_accuracy_drop=cfg.max_accuracy_drop)
    fast = optimize_for_inference(net)  # BatchNorm folded, channels-last: used for both sides of the timing
    result = predict(fast, ds.test.x, policy, batch_size=cfg.batch_size)
    outputs, y = collect_outputs(fast, ds.test)  # the same network the runtime ran (contract 3)
    rep = report(outputs, y, exit_index=result.exit_index, cost=net.cost_profile())
    timing = measure_speedup(fast, ds.test.x, policy, batch_size=cfg.batch_size, repeats=cfg.repeats)
    runtime_matches = bool(torch.equal(result.exit_index, policy.decide(outputs)))
    rep.update(
        dataset=ds.name,
        speedup_wall=timing["speedup_wall"],
        realized_over_predicted=timing["speedup_wall"] / rep["speedup_flops"],
        timing=timing,
        runtime_matches_policy=runtime_matches,
        runtime_accuracy=result.accuracy(ds.test.y),
        thresholds=policy.thresholds_,
        calibration=policy.calibration_,
        training=history.rows,
        config=asdict(cfg),
        threads=torch.get_num_threads(),
    )
    rep["pareto_front"] = [  # every threshold setting's (cost, accuracy) on the same test split, for the figure
        {"flops": p.flops, "accuracy": p.accuracy}
        for p in pareto_front(Entropy(), outputs, y, cost=net.cost_profile().exit_flops)
    ]
    with atomic_directory(out_dir) as tmp:  # the folder appears whole or not at all
        (tmp / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
        accuracy_vs_cost(rep, tmp / "accuracy_vs_cost.png", title=f"exitnet demo on {ds.name}")
        save(net, tmp / "model.safetensors", policy=policy, extra={"report": "report.json", "data": recipe})
    return rep
