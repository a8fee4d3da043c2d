"""Calibration to a target accuracy (or score) or a cost budget: the entry point :func:`calibrate`."""

from __future__ import annotations

import math
from typing import Any, TypeVar, cast

import numpy as np
import torch

from exitnet.calibration import _search as S
from exitnet.calibration._inputs import (
    Cached,
    CostLike,
    gain_matrix,
    prepare,
    threshold_problem,
    totals,
    with_cuts,
)
from exitnet.calibration.risk import calibrate_risk
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.policies import ExitPolicy, TemperatureScaled, ThresholdPolicy
from exitnet.scores import ScoreFn

__all__ = ["calibrate", "calibrate_cached"]

P = TypeVar("P", bound=ExitPolicy)


def calibrate(
    policy: P,
    net_or_logits: MultiExitNetwork | ExitOutputs | torch.Tensor,
    data: Any,
    *,
    max_accuracy_drop: float | None = None,
    max_score_drop: float | None = None,
    flops_budget: float | None = None,
    time_budget: float | None = None,
    guarantee: tuple[float, float] | None = None,
    target_accuracy: float | None = None,
    cost: CostLike = "flops",
    score_fn: ScoreFn | None = None,
    shared: bool = False,
    batch_size: int = 256,
    split: float = 0.5,
    seed: int = 0,
    pvalue: str = "binomial",
    risk_loss: str = "drop",
) -> P:
    """Choose a policy's thresholds (or its one knob) on calibration data; return a fitted copy.

    Per-exit thresholds (``Entropy``, ``MaxProb``, ``Margin``, ``Gate``) are searched as described in
    ``docs/policies.md``: exact coordinate descent (every value of one threshold at once, by sorting) from
    several starts (a greedy cost/accuracy path, a Lagrangian sweep over the convex hull, the best shared
    threshold), then moves of two thresholds at a time. ``TemperatureScaled`` fits its temperatures, then its
    inner policy on the scaled logits. ``Patience`` and ``Budgeted`` choose among their candidate settings
    (``k``; the geometric ratio) the one that meets the goal.

    What is "accurate" is the mean of a per-sample score (:mod:`exitnet.scores`): by default the accuracy for
    one label per sample, the share of valid positions right for token-level outputs, and minus the squared
    error for regression, where ``max_accuracy_drop`` is the tolerated *increase of the mean squared error*.

    Args:
        policy: the policy to calibrate; its own thresholds are ignored.
        net_or_logits: the network (its exits are run over ``data``), or cached outputs (``ExitOutputs``, whose
            task and mask are used, or ``[E, N, C]``), in which case ``data`` is the label tensor.
        data: calibration data (DataLoader, ``(x, y)``, a ``Split``) or labels (with cached outputs). Class labels
            must be whole numbers (a float label 0.7 is refused).
        max_accuracy_drop: the cheapest setting whose mean score on ``data`` is at most this far below the final
            exit's (accuracy: a fraction, 0.005 is half a point, in [0, 1]; regression: an increase of the mean
            squared error). Always attainable: at worst nobody leaves early.
        max_score_drop: the same, under a name that fits any score (give one of the two).
        flops_budget: or the most accurate setting whose mean cost per sample stays within this budget (in the
            unit of ``cost``: FLOPs by default).
        time_budget: or the same with measured seconds per sample (``cost="time"``: the network's
            :class:`~exitnet.cost.Timing` at this batch size, measured on the first batch when it has none).
        guarantee: or ``(epsilon, delta)``: risk control (:func:`exitnet.calibration.calibrate_risk`): with
            probability >= 1 - delta over the calibration set, the accuracy drop on new data is <= epsilon. Needs
            0/1 scores (one label per sample).
        target_accuracy: or the cheapest setting whose mean score on ``data`` is at least this (absolute; it may
            exceed the final exit's when earlier exits are better); ``ValueError`` when out of reach.
        cost: cumulative cost of each exit: ``"flops"`` (the network's ``exit_flops``; 1, 2, …, E units for
            cached outputs), ``"time"`` (measured seconds per sample, ``exit_seconds``), a ``CostProfile``, or one
            number per exit.
        score_fn: ``score_fn(pred, y, mask) -> [N]``, higher is better; defaults to the task's
            (:func:`exitnet.scores.default_score`).
        shared: one threshold shared by all exits instead of one per exit (the exact best shared one).
        batch_size: batch size for running the network.
        split, seed, pvalue, risk_loss: options of the risk control (``split`` of the calibration set selects
            the candidate path, the rest tests it; ``risk_loss`` "drop" (the accuracy drop itself) or "harm"
            (a 0/1 upper bound of it, tested with the ``pvalue`` "binomial" or "hb"); see
            :mod:`exitnet.calibration.risk`).

    Returns:
        A fitted policy; ``policy.calibration_`` records the goal, the accuracy (mean score) and mean cost reached.

    Raises:
        ValueError: not exactly one goal, a drop outside [0, 1] (accuracy), a budget below the cheapest possible
            cost, a target out of reach, or labels that do not fit the outputs.

    Example:
        >>> from exitnet.policies import Entropy
        >>> y = torch.arange(200) % 3
        >>> logits = torch.randn(3, 200, 3) + 3 * torch.nn.functional.one_hot(y, 3)
        >>> p = calibrate(Entropy(), logits, y, max_accuracy_drop=0.0)
        >>> p.calibration_["accuracy"] >= p.calibration_["final_accuracy"]
        True
    """
    if max_accuracy_drop is not None and max_score_drop is not None:
        raise ValueError("give max_accuracy_drop or its alias max_score_drop, not both")
    drop = max_accuracy_drop if max_accuracy_drop is not None else max_score_drop
    if time_budget is not None:
        if cost not in ("flops", "time", None):
            raise ValueError(f"time_budget budgets measured seconds (cost='time'); it cannot go with cost={cost!r}")
        if flops_budget is not None:
            raise ValueError("give flops_budget or time_budget, not both")
        cost, flops_budget = "time", time_budget
    if sum(g is not None for g in (drop, flops_budget, guarantee, target_accuracy)) != 1:
        raise ValueError(
            "give exactly one of max_accuracy_drop, flops_budget, time_budget, guarantee=(epsilon, delta) or "
            "target_accuracy"
        )
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"calibrate needs an ExitPolicy, got {type(policy).__name__}")
    if drop is not None and (math.isnan(float(drop)) or float(drop) < 0):
        raise ValueError(f"max_accuracy_drop must lie in [0, 1] (a fraction: 0.005 is half a point), got {drop}")
    if flops_budget is not None and (math.isnan(float(flops_budget)) or float(flops_budget) < 0):
        raise ValueError(f"flops_budget must be a number >= 0, got {flops_budget}")
    cached = prepare(net_or_logits, data, cost, batch_size, score_fn)
    policy.check_task(cached.outputs.task)
    bounded = bool(((cached.scores >= 0) & (cached.scores <= 1)).all())  # accuracies: drops and targets in [0, 1]
    if drop is not None and bounded and float(drop) > 1:
        raise ValueError(f"max_accuracy_drop must lie in [0, 1] (a fraction: 0.005 is half a point), got {drop}")
    if target_accuracy is not None and (
        math.isnan(float(target_accuracy)) or (bounded and not 0 <= float(target_accuracy) <= 1)
    ):
        raise ValueError(f"target_accuracy must lie in [0, 1], got {target_accuracy}")
    if guarantee is not None:
        fitted = calibrate_risk(policy, cached, guarantee, split=split, seed=seed, pvalue=pvalue, loss=risk_loss)
        return cast(P, fitted)
    fitted = calibrate_cached(policy, cached, drop=drop, budget=flops_budget, target=target_accuracy, shared=shared)
    return cast(P, fitted)  # the same kind of policy, fitted


