"""Temperature scaling per exit (Guo et al. 2017) in front of any policy."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies._base import ExitPolicy, Outputs, State
from exitnet.policies._registry import policy_from_config, policy_to_config, register_policy
from exitnet.policies._stats import expand_mask
from exitnet.scores import as_targets

__all__ = ["TemperatureScaled", "fit_temperature"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, *, iters: int = 48) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``softmax(logits / T)`` on ``y``.

    The NLL is convex in 1/T, so a golden-section search over log(1/T) in [-7, 7] finds the minimum.
    The answer is rounded to float32 (the precision the policies compute in).

    Example:
        >>> y = torch.randint(0, 3, (500,))
        >>> guess = torch.where(torch.rand(500) < 0.6, y, torch.randint(0, 3, (500,)))  # right about 73% of the time
        >>> logits = 10 * torch.nn.functional.one_hot(guess, 3).float()  # but sure of itself: overconfident
        >>> fit_temperature(logits, y) > 1
        True
    """
    z = logits.detach().double().cpu().numpy()
    labels = y.reshape(-1).cpu().numpy()
    keep = np.isfinite(z).all(axis=-1)
    z, labels = z[keep], labels[keep]
    if z.shape[0] == 0:
        return 1.0
    zy = z[np.arange(z.shape[0]), labels]
    zmax = z.max(axis=1)

    def nll(u: float) -> float:  # mean of logsumexp(b z) - b z_y, with b = 1 / T = exp(u) (numpy: one thread)
        b = math.exp(u)
        lse = b * zmax + np.log(np.exp(b * (z - zmax[:, None])).sum(axis=1))
        return float((lse - b * zy).mean())

    lo, hi = -7.0, 7.0
    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fc, fd = nll(c), nll(d)
    for _ in range(iters):
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - _GOLDEN * (hi - lo)
            fc = nll(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _GOLDEN * (hi - lo)
            fd = nll(d)
    return float(np.float32(math.exp(-(lo + hi) / 2)))


@register_policy
class TemperatureScaled(ExitPolicy):
    """Divide exit i's logits by a temperature ``T_i`` fitted on validation logits, then ask ``policy``.

    ``fit(logits, y)`` fits one temperature per exit (:func:`fit_temperature`), then fits ``policy`` on the
    scaled logits unless it is fitted already. :func:`exitnet.calibrate` fits the temperatures and then searches
    the inner policy's thresholds on the scaled logits. Scaling makes the exits' confidences comparable, which
    matters most when one threshold is shared by all exits.

    Args:
        policy: the policy that sees the scaled logits (``Entropy()``, ``MaxProb()``, ``Budgeted(…)``, …).

    Example:
        >>> from exitnet.policies import MaxProb
        >>> logits, y = 5 * torch.randn(3, 100, 4), torch.randint(0, 4, (100,))
        >>> policy = TemperatureScaled(MaxProb(thresholds=0.6)).fit(logits, y)
        >>> len(policy.temperatures_), policy.decide(logits).shape
        (3, torch.Size([100]))
    """

    name = "temperature"
    _fitted_attrs: ClassVar[tuple[str, ...]] = ("temperatures_", "policy_", "num_exits_")

    def __init__(self, policy: ExitPolicy) -> None:
        self.policy = policy

    def _check_params(self) -> None:
        if not isinstance(self.policy, ExitPolicy) or isinstance(self.policy, TemperatureScaled):
            raise TypeError(
                f"TemperatureScaled wraps one ExitPolicy (not another TemperatureScaled), got {self.policy!r}"
            )

    # ---------------------------------------------------------------- fitting
    def fit_temperatures(self, logits: Outputs, y: torch.Tensor, mask: torch.Tensor | None = None) -> list[float]:
        """One temperature per exit, fitted on the logits ``[E, N, *, C]`` of the valid positions and labels ``y``
        (``[N, *]``)."""
        if isinstance(logits, ExitOutputs) and mask is None:
            mask = logits.mask
        stack = as_stack(logits)
        num_classes = stack.shape[-1]
        flat = stack.reshape(stack.shape[0], -1, num_classes)  # [E, N*, C]: every position one example
        if y.shape[0] != stack.shape[1]:
            raise ValueError(f"logits hold {stack.shape[1]} samples but there are {y.shape[0]} labels")
        labels = as_targets(y, tuple(stack.shape[1:]), "classification", num_classes=num_classes).reshape(-1)
        if mask is not None:
            keep = expand_mask(mask, (1, *stack.shape[1:-1]), 2)[0].reshape(-1).to(flat.device)
            flat, labels = flat[:, keep], labels[keep.to(labels.device)]
        return [fit_temperature(flat[i], labels) for i in range(flat.shape[0])]

    def scale(self, logits: Outputs, temperatures: Sequence[float] | None = None) -> Any:
        """The scaled logits (float32): ``ExitOutputs`` for ``ExitOutputs`` (mask and task kept), else
        ``[E, B, ...]``."""
        stack = as_stack(logits).float()
        temps = self.temperatures_ if temperatures is None else list(temperatures)
        if len(temps) != stack.shape[0]:
            raise ValueError(f"{len(temps)} temperatures for logits of {stack.shape[0]} exits")
        t = torch.tensor(temps, dtype=torch.float32, device=stack.device)
        scaled = stack / t.view(-1, *([1] * (stack.dim() - 1)))  # [E, 1, ...]: one temperature per exit
        if isinstance(logits, ExitOutputs):
            return logits.replace(logits=tuple(scaled.unbind(0)))
        return scaled

    def with_inner(self, temperatures: Sequence[float], inner: ExitPolicy) -> TemperatureScaled:
        """A fitted copy with the given temperatures and fitted inner policy."""
        out = TemperatureScaled(copy.deepcopy(self.policy))
        out.temperatures_ = [float(np.float32(t)) for t in temperatures]
        out.policy_ = inner
        out.num_exits_ = len(out.temperatures_)
        inner.check_exits(out.num_exits_)
        out._validate_fitted()
        return out

    def _fit(self, stack: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, task: str) -> None:
        if y is None:
            raise ValueError("TemperatureScaled.fit needs the labels y to fit the temperatures")
        temps = self.fit_temperatures(stack, y, mask)
        inner = copy.deepcopy(self.policy)
        if not inner.is_fitted():
            scaled = self.scale(stack, temps)
            inner.fit(scaled if mask is None else ExitOutputs(tuple(scaled.unbind(0)), mask=mask), y)
        fitted = self.with_inner(temps, inner)
        self.temperatures_: list[float] = fitted.temperatures_
        self.policy_: ExitPolicy = fitted.policy_

    def _validate_fitted(self) -> None:
        super()._validate_fitted()
        for i, t in enumerate(self.temperatures_):
            if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise ValueError(f"temperature of exit {i} must be a positive number, got {t}")
        if len(self.temperatures_) != self.num_exits_:
            raise ValueError(
                f"TemperatureScaled has {len(self.temperatures_)} temperatures for {self.num_exits_} exits"
            )
        if not isinstance(self.policy_, ExitPolicy):
            raise ValueError(f"TemperatureScaled needs a fitted inner policy, got {self.policy_!r}")
        self.policy_.check_is_fitted()

    def _infer_num_exits(self) -> int:
        return len(self.temperatures_)

    def _repr_fitted(self) -> list[tuple[str, Any]]:
        return [("temperatures_", self.temperatures_), ("policy_", self.policy_)]

    # ---------------------------------------------------------------- deciding
    def _inner(self) -> ExitPolicy:
        return self.policy_ if self.is_fitted() else self.policy

    def state_keys(self) -> frozenset[str]:
        return self._inner().state_keys()

    def _init_state(self, batch_size: int, device: torch.device, output_shape: tuple[int, ...]) -> State:
        return self._inner().init_state(batch_size, device, output_shape)

    def _step(
        self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        return self.policy_.step(i, logits.float() / self.temperatures_[i], state, mask)

    def _final_prediction(
        self, logits: torch.Tensor, state: State, mask: torch.Tensor | None, task: str
    ) -> torch.Tensor:
        self.check_is_fitted()
        return self.policy_.final_prediction(logits.float() / self.temperatures_[-1], state, mask)

    def _decide(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        return self.policy_.decide(self.scale(stack), mask)

    def _fallback_prediction(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        self.check_is_fitted()
        return self.policy_.fallback_prediction(self.scale(stack), mask)

    # ---------------------------------------------------------------- storage
    def config_params(self) -> dict[str, Any]:
        return {"policy": policy_to_config(self.policy)}

    @classmethod
    def from_config_params(cls, params: dict[str, Any]) -> TemperatureScaled:
        if "policy" not in params:
            raise ValueError("TemperatureScaled config lacks the inner 'policy'")
        return cls(policy_from_config(params["policy"]))

    def fitted_state(self) -> dict[str, Any]:
        self.check_is_fitted()
        return {
            "temperatures_": list(self.temperatures_),
            "policy_": policy_to_config(self.policy_),
            "num_exits_": self.num_exits_,
        }

    def set_fitted_state(self, state: dict[str, Any]) -> TemperatureScaled:
        for k in ("temperatures_", "policy_"):
            if k not in state:
                raise ValueError(f"TemperatureScaled state is missing {k!r}")
        self.temperatures_ = [float(t) for t in state["temperatures_"]]
        self.policy_ = policy_from_config(state["policy_"])
        self.num_exits_ = state.get("num_exits_", len(self.temperatures_))
        self._validate_fitted()
        return self
