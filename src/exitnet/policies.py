"""Exit policies (survey §6): per sample and exit, stop here or go on.

scikit-learn conventions (STYLE.md §7): ``__init__`` stores its arguments only, ``fit`` returns ``self``, learned
state ends in ``_`` (``thresholds_``), and using a policy before ``fit`` raises an error that says to fit it.

A policy decides at exit i only from what is known there, so the runtime can ask it exit by exit
(:meth:`ExitPolicy.step`); :meth:`ExitPolicy.decide` on the cached logits of all exits gives the same answer
(contract 3). The last exit always takes every sample that is still there.

Thresholds are *fixed* here, like scikit-learn's ``FixedThresholdClassifier``: give them to ``__init__``, or let
:func:`exitnet.calibrate` search them (the ``TunedThresholdClassifierCV`` of this package).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from exitnet.outputs import ExitOutputs, as_stack

__all__ = [
    "ExitPolicy",
    "ThresholdPolicy",
    "Entropy",
    "MaxProb",
    "NeverExit",
    "normalized_entropy",
    "get_policy",
    "list_policies",
]

State = dict[str, torch.Tensor]


class NotFittedError(RuntimeError):
    """A policy was used before ``fit`` (or before :func:`exitnet.calibrate`)."""


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of the softmax of ``logits`` over the last dim, eq. (11) of the survey.

    ``H[c] = -(1 / log C) Σ_t c_t log c_t``, in [0, 1]: 1 for a uniform prediction, 0 for a one-hot one. (The
    survey prints eq. (11) without the minus sign; the entropy is the negative sum.)

    Example:
        >>> normalized_entropy(torch.zeros(1, 4))  # uniform over 4 classes
        tensor([1.])
        >>> normalized_entropy(torch.tensor([[0.0, -float("inf")]]))  # one-hot
        tensor([0.])
    """
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"entropy needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    p = torch.softmax(logits.float(), dim=-1)
    h = -torch.special.xlogy(p, p).sum(dim=-1) / math.log(num_classes)
    return h.clamp(0.0, 1.0)


class ExitPolicy:
    """Base class: subclasses implement :meth:`step` (and may override :meth:`decide` with a vectorised form)."""

    name: ClassVar[str] = "policy"
    _fitted_attrs: ClassVar[tuple[str, ...]] = ()

    # ---------------------------------------------------------------- scikit-learn plumbing
    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments (JSON-serialisable for the built-in policies)."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def fitted_state(self) -> dict[str, Any]:
        """The learned state (attributes ending in ``_``), JSON-serialisable."""
        self.check_is_fitted()
        return {k: copy.deepcopy(getattr(self, k)) for k in self._fitted_attrs}

    def set_fitted_state(self, state: dict[str, Any]) -> ExitPolicy:
        for k in self._fitted_attrs:
            if k not in state:
                raise ValueError(f"{type(self).__name__} state is missing {k!r}")
            setattr(self, k, copy.deepcopy(state[k]))
        self._validate_fitted()
        return self

    def clone(self) -> ExitPolicy:
        """A new, unfitted policy with the same arguments."""
        return type(self)(**self.get_params())

    def is_fitted(self) -> bool:
        return all(hasattr(self, k) for k in self._fitted_attrs)

    def check_is_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call .fit(logits, y) "
                "or exitnet.calibrate(policy, net, data, …) first"
            )

    def _validate_fitted(self) -> None:
        """Check the learned state; subclasses raise ``ValueError`` on bad values."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------- deciding
    def fit(self, logits: ExitOutputs | torch.Tensor, y: torch.Tensor | None = None) -> ExitPolicy:
        return self

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """Per-sample state carried from exit to exit (tensors with the batch as first dim)."""
        return {}

    def step(self, i: int, logits: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Decide at exit ``i`` from its logits ``[b, C]``: a bool mask ``[b]`` (True = leave here) and new state."""
        raise NotImplementedError

    def decide(self, logits: ExitOutputs | torch.Tensor) -> torch.Tensor:
        """Exit index of every sample from the logits of all exits (``ExitOutputs`` or ``[E, B, C]``)."""
        stack = as_stack(logits)
        self.check_is_fitted()
        num_exits, batch = stack.shape[0], stack.shape[1]
        exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=stack.device)
        decided = torch.zeros(batch, dtype=torch.bool, device=stack.device)
        state = self.init_state(batch, stack.device)
        for i in range(num_exits - 1):
            mask, state = self.step(i, stack[i], state)
            new = mask & ~decided
            exit_index[new] = i
            decided |= mask
        return exit_index


