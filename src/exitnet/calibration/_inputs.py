"""Private: what every calibration starts from, and the pieces the searches share.

:func:`prepare` turns a network and data, or cached outputs and labels, into :class:`Cached`: the outputs of every
exit (with their task and mask of valid positions), the checked targets, the score of every exit on every sample
(``[E, N]``, float) and the cumulative cost of every exit (:func:`exit_costs`, the one cost lookup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from exitnet._batches import collect_outputs, iter_batches
from exitnet._utils import module_device
from exitnet.calibration import _search as S
from exitnet.cost import CostProfile
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs, as_outputs
from exitnet.policies import ExitPolicy, ThresholdPolicy
from exitnet.rows import to_device
from exitnet.scores import ScoreFn, as_targets, default_score, score_matrix

__all__ = [
    "CostLike",
    "COST_KINDS",
    "Cached",
    "exit_costs",
    "prepare",
    "gain_matrix",
    "threshold_problem",
    "with_cuts",
    "totals",
]

CostLike = str | CostProfile | Sequence[float] | None

#: ``cost=<kind>``: the :class:`~exitnet.cost.CostProfile` attribute that gives the cumulative cost of each exit.
COST_KINDS: dict[str, str] = {"flops": "exit_flops", "time": "exit_seconds"}


def exit_costs(
    cost: CostLike, num_exits: int, net: MultiExitNetwork | None = None, profile: CostProfile | None = None
) -> np.ndarray:
    """Cumulative cost of leaving at each exit, ``[E]``.

    Args:
        cost: a kind of :data:`COST_KINDS` (``"flops"``, the default, ``None`` means it too; ``"time"``, measured
            seconds per sample), looked up in the network's cost profile (for cached outputs, ``"flops"`` counts
            1, 2, …, E units); a ``CostProfile`` (its ``exit_flops``); or one number per exit.
        num_exits: E.
        net: the network whose profile a kind is looked up in.
        profile: or that profile itself (the one of the data's input shape).

    Example:
        >>> exit_costs([1.0, 2.5], 2), exit_costs("flops", 3)
        (array([1. , 2.5]), array([1., 2., 3.]))
    """
    if cost is None:
        cost = "flops"
    if isinstance(cost, str):
        if cost not in COST_KINDS:
            raise ValueError(
                f"unknown cost {cost!r}; choose one of: {', '.join(COST_KINDS)}, a CostProfile, or one number per exit"
            )
        if profile is not None or net is not None:
            source = profile if profile is not None else net.cost_profile()  # type: ignore[union-attr]
            values: Any = getattr(source, COST_KINDS[cost])
        elif cost == "flops":
            values = np.arange(1, num_exits + 1, dtype=float)  # cached outputs: exit i costs i + 1 units
        else:
            raise ValueError(
                f"cost={cost!r} needs the network or its CostProfile; with cached outputs pass cost=profile"
            )
    elif isinstance(cost, CostProfile):
        values = cost.exit_flops
    else:
        values = cost
    arr = np.asarray(list(values), dtype=float)
    if arr.shape != (num_exits,):
        raise ValueError(f"cost needs one value per exit ({num_exits}), got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"exit costs must be finite and >= 0, got {arr.tolist()}")
    return arr


@dataclass(frozen=True)
class Cached:
    """Calibration data, cached: ``outputs`` of every exit, targets ``y`` ``[N, *]``, per-exit ``cost`` ``[E]``,
    the ``score_fn`` and ``scores`` ``[E, N]`` (float64) of every exit's own prediction."""

    outputs: ExitOutputs
    y: torch.Tensor
    cost: np.ndarray
    score_fn: ScoreFn
    scores: np.ndarray

    @property
    def stack(self) -> torch.Tensor:
        return self.outputs.stack()

    @property
    def n(self) -> int:
        return self.outputs.batch_size

    @property
    def num_exits(self) -> int:
        return self.outputs.num_exits

    @property
    def binary(self) -> bool:
        """Are the scores 0/1 (one label per sample, accuracy)? Then totals are counted exactly."""
        return bool(np.isin(self.scores, (0.0, 1.0)).all())

    def with_outputs(self, outputs: ExitOutputs) -> Cached:
        """The same data seen through other outputs of the same predictions (temperature-scaled logits)."""
        return replace(self, outputs=outputs)

    def subset(self, rows: torch.Tensor) -> Cached:
        """The samples ``rows`` only."""
        out = self.outputs
        sub = out.replace(
            logits=tuple(t[rows] for t in out.logits),
            mask=None if out.mask is None else out.mask[rows],
            features=None,
        )
        return replace(self, outputs=sub, y=self.y[rows], scores=self.scores[:, rows.cpu().numpy()])


def prepare(
    net_or_logits: MultiExitNetwork | ExitOutputs | torch.Tensor,
    data: Any,
    cost: CostLike = "flops",
    batch_size: int = 256,
    score_fn: ScoreFn | None = None,
) -> Cached:
    """:class:`Cached` from a network and data (its exits are run over the data), or cached outputs and labels.

    Raises:
        ValueError: labels that do not fit the outputs (count, shape, classes, non-integer class labels), no
            sample, or NaN / inf at a valid position.
    """
    net = None
    profile = None
    if isinstance(net_or_logits, MultiExitNetwork):
        net = net_or_logits
        outputs, y = collect_outputs(net, data, batch_size=batch_size)
        x0, _ = next(iter_batches(data, batch_size))
        x0 = to_device(x0, module_device(net))
        profile = net.cost_profile(x0)  # the cost of the data's input shape
        if cost == "time" and not profile.timings:  # measured once, at this batch size (decisions not timed)
            profile = net.measure_time(x0)
    elif isinstance(net_or_logits, (ExitOutputs, torch.Tensor)):
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"with cached logits, data must be the label tensor y, got {type(data).__name__}")
        outputs, y = as_outputs(net_or_logits), data
    else:
        raise TypeError(f"calibrate needs a MultiExitNetwork or cached logits, got {type(net_or_logits).__name__}")
    outputs = outputs.detach().replace(features=None)
    n = outputs.batch_size
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(f"logits hold {n} samples but there are {y.shape[0] if y.dim() else 1} labels")
    if n == 0:
        raise ValueError("calibration needs at least one sample")
    stack = outputs.stack()  # [E, N, ...]
    finite = torch.isfinite(stack)
    if outputs.task == "classification":
        finite = finite.all(dim=-1)  # [E, N, *]
    if outputs.mask is not None:  # padding may hold anything
        m = outputs.mask.to(torch.bool)
        finite = finite | ~m.view(1, *m.shape, *([1] * (finite.dim() - 1 - m.dim())))
    if not bool(finite.all()):
        raise ValueError("calibration logits contain NaN or inf")
    num_classes = int(stack.shape[-1]) if outputs.task == "classification" else None
    y = as_targets(y.to(stack.device), tuple(outputs.logits[0].shape), outputs.task, num_classes=num_classes)
    fn = score_fn if score_fn is not None else default_score(outputs.task)
    scores = score_matrix(stack, y, task=outputs.task, score_fn=fn, mask=outputs.mask).cpu().numpy()
    if not np.all(np.isfinite(scores)):
        raise ValueError("the score function gave NaN or inf scores")
    return Cached(outputs, y, exit_costs(cost, outputs.num_exits, net, profile), fn, scores)


