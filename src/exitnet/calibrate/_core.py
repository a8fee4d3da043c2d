"""Calibration to a target accuracy or a FLOPs budget, the Pareto front, and the iterative rule of [3]."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch

from exitnet._batches import collect_outputs
from exitnet.calibrate import _search as S
from exitnet.cost import CostProfile
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies import ExitPolicy, TemperatureScaled, ThresholdPolicy

__all__ = ["calibrate", "pareto_front", "FrontPoint", "prepare", "correct_matrix", "with_cuts", "totals"]

CostLike = CostProfile | Sequence[float] | None
P = TypeVar("P", bound=ExitPolicy)


@dataclass(frozen=True)
class FrontPoint:
    """One operating point: mean FLOPs per sample, accuracy, and the fitted policy that gives them."""

    flops: float
    accuracy: float
    policy: ExitPolicy

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flops": self.flops, "accuracy": self.accuracy}
        thresholds = getattr(self.policy, "thresholds_", None)
        if thresholds is not None:
            out["thresholds"] = list(thresholds)
        return out


# ------------------------------------------------------------------------------------------------ inputs
def _cost_array(cost: CostLike, num_exits: int, net: MultiExitNetwork | None = None) -> np.ndarray:
    if cost is None and net is not None:
        cost = net.cost_profile()
    if isinstance(cost, CostProfile):
        cost = cost.exit_flops
    arr = np.arange(1, num_exits + 1, dtype=float) if cost is None else np.asarray(list(cost), dtype=float)
    if arr.shape != (num_exits,):
        raise ValueError(f"cost needs one value per exit ({num_exits}), got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"exit costs must be finite and >= 0, got {arr.tolist()}")
    return arr


def prepare(
    net_or_logits: MultiExitNetwork | ExitOutputs | torch.Tensor, data: Any, cost: CostLike, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(stack [E, N, C], labels [N], cumulative cost per exit [E])`` from a network and data, or cached logits."""
    net = None
    if isinstance(net_or_logits, MultiExitNetwork):
        net = net_or_logits
        outputs, y = collect_outputs(net, data, batch_size=batch_size)
        stack = outputs.stack()
    elif isinstance(net_or_logits, (ExitOutputs, torch.Tensor)):
        stack = as_stack(net_or_logits).detach()
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"with cached logits, data must be the label tensor y, got {type(data).__name__}")
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
    return stack, y, _cost_array(cost, stack.shape[0], net)


