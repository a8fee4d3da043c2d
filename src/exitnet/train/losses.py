"""Exit losses for every task: cross-entropy over class logits (per position too, padding masked out) and
squared or Huber error for regression; eq. (6)'s weighted sum over exits, vectorised over exits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from exitnet.outputs import ExitOutputs
from exitnet.scores import check_task

__all__ = ["per_exit_loss", "exit_losses", "exit_loss", "weighted_exit_loss", "REGRESSION_LOSSES"]

REGRESSION_LOSSES = ("mse", "huber")


def per_exit_loss(
    stack: torch.Tensor,
    y: torch.Tensor,
    *,
    task: str = "classification",
    mask: torch.Tensor | None = None,
    regression_loss: str = "mse",
) -> torch.Tensor:
    """Mean loss of every exit, ``[E]``, from stacked outputs ``stack`` ``[E, B, ...]`` and targets ``y``.

    Classification: cross-entropy of ``[E, B, *, C]`` logits against class indices ``[B, *]``, averaged over the
    valid positions (``mask`` ``[B, *]``; all when ``None``). Regression: squared (``"mse"``) or Huber error of
    ``[E, B, *]`` against ``[B, *]``, averaged over the valid positions.

    Example:
        >>> stack = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])  # [E=2, B=1, C=2]
        >>> per_exit_loss(stack, torch.tensor([0])).round(decimals=4)
        tensor([0.1269, 2.1269])
    """
    check_task(task)
    num_exits = stack.shape[0]
    if task == "classification":
        num_classes = stack.shape[-1]
        target = y if mask is None else torch.where(mask.to(torch.bool), y, torch.zeros_like(y))
        ce = F.cross_entropy(
            stack.reshape(-1, num_classes), target.reshape(1, -1).expand(num_exits, -1).reshape(-1), reduction="none"
        ).view(num_exits, -1)  # [E, B * positions]
        values = ce
    else:
        if regression_loss not in REGRESSION_LOSSES:
            known = ", ".join(REGRESSION_LOSSES)
            raise ValueError(f"unknown regression loss {regression_loss!r}; choose one of: {known}")
        target = y.to(stack.dtype).unsqueeze(0).expand_as(stack)  # [B, *] -> [E, B, *]
        err = (
            F.mse_loss(stack, target, reduction="none")
            if regression_loss == "mse"
            else F.huber_loss(stack, target, reduction="none")
        )
        values = err.reshape(num_exits, -1)
    if mask is None:
        return values.mean(dim=1)
    m = mask.to(values.dtype).reshape(1, -1)
    if m.shape[1] != values.shape[1]:  # a per-sample mask over regression outputs with more dims
        m = mask.to(values.dtype).reshape(mask.shape[0], -1)
        m = m.repeat_interleave(values.shape[1] // m.numel(), dim=1).reshape(1, -1) if m.numel() else m
    return (values * m).sum(dim=1) / m.sum().clamp_min(1.0)


def exit_losses(outputs: ExitOutputs, y: torch.Tensor, *, regression_loss: str = "mse") -> torch.Tensor:
    """:func:`per_exit_loss` of ``outputs`` (its task and mask), ``[E]``."""
    return per_exit_loss(outputs.stack(), y, task=outputs.task, mask=outputs.mask, regression_loss=regression_loss)


def exit_loss(outputs: ExitOutputs, y: torch.Tensor, i: int = -1, *, regression_loss: str = "mse") -> torch.Tensor:
    """The loss of exit ``i`` alone (default: the final exit, the backbone's own loss)."""
    return per_exit_loss(
        outputs.logits[i].unsqueeze(0), y, task=outputs.task, mask=outputs.mask, regression_loss=regression_loss
    )[0]


def weighted_exit_loss(
    stack: torch.Tensor,
    y: torch.Tensor,
    weights: Sequence[float],
    *,
    task: str = "classification",
    mask: torch.Tensor | None = None,
    regression_loss: str = "mse",
) -> torch.Tensor:
    """Eq. (6): Σ_i α_i · L_i over exits, with L_i the mean loss of exit i (:func:`per_exit_loss`)."""
    per_exit = per_exit_loss(stack, y, task=task, mask=mask, regression_loss=regression_loss)  # [E]
    return (per_exit * torch.as_tensor(weights, dtype=per_exit.dtype, device=per_exit.device)).sum()