def gain_matrix(policy: ExitPolicy, data: Cached) -> np.ndarray:
    """``[E, N]``: the score a sample gets when ``policy`` lets it leave at each exit; at the last exit the score of
    :meth:`~exitnet.policies.ExitPolicy.fallback_prediction` (the last exit's own, or the most confident exit's)."""
    gain = data.scores.copy()
    last = policy.fallback_prediction(data.outputs)
    gain[-1] = data.score_fn(last, data.y, data.outputs.mask).double().cpu().numpy()
    return gain


def threshold_problem(base: ThresholdPolicy, data: Cached, gain: np.ndarray) -> S.Problem:
    """The search problem of a threshold policy: its signed confidence at every auxiliary exit, per sample."""
    conf = base.confidence(data.stack[:-1], data.outputs.mask).detach().float().cpu().numpy()  # [E-1, N]
    lo, hi = base.cut_range
    return S.Problem(conf.astype(np.float64), gain.astype(np.float64), data.cost, lo, hi)


def with_cuts(base: ThresholdPolicy, cuts: np.ndarray) -> ThresholdPolicy:
    """A fitted copy of ``base`` with the thresholds that realise ``cuts``."""
    return base.with_thresholds([base.threshold_from_cut(float(c)) for c in cuts])


def totals(policy: ExitPolicy, data: Cached, gain: np.ndarray) -> tuple[float, float]:
    """Total gain and total cost of what ``policy`` decides on the data (the ground truth of the search)."""
    ex = policy.decide(data.outputs).cpu().numpy()
    return float(gain[ex, np.arange(gain.shape[1])].sum()), float(data.cost[ex].sum())
