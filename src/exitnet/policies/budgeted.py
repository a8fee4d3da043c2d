"""Budgeted exit: a fixed fraction of the samples leaves at each exit (MSDNet's budgeted classification)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from exitnet.policies._base import ExitPolicy, Outputs, State
from exitnet.policies._registry import register_policy
from exitnet.policies._stats import least_confident, normalized_entropy

__all__ = ["Budgeted", "geometric_fractions"]

_STATISTICS = ("maxprob", "entropy", "margin")


def geometric_fractions(ratio: float, num_exits: int) -> list[float]:
    """MSDNet's geometric law: the fraction leaving at exit i is proportional to ``ratio ** i``.

    Example:
        >>> geometric_fractions(0.5, 3)  # 4/7, 2/7, 1/7
        [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    """
    if not ratio > 0 or math.isinf(ratio):
        raise ValueError(f"the geometric ratio must be a positive finite number, got {ratio}")
    logw = [i * math.log(ratio) for i in range(num_exits)]
    top = max(logw)
    w = [math.exp(v - top) for v in logw]
    return [v / sum(w) for v in w]


def _cuts(conf: np.ndarray, fractions: Sequence[float]) -> list[float]:
    """Cuts on ``conf`` ``[E-1, N]`` (float32) that send exactly the target fractions out, exit after exit."""
    n = conf.shape[1]
    cum = np.rint(np.cumsum(fractions) * n).astype(int)  # samples gone by the end of exit i
    alive = np.ones(n, dtype=bool)
    cuts: list[float] = []
    for i in range(conf.shape[0]):
        m = int(cum[i] - (n - alive.sum()))  # how many leave here
        values = np.sort(conf[i, alive & np.isfinite(conf[i])])[::-1]  # descending
        if m <= 0 or values.size == 0:
            cut = float(np.inf)
        elif m >= values.size:
            cut = float(np.nextafter(values[-1], np.float32(-np.inf)))  # everybody still here leaves
        else:  # between the least confident sample that leaves and the most confident one that stays
            stay, leave = float(values[m]), float(values[m - 1])
            mid = float(np.float32((stay + leave) / 2))
            cut = mid if stay <= mid < leave else stay
        cuts.append(cut)
        alive &= ~(conf[i] > np.float32(cut))
    return [c if math.isfinite(c) else 1e30 for c in cuts]  # 1e30: JSON-safe 'nobody leaves'


def _confidence(kind: str, logits: torch.Tensor, mask: torch.Tensor | None = None, lead: int = 1) -> torch.Tensor:
    """Signed confidence (higher = more confident) per sample: ``[*L, B, *, C] -> [*L, B]``, the least confident
    valid position of token-level outputs."""
    if kind == "entropy":
        conf = -normalized_entropy(logits)
    else:
        p = torch.softmax(logits.float(), dim=-1)
        if kind == "maxprob":
            conf = p.amax(dim=-1)
        else:
            top2 = p.topk(2, dim=-1).values  # [..., 2]
            conf = top2[..., 0] - top2[..., 1]
    return least_confident(conf, mask, lower_is_confident=False, lead=lead)


@register_policy
class Budgeted(ExitPolicy):
    """Send a fixed fraction of the samples out at each exit: the most confident ones still there.

    ``fit`` ranks the samples of the fitting set by confidence exit after exit and puts each exit's cut
    (``cuts_``, on the signed confidence: leave iff confidence > cut) midway between the ``m_i``-th and the
    ``m_i + 1``-th most confident samples still there, where ``m_i = round(F_i N) - round(F_{i-1} N)`` and
    ``F_i`` is the cumulative fraction.
    On the fitting set the counts are then exact (unless confidences tie at a cut); on new data from the same
    distribution the fractions hold approximately, as in MSDNet's budgeted batch classification.

    Args:
        fractions: fraction of samples leaving at each exit: ``E`` numbers summing to 1, or ``E - 1`` numbers
            (the last exit takes the rest).
        ratio: or MSDNet's geometric law, fraction at exit i proportional to ``ratio ** i``
            (:func:`geometric_fractions`); give exactly one of the two.
        statistic: the confidence used to rank samples: ``"maxprob"`` (MSDNet), ``"entropy"`` or ``"margin"``.

    Example:
        >>> logits = torch.randn(3, 8, 4)
        >>> policy = Budgeted([0.5, 0.25, 0.25]).fit(logits)  # cuts that send 4, 2 and 2 of 8 out
        >>> torch.bincount(policy.decide(logits), minlength=3).tolist()
        [4, 2, 2]
    """

    name = "budgeted"
    _fitted_attrs: ClassVar[tuple[str, ...]] = ("fractions_", "cuts_", "num_exits_")

    def __init__(
        self, fractions: Sequence[float] | None = None, *, ratio: float | None = None, statistic: str = "maxprob"
    ) -> None:
        self.fractions = fractions
        self.ratio = ratio
        self.statistic = statistic

    def _target_fractions(self, num_exits: int) -> list[float]:
        if (self.fractions is None) == (self.ratio is None):
            raise ValueError("Budgeted needs exactly one of fractions=[…] or ratio=q (MSDNet's geometric law)")
        if self.ratio is not None:
            return geometric_fractions(float(self.ratio), num_exits)
        values = [float(f) for f in self.fractions]  # type: ignore[union-attr]
        if any(math.isnan(f) or f < 0 for f in values):
            raise ValueError(f"fractions must be >= 0, got {values}")
        if len(values) == num_exits - 1:
            if sum(values) > 1 + 1e-9:
                raise ValueError(f"the fractions of the {num_exits - 1} auxiliary exits sum to {sum(values)} > 1")
            values.append(max(0.0, 1.0 - sum(values)))
        elif len(values) != num_exits:
            raise ValueError(f"Budgeted needs {num_exits} fractions (or {num_exits - 1}), got {len(values)}")
        elif abs(sum(values) - 1) > 1e-6:
            raise ValueError(f"the {num_exits} fractions must sum to 1, got {sum(values)}")
        return values

    def _check_params(self) -> None:
        if self.statistic not in _STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}; choose one of: {', '.join(_STATISTICS)}")

    def _fit(self, stack: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, task: str) -> None:
        """Find the cuts that send the target fractions out at each exit on the outputs (labels are not used)."""
        num_exits, n = stack.shape[0], stack.shape[1]
        if n == 0:
            raise ValueError("Budgeted.fit needs at least one sample")
        fractions = self._target_fractions(num_exits)
        conf = _confidence(self.statistic, stack[:-1], mask, lead=2).cpu().numpy()  # [E-1, N] float32
        self.fractions_ = fractions
        self.cuts_ = _cuts(conf, fractions)

    def _validate_fitted(self) -> None:
        super()._validate_fitted()
        if any(not isinstance(c, (int, float)) or math.isnan(c) for c in self.cuts_):
            raise ValueError(f"Budgeted cuts must be numbers, got {self.cuts_}")
        if len(self.cuts_) != self.num_exits_ - 1 or len(self.fractions_) != self.num_exits_:
            raise ValueError(
                f"Budgeted fitted for {self.num_exits_} exits needs {self.num_exits_ - 1} cuts and "
                f"{self.num_exits_} fractions, got {len(self.cuts_)} and {len(self.fractions_)}"
            )

    def _infer_num_exits(self) -> int:
        return len(self.cuts_) + 1

    def _repr_fitted(self) -> list[tuple[str, Any]]:
        return [("fractions_", self.fractions_), ("num_exits_", self.num_exits_)]

    def _step(
        self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        return _confidence(self.statistic, logits, mask) > self.cuts_[i], state

    def _decide(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        cuts = torch.tensor(self.cuts_, dtype=torch.float32, device=stack.device).unsqueeze(1)  # [E-1, 1]
        leaves = _confidence(self.statistic, stack[:-1], mask, lead=2) > cuts  # [E-1, B]
        leaves = torch.cat([leaves, torch.ones_like(leaves[:1])], dim=0)
        return leaves.to(torch.uint8).argmax(dim=0)

    def calibration_candidates(self, outputs: Outputs, y: torch.Tensor | None = None) -> list[ExitPolicy]:
        """Nobody early first, then the geometric law with ``ratio`` from 64 down to 1/64 (more and more early)."""
        self._check_params()
        stack, mask, _, _ = self._unpack(outputs, None)
        num_exits = stack.shape[0]
        conf = _confidence(self.statistic, stack[:-1], mask, lead=2).cpu().numpy()  # computed once for all
        out: list[ExitPolicy] = []
        settings: list[tuple[list[float] | None, float | None]] = [([0.0] * (num_exits - 1), None)]
        settings += [(None, float(q)) for q in np.geomspace(64.0, 1 / 64.0, 37)]
        for fractions, ratio in settings:
            policy = Budgeted(fractions, ratio=ratio, statistic=self.statistic)
            policy.fractions_ = policy._target_fractions(num_exits)
            policy.cuts_ = _cuts(conf, policy.fractions_)
            policy.num_exits_ = num_exits
            policy._validate_fitted()
            out.append(policy)
        return out

    def config_params(self) -> dict[str, Any]:
        params = super().config_params()
        if params["fractions"] is not None:
            params["fractions"] = [float(f) for f in params["fractions"]]
        return params
