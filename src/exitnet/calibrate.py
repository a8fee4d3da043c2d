"""Threshold calibration: the cheapest per-exit thresholds for a target accuracy, or the most accurate ones
within a FLOPs budget (survey §6: "a separate threshold must be selected for each auxiliary classifier").

How it searches (:func:`threshold_path`): every threshold policy leaves exit i when its confidence exceeds a
cut τ_i. The search starts from "never leave early" (τ_i = +inf: the final exit's accuracy at full cost) and
walks down a path of operating points. At each step it tries lowering each exit's cut by 1..``lookahead``
notches of a grid of that exit's confidence quantiles, and takes the move that saves the most expected FLOPs
per unit of accuracy lost (moves that lose nothing go first). Every point of the path is recorded; the
answer is the cheapest point that meets the accuracy target (then polished by coordinate descent: lower any
single cut further while the target still holds), or the most accurate one within the budget. All of it
is computed on the calibration set's cached logits, vectorised over samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exitnet._batches import collect_outputs
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies import ThresholdPolicy

__all__ = ["calibrate", "threshold_path", "OperatingPoint", "evaluate_cuts"]


@dataclass(frozen=True)
class OperatingPoint:
    """One setting of the cuts with its accuracy and mean cost on the calibration set."""

    cuts: tuple[float, ...]
    accuracy: float
    cost: float


def evaluate_cuts(conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, cuts: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cost when sample b leaves at the first exit i with ``conf[i, b] > cuts[i]``.

    Args:
        conf: ``[E-1, N]`` confidence of every auxiliary exit.
        correct: ``[E, N]`` whether exit i predicts sample b right.
        cost: ``[E]`` cumulative cost of leaving at each exit.
        cuts: ``[E-1]`` cut per auxiliary exit.
    """
    leaves = np.concatenate([conf > cuts[:, None], np.ones((1, conf.shape[1]), dtype=bool)], axis=0)  # [E, N]
    exit_index = leaves.argmax(axis=0)  # first True
    cols = np.arange(conf.shape[1])
    return float(correct[exit_index, cols].mean()), float(cost[exit_index].mean())


def _grids(conf: np.ndarray, notches: int) -> list[np.ndarray]:
    """Per exit: descending candidate cuts, from +inf (nobody leaves) to -inf (everybody leaves)."""
    grids = []
    for row in conf:
        # method='lower' keeps every cut an observed (float32) value, so the runtime's float32 comparison with the
        # threshold gives exactly the decisions seen here.
        qs = np.unique(np.quantile(row, np.linspace(0.0, 1.0, notches + 1), method="lower"))[::-1]  # descending
        grids.append(np.concatenate([[np.inf], qs[1:], [-np.inf]]))
    return grids


def threshold_path(
    conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, *, notches: int = 100, lookahead: int = 4
) -> list[OperatingPoint]:
    """The greedy path of operating points from 'never leave early' to 'everybody leaves at exit 0'."""
    grids = _grids(conf, notches)
    pos = np.zeros(len(grids), dtype=int)
    cuts = np.array([g[0] for g in grids], dtype=float)
    acc, c = evaluate_cuts(conf, correct, cost, cuts)
    path = [OperatingPoint(tuple(cuts), acc, c)]
    while any(p < len(g) - 1 for p, g in zip(pos, grids, strict=True)):
        best: tuple[float, float, int, int, float, float] | None = None
        for i, g in enumerate(grids):
            for step in range(1, lookahead + 1):
                if pos[i] + step >= len(g):
                    break
                trial = cuts.copy()
                trial[i] = g[pos[i] + step]
                a, cc = evaluate_cuts(conf, correct, cost, trial)
                saved, lost = c - cc, acc - a
                score = np.inf if lost <= 0 else saved / lost
                key = (score, saved / step, i, step, a, cc)
                if best is None or key[:2] > best[:2]:
                    best = key
        assert best is not None
        _, _, i, step, acc, c = best
        pos[i] += step
        cuts[i] = grids[i][pos[i]]
        path.append(OperatingPoint(tuple(cuts), acc, c))
    return path


def _polish(
    point: OperatingPoint,
    conf: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    target: float,
    notches: int,
) -> OperatingPoint:
    """Coordinate descent: lower single cuts further while accuracy stays >= target and cost drops."""
    grids = _grids(conf, notches)
    cuts = np.array(point.cuts)
    best = point
    improved = True
    while improved:
        improved = False
        for i, g in enumerate(grids):
            for value in g[g < cuts[i]]:
                trial = cuts.copy()
                trial[i] = value
                a, c = evaluate_cuts(conf, correct, cost, trial)
                if a >= target and c < best.cost - 1e-12:
                    best, cuts, improved = OperatingPoint(tuple(trial), a, c), trial, True
    return best


