"""What a prediction is, and how good it is, for each task: one home for both.

- ``"classification"``: outputs are logits ``[B, *, C]`` (``*`` = token positions, empty for one label per
  sample); the prediction is the arg-max class ``[B, *]``; labels are class indices of that shape.
- ``"regression"``: outputs ``[B, *]`` are the prediction itself; targets have the same shape.

A *score function* ``score_fn(pred, y, mask) -> [B]`` gives each sample a number, higher is better: calibration
and reports average it. The defaults are :func:`accuracy_score` (share of right positions) and
:func:`neg_squared_error` (minus the mean squared error); a tolerated drop of the mean score is then an accuracy
drop for classification and an increase of the mean squared error for regression.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "TASKS",
    "ScoreFn",
    "check_task",
    "prediction",
    "accuracy_score",
    "neg_squared_error",
    "neg_abs_error",
    "default_score",
    "as_targets",
    "score_matrix",
]

TASKS = ("classification", "regression")
ScoreFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return task


def prediction(outputs: torch.Tensor, task: str = "classification") -> torch.Tensor:
    """The task's prediction from one exit's outputs (or a stack ``[E, B, ...]``): arg-max over the last dim for
    classification, the outputs themselves for regression.

    Example:
        >>> prediction(torch.tensor([[0.1, 2.0], [3.0, 0.0]])), prediction(torch.tensor([0.5]), "regression")
        (tensor([1, 0]), tensor([0.5000]))
    """
    if check_task(task) == "regression":
        return outputs
    return outputs.argmax(dim=-1)


def _per_sample_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``[B, *]`` over the non-batch dims, counting only positions where ``mask`` is True."""
    v = values.double()
    if v.dim() == 1:
        return v if mask is None else torch.where(mask, v, torch.zeros_like(v))
    if mask is None:
        return v.flatten(1).mean(dim=1)
    m = mask.to(torch.bool)
    while m.dim() < v.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(v)
    total = torch.where(m, v, torch.zeros_like(v)).flatten(1).sum(dim=1)
    count = m.flatten(1).sum(dim=1).clamp_min(1)
    return total / count


def accuracy_score(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample, the share of (valid) positions predicted right: 0 or 1 for one label per sample.

    Example:
        >>> accuracy_score(torch.tensor([[1, 2, 0], [1, 1, 1]]), torch.tensor([[1, 2, 2], [1, 1, 1]]),
        ...                torch.tensor([[True, True, False], [True, True, True]]))
        tensor([1., 1.], dtype=torch.float64)
    """
    return _per_sample_mean((pred == y.to(pred.device)).double(), mask)


def neg_squared_error(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample, minus the mean squared error over the output's positions (higher is better).

    Example:
        >>> neg_squared_error(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([-2.], dtype=torch.float64)
    """
    return -_per_sample_mean((pred.double() - y.to(pred.device).double()) ** 2, mask)


def neg_abs_error(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample, minus the mean absolute error over the output's positions."""
    return -_per_sample_mean((pred.double() - y.to(pred.device).double()).abs(), mask)


def default_score(task: str) -> ScoreFn:
    """:func:`accuracy_score` for classification, :func:`neg_squared_error` for regression."""
    return accuracy_score if check_task(task) == "classification" else neg_squared_error


def as_targets(
    y: torch.Tensor, out_shape: tuple[int, ...], task: str, *, num_classes: int | None = None, what: str = "labels"
) -> torch.Tensor:
    """Labels / targets checked against one exit's output shape ``[N, ...]`` and brought to the prediction's shape.

    Classification: integer class indices of shape ``[N, *]`` (the output is ``[N, *, C]``); ``[N, 1]`` is
    accepted for ``[N, C]`` outputs. Float labels are accepted only when every value is a whole number (a float
    label 0.7 is refused: it would silently score 0). Regression: float targets of the output's shape (``[N]`` is
    accepted for ``[N, 1]`` outputs).

    Raises:
        ValueError: a shape, dtype or value that cannot be the labels of these outputs; the message says why.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(y).__name__}")
    n = out_shape[0]
    if check_task(task) == "regression":
        target = tuple(out_shape)
        if y.is_floating_point() is False and y.dtype == torch.bool:
            raise ValueError(f"regression targets must be numbers, got {y.dtype}")
        if tuple(y.shape) != target:
            if y.numel() == n * _prod(target[1:]) and y.shape[0] == n:
                y = y.reshape(target)
            else:
                raise ValueError(f"regression targets must have the outputs' shape {target}, got {tuple(y.shape)}")
        return y.float() if not y.is_floating_point() else y
    pred_shape = tuple(out_shape[:-1])
    if y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what} must be integer class indices, got dtype {y.dtype}")
    if tuple(y.shape) != pred_shape:
        if y.dim() == len(pred_shape) + 1 and y.shape[-1] == 1 and tuple(y.shape[:-1]) == pred_shape:
            y = y.squeeze(-1)  # [N, 1] labels for [N, C] outputs
        else:
            per = "position" if len(pred_shape) > 1 else "sample"
            raise ValueError(
                f"{what} must have shape {pred_shape} (one class index per {per}) "
                f"for outputs of shape {tuple(out_shape)}, got {tuple(y.shape)}"
            )
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            bad = y[~torch.isfinite(y) | (y != y.round())]
            raise ValueError(
                f"{what} of a classification must be whole class indices, got non-integer values such as "
                f"{float(bad.reshape(-1)[0]):g}; for real-valued targets build the network with task='regression'"
            )
        y = y.long()
    else:
        y = y.long()
    if num_classes is not None and y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{what} must lie in [0, {num_classes - 1}] for {num_classes} classes, got values from {lo} to {hi}"
            )
    return y


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def score_matrix(
    stack: torch.Tensor,
    y: torch.Tensor,
    *,
    task: str = "classification",
    score_fn: ScoreFn | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score of every exit on every sample, ``[E, N]`` (float64), from stacked outputs ``[E, N, ...]``.

    Example:
        >>> stack = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [0.0, 2.0]]])  # [E=2, N=2, C=2]
        >>> score_matrix(stack, torch.tensor([0, 1]))
        tensor([[1., 1.],
                [0., 1.]], dtype=torch.float64)
    """
    fn = score_fn if score_fn is not None else default_score(task)
    rows = []
    for i in range(stack.shape[0]):
        s = fn(prediction(stack[i], task), y, mask)
        if not isinstance(s, torch.Tensor) or s.shape != (stack.shape[1],):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"score_fn must return one score per sample ([{stack.shape[1]}]), got {got}")
        rows.append(s.double())
    return torch.stack(rows)