def _goal(
    data: Cached, drop: float | None, target: float | None, budget: float | None
) -> tuple[S.Key, float | None, float, dict[str, Any]]:
    """``(key, total gain needed or None, its tolerance, the goal as recorded)``: exact counts for 0/1 scores."""
    n, final = data.n, float(data.scores[-1].sum())
    exact = data.binary
    tol = 1e-9 if exact else 1e-9 * max(1.0, abs(final))
    if drop is not None:
        need = final - (math.floor(float(drop) * n + 1e-9) if exact else float(drop) * n)
        return S.target_key(need, tol), need, tol, {"max_accuracy_drop": float(drop), "target_accuracy": need / n}
    if target is not None:
        need = math.ceil(float(target) * n - 1e-9) if exact else float(target) * n
        return S.target_key(need, tol), need, tol, {"target_accuracy": float(target)}
    assert budget is not None
    return S.budget_key(float(budget) * n), None, tol, {"flops_budget": float(budget)}


def calibrate_cached(
    policy: ExitPolicy,
    data: Cached,
    *,
    drop: float | None = None,
    budget: float | None = None,
    target: float | None = None,
    shared: bool = False,
) -> ExitPolicy:
    """:func:`calibrate` on cached data (one goal given)."""
    n = data.n
    if isinstance(policy, TemperatureScaled):
        temps = list(policy.temperatures_) if policy.is_fitted() else policy.fit_temperatures(data.outputs, data.y)
        scaled = data.with_outputs(policy.scale(data.outputs, temps))
        inner = calibrate_cached(policy.policy, scaled, drop=drop, budget=budget, target=target, shared=shared)
        fitted_t = policy.with_inner(temps, inner)
        fitted_t.calibration_ = {**inner.calibration_, "temperatures": fitted_t.temperatures_}
        return fitted_t
    key, need, tol, goal = _goal(data, drop, target, budget)

    def check_budget(cheapest: float) -> None:
        if budget is not None and float(budget) * n < cheapest * (1 - 1e-12) - 1e-9:
            raise ValueError(
                f"flops_budget {float(budget):.6g} is below the cheapest possible mean cost {cheapest / n:.6g} "
                f"of this policy (full network: {data.cost[-1]:.6g})"
            )

    fitted: ExitPolicy
    if isinstance(policy, ThresholdPolicy):
        base = policy.calibration_base(data.outputs, data.y)
        gain = gain_matrix(base, data)
        prob = threshold_problem(base, data, gain)
        check_budget(prob.evaluate(np.full(prob.num_aux, prob.lo))[1])
        if shared:
            values, g, c = S.shared_curve(prob)
            cuts = np.full(prob.num_aux, values[S.argbest(key, g, c)])
            method = "shared threshold (exact)"
        elif budget is not None:
            cuts = S.solve_budget(prob, float(budget) * n, unit=S.gain_unit(gain))
            method = "per-exit search"
        else:
            cuts = S.solve(prob, key)
            method = "per-exit search"
        fitted = with_cuts(base, cuts)
        g_tot, c_tot = totals(fitted, data, gain)
        if S.better(key, prob.evaluate(prob.never()), (g_tot, c_tot)):  # never happens; a safety net
            fitted, method = with_cuts(base, prob.never()), "fallback: nobody leaves early"
            g_tot, c_tot = totals(fitted, data, gain)
    else:
        gain = gain_matrix(policy, data)
        candidates = policy.calibration_candidates(data.outputs, data.y)
        results = [totals(cand, data, gain) for cand in candidates]
        check_budget(min(c for _, c in results))
        j = S.argbest(key, np.array([g for g, _ in results]), np.array([c for _, c in results]))
        fitted, (g_tot, c_tot), method = candidates[j], results[j], f"best of {len(candidates)} candidates"
    final = float(data.scores[-1].sum())
    if target is not None and need is not None and g_tot < need - tol:
        raise ValueError(
            f"target_accuracy {float(target):.4f} is out of reach of {type(policy).__name__} on these data: "
            f"the best it found is {g_tot / n:.4f} (final exit: {final / n:.4f})"
        )
    fitted.calibration_ = {
        **goal,
        "method": method,
        "task": data.outputs.task,
        "score": getattr(data.score_fn, "__name__", "score_fn"),
        "final_accuracy": final / n,
        "accuracy": g_tot / n,
        "mean_cost": c_tot / n,
        "full_cost": float(data.cost[-1]),
        "num_samples": n,
    }
    return fitted