def correct_matrix(stack: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``[E, N]``: is exit i right on sample b."""
    return (stack.argmax(dim=-1) == y.unsqueeze(0)).cpu().numpy()


def threshold_problem(base: ThresholdPolicy, stack: torch.Tensor, gain: np.ndarray, cost: np.ndarray) -> S.Problem:
    conf = base.confidence(stack[:-1]).detach().float().cpu().numpy().astype(np.float64)  # [E-1, N]
    lo, hi = base.cut_range
    return S.Problem(conf, gain.astype(np.float64), cost, lo, hi)


def with_cuts(base: ThresholdPolicy, cuts: np.ndarray) -> ThresholdPolicy:
    """A fitted copy of ``base`` with the thresholds that realise ``cuts``."""
    out = copy.copy(base)  # shares learned parts (gates), gets its own thresholds
    out.thresholds_ = [base.threshold_from_cut(float(c)) for c in cuts]
    out._validate_fitted()
    return out


def totals(policy: ExitPolicy, stack: torch.Tensor, gain: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Total gain and total cost of what ``policy`` decides on ``stack`` (the ground truth of the search)."""
    ex = policy.decide(stack).cpu().numpy()
    return float(gain[ex, np.arange(gain.shape[1])].sum()), float(cost[ex].sum())


# ------------------------------------------------------------------------------------------------ calibrate
def calibrate(
    policy: P,
    net_or_logits: MultiExitNetwork | ExitOutputs | torch.Tensor,
    data: Any,
    *,
    max_accuracy_drop: float | None = None,
    flops_budget: float | None = None,
    guarantee: tuple[float, float] | None = None,
    target_accuracy: float | None = None,
    cost: CostLike = None,
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

    Args:
        policy: the policy to calibrate; its own thresholds are ignored.
        net_or_logits: the network (its exits are run over ``data``), or cached logits (``ExitOutputs`` or
            ``[E, N, C]``), in which case ``data`` is the label tensor.
        data: calibration data (DataLoader, ``(x, y)``, a ``Split``) or labels (with cached logits).
        max_accuracy_drop: the cheapest setting whose accuracy on ``data`` is at most this far below the final
            exit's (a fraction: 0.005 is half a point). Always attainable: at worst nobody leaves early.
        flops_budget: or the most accurate setting whose mean FLOPs per sample stay within this budget.
        guarantee: or ``(epsilon, delta)``: risk control (:func:`exitnet.calibrate.risk.calibrate_risk`): with
            probability >= 1 - delta over the calibration set, the accuracy drop on new data is <= epsilon.
        target_accuracy: or the cheapest setting whose accuracy on ``data`` is at least this (absolute; it may
            exceed the final exit's when earlier exits are better); ``ValueError`` when out of reach.
        cost: cumulative cost of each exit (a ``CostProfile`` or numbers); defaults to the network's
            ``exit_flops`` (1, 2, …, E units for cached logits).
        shared: one threshold shared by all exits instead of one per exit (the exact best shared one).
        batch_size: batch size for running the network.
        split, seed, pvalue, risk_loss: options of the risk control (``split`` of the calibration set selects
            the candidate path, the rest tests it; ``risk_loss`` "drop" (the accuracy drop itself) or "harm"
            (a 0/1 upper bound of it, tested with the ``pvalue`` "binomial" or "hb"); see
            :mod:`exitnet.calibrate.risk`).

    Returns:
        A fitted policy; ``policy.calibration_`` records the goal, the accuracy and mean cost reached.

    Raises:
        ValueError: not exactly one goal, a drop outside [0, 1], a budget below the cheapest possible cost, or a
            target accuracy out of reach.

    Example:
        >>> from exitnet.policies import Entropy
        >>> y = torch.arange(200) % 3
        >>> logits = torch.randn(3, 200, 3) + 3 * torch.nn.functional.one_hot(y, 3)
        >>> p = calibrate(Entropy(), logits, y, max_accuracy_drop=0.0)
        >>> p.calibration_["accuracy"] >= p.calibration_["final_accuracy"]
        True
    """
    if sum(g is not None for g in (max_accuracy_drop, flops_budget, guarantee, target_accuracy)) != 1:
        raise ValueError(
            "give exactly one of max_accuracy_drop, flops_budget, guarantee=(epsilon, delta) or target_accuracy"
        )
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"calibrate needs an ExitPolicy, got {type(policy).__name__}")
    stack, y, cost_arr = prepare(net_or_logits, data, cost, batch_size)
    if guarantee is not None:
        from exitnet.calibrate.risk import calibrate_risk

        fitted = calibrate_risk(
            policy, stack, y, guarantee, cost=cost_arr, split=split, seed=seed, pvalue=pvalue, loss=risk_loss
        )
        return cast(P, fitted)
    if max_accuracy_drop is not None:
        drop = float(max_accuracy_drop)
        if math.isnan(drop) or not 0.0 <= drop <= 1.0:
            raise ValueError(f"max_accuracy_drop must lie in [0, 1] (a fraction: 0.005 is half a point), got {drop}")
    if target_accuracy is not None and (math.isnan(float(target_accuracy)) or not 0 <= float(target_accuracy) <= 1):
        raise ValueError(f"target_accuracy must lie in [0, 1], got {target_accuracy}")
    if flops_budget is not None and (math.isnan(float(flops_budget)) or float(flops_budget) < 0):
        raise ValueError(f"flops_budget must be a number >= 0, got {flops_budget}")
    fitted = calibrate_cached(
        policy,
        stack,
        y,
        cost_arr,
        drop=max_accuracy_drop,
        budget=flops_budget,
        target=target_accuracy,
        shared=shared,
    )
    return cast(P, fitted)  # the same kind of policy, fitted


def calibrate_cached(
    policy: ExitPolicy,
    stack: torch.Tensor,
    y: torch.Tensor,
    cost: np.ndarray,
    *,
    drop: float | None = None,
    budget: float | None = None,
    target: float | None = None,
    shared: bool = False,
) -> ExitPolicy:
    """:func:`calibrate` on cached ``stack`` ``[E, N, C]``, labels and cost array (one goal given)."""
    n = stack.shape[1]
    correct = correct_matrix(stack, y)
    final_correct = int(correct[-1].sum())
    if drop is not None:
        need = final_correct - math.floor(float(drop) * n + 1e-9)
        key = S.target_key(need)
        goal: dict[str, Any] = {"max_accuracy_drop": float(drop), "target_accuracy": need / n}
    elif target is not None:
        need = math.ceil(float(target) * n - 1e-9)
        key = S.target_key(need)
        goal = {"target_accuracy": float(target)}
    else:
        key = S.budget_key(float(budget) * n)  # type: ignore[arg-type]
        goal = {"flops_budget": float(budget)}  # type: ignore[arg-type]

    if isinstance(policy, TemperatureScaled):
        temps = list(policy.temperatures_) if policy.is_fitted() else policy.fit_temperatures(stack, y)
        inner = calibrate_cached(
            policy.policy, policy.scale(stack, temps), y, cost, drop=drop, budget=budget, target=target, shared=shared
        )
        fitted_t = policy.with_inner(temps, inner)
        fitted_t.calibration_ = {**inner.calibration_, "temperatures": fitted_t.temperatures_}  # type: ignore[attr-defined]
        return fitted_t

    def check_budget(cheapest: float) -> None:
        if budget is not None and float(budget) * n < cheapest * (1 - 1e-12) - 1e-9:
            raise ValueError(
                f"flops_budget {float(budget):.6g} is below the cheapest possible mean cost {cheapest / n:.6g} "
                f"of this policy (full network: {cost[-1]:.6g})"
            )

    gain = correct.astype(np.float64)
    if isinstance(policy, ThresholdPolicy):
        base = policy.calibration_base(stack, y)
        prob = threshold_problem(base, stack, gain, cost)
        check_budget(prob.evaluate(np.full(prob.num_aux, prob.lo))[1])
        if shared:
            values, g, c = S.shared_curve(prob)
            cuts = np.full(prob.num_aux, values[S._argbest(key, g, c)])
            method = "shared threshold (exact)"
        elif budget is not None:
            cuts = S.solve_budget(prob, float(budget) * n)
            method = "per-exit search"
        else:
            cuts = S.solve(prob, key)
            method = "per-exit search"
        fitted: ExitPolicy = with_cuts(base, cuts)
        g_tot, c_tot = totals(fitted, stack, gain, cost)
        if S._better(key, prob.evaluate(prob.never()), (g_tot, c_tot)):  # never happens; a safety net
            fitted, method = with_cuts(base, prob.never()), "fallback: nobody leaves early"
            g_tot, c_tot = totals(fitted, stack, gain, cost)
    else:
        candidates = policy.calibration_candidates(stack, y)
        scores = [totals(cand, stack, gain, cost) for cand in candidates]
        check_budget(min(c for _, c in scores))
        j = S._argbest(key, np.array([g for g, _ in scores]), np.array([c for _, c in scores]))
        fitted, (g_tot, c_tot), method = candidates[j], scores[j], f"best of {len(candidates)} candidates"
    if target is not None and g_tot < need - 1e-9:
        raise ValueError(
            f"target_accuracy {float(target):.4f} is out of reach of {type(policy).__name__} on these data: "
            f"the best it found is {g_tot / n:.4f} (final exit: {final_correct / n:.4f})"
        )
    fitted.calibration_ = {  # type: ignore[attr-defined]
        **goal,
        "method": method,
        "final_accuracy": final_correct / n,
        "accuracy": g_tot / n,
        "mean_cost": c_tot / n,
        "full_cost": float(cost[-1]),
        "num_samples": n,
    }
    return fitted


# ------------------------------------------------------------------------------------------------ front
def pareto_front(
    policy: ExitPolicy, logits: ExitOutputs | torch.Tensor, y: torch.Tensor, cost: CostLike = None
) -> list[FrontPoint]:
    """Every non-dominated (mean FLOPs, accuracy) point of ``policy``'s family on ``logits`` and labels ``y``.

    For threshold policies the candidates are every setting the search visits (the greedy path, the Lagrangian
    sweep of the convex hull, every shared threshold); with one auxiliary exit that is every threshold, so the
    front is exact, and beyond that it is the front of those points. For ``Patience``/``Budgeted``, the
    candidate settings. Sorted by FLOPs; each point carries its fitted policy.

    Example:
        >>> from exitnet.policies import MaxProb
        >>> y = torch.arange(100) % 2
        >>> front = pareto_front(MaxProb(), torch.randn(2, 100, 2), y, cost=[1.0, 2.0])
        >>> all(a.flops < b.flops and a.accuracy < b.accuracy for a, b in zip(front, front[1:]))
        True
    """
    stack, y, cost_arr = prepare(logits, y, cost)
    return _front(policy, stack, y, cost_arr)


def _front(policy: ExitPolicy, stack: torch.Tensor, y: torch.Tensor, cost: np.ndarray) -> list[FrontPoint]:
    n = stack.shape[1]
    gain = correct_matrix(stack, y).astype(np.float64)
    if isinstance(policy, TemperatureScaled):
        temps = list(policy.temperatures_) if policy.is_fitted() else policy.fit_temperatures(stack, y)
        inner = _front(policy.policy, policy.scale(stack, temps), y, cost)
        return [FrontPoint(p.flops, p.accuracy, policy.with_inner(temps, p.policy)) for p in inner]
    if isinstance(policy, ThresholdPolicy):
        base = policy.calibration_base(stack, y)
        prob = threshold_problem(base, stack, gain, cost)
        settings = [*S.greedy_path(prob), *S.lagrange_sweep(prob, S._lambdas(prob, 48))]
        points = [(c_tot, g_tot, i) for i, (g_tot, c_tot) in enumerate(prob.evaluate(c) for c in settings)]
        values, g, c = S.shared_curve(prob)
        points += [(float(c[j]), float(g[j]), len(settings) + j) for j in range(len(values))]
        settings += [np.full(prob.num_aux, v) for v in values]
        return [
            FrontPoint(cc / n, gg / n, with_cuts(base, settings[ident])) for cc, gg, ident in S.nondominated(points)
        ]
    candidates = policy.calibration_candidates(stack, y)
    points = [(c_tot, g_tot, i) for i, (g_tot, c_tot) in enumerate(totals(c, stack, gain, cost) for c in candidates)]
    return [FrontPoint(cc / n, gg / n, candidates[ident]) for cc, gg, ident in S.nondominated(points)]
