"""Confidence-threshold policies (survey §6): leave exit i when a confidence statistic passes β_i.

Thresholds are *fixed* here, like scikit-learn's ``FixedThresholdClassifier``: give them to ``__init__`` (then the
policy fits itself for any network, see :meth:`ExitPolicy.check_exits`), or let :func:`exitnet.calibrate` search
them (the ``TunedThresholdClassifierCV`` of this package).

Token-level outputs ``[b, *, C]``: the statistic is computed per position and a sample is as confident as its
least confident valid position (highest entropy, lowest max probability or margin); a sample with no valid
position never leaves early.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies._base import ExitPolicy, Outputs, State
from exitnet.policies._registry import register_policy
from exitnet.policies._stats import least_confident, normalized_entropy

__all__ = ["ThresholdPolicy", "Entropy", "MaxProb", "Margin", "NeverExit", "FALLBACKS"]

FALLBACKS = ("final", "most_confident")


class ThresholdPolicy(ExitPolicy):
    """Leave at the first exit whose confidence statistic passes that exit's threshold β_i.

    Comparisons are strict (``H < β`` for entropy, ``p > β`` for max probability), so both ends of [0, 1] mean
    something and a NaN statistic (NaN logits) never leaves early.

    Args:
        thresholds: one β_i in [0, 1] per auxiliary exit (all exits but the last), or one number shared by all
            (then the policy works on a network of any depth). ``None`` leaves them to :func:`exitnet.calibrate`.
        fallback: what a sample that no auxiliary exit is confident about is answered at the last exit:
            ``"final"`` (the last exit's prediction) or ``"most_confident"`` (the prediction of the most confident
            of all exits, the last included, as SDN does against overthinking; earliest on ties). Either way it
            is charged the whole network: its exit index is the last.
    """

    _fitted_attrs: ClassVar[tuple[str, ...]] = ("thresholds_", "num_exits_")
    #: True when a *low* statistic means confident (entropy); False when high does (max probability).
    lower_is_confident: ClassVar[bool] = False
    #: Class default for subclasses whose ``__init__`` has no ``fallback`` argument (``Gate``).
    fallback: str = "final"

    def __init__(self, thresholds: float | Sequence[float] | None = None, *, fallback: str = "final") -> None:
        self.thresholds = thresholds
        self.fallback = fallback

    # ---------------------------------------------------------------- the statistic
    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """The statistic of every position compared with β_i (``[..., C] -> [...]``)."""
        raise NotImplementedError

    def exit_statistic(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """The statistic of exit ``i`` per position (``[b, *, C] -> [b, *]``); the same for every exit unless a
        subclass says so."""
        return self.statistic(logits)

    def position_statistics(self, stack: torch.Tensor) -> torch.Tensor:
        """The statistic of exits ``0..E'-1`` of ``stack`` ``[E', B, *, C]`` per position: ``[E', B, *]``."""
        return self.statistic(stack)

    def statistics(self, logits: Outputs, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per sample and exit, the statistic of its least confident valid position: ``[E', B]`` (vectorised).

        Args:
            logits: outputs of exits ``0..E'-1`` (``ExitOutputs``, whose mask is used, or ``[E', B, *, C]``).
            mask: ``[B, *]`` valid positions (overrides the outputs' own).
        """
        if isinstance(logits, ExitOutputs) and mask is None:
            mask = logits.mask
        stack = as_stack(logits)
        return least_confident(
            self.position_statistics(stack), mask, lower_is_confident=self.lower_is_confident, lead=2
        )

    def sample_statistic(self, i: int, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The statistic of exit ``i`` per sample (``[b, *, C] -> [b]``: its least confident valid position)."""
        return least_confident(self.exit_statistic(i, logits), mask, lower_is_confident=self.lower_is_confident)

    def confidence(self, logits: Outputs, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Statistic of every exit, signed so that higher = more confident: ``[E, B]``."""
        s = self.statistics(logits, mask)
        return -s if self.lower_is_confident else s

    @property
    def cut_range(self) -> tuple[float, float]:
        """Range of the signed confidence: a cut at the top leaves nobody, one at the bottom (almost) everybody."""
        return (-1.0, 0.0) if self.lower_is_confident else (0.0, 1.0)

    def threshold_from_cut(self, cut: float) -> float:
        """β for the rule 'leave iff confidence > cut' (``cut`` = ±inf: never/always), clipped to [0, 1]."""
        beta = -cut if self.lower_is_confident else cut
        return float(min(1.0, max(0.0, beta)))

    def passes(self, stat: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
        """True where the statistic passes β (strict; NaN never passes)."""
        return stat < beta if self.lower_is_confident else stat > beta

    # ---------------------------------------------------------------- fitting
    def _threshold_spec(self) -> float | Sequence[float] | None:
        return self.thresholds

    def _check_params(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {self.fallback!r}; choose one of: {', '.join(FALLBACKS)}")

    def _data_free(self) -> bool:
        return self._threshold_spec() is not None

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
                f"exits, got {len(values)} (or give one number shared by all exits)"
            )
        return values

    def _params_state(self, num_exits: int) -> dict[str, Any]:
        return {"thresholds_": self._num_thresholds(num_exits)}

    def _fit(self, stack: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, task: str) -> None:
        """Set ``thresholds_`` from the fixed ``thresholds`` for a network with ``E = len(logits)`` exits."""
        self.thresholds_ = self._num_thresholds(stack.shape[0])

    def calibration_base(self, outputs: Outputs, y: torch.Tensor) -> ThresholdPolicy:
        """A copy whose statistic is ready for a threshold search on ``outputs`` (learned parts fitted if needed)."""
        base = self.clone()
        base._check_params()
        return base

    def with_thresholds(self, thresholds: Sequence[float]) -> ThresholdPolicy:
        """A fitted copy with these thresholds (one per auxiliary exit), sharing learned parts such as gates.

        Example:
            >>> Entropy().with_thresholds([0.2, 0.4])
            Entropy(thresholds_=[0.2, 0.4], num_exits_=3)
        """
        out = copy.copy(self)
        out.__dict__.pop("calibration_", None)
        out.thresholds_ = [float(t) for t in thresholds]
        out.num_exits_ = len(out.thresholds_) + 1
        out._validate_fitted()
        return out

    def _validate_fitted(self) -> None:
        super()._validate_fitted()
        for i, t in enumerate(self.thresholds_):
            if not isinstance(t, (int, float)) or math.isnan(t) or not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold of exit {i} must lie in [0, 1], got {t}")
        if len(self.thresholds_) != self.num_exits_ - 1:
            raise ValueError(
                f"{type(self).__name__} has {len(self.thresholds_)} thresholds for {self.num_exits_} exits "
                f"(needs {self.num_exits_ - 1}, one per auxiliary exit)"
            )

    def _infer_num_exits(self) -> int:
        return len(self.thresholds_) + 1

    def _repr_fitted(self) -> list[tuple[str, Any]]:
        return [("thresholds_", self.thresholds_), ("num_exits_", self.num_exits_)]

    # ---------------------------------------------------------------- deciding
    def state_keys(self) -> frozenset[str]:
        return frozenset(("best", "best_pred")) if self.fallback == "most_confident" else frozenset()

    def _init_state(self, batch_size: int, device: torch.device, output_shape: tuple[int, ...]) -> State:
        if self.fallback != "most_confident":
            return {}
        return {  # the most confident exit so far: its signed confidence and its prediction
            "best": torch.full((batch_size,), -math.inf, dtype=torch.float32, device=device),
            "best_pred": torch.full((batch_size, *output_shape[:-1]), -1, dtype=torch.long, device=device),
        }

    def _signed(self, stat: torch.Tensor) -> torch.Tensor:
        return -stat if self.lower_is_confident else stat

    @staticmethod
    def _checked_best_pred(state: State, pred: torch.Tensor) -> torch.Tensor:
        if state["best_pred"].shape != pred.shape:
            raise ValueError(
                f"the state was made for {tuple(state['best_pred'].shape[1:])} predictions per sample but this exit "
                f"predicts {tuple(pred.shape[1:])}: pass output_shape=logits.shape[1:] to init_state"
            )
        return state["best_pred"]

    def _track_best(self, stat: torch.Tensor, logits: torch.Tensor, state: State) -> State:
        pred = logits.argmax(dim=-1)  # [b, *]
        best_pred = self._checked_best_pred(state, pred)
        conf = self._signed(stat).float()
        better = conf > state["best"]  # strict: the earliest of equally confident exits wins; NaN never does
        grow = better.view(-1, *([1] * (pred.dim() - 1)))  # [b, 1, ...]
        return {"best": torch.where(better, conf, state["best"]), "best_pred": torch.where(grow, pred, best_pred)}

    def _step(
        self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        stat = self.sample_statistic(i, logits, mask)  # [b]
        if self.fallback == "most_confident":
            state = self._track_best(stat, logits, state)
        return self.passes(stat, self.thresholds_[i]), state

    def _final_prediction(
        self, logits: torch.Tensor, state: State, mask: torch.Tensor | None, task: str
    ) -> torch.Tensor:
        pred = logits.argmax(dim=-1)  # [b, *]
        if self.fallback != "most_confident":
            return pred
        stat = self.sample_statistic(getattr(self, "num_exits_", 0) - 1, logits, mask)
        best, best_pred = state["best"], self._checked_best_pred(state, pred)
        use_last = (self._signed(stat).float() > best) | ~(best > -math.inf)  # no exit confident at all: the last
        return torch.where(use_last.view(-1, *([1] * (pred.dim() - 1))), pred, best_pred)

    def _decide(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        beta = torch.tensor(self.thresholds_, dtype=torch.float32, device=stack.device).unsqueeze(1)  # [E-1, 1]
        leaves = self.passes(self.statistics(stack[:-1], mask), beta)  # [E-1, B]
        leaves = torch.cat([leaves, torch.ones_like(leaves[:1])], dim=0)  # the last exit takes everyone
        return leaves.to(torch.uint8).argmax(dim=0)  # first True

    def _fallback_prediction(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        pred = stack.argmax(dim=-1)  # [E, B, *]
        if self.fallback != "most_confident":
            return pred[-1]
        conf = self._signed(self.statistics(stack, mask)).float()  # [E, B]
        conf = torch.nan_to_num(conf, nan=-math.inf)
        top, best = conf.max(dim=0)  # the first of equal maxima: earliest wins, as in the exit-by-exit rule
        best = torch.where(top > -math.inf, best, torch.full_like(best, stack.shape[0] - 1))
        return pred[best, torch.arange(stack.shape[1], device=stack.device)]


@register_policy
class Entropy(ThresholdPolicy):
    """BranchyNet's rule: leave exit i when the normalised entropy (eq. (11)) is below β_i.

    Example:
        >>> logits = torch.tensor([[[9.0, 0.0], [0.0, 0.0]], [[0.0, 9.0], [9.0, 0.0]]])  # [E=2, B=2, C=2]
        >>> Entropy(thresholds=[0.5]).decide(logits)
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
        >>> MaxProb(thresholds=0.9).decide(logits)
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
        >>> Margin(thresholds=[0.3]).decide(logits)  # margins 0.5 and 0.05 at exit 0
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
    """Every sample runs to the last exit: the full network (contract 2). Any task; needs no fitting.

    Example:
        >>> NeverExit().decide(torch.zeros(3, 2, 4))
        tensor([2, 2])
    """

    name = "never"
    tasks = ("classification", "regression")

    def _data_free(self) -> bool:
        return True

    def _step(
        self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device), state

    def _decide(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        return torch.full((stack.shape[1],), stack.shape[0] - 1, dtype=torch.long, device=stack.device)

    def calibration_candidates(self, outputs: Outputs, y: torch.Tensor | None = None) -> list[ExitPolicy]:
        return [NeverExit().fit(outputs)]
