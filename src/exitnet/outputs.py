"""`ExitOutputs`: the one type a multi-exit forward returns.

Every forward of a :class:`~exitnet.model.MultiExitNetwork` returns the outputs of every exit, in depth order,
as an :class:`ExitOutputs` (one type, always): class logits ``[B, C]``, logits per position ``[B, *, C]``, or
regression values; with the task, an optional mask of valid positions and optionally each exit's features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from exitnet.rows import cat_rows, to_device
from exitnet.scores import check_task, prediction

__all__ = ["ExitOutputs", "as_stack", "as_outputs"]


@dataclass(frozen=True)
class ExitOutputs:
    """Outputs of every exit of a multi-exit network, shallowest first.

    Args:
        logits: one tensor per exit, all of one shape: ``[B, C]`` class logits, ``[B, *, C]`` logits per position
            (a token-level classifier), or for regression ``[B, *]`` values.
        names: one name per exit (the exit point's dotted module name, ``"final"`` for the last exit).
        task: ``"classification"`` or ``"regression"`` (see :mod:`exitnet.scores`): what a prediction is.
        mask: optional ``[B, *]`` validity of each output position (padding tokens are False); policies and scores
            ignore invalid positions.
        features: optional, each exit's stage output (the embedding h_i its head read), in exit order.

    Example:
        >>> out = ExitOutputs((torch.zeros(4, 10), torch.ones(4, 10)), ("layer1", "final"))
        >>> out.stack().shape
        torch.Size([2, 4, 10])
        >>> len(out), out.final.shape, out.predictions().shape
        (2, torch.Size([4, 10]), torch.Size([2, 4]))
    """

    logits: tuple[torch.Tensor, ...]
    names: tuple[str, ...] = ()
    task: str = "classification"
    mask: torch.Tensor | None = None
    features: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        logits = tuple(self.logits)
        object.__setattr__(self, "logits", logits)
        if not logits:
            raise ValueError("ExitOutputs needs the outputs of at least one exit, got none")
        check_task(self.task)
        names = tuple(self.names) if self.names else tuple(f"exit{i}" for i in range(len(logits)))
        if len(names) != len(logits):
            raise ValueError(f"ExitOutputs got {len(logits)} outputs but {len(names)} names")
        object.__setattr__(self, "names", names)
        first = logits[0].shape
        least = 2 if self.task == "classification" else 1
        for i, t in enumerate(logits):
            if t.dim() < least or t.shape != first:
                raise ValueError(
                    f"every exit must give outputs of one shape ({'[B, *, C] logits' if least == 2 else '[B, *]'}); "
                    f"exit 0 gives {tuple(first)}, exit {i} gives {tuple(t.shape)}"
                )
        if self.mask is not None:
            m = self.mask
            if m.dim() < 1 or tuple(first[: m.dim()]) != tuple(m.shape) or (least == 2 and m.dim() > len(first) - 1):
                raise ValueError(
                    f"the output mask must be [B, *] with the outputs' leading dims, got mask {tuple(m.shape)} for "
                    f"outputs {tuple(first)}"
                )
        if self.features is not None:
            feats = tuple(self.features)
            if len(feats) != len(logits):
                raise ValueError(f"ExitOutputs got {len(logits)} outputs but {len(feats)} features")
            object.__setattr__(self, "features", feats)

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.logits[i]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.logits)

    @property
    def num_exits(self) -> int:
        return len(self.logits)

    @property
    def final(self) -> torch.Tensor:
        """Logits of the last exit (the backbone's own output)."""
        return self.logits[-1]

    def stack(self) -> torch.Tensor:
        """All exits as one tensor ``[E, B, C]``."""
        return torch.stack(self.logits, dim=0)

    @property
    def batch_size(self) -> int:
        return int(self.logits[0].shape[0])

    def predictions(self) -> torch.Tensor:
        """The task's prediction of every exit: arg-max class ``[E, B, *]``, or the values for regression."""
        return prediction(self.stack(), self.task)

    def combined(self, mode: str = "mean", weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
        """One prediction from every exit's logits, ``[B, C]``: eq. (8) of the survey, ŷ = Σ_i α_i c_i(x).

        Args:
            mode: ``"mean"`` or ``"max"`` (fixed pooling over exits, as DDNN does; no weights), ``"weighted"``
                (Σ_i w_i z_i with the ``weights`` as given) or ``"convex"`` (the same with softmax(``weights``)).
            weights: one weight per exit for ``"weighted"`` / ``"convex"`` (learned ones from
                ``exitnet.train.Combined``); gradients flow through a tensor.

        Example:
            >>> out = ExitOutputs((torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, 0.0]])))
            >>> out.combined("mean"), out.combined("max"), out.combined("weighted", [0.5, 0.25])
            (tensor([[2., 1.]]), tensor([[4., 2.]]), tensor([[1., 1.]]))
        """
        if self.task != "classification":
            raise ValueError("combined() mixes class logits; these outputs are a regression's")
        stack = self.stack()  # [E, B, *, C]
        if mode in ("mean", "max"):
            if weights is not None:
                raise ValueError(f"combined mode {mode!r} is a fixed pooling and takes no weights")
            return stack.mean(dim=0) if mode == "mean" else stack.amax(dim=0)
        if mode not in ("weighted", "convex"):
            raise ValueError(f"unknown combined mode {mode!r}; choose one of: mean, max, weighted, convex")
        if weights is None:
            raise ValueError(f"combined mode {mode!r} needs one weight per exit ({len(self)})")
        w = torch.as_tensor(weights, dtype=stack.dtype, device=stack.device).reshape(-1)
        if w.numel() != len(self):
            raise ValueError(f"combined mode {mode!r} needs {len(self)} weights (one per exit), got {w.numel()}")
        if mode == "convex":
            w = torch.softmax(w, dim=0)
        return (w.view(-1, *([1] * (stack.dim() - 1))) * stack).sum(dim=0)  # [E, 1, ...] * [E, B, ...] -> [B, ...]

    def replace(self, **changes: Any) -> ExitOutputs:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def detach(self) -> ExitOutputs:
        feats = None if self.features is None else tuple(_detach(f) for f in self.features)
        return self.replace(logits=tuple(t.detach() for t in self.logits), features=feats)

    def to(self, device: torch.device | str) -> ExitOutputs:
        feats = None if self.features is None else tuple(to_device(f, device) for f in self.features)
        mask = None if self.mask is None else self.mask.to(device)
        return self.replace(logits=tuple(t.to(device) for t in self.logits), mask=mask, features=feats)

    @staticmethod
    def cat(parts: Sequence[ExitOutputs]) -> ExitOutputs:
        """Concatenate outputs of several batches along the batch dimension."""
        if not parts:
            raise ValueError("ExitOutputs.cat needs at least one part")
        num = len(parts[0])
        for p in parts:
            if len(p) != num:
                raise ValueError(f"cannot concatenate outputs with {num} and {len(p)} exits")
        if len({p.task for p in parts}) != 1:
            raise ValueError("cannot concatenate outputs of different tasks")
        logits = tuple(_cat_padded([p.logits[i] for p in parts]) for i in range(num))
        masks = [p.mask for p in parts]
        if any(m is not None for m in masks) or any(
            p.logits[0].shape[1:] != parts[0].logits[0].shape[1:] for p in parts
        ):
            full = [_full_mask(p) if m is None else m for p, m in zip(parts, masks, strict=True)]
            mask: torch.Tensor | None = _cat_padded(full, fill=False)
        else:
            mask = None
        feats = None
        if all(p.features is not None for p in parts):
            feats = tuple(cat_rows([p.features[i] for p in parts]) for i in range(num))  # type: ignore[index]
        return ExitOutputs(logits, parts[0].names, task=parts[0].task, mask=mask, features=feats)


def _detach(obj: Any) -> Any:
    return obj.detach() if isinstance(obj, torch.Tensor) else obj


def _full_mask(p: ExitOutputs) -> torch.Tensor:
    """All-valid mask of ``p``'s positions ``[B, *]``."""
    shape = p.logits[0].shape[:-1] if p.task == "classification" else p.logits[0].shape
    return torch.ones(shape, dtype=torch.bool, device=p.logits[0].device)


def _cat_padded(parts: Sequence[torch.Tensor], fill: float | bool = 0.0) -> torch.Tensor:
    """``torch.cat`` along dim 0; parts whose other dims differ (sequences of several lengths) are padded at the
    end of each dim with ``fill`` first (their mask marks the padding invalid)."""
    shapes = {tuple(t.shape[1:]) for t in parts}
    if len(shapes) == 1:
        return torch.cat(list(parts), dim=0)
    if len({t.dim() for t in parts}) != 1:
        raise ValueError(f"cannot concatenate outputs of ranks {sorted({t.dim() for t in parts})}")
    top = [max(s[d] for s in shapes) for d in range(len(next(iter(shapes))))]
    padded = []
    for t in parts:
        out = torch.full((t.shape[0], *top), fill, dtype=t.dtype, device=t.device)
        out[(slice(None), *(slice(0, s) for s in t.shape[1:]))] = t
        padded.append(out)
    return torch.cat(padded, dim=0)


def as_stack(logits: ExitOutputs | torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Accept ``ExitOutputs``, a list of per-exit tensors or a stacked tensor; return ``[E, B, ...]``.

    Class logits are ``[E, B, C]`` (or ``[E, B, *, C]`` per position); regression outputs ``[E, B, *]``.
    """
    if isinstance(logits, ExitOutputs):
        stack = logits.stack()
    elif isinstance(logits, torch.Tensor):
        stack = logits
    else:
        parts = tuple(logits)
        if not parts:
            raise ValueError("exit outputs: got no exit")
        stack = torch.stack(parts, dim=0)
    if stack.dim() < 2:
        raise ValueError(f"exit outputs must be [E, B, ...] (exits, batch, ...), got shape {tuple(stack.shape)}")
    return stack


def as_outputs(
    logits: ExitOutputs | torch.Tensor | Sequence[torch.Tensor], task: str = "classification"
) -> ExitOutputs:
    """``logits`` as :class:`ExitOutputs` (a stacked tensor ``[E, B, ...]`` or a list is taken as ``task``'s)."""
    if isinstance(logits, ExitOutputs):
        return logits
    stack = as_stack(logits)
    return ExitOutputs(tuple(stack.unbind(0)), task=task)