class ThresholdPolicy(ExitPolicy):
    """Leave at the first exit whose confidence statistic passes that exit's threshold β_i.

    Args:
        thresholds: one β_i in [0, 1] per auxiliary exit (all exits but the last), or one number shared by all.
            ``None`` leaves them to :func:`exitnet.calibrate`.
    """

    _fitted_attrs = ("thresholds_",)
    #: True when a *low* statistic means confident (entropy); False when high does (max probability).
    lower_is_confident: ClassVar[bool] = False

    def __init__(self, thresholds: float | Sequence[float] | None = None) -> None:
        self.thresholds = thresholds

    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """The per-sample statistic compared with β_i (``[..., C] -> [...]``)."""
        raise NotImplementedError

    def confidence(self, logits: ExitOutputs | torch.Tensor) -> torch.Tensor:
        """Statistic of every exit, signed so that higher = more confident: ``[E, B]``."""
        s = self.statistic(as_stack(logits))
        return -s if self.lower_is_confident else s

    def threshold_from_cut(self, cut: float) -> float:
        """β for the rule 'leave iff confidence > cut' (``cut`` = ±inf: never/always), clipped to [0, 1]."""
        beta = -cut if self.lower_is_confident else cut
        return float(min(1.0, max(0.0, beta)))

    def fit(self, logits: ExitOutputs | torch.Tensor, y: torch.Tensor | None = None) -> ThresholdPolicy:
        """Set ``thresholds_`` from the fixed ``thresholds`` for a network with ``E = len(logits)`` exits."""
        num_exits = as_stack(logits).shape[0]
        if self.thresholds is None:
            raise ValueError(
                f"{type(self).__name__}(thresholds=None) has nothing to fit from logits alone: pass thresholds=[…], "
                "or let exitnet.calibrate(policy, net, data, max_accuracy_drop=…) search them"
            )
        if isinstance(self.thresholds, (int, float)):
            values = [float(self.thresholds)] * (num_exits - 1)
        else:
            values = [float(t) for t in self.thresholds]
        if len(values) != num_exits - 1:
            raise ValueError(
                f"{type(self).__name__} needs one threshold per auxiliary exit: {num_exits - 1} for {num_exits} "
                f"exits, got {len(values)}"
            )
        self.thresholds_ = values
        self._validate_fitted()
        return self

    def _validate_fitted(self) -> None:
        for i, t in enumerate(self.thresholds_):
            if math.isnan(t) or not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold of exit {i} must lie in [0, 1], got {t}")

    def _leaves(self, stat: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
        # Strict inequalities make both ends of [0, 1] meaningful: a NaN statistic never leaves early.
        return stat < beta if self.lower_is_confident else stat > beta

    def step(self, i: int, logits: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_is_fitted()
        if i >= len(self.thresholds_):
            raise IndexError(
                f"{type(self).__name__} has thresholds for {len(self.thresholds_)} auxiliary exits, got i={i}"
            )
        return self._leaves(self.statistic(logits), self.thresholds_[i]), state

    def decide(self, logits: ExitOutputs | torch.Tensor) -> torch.Tensor:
        stack = as_stack(logits)
        self.check_is_fitted()
        num_exits = stack.shape[0]
        if len(self.thresholds_) != num_exits - 1:
            raise ValueError(f"policy fitted for {len(self.thresholds_) + 1} exits, got logits of {num_exits}")
        beta = torch.tensor(self.thresholds_, dtype=torch.float32, device=stack.device).unsqueeze(1)  # [E-1, 1]
        leaves = self._leaves(self.statistic(stack[:-1]), beta)  # [E-1, B]
        leaves = torch.cat([leaves, torch.ones_like(leaves[:1])], dim=0)  # the last exit takes everyone
        return leaves.to(torch.uint8).argmax(dim=0)  # first True


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


class MaxProb(ThresholdPolicy):
    """Leave exit i when the top softmax probability exceeds β_i (the 'most confident' rule of survey §6)."""

    name = "maxprob"

    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


class NeverExit(ExitPolicy):
    """Every sample runs to the last exit: the full network (contract 2)."""

    name = "never"

    def step(self, i: int, logits: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device), state


_POLICIES: dict[str, type[ExitPolicy]] = {cls.name: cls for cls in (Entropy, MaxProb, NeverExit)}


def register_policy(cls: type[ExitPolicy]) -> type[ExitPolicy]:
    """Make a policy class known to :func:`get_policy` and to checkpoints (usable as a decorator)."""
    if cls.name in _POLICIES and _POLICIES[cls.name] is not cls:
        raise ValueError(f"a policy named {cls.name!r} is already registered")
    _POLICIES[cls.name] = cls
    return cls


def list_policies() -> list[str]:
    return sorted(_POLICIES)


def get_policy(name: str, **params: Any) -> ExitPolicy:
    """Build a policy by name (``"entropy"``, ``"maxprob"``, …; see :func:`list_policies`)."""
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(list_policies())}")
    return _POLICIES[name](**params)


def policy_to_config(policy: ExitPolicy) -> dict[str, Any]:
    """JSON-serialisable description of a (fitted or not) policy, for checkpoints."""
    if policy.name not in _POLICIES:
        raise ValueError(f"policy {type(policy).__name__} is not registered; use exitnet.policies.register_policy")
    return {
        "name": policy.name,
        "params": policy.get_params(),
        "state": policy.fitted_state() if policy.is_fitted() else None,
    }


def policy_from_config(config: dict[str, Any]) -> ExitPolicy:
    policy = get_policy(config["name"], **config.get("params", {}))
    if config.get("state") is not None:
        policy.set_fitted_state(config["state"])
    return policy
