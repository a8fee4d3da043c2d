"""Private: iterate over the data forms exitnet accepts, and collect the outputs of every exit.

Accepted data: a ``DataLoader`` (or any iterable of ``(x, y)`` batches, or of dicts with the inputs and a
``"labels"`` / ``"y"`` entry), a tuple ``(x, y)``, or an object with ``.x`` and ``.y`` (``exitnet.data.Split``).
``x`` is a tensor, or the tuple / dict of tensors a multi-input network takes; ``y`` holds labels ``[N]`` (or
``[N, *]`` per position, or regression targets).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from exitnet._utils import eval_mode, module_device
from exitnet.outputs import ExitOutputs
from exitnet.rows import leaves, num_rows, slice_rows, to_device

_LABEL_KEYS = ("labels", "label", "y")


def _is_input(x: Any) -> bool:
    """A tensor, or a tuple / list / dict holding tensors (nested structures too)."""
    if isinstance(x, torch.Tensor):
        return True
    return isinstance(x, (tuple, list, Mapping)) and bool(leaves(x))


def as_xy(data: Any) -> tuple[Any, torch.Tensor] | None:
    """``(x, y)`` when ``data`` is a tuple ``(inputs, labels)`` or has ``.x``/``.y`` (a ``Split``), else ``None``."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], torch.Tensor) and _is_input(data[0]):
        return data[0], data[1]
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if _is_input(x) and isinstance(y, torch.Tensor):
        return x, y
    return None


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """One batch of a loader as ``(x, y)``; a clear error for any other form."""
    if isinstance(batch, Mapping):
        keys = [k for k in _LABEL_KEYS if k in batch]
        if not keys:
            raise TypeError(
                f"a batch given as a dict needs the labels under one of {list(_LABEL_KEYS)}; it has {sorted(batch)}"
            )
        x = {k: v for k, v in batch.items() if k != keys[0]}
        return (next(iter(x.values())) if len(x) == 1 else x), batch[keys[0]]
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        raise TypeError(
            f"each batch must be (inputs, labels), got a {type(batch).__name__} of {len(batch)} items; put several "
            "inputs in one tuple or dict: ((ids, mask), y)"
        )
    raise TypeError(f"each batch must be (inputs, labels) or a dict with 'labels', got {type(batch).__name__}")


def iter_batches(data: Any, batch_size: int = 256) -> Iterator[tuple[Any, torch.Tensor]]:
    """Yield ``(x, y)`` batches from any accepted data form (tensors are sliced, not copied)."""
    xy = as_xy(data)
    if xy is not None:
        x, y = xy
        n = num_rows(x)
        if n != y.shape[0]:
            raise ValueError(f"inputs and labels disagree on the number of samples: {n} vs {y.shape[0]}")
        for start in range(0, n, batch_size):
            yield slice_rows(x, start, start + batch_size), y[start : start + batch_size]
        return
    if not isinstance(data, Iterable) or isinstance(data, (torch.Tensor, str, bytes, Mapping)):
        raise TypeError(f"data must be a DataLoader, an (x, y) tuple or a Split with .x/.y; got {type(data).__name__}")
    for batch in data:
        yield split_batch(batch)


def num_samples(data: Any) -> int | None:
    xy = as_xy(data)
    if xy is not None:
        return num_rows(xy[0])
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


@torch.no_grad()
def collect_outputs(
    net: nn.Module, data: Any, *, batch_size: int = 256, device: torch.device | str | None = None
) -> tuple[ExitOutputs, torch.Tensor]:
    """Run every exit of ``net`` over ``data`` in eval mode; return the outputs (on CPU) and the labels.

    Labels of several batches with per-position shapes of different lengths are padded with -100 (invalid; the
    outputs' mask says which positions count).
    """
    dev = torch.device(device) if device is not None else module_device(net)
    parts, labels = [], []
    with eval_mode(net):
        for x, y in iter_batches(data, batch_size):
            out = net(to_device(x, dev))
            parts.append(out.to("cpu"))
            labels.append(y.cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(y))
    if not parts:
        raise ValueError("the data holds no samples")
    return ExitOutputs.cat(parts), _cat_labels(labels)


def _cat_labels(labels: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape[1:]) for t in labels}
    if len(shapes) == 1:
        return torch.cat(labels)
    top = [max(s[d] for s in shapes) for d in range(len(next(iter(shapes))))]
    out = []
    for t in labels:
        pad = torch.full((t.shape[0], *top), -100, dtype=t.dtype)
        pad[(slice(None), *(slice(0, s) for s in t.shape[1:]))] = t
        out.append(pad)
    return torch.cat(out)


def first_tensor(x: Any) -> torch.Tensor:
    """The stream input of ``x`` (its first tensor)."""
    found = leaves(x)
    if not found:
        raise TypeError(f"no tensor in the input ({type(x).__name__})")
    return found[0]
