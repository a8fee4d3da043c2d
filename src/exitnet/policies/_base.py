"""The policy base class, eq. (11), the not-fitted error and the registry that checkpoints use."""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch

from exitnet.outputs import ExitOutputs, as_stack

__all__ = [
    "ExitPolicy",
    "NotFittedError",
    "State",
    "normalized_entropy",
    "register_policy",
    "get_policy",
    "list_policies",
    "policy_to_config",
    "policy_from_config",
]

State = dict[str, torch.Tensor]


class NotFittedError(RuntimeError):
    """A policy was used before ``fit`` (or before :func:`exitnet.calibrate`)."""


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of the softmax of ``logits`` over the last dim, eq. (11) of the survey.

    ``H[c] = -(1 / log C) Σ_t c_t log c_t``, in [0, 1]: 1 for a uniform prediction, 0 for a one-hot one. (The
    survey prints eq. (11) without the minus sign; the entropy is the negative sum.) NaN logits give NaN.

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
    return h.clamp(0.0, 1.0) + 0.0  # + 0.0 turns -0.0 into 0.0


class ExitPolicy:
    """Base class: subclasses implement :meth:`step` (and may override :meth:`decide` with a vectorised form).

    A policy decides at exit i only from what is known there: the logits of exit i and the per-sample state it
    carries from earlier exits (:meth:`init_state`; every state tensor has the batch as its first dim, so the
    runtime can drop the rows of samples that left with ``index_select``).
    """

    name: ClassVar[str] = "policy"
    _fitted_attrs: ClassVar[tuple[str, ...]] = ()

    # ---------------------------------------------------------------- scikit-learn plumbing
    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def config_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments in JSON form (what a checkpoint stores); see :meth:`from_config_params`."""
        return self.get_params()

    @classmethod
    def from_config_params(cls, params: dict[str, Any]) -> ExitPolicy:
        """Inverse of :meth:`config_params`."""
        return cls(**params)

    def fitted_state(self) -> dict[str, Any]:
        """The learned state (attributes ending in ``_``), JSON-serialisable."""
        self.check_is_fitted()
        return {k: copy.deepcopy(getattr(self, k)) for k in self._fitted_attrs}

    def set_fitted_state(self, state: dict[str, Any]) -> ExitPolicy:
        """Restore what :meth:`fitted_state` returned; checks the values."""
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

    # ---------------------------------------------------------------- calibration hook
    def calibration_candidates(self, logits: torch.Tensor, y: torch.Tensor | None = None) -> list[ExitPolicy]:
        """Fitted settings that :func:`exitnet.calibrate` chooses among, from the most conservative (the first
        leaves nobody early) to the most aggressive. Policies with per-exit thresholds are searched otherwise.

        Args:
            logits: ``[E, N, C]`` calibration logits.
            y: ``[N]`` labels (unused by most policies).
        """
        raise TypeError(
            f"{type(self).__name__} has nothing to calibrate; fit it with .fit(logits, y) and use it as it is"
        )

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


# -------------------------------------------------------------------------------------------------- registry
_POLICIES: dict[str, type[ExitPolicy]] = {}


def register_policy(cls: type[ExitPolicy]) -> type[ExitPolicy]:
    """Make a policy class known to :func:`get_policy` and to checkpoints (usable as a decorator)."""
    if cls.name in _POLICIES and _POLICIES[cls.name] is not cls:
        raise ValueError(f"a policy named {cls.name!r} is already registered")
    _POLICIES[cls.name] = cls
    return cls


def list_policies() -> list[str]:
    """Names :func:`get_policy` accepts."""
    return sorted(_POLICIES)


def get_policy(name: str, **params: Any) -> ExitPolicy:
    """Build a policy by name (``"entropy"``, ``"maxprob"``, …; see :func:`list_policies`)."""
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(list_policies())}")
    return _POLICIES[name](**params)


def policy_to_config(policy: ExitPolicy) -> dict[str, Any]:
    """JSON-serialisable description of a (fitted or not) policy, for checkpoints."""
    if _POLICIES.get(policy.name) is not type(policy):
        raise ValueError(f"policy {type(policy).__name__} is not registered; use exitnet.policies.register_policy")
    return {
        "name": policy.name,
        "params": policy.config_params(),
        "state": policy.fitted_state() if policy.is_fitted() and policy._fitted_attrs else None,
    }


def policy_from_config(config: dict[str, Any]) -> ExitPolicy:
    """Inverse of :func:`policy_to_config`."""
    name = config.get("name")
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(list_policies())}")
    policy = _POLICIES[name].from_config_params(dict(config.get("params") or {}))
    if config.get("state") is not None:
        policy.set_fitted_state(config["state"])
    return policy
