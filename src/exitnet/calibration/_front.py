"""The Pareto front of a policy family: every non-dominated (mean cost, accuracy) operating point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exitnet.calibration import _search as S
from exitnet.calibration._inputs import Cached, CostLike, gain_matrix, prepare, threshold_problem, totals, with_cuts
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.policies import ExitPolicy, TemperatureScaled, ThresholdPolicy
from exitnet.scores import ScoreFn

__all__ = ["FrontPoint", "pareto_front"]


@dataclass(frozen=True)
class FrontPoint:
    """One operating point: mean cost (FLOPs) per sample, accuracy (mean score), and the fitted policy."""

    flops: float
    accuracy: float
    policy: ExitPolicy

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flops": self.flops, "accuracy": self.accuracy}
        thresholds = getattr(self.policy, "thresholds_", None)
        if thresholds is not None:
            out["thresholds"] = list(thresholds)
        return out


def pareto_front(
    policy: ExitPolicy,
    net_or_logits: MultiExitNetwork | ExitOutputs | torch.Tensor,
    data: Any,
    cost: CostLike = "flops",
    *,
    score_fn: ScoreFn | None = None,
    batch_size: int = 256,
) -> list[FrontPoint]:
    """Every non-dominated (mean cost, accuracy) point of ``policy``'s family on calibration data.

    For threshold policies the candidates are every setting the search visits (the greedy path, the Lagrangian
    sweep of the convex hull, every shared threshold); with one auxiliary exit that is every threshold, so the
    front is exact, and beyond that it is the front of those points. For ``Patience``/``Budgeted``, the
    candidate settings. Sorted by cost; each point carries its fitted policy. Accuracy is the mean score
    (see :func:`exitnet.calibrate`; minus the mean squared error for regression).

    Args:
        policy: the policy family.
        net_or_logits, data: a network and data, or cached outputs and labels (as for :func:`exitnet.calibrate`).
        cost: ``"flops"``, a ``CostProfile`` or one cumulative cost per exit.
        score_fn: per-sample score (the task's default).
        batch_size: batch size for running a network.

    Example:
        >>> from exitnet.policies import MaxProb
        >>> y = torch.arange(100) % 2
        >>> front = pareto_front(MaxProb(), torch.randn(2, 100, 2), y, cost=[1.0, 2.0])
        >>> all(a.flops < b.flops and a.accuracy < b.accuracy for a, b in zip(front, front[1:]))
        True
    """
    cached = prepare(net_or_logits, data, cost, batch_size, score_fn)
    policy.check_task(cached.outputs.task)
    return _front(policy, cached)


def _front(policy: ExitPolicy, data: Cached) -> list[FrontPoint]:
    n = data.n
    if isinstance(policy, TemperatureScaled):
        temps = list(policy.temperatures_) if policy.is_fitted() else policy.fit_temperatures(data.outputs, data.y)
        inner = _front(policy.policy, data.with_outputs(policy.scale(data.outputs, temps)))
        return [FrontPoint(p.flops, p.accuracy, policy.with_inner(temps, p.policy)) for p in inner]
    if isinstance(policy, ThresholdPolicy):
        base = policy.calibration_base(data.outputs, data.y)
        prob = threshold_problem(base, data, gain_matrix(base, data))
        settings = [*S.greedy_path(prob), *S.lagrange_sweep(prob, S.lambdas(prob, 48))]
        points = [(c_tot, g_tot, i) for i, (g_tot, c_tot) in enumerate(prob.evaluate(c) for c in settings)]
        values, g, c = S.shared_curve(prob)
        points += [(float(c[j]), float(g[j]), len(settings) + j) for j in range(len(values))]
        settings += [np.full(prob.num_aux, v) for v in values]
        return [
            FrontPoint(cc / n, gg / n, with_cuts(base, settings[ident])) for cc, gg, ident in S.nondominated(points)
        ]
    gain = gain_matrix(policy, data)
    candidates = policy.calibration_candidates(data.outputs, data.y)
    points = [(c_tot, g_tot, i) for i, (g_tot, c_tot) in enumerate(totals(c, data, gain) for c in candidates)]
    return [FrontPoint(cc / n, gg / n, candidates[ident]) for cc, gg, ident in S.nondominated(points)]
