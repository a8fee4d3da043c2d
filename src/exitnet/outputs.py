"""`ExitOutputs`: the one type a multi-exit forward returns.

Every forward of a :class:`~exitnet.model.MultiExitNetwork` returns the logits of every exit, in depth order,
as an :class:`ExitOutputs` (STYLE.md §4: a forward always returns one type).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["ExitOutputs"]


@dataclass(frozen=True)
class ExitOutputs:
    """Logits of every exit of a multi-exit network, shallowest first.

    Args:
        logits: one tensor per exit, each ``[B, C]`` (all with the same ``B`` and ``C``).
        names: one name per exit (the exit point's dotted module name, ``"final"`` for the last exit).

    Example:
        >>> out = ExitOutputs((torch.zeros(4, 10), torch.ones(4, 10)), ("layer1", "final"))
        >>> out.stack().shape
        torch.Size([2, 4, 10])
        >>> len(out), out.final.shape
        (2, torch.Size([4, 10]))
    """

    logits: tuple[torch.Tensor, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        logits = tuple(self.logits)
        object.__setattr__(self, "logits", logits)
        if not logits:
            raise ValueError("ExitOutputs needs the logits of at least one exit, got none")
        names = tuple(self.names) if self.names else tuple(f"exit{i}" for i in range(len(logits)))
        if len(names) != len(logits):
            raise ValueError(f"ExitOutputs got {len(logits)} logits but {len(names)} names")
        object.__setattr__(self, "names", names)
        first = logits[0].shape
        for i, t in enumerate(logits):
            if t.dim() < 1 or t.shape != first:
                raise ValueError(
                    f"every exit must give logits of one shape; exit 0 gives {tuple(first)}, "
                    f"exit {i} gives {tuple(t.shape)}"
                )

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

    def predictions(self) -> torch.Tensor:
        """Arg-max class of every exit, ``[E, B]``."""
        return self.stack().argmax(dim=-1)

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
        stack = self.stack()  # [E, B, C]
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
        return (w[:, None, None] * stack).sum(dim=0)  # [E, 1, 1] * [E, B, C] -> [B, C]

    def detach(self) -> ExitOutputs:
        return ExitOutputs(tuple(t.detach() for t in self.logits), self.names)

    def to(self, device: torch.device | str) -> ExitOutputs:
        return ExitOutputs(tuple(t.to(device) for t in self.logits), self.names)

    @staticmethod
    def cat(parts: Sequence[ExitOutputs]) -> ExitOutputs:
        """Concatenate outputs of several batches along the batch dimension."""
        if not parts:
            raise ValueError("ExitOutputs.cat needs at least one part")
        num = len(parts[0])
        for p in parts:
            if len(p) != num:
                raise ValueError(f"cannot concatenate outputs with {num} and {len(p)} exits")
        logits = tuple(torch.cat([p.logits[i] for p in parts], dim=0) for i in range(num))
        return ExitOutputs(logits, parts[0].names)


def as_stack(logits: ExitOutputs | torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Accept ``ExitOutputs``, a list of ``[B, C]`` tensors or an ``[E, B, C]`` tensor; return ``[E, B, C]``."""
    if isinstance(logits, ExitOutputs):
        stack = logits.stack()
    elif isinstance(logits, torch.Tensor):
        stack = logits
    else:
        stack = ExitOutputs(tuple(logits)).stack()
    if stack.dim() != 3:
        raise ValueError(f"exit logits must be [E, B, C] (exits, batch, classes), got shape {tuple(stack.shape)}")
    return stack