def _prepare(
    policy: ThresholdPolicy, net_or_logits: Any, data: Any, cost: Sequence[float] | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    if isinstance(net_or_logits, MultiExitNetwork):
        outputs, y = collect_outputs(net_or_logits, data, batch_size=batch_size)
        stack = outputs.stack()
        if cost is None:
            cost = net_or_logits.cost_profile().exit_flops
    elif isinstance(net_or_logits, (ExitOutputs, torch.Tensor)):
        stack = as_stack(net_or_logits)
        if not isinstance(data, torch.Tensor):
            raise TypeError("with cached logits, data must be the label tensor y")
        y = data
    else:
        raise TypeError(f"calibrate needs a MultiExitNetwork or cached logits, got {type(net_or_logits).__name__}")
    y = y.reshape(-1).to(stack.device)
    if stack.shape[1] != y.shape[0]:
        raise ValueError(f"logits hold {stack.shape[1]} samples but there are {y.shape[0]} labels")
    if stack.shape[1] == 0:
        raise ValueError("calibration needs at least one sample")
    if not bool(torch.isfinite(stack).all()):
        raise ValueError("calibration logits contain NaN or inf")
    if int(y.min()) < 0 or int(y.max()) >= stack.shape[2]:
        raise ValueError(f"labels must lie in [0, {stack.shape[2] - 1}] for {stack.shape[2]} classes")
    num_exits = stack.shape[0]
    cost_arr = np.arange(1, num_exits + 1, dtype=float) if cost is None else np.asarray(list(cost), dtype=float)
    if cost_arr.shape != (num_exits,):
        raise ValueError(f"cost needs one value per exit ({num_exits}), got {cost_arr.shape[0]}")
    return stack, y, cost_arr


def calibrate(
    policy: ThresholdPolicy,
    net_or_logits: MultiExitNetwork | ExitOutputs | torch.Tensor,
    data: Any,
    *,
    max_accuracy_drop: float | None = None,
    flops_budget: float | None = None,
    cost: Sequence[float] | None = None,
    notches: int = 100,
    batch_size: int = 256,
) -> ThresholdPolicy:
    """Search per-exit thresholds on validation data; return a fitted copy of ``policy``.

    Args:
        policy: a threshold policy (``Entropy``, ``MaxProb``, …); its own ``thresholds`` are ignored.
        net_or_logits: the network (its exits are run over ``data``), or cached logits (``ExitOutputs`` or
            ``[E, B, C]``), in which case ``data`` is the label tensor.
        data: validation data (DataLoader, ``(x, y)``, a ``Split``) or labels (with cached logits).
        max_accuracy_drop: the cheapest thresholds whose accuracy is at most this far (a fraction: 0.005 is half
            a point) below the final exit's accuracy on ``data``. Always attainable: at worst nothing exits early.
        flops_budget: or the most accurate thresholds whose mean cost per sample stays within this many FLOPs.
        cost: cumulative cost of each exit; defaults to the network's ``exit_flops`` (or 1, 2, …, E units for
            cached logits).
        notches: quantile grid size per exit.
        batch_size: batch size for running the network.

    Returns:
        A fitted policy; ``policy.calibration_`` records the target, the calibration accuracy and cost.

    Raises:
        ValueError: neither or both targets given, a negative drop, or a budget below the cheapest possible cost.

    Example:
        >>> torch.manual_seed(0)
        >>> y = torch.randint(0, 3, (200,))
        >>> logits = torch.randn(3, 200, 3) + 4 * torch.nn.functional.one_hot(y, 3)
        >>> p = calibrate(Entropy(), logits, y, max_accuracy_drop=0.0)  # doctest: +SKIP
    """
    if (max_accuracy_drop is None) == (flops_budget is None):
        raise ValueError("give exactly one of max_accuracy_drop or flops_budget")
    if not isinstance(policy, ThresholdPolicy):
        raise TypeError(f"calibrate searches thresholds of a ThresholdPolicy, got {type(policy).__name__}")
    stack, y, cost_arr = _prepare(policy, net_or_logits, data, cost, batch_size)
    conf = policy.confidence(stack[:-1]).double().cpu().numpy()  # [E-1, N]
    correct = (stack.argmax(dim=-1) == y.unsqueeze(0)).cpu().numpy()  # [E, N]
    final_acc = float(correct[-1].mean())
    path = threshold_path(conf, correct, cost_arr, notches=notches)
    if max_accuracy_drop is not None:
        if not 0.0 <= float(max_accuracy_drop) <= 1.0:
            raise ValueError(f"max_accuracy_drop must lie in [0, 1] (a fraction), got {max_accuracy_drop}")
        target = final_acc - float(max_accuracy_drop)
        feasible = [p for p in path if p.accuracy >= target - 1e-12]
        chosen = min(feasible, key=lambda p: (p.cost, -p.accuracy))
        chosen = _polish(chosen, conf, correct, cost_arr, target - 1e-12, notches)
        goal: dict[str, Any] = {"max_accuracy_drop": float(max_accuracy_drop), "target_accuracy": target}
    else:
        budget = float(flops_budget)  # type: ignore[arg-type]
        cheapest = min(p.cost for p in path)
        if budget < cheapest:
            raise ValueError(
                f"flops_budget {budget:.4g} is below the cheapest possible mean cost {cheapest:.4g} "
                "(every sample leaving at exit 0)"
            )
        chosen = max((p for p in path if p.cost <= budget), key=lambda p: (p.accuracy, -p.cost))
        goal = {"flops_budget": budget}
    fitted = policy.clone()
    assert isinstance(fitted, ThresholdPolicy)
    fitted.thresholds_ = [fitted.threshold_from_cut(c) for c in chosen.cuts]
    fitted._validate_fitted()
    fitted.calibration_ = {  # type: ignore[attr-defined]
        **goal,
        "final_accuracy": final_acc,
        "accuracy": chosen.accuracy,
        "mean_cost": chosen.cost,
        "full_cost": float(cost_arr[-1]),
        "num_samples": int(y.shape[0]),
    }
    return fitted
