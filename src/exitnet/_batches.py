"""Private: iterate over the data forms exitnet accepts, and collect the outputs of every exit.

Accepted data: a ``DataLoader`` (or any iterable of ``(x, y)`` batches), a tuple ``(x, y)`` of tensors,
or an object with ``.x`` and ``.y`` tensors (``exitnet.data.Split``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from exitnet._utils import eval_mode
from exitnet.outputs import ExitOutputs


def as_xy(data: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` when ``data`` is a tuple of two tensors or has ``.x``/``.y`` tensors (a ``Split``), else ``None``."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x, y
    return None


def iter_batches(data: Any, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches from any accepted data form (tensors are sliced, not copied)."""
    xy = as_xy(data)
    if xy is not None:
        x, y = xy
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs and labels disagree on the number of samples: {x.shape[0]} vs {y.shape[0]}")
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a DataLoader, an (x, y) tuple of tensors or a Split with .x/.y; got {type(data).__name__}"
        )
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(f"each batch must be (inputs, labels), got {type(batch).__name__}")
        yield batch[0], batch[1]


def num_samples(data: Any) -> int | None:
    xy = as_xy(data)
    if xy is not None:
        return int(xy[0].shape[0])
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


@torch.no_grad()
def collect_outputs(
    net: nn.Module, data: Any, *, batch_size: int = 256, device: torch.device | str | None = None
) -> tuple[ExitOutputs, torch.Tensor]:
    """Run every exit of ``net`` over ``data`` in eval mode; return the outputs (on CPU) and the labels."""
    if device is None:
        p = next(net.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    parts, labels = [], []
    with eval_mode(net):
        for x, y in iter_batches(data, batch_size):
            out = net(x.to(device))
            parts.append(out.to("cpu"))
            labels.append(y.reshape(-1).to("cpu"))
    if not parts:
        raise ValueError("the data holds no samples")
    return ExitOutputs.cat(parts), torch.cat(labels)
