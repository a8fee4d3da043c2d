"""Patience-based early exit (PABEE, Zhou et al. 2020): stop once ``k`` consecutive exits agree."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from exitnet.policies._base import ExitPolicy, Outputs, State
from exitnet.policies._registry import register_policy
from exitnet.policies._stats import all_valid, finite_samples, max_valid

__all__ = ["Patience"]


@register_policy
class Patience(ExitPolicy):
    """Leave at exit i once exits ``i-k+1 .. i`` all agree.

    Classification (``tau=None``): the exits agree when their predictions are equal (every valid position of
    token-level outputs). Regression (``tau`` a number): two consecutive exits agree when their outputs differ by
    less than ``tau`` at every valid position (``max |out_i - out_{i-1}| < tau``), and ``k`` consecutive exits
    agree when each neighbouring pair does. ``k = 1`` leaves everybody at exit 0; ``k >= E`` never leaves early.
    PABEE's *patience* t is ``k = t + 1``. A sample with NaN or inf outputs at an exit (or no valid position)
    agrees with nothing there, so it never leaves early because of them.

    The per-sample state is fixed from the start: ``run`` (how many agreeing exits end here) and ``prev`` (the
    previous exit's classes ``[b, *]``, -1 before the first exit; or its regression outputs, NaN before).

    Args:
        k: how many consecutive exits must agree (>= 1).
        tau: ``None`` for classification, or the regression tolerance (> 0).

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]], [[0.0, 2.0], [2.0, 0.0]]])
        >>> Patience(2).decide(logits)  # sample 0 agrees at exits 0-1; sample 1 only at exits 1-2
        tensor([1, 2])
    """

    name = "patience"
    tasks = ("classification", "regression")
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

    def _data_free(self) -> bool:
        return True

    def _default_task(self) -> str:
        return "classification" if self.tau is None else "regression"

    def _check_task_params(self, task: str) -> None:
        if task == "regression" and self.tau is None:
            raise ValueError(
                "Patience on regression outputs needs tau: how close two exits' outputs must be to agree "
                "(Patience(k, tau=0.1))"
            )
        if task == "classification" and self.tau is not None:
            raise ValueError(
                f"Patience(tau={self.tau}) compares regression outputs; on class logits leave tau=None "
                "(exits agree when their classes are equal)"
            )

    # ---------------------------------------------------------------- deciding
    def state_keys(self) -> frozenset[str]:
        return frozenset(("run", "prev"))

    def _init_state(self, batch_size: int, device: torch.device, output_shape: tuple[int, ...]) -> State:
        self._check_params()
        run = torch.zeros(batch_size, dtype=torch.long, device=device)
        if self.tau is None:  # classes of every position, -1: agrees with nothing
            prev = torch.full((batch_size, *output_shape[:-1]), -1, dtype=torch.long, device=device)
        else:  # regression outputs, NaN: agrees with nothing
            prev = torch.full((batch_size, *output_shape), math.nan, dtype=torch.float32, device=device)
        return {"run": run, "prev": prev}

    def _step(
        self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        classification = self.tau is None
        finite = finite_samples(logits, mask, classification=classification)  # [b]
        run, prev = state["run"], state["prev"]
        if classification:
            current = logits.argmax(dim=-1)  # [b, *]
            current = torch.where(finite.view(-1, *([1] * (current.dim() - 1))), current, torch.full_like(current, -1))
        else:
            current = logits.float()
        if prev.shape != current.shape:
            raise ValueError(
                f"the state was made for outputs {tuple(prev.shape[1:])} per sample but exit {i} gives "
                f"{tuple(current.shape[1:])}: pass output_shape=logits.shape[1:] to init_state"
            )
        if classification:
            agree = all_valid(current == prev, mask) & finite
        else:
            tau = float(self.tau) if self.tau is not None else math.inf
            agree = (max_valid((current - prev).abs(), mask) < tau) & finite  # NaN: False
        run = torch.where(agree, run + 1, finite.long())  # agreeing exits ending here (0 for non-finite outputs)
        return run >= self.k, {"run": run, "prev": current}

    def _decide(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        """Vectorised over samples: the same answer as the exit-by-exit :meth:`step` (contract 3)."""
        self._check_params()
        num_exits, batch = stack.shape[0], stack.shape[1]
        finite = finite_samples(stack, mask, classification=self.tau is None, lead=2)  # [E, B]
        if self.tau is None:
            pred = stack.argmax(dim=-1)  # [E, B, *]
            same = all_valid(pred[1:] == pred[:-1], mask, lead=2)  # [E-1, B]: exit i+1 agrees with exit i
        else:
            diff = max_valid((stack[1:].float() - stack[:-1].float()).abs(), mask, lead=2)  # [E-1, B]
            same = diff < (float(self.tau) if self.tau is not None else math.inf)
        agree = same & finite[1:] & finite[:-1]
        run = torch.empty(num_exits, batch, dtype=torch.long, device=stack.device)
        run[0] = finite[0].long()
        for i in range(1, num_exits):  # a loop over exits, not samples
            run[i] = torch.where(agree[i - 1], run[i - 1] + 1, finite[i].long())
        leaves = run >= self.k
        leaves[-1] = True
        return leaves.to(torch.uint8).argmax(dim=0)

    def calibration_candidates(self, outputs: Outputs, y: torch.Tensor | None = None) -> list[ExitPolicy]:
        """Classification: ``k = E, E-1, …, 1``. Regression: this ``k`` with ``tau`` from 0 up through the
        quantiles of the observed neighbour differences."""
        self._check_params()
        stack, mask, _, _ = self._unpack(outputs, None)
        num_exits = stack.shape[0]
        if self.tau is None:
            return [Patience(k).fit(outputs) for k in range(num_exits, 0, -1)]
        diff = max_valid((stack[1:].double() - stack[:-1].double()).abs(), mask, lead=2).flatten()
        diff = diff[torch.isfinite(diff)]
        taus: Any = torch.quantile(diff, torch.linspace(0, 1, 65, dtype=torch.float64)).unique() if diff.numel() else []
        out: list[ExitPolicy] = [Patience(max(self.k, num_exits), tau=1.0).fit(outputs)]
        out += [Patience(self.k, tau=float(t) * (1 + 1e-9) + 1e-12).fit(outputs) for t in taus]
        return out
