"""Patience-based early exit (PABEE, Zhou et al. 2020): stop once ``k`` consecutive exits agree."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies._base import ExitPolicy, State, register_policy

__all__ = ["Patience"]


@register_policy
class Patience(ExitPolicy):
    """Leave at exit i once exits ``i-k+1 .. i`` all agree.

    Classification (``tau=None``): the exits agree when their arg-max classes are equal. Regression (``tau`` a
    number): two consecutive exits agree when their outputs differ by less than ``tau`` in every coordinate
    (``max |out_i - out_{i-1}| < tau``), and ``k`` consecutive exits agree when each neighbouring pair does.
    ``k = 1`` leaves everybody at exit 0; ``k >= E`` never leaves early. PABEE's *patience* t is ``k = t + 1``.
    A sample with NaN or inf outputs at an exit agrees with nothing there, so it never leaves early because
    of them.

    The state carried from exit to exit is per sample: the run length of agreeing exits and the previous
    exit's class (classification) or outputs (regression).

    Args:
        k: how many consecutive exits must agree (>= 1).
        tau: ``None`` for classification, or the regression tolerance (> 0).

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]], [[0.0, 2.0], [2.0, 0.0]]])
        >>> Patience(2).decide(logits)  # sample 0 agrees at exits 0-1; sample 1 only at exits 1-2
        tensor([1, 2])
    """

    name = "patience"
    # True: the candidates of calibration_candidates do not depend on the data (risk control may test them on
    # all the calibration data).
    data_free_candidates: ClassVar[bool] = True

    def __init__(self, k: int = 2, *, tau: float | None = None) -> None:
        self.k = k
        self.tau = tau

    def _check_params(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"Patience needs k >= 1 (an integer: how many consecutive exits agree), got {self.k!r}")
        if self.tau is not None and (math.isnan(float(self.tau)) or float(self.tau) <= 0):
            raise ValueError(f"Patience tau must be None (classification) or > 0 (regression), got {self.tau!r}")

    def fit(self, logits: ExitOutputs | torch.Tensor | None = None, y: torch.Tensor | None = None) -> Patience:
        """Nothing to learn; checks the arguments and returns ``self``."""
        self._check_params()
        return self

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        self._check_params()
        return {"run": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def step(self, i: int, logits: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        finite = torch.isfinite(logits).all(dim=-1)  # [b]
        run = state["run"]
        if self.tau is None:
            current = torch.where(finite, logits.argmax(dim=-1), torch.full_like(run, -1))  # -1: agrees with nothing
            agree = (current == state["prev"]) & finite if "prev" in state else torch.zeros_like(finite)
        else:
            current = logits.float()
            if "prev" in state:
                agree = ((current - state["prev"]).abs().amax(dim=-1) < float(self.tau)) & finite  # NaN: False
            else:
                agree = torch.zeros_like(finite)
        run = torch.where(agree, run + 1, finite.long())  # agreeing exits ending here (0 for non-finite outputs)
        return run >= self.k, {"run": run, "prev": current}

    def decide(self, logits: ExitOutputs | torch.Tensor) -> torch.Tensor:
        """Vectorised over samples: the same answer as the exit-by-exit :meth:`step` (contract 3)."""
        stack = as_stack(logits)
        self._check_params()
        num_exits, batch = stack.shape[0], stack.shape[1]
        finite = torch.isfinite(stack).all(dim=-1)  # [E, B]
        if self.tau is None:
            pred = stack.argmax(dim=-1)  # [E, B]
            agree = (pred[1:] == pred[:-1]) & finite[1:] & finite[:-1]  # [E-1, B]: exit i+1 agrees with exit i
        else:
            diff = (stack[1:].float() - stack[:-1].float()).abs().amax(dim=-1)  # [E-1, B]
            agree = (diff < float(self.tau)) & finite[1:] & finite[:-1]
        run = torch.empty(num_exits, batch, dtype=torch.long, device=stack.device)
        run[0] = finite[0].long()
        for i in range(1, num_exits):  # a loop over exits, not samples
            run[i] = torch.where(agree[i - 1], run[i - 1] + 1, finite[i].long())
        leaves = run >= self.k
        leaves[-1] = True
        return leaves.to(torch.uint8).argmax(dim=0)

    def calibration_candidates(self, logits: torch.Tensor, y: torch.Tensor | None = None) -> list[ExitPolicy]:
        """Classification: ``k = E, E-1, …, 1``. Regression: this ``k`` with ``tau`` from 0 up through the
        quantiles of the observed neighbour differences."""
        num_exits = logits.shape[0]
        if self.tau is None:
            return [Patience(k) for k in range(num_exits, 0, -1)]
        self._check_params()
        diff = (logits[1:].double() - logits[:-1].double()).abs().amax(dim=-1).flatten()
        diff = diff[torch.isfinite(diff)]
        taus = torch.quantile(diff, torch.linspace(0, 1, 65, dtype=torch.float64)).unique() if diff.numel() else []
        out: list[ExitPolicy] = [Patience(max(self.k, num_exits), tau=1.0)]
        out += [Patience(self.k, tau=float(t) * (1 + 1e-9) + 1e-12) for t in taus]
        return out
