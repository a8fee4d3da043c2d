"""Per-sample state of any shape: select, slice, count, move and concatenate the rows of a batch.

The runtime keeps only the samples still alive after each exit. What it compacts is never just one tensor: the
stream ``h`` between stages, the side inputs ``ctx`` (attention mask, position ids, a graph, a key/value cache)
and the policy's state. :func:`take_rows` is the one function that knows how to keep some rows of any of them:

- a tensor: ``index_select`` along dim 0 (keeping a channels-last layout, which ``index_select`` would drop);
  a 0-dim tensor is a per-batch constant and stays as it is;
- a tuple (named tuples too), list or mapping: element by element;
- an object with a ``take_rows(rows)`` method (ours, or yours), or with ``batch_select_indices(rows)`` (Hugging
  Face caches, which change in place: the same object is returned);
- :class:`Shared` values and plain Python scalars, strings and ``None``: the same for every sample, kept whole.

Anything else is refused with an error that says what to add, so that no state is silently left uncompacted.

Example:
    >>> state = {"h": torch.arange(6).view(3, 2), "mask": (torch.ones(3, 4) > 0), "graph": Shared("adj")}
    >>> out = take_rows(state, torch.tensor([0, 2]))
    >>> out["h"].tolist(), tuple(out["mask"].shape), out["graph"].value
    ([[0, 1], [4, 5]], (2, 4), 'adj')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

__all__ = ["Shared", "take_rows", "slice_rows", "num_rows", "to_device", "cat_rows", "unwrap", "leaves"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shared(Generic[T]):
    """A side input that is the same for every sample of a batch (never compacted): a graph's adjacency for
    node-level exits, a lookup table, a constant. Stages and heads receive ``value``, unwrapped.

    Example:
        >>> take_rows(Shared(torch.eye(3)), torch.tensor([1])).value.shape
        torch.Size([3, 3])
    """

    value: T

    def take_rows(self, rows: torch.Tensor) -> Shared[T]:
        return self


_SCALARS = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


def _channels_last(t: torch.Tensor) -> bool:
    if t.dim() == 4:
        return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every element of a tuple / named tuple / list / mapping (one level)."""
    if isinstance(obj, tuple):
        items = [fn(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [fn(v) for v in obj]
    if isinstance(obj, dict):
        return {k: fn(v) for k, v in obj.items()}
    if isinstance(obj, Mapping):
        return type(obj)({k: fn(v) for k, v in obj.items()})  # type: ignore[call-arg]
    raise TypeError  # pragma: no cover - callers check the kinds first


def take_rows(obj: Any, rows: torch.Tensor) -> Any:
    """The rows ``rows`` (an int64 index tensor, on the state's device) of every per-sample part of ``obj``.

    Args:
        obj: a tensor ``[B, ...]``, a nested tuple / list / mapping of them, an object with ``take_rows`` or
            ``batch_select_indices``, a :class:`Shared` value, or a scalar.
        rows: indices into the batch dimension, in the order the result should have.

    Raises:
        TypeError: an object whose rows exitnet cannot select (the message says what to add).

    Example:
        >>> x = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
        >>> y = take_rows(x, torch.tensor([3, 1]))
        >>> y.shape, y.is_contiguous(memory_format=torch.channels_last)
        (torch.Size([2, 3, 5, 5]), True)
    """
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:
            return obj
        if _channels_last(obj):
            return obj[rows]  # advanced indexing keeps channels-last; index_select would make it contiguous
        return obj.index_select(0, rows)
    if isinstance(obj, _SCALARS):
        return obj
    method = getattr(obj, "take_rows", None)
    if callable(method):
        return method(rows)
    method = getattr(obj, "batch_select_indices", None)
    if callable(method):  # Hugging Face caches: select in place
        method(rows)
        return obj
    if isinstance(obj, (tuple, list, Mapping)):
        return _map(obj, lambda v: take_rows(v, rows))
    raise TypeError(
        f"take_rows cannot select the rows of a {type(obj).__name__}: give it a take_rows(rows) method, or wrap it "
        "in exitnet.Shared(...) if it is the same for every sample of the batch"
    )


def slice_rows(obj: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of every per-sample part of ``obj`` (a view for tensors; see :func:`take_rows`)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.dim() == 0 else obj[start:stop]
    if isinstance(obj, _SCALARS) or isinstance(obj, Shared):
        return obj
    method = getattr(obj, "slice_rows", None)
    if callable(method):
        return method(start, stop)
    if isinstance(obj, (tuple, list, Mapping)):
        return _map(obj, lambda v: slice_rows(v, start, stop))
    n = num_rows(obj)
    device = getattr(obj, "device", "cpu")
    return take_rows(obj, torch.arange(start, min(stop, n), device=device))


def leaves(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a nested tuple / list / mapping, depth first (:class:`Shared` values excluded)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in leaves(v)]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in leaves(v)]
    return []


def num_rows(obj: Any) -> int:
    """The batch size of ``obj``: dim 0 of its tensors, which must agree.

    Raises:
        ValueError: no per-sample tensor, or tensors that disagree on the number of rows.

    Example:
        >>> num_rows({"ids": torch.zeros(3, 7), "mask": torch.ones(3, 7)})
        3
    """
    method = getattr(obj, "num_rows", None)
    if callable(method):
        return int(method())
    counts = {int(t.shape[0]) for t in leaves(obj) if t.dim() > 0}
    if not counts:
        raise ValueError(f"cannot tell the number of samples of a {type(obj).__name__}: it holds no tensor [N, ...]")
    if len(counts) > 1:
        raise ValueError(f"the parts of one input disagree on the number of samples: {sorted(counts)}")
    return counts.pop()


def to_device(obj: Any, device: torch.device | str, *, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor moved to ``device`` (objects with a ``to`` method are moved too)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, Shared):
        return Shared(to_device(obj.value, device, non_blocking=non_blocking))
    if isinstance(obj, (tuple, list, Mapping)):
        return _map(obj, lambda v: to_device(v, device, non_blocking=non_blocking))
    method = getattr(obj, "to", None)
    return method(device) if callable(method) else obj


def cat_rows(parts: Sequence[Any]) -> Any:
    """Concatenate per-sample structures of the same form along the batch dimension (inverse of slicing)."""
    if not parts:
        raise ValueError("cat_rows needs at least one part")
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return first if first.dim() == 0 else torch.cat(list(parts), dim=0)
    if isinstance(first, _SCALARS) or isinstance(first, Shared):
        return first
    if isinstance(first, tuple):
        items = [cat_rows([p[i] for p in parts]) for i in range(len(first))]
        return type(first)(*items) if hasattr(first, "_fields") else tuple(items)
    if isinstance(first, list):
        return [cat_rows([p[i] for p in parts]) for i in range(len(first))]
    if isinstance(first, Mapping):
        return {k: cat_rows([p[k] for p in parts]) for k in first}
    method = getattr(type(first), "cat_rows", None)
    if callable(method):
        return method(list(parts))
    raise TypeError(f"cat_rows cannot concatenate {type(first).__name__} objects; give the class a cat_rows(parts)")


def unwrap(value: Any) -> Any:
    """The value a stage or head receives for a side input: :class:`Shared` values unwrapped."""
    return value.value if isinstance(value, Shared) else value
