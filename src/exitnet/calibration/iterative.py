"""The single-threshold iterative rule of Baccarelli et al. (the survey's [3])."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from exitnet.calibration._inputs import CostLike, gain_matrix, prepare
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.policies import ThresholdPolicy
from exitnet.scores import ScoreFn

__all__ = ["calibrate_iterative"]


def calibrate_iterative(
    policy: ThresholdPolicy,
    net_or_logits: MultiExitNetwork | ExitOutputs | torch.Tensor,
    data: Any,
    *,
    target_accuracy: float | None = None,
    max_accuracy_drop: float | None = None,
    eta: float = 1.0,
    beta0: float = 0.5,
    tol: float = 1e-3,
    max_iter: int = 500,
    cost: CostLike = "flops",
    score_fn: ScoreFn | None = None,
    batch_size: int = 256,
) -> ThresholdPolicy:
    """One threshold β shared by all exits, tuned by the iterative rule of Baccarelli et al. (the survey's [3]).

    ``β ← β + η (acc_target − acc(β))`` for a rule that leaves when the statistic is *above* β (``MaxProb``,
    ``Margin``, ``Gate``: raising β keeps more samples, so accuracy rises); for ``Entropy`` (leave when *below*
    β) the sign flips. β is kept in [0, 1]. Stopping rule: stop when ``|acc(β) − acc_target| <= tol``
    (converged), or when β stops moving (it sits at 0 or 1: the target is out of reach, or even the most
    aggressive threshold keeps accuracy above it, when the earliest exits are that good), or after ``max_iter``
    steps; ``calibration_["status"]`` says which. Like any fixed-step rule it converges when
    ``η · |d acc / d β| < 2`` near the answer, and acc(β) is a step function on finite data, so ``tol`` must
    exceed the accuracy step there (about 1 / N). Accuracy is the mean score (``score_fn``, the task's default:
    the share of valid positions right for token-level outputs); ``net_or_logits``, ``data`` and ``cost`` are
    as for :func:`exitnet.calibrate`.

    Returns:
        A fitted copy with ``thresholds_ = [β] * (E - 1)``; ``calibration_`` holds ``converged``, ``iterations``
        and the ``trace`` of (β, accuracy).

    Example:
        >>> from exitnet.policies import MaxProb
        >>> y, g = torch.arange(2000) % 2, torch.Generator().manual_seed(0)
        >>> sure = torch.tensor([1.0, 3.0]).view(2, 1, 1)  # exit 0 is the weaker one
        >>> logits = torch.randn(2, 2000, 2, generator=g) + sure * torch.nn.functional.one_hot(y, 2)
        >>> p = calibrate_iterative(MaxProb(), logits, y, max_accuracy_drop=0.01, tol=2e-3)
        >>> p.calibration_["converged"], abs(p.calibration_["accuracy"] - p.calibration_["target_accuracy"]) <= 2e-3
        (True, True)
    """
    if (target_accuracy is None) == (max_accuracy_drop is None):
        raise ValueError("give exactly one of target_accuracy or max_accuracy_drop")
    if not isinstance(policy, ThresholdPolicy):
        raise TypeError(f"the iterative rule tunes one threshold of a ThresholdPolicy, got {type(policy).__name__}")
    if not eta > 0 or not tol > 0 or max_iter < 1 or not 0 <= beta0 <= 1:
        raise ValueError(
            f"need eta > 0, tol > 0, max_iter >= 1 and beta0 in [0, 1]; got {eta}, {tol}, {max_iter}, {beta0}"
        )
    cached = prepare(net_or_logits, data, cost, batch_size, score_fn)
    policy.check_task(cached.outputs.task)
    base = policy.calibration_base(cached.outputs, cached.y)
    gain = torch.from_numpy(gain_matrix(base, cached))  # [E, N]
    final_acc = float(cached.scores[-1].mean())
    target = final_acc - float(max_accuracy_drop) if target_accuracy is None else float(target_accuracy)  # type: ignore[arg-type]
    stack = cached.stack
    stat = base.statistics(stack[:-1], cached.outputs.mask).cpu()  # [E-1, N]
    cols = torch.arange(stack.shape[1])

    def accuracy(beta: float) -> tuple[float, torch.Tensor]:
        leaves = torch.cat(
            [base.passes(stat, torch.tensor(beta, dtype=torch.float32)), torch.ones_like(stat[:1], dtype=torch.bool)]
        )
        ex = leaves.to(torch.uint8).argmax(dim=0)
        return float(gain[ex, cols].mean()), ex

    sign = -1.0 if base.lower_is_confident else 1.0
    beta, trace, status = float(beta0), [], "max_iter reached"
    for _ in range(int(max_iter)):
        acc, _ = accuracy(beta)
        trace.append((beta, acc))
        if abs(acc - target) <= tol:
            status = "converged"
            break
        new = float(min(1.0, max(0.0, beta + sign * eta * (target - acc))))
        if abs(new - beta) < 1e-12:  # stuck at a bound
            status = (
                "at a bound: even the most aggressive threshold keeps accuracy above the target"
                if acc > target
                else "at a bound: the target is out of reach"
            )
            break
        beta = new
    converged = status == "converged"
    beta = float(np.float32(beta))
    acc, ex = accuracy(beta)
    fitted = base.with_thresholds([beta] * (stack.shape[0] - 1))
    fitted.calibration_ = {
        "method": "iterative single threshold (Baccarelli et al.)",
        "target_accuracy": target,
        "final_accuracy": final_acc,
        "accuracy": acc,
        "mean_cost": float(cached.cost[ex.numpy()].mean()),
        "full_cost": float(cached.cost[-1]),
        "converged": converged,
        "status": status,
        "iterations": len(trace),
        "eta": eta,
        "tol": tol,
        "trace": [[b, a] for b, a in trace],
        "num_samples": int(stack.shape[1]),
    }
    return fitted
