"""Confidence-threshold policies (survey §6): leave exit i when a confidence statistic passes β_i.

Thresholds are *fixed* here, like scikit-learn's ``FixedThresholdClassifier``: give them to ``__init__``, or let
:func:`exitnet.calibrate` search them (the ``TunedThresholdClassifierCV`` of this package).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies._base import ExitPolicy, State, normalized_entropy, register_policy

__all__ = ["ThresholdPolicy", "Entropy", "MaxProb", "Margin", "NeverExit"]


class ThresholdPolicy(ExitPolicy):
    """Leave at the first exit whose confidence statistic passes that exit's threshold β_i.

    Comparisons are strict (``H < β`` for entropy, ``p > β`` for max probability), so both ends of [0, 1] mean
    something and a NaN statistic (NaN logits) never leaves early.

    Args:
        thresholds: one β_i in [0, 1] per auxiliary exit (all exits but the last), or one number shared by all.
            ``None`` leaves them to :func:`exitnet.calibrate`.
    """

    _fitted_attrs: ClassVar[tuple[str, ...]] = ("thresholds_",)
    #: True when a *low* statistic means confident (entropy); False when high does (max probability).
    lower_is_confident: ClassVar[bool] = False

    def __init__(self, thresholds: float | Sequence[float] | None = None) -> None:
        self.thresholds = thresholds

    # ---------------------------------------------------------------- the statistic
    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """The per-sample statistic compared with β_i (``[..., C] -> [...]``)."""
        raise NotImplementedError

    def exit_statistic(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """The statistic of exit ``i`` (``[b, C] -> [b]``); the same for every exit unless a subclass says so."""
        return self.statistic(logits)

    def statistics(self, stack: torch.Tensor) -> torch.Tensor:
        """The statistic of exits ``0..E'-1`` of ``stack`` ``[E', B, C]``: ``[E', B]`` (vectorised)."""
        return self.statistic(stack)

    def confidence(self, logits: ExitOutputs | torch.Tensor) -> torch.Tensor:
        """Statistic of every exit, signed so that higher = more confident: ``[E, B]``."""
        s = self.statistics(as_stack(logits))
        return -s if self.lower_is_confident else s

    @property
    def cut_range(self) -> tuple[float, float]:
        """Range of the signed confidence: a cut at the top leaves nobody, one at the bottom (almost) everybody."""
        return (-1.0, 0.0) if self.lower_is_confident else (0.0, 1.0)

    def threshold_from_cut(self, cut: float) -> float:
        """β for the rule 'leave iff confidence > cut' (``cut`` = ±inf: never/always), clipped to [0, 1]."""
        beta = -cut if self.lower_is_confident else cut
        return float(min(1.0, max(0.0, beta)))

    # ---------------------------------------------------------------- fitting
    def _threshold_spec(self) -> float | Sequence[float] | None:
        return self.thresholds

    def _num_thresholds(self, num_exits: int) -> list[float]:
        spec = self._threshold_spec()
        if spec is None:
            raise ValueError(
                f"{type(self).__name__}(thresholds=None) has nothing to fit from logits alone: pass thresholds=[…], "
                "or let exitnet.calibrate(policy, net, data, max_accuracy_drop=…) search them"
            )
        if isinstance(spec, (int, float)):
            values = [float(spec)] * (num_exits - 1)
        else:
            values = [float(t) for t in spec]
        if len(values) != num_exits - 1:
            raise ValueError(
                f"{type(self).__name__} needs one threshold per auxiliary exit: {num_exits - 1} for {num_exits} "
                f"exits, got {len(values)}"
            )
        return values

    def fit(self, logits: ExitOutputs | torch.Tensor, y: torch.Tensor | None = None) -> ThresholdPolicy:
        """Set ``thresholds_`` from the fixed ``thresholds`` for a network with ``E = len(logits)`` exits."""
        self.thresholds_ = self._num_thresholds(as_stack(logits).shape[0])
        self._validate_fitted()
        return self

    def calibration_base(self, logits: torch.Tensor, y: torch.Tensor) -> ThresholdPolicy:
        """A copy whose statistic is ready for a threshold search on ``logits`` (learned parts fitted if needed)."""
        base = self.clone()
        assert isinstance(base, ThresholdPolicy)
        return base

    def _validate_fitted(self) -> None:
        for i, t in enumerate(self.thresholds_):
            if not isinstance(t, (int, float)) or math.isnan(t) or not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold of exit {i} must lie in [0, 1], got {t}")

    # ---------------------------------------------------------------- deciding
    def _leaves(self, stat: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
        # Strict inequalities make both ends of [0, 1] meaningful: a NaN statistic never leaves early.
        return stat < beta if self.lower_is_confident else stat > beta

    def step(self, i: int, logits: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_is_fitted()
        if i >= len(self.thresholds_):
            raise IndexError(
                f"{type(self).__name__} has thresholds for {len(self.thresholds_)} auxiliary exits, got i={i}"
            )
        return self._leaves(self.exit_statistic(i, logits), self.thresholds_[i]), state

    def decide(self, logits: ExitOutputs | torch.Tensor) -> torch.Tensor:
        stack = as_stack(logits)
        self.check_is_fitted()
        num_exits = stack.shape[0]
        if len(self.thresholds_) != num_exits - 1:
            raise ValueError(f"policy fitted for {len(self.thresholds_) + 1} exits, got logits of {num_exits}")
        beta = torch.tensor(self.thresholds_, dtype=torch.float32, device=stack.device).unsqueeze(1)  # [E-1, 1]
        leaves = self._leaves(self.statistics(stack[:-1]), beta)  # [E-1, B]
        leaves = torch.cat([leaves, torch.ones_like(leaves[:1])], dim=0)  # the last exit takes everyone
        return leaves.to(torch.uint8).argmax(dim=0)  # first True


@register_policy
class Entropy(ThresholdPolicy):
    """BranchyNet's rule: leave exit i when the normalised entropy (eq. (11)) is below β_i.

    Example:
        >>> logits = torch.tensor([[[9.0, 0.0], [0.0, 0.0]], [[0.0, 9.0], [9.0, 0.0]]])  # [E=2, B=2, C=2]
        >>> Entropy(thresholds=[0.5]).fit(logits).decide(logits)
        tensor([0, 1])
    """

    name = "entropy"
    lower_is_confident = True

    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        return normalized_entropy(logits)


@register_policy
class MaxProb(ThresholdPolicy):
    """Leave exit i when the top softmax probability exceeds β_i (the 'most confident' rule of survey §6).

    Example:
        >>> logits = torch.tensor([[[3.0, 0.0], [0.0, 0.0]], [[0.0, 3.0], [3.0, 0.0]]])  # [E=2, B=2, C=2]
        >>> MaxProb(thresholds=0.9).fit(logits).decide(logits)
        tensor([0, 1])
    """

    name = "maxprob"

    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


@register_policy
class Margin(ThresholdPolicy):
    """Leave exit i when the top-1 minus top-2 softmax probability exceeds β_i (survey §6, after [75]).

    Example:
        >>> logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], [[1.0, 0.0, 0.0]] * 2]))
        >>> Margin(thresholds=[0.3]).fit(logits).decide(logits)  # margins 0.5 and 0.05 at exit 0
        tensor([0, 1])
    """

    name = "margin"

    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] < 2:
            raise ValueError(f"the margin needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
        top2 = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).values  # [..., 2]
        return top2[..., 0] - top2[..., 1]


@register_policy
class NeverExit(ExitPolicy):
    """Every sample runs to the last exit: the full network (contract 2).

    Example:
        >>> NeverExit().decide(torch.zeros(3, 2, 4))
        tensor([2, 2])
    """

    name = "never"

    def step(self, i: int, logits: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device), state

    def decide(self, logits: ExitOutputs | torch.Tensor) -> torch.Tensor:
        stack = as_stack(logits)
        return torch.full((stack.shape[1],), stack.shape[0] - 1, dtype=torch.long, device=stack.device)

    def calibration_candidates(self, logits: torch.Tensor, y: torch.Tensor | None = None) -> list[ExitPolicy]:
        return [NeverExit()]
