"""Datasets for multi-exit experiments, each a :class:`Dataset` of three disjoint, seeded :class:`Split` s.

Inputs are tensors (or the tuple / dict of tensors a multi-input network takes), standardised where that means
something with the *train* split's statistics; labels are class indices (per sample or per position) or regression
targets. Nothing here needs a network connection: digits ships with scikit-learn, file-based datasets are read from
local files found by one set of rules (:mod:`exitnet.data.sources`: ``root``, ``$EXITNET_DATA``, a cache folder,
the folder of a Debian package) and only downloaded as a last resort, with a clear error when they are nowhere.

A new loader registers itself with :func:`register_dataset` (one line in its module) and is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exitnet.data.sources import read_idx
from exitnet.data.splits import Dataset, Split

__all__ = [
    "Dataset",
    "Split",
    "digits",
    "fashion_mnist",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "synthetic",
]

_LOADERS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str, loader: Callable[..., Dataset]) -> None:
    """Make ``loader(**kwargs) -> Dataset`` known to :func:`load_dataset` under ``name``."""
    if name in _LOADERS and _LOADERS[name] is not loader:
        raise ValueError(f"a dataset named {name!r} is already registered")
    _LOADERS[name] = loader


def list_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts.

    Example:
        >>> {"digits", "fashion-mnist", "synthetic"} <= set(list_datasets())
        True
    """
    return sorted(_LOADERS)


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load a dataset by name (``_`` and ``-`` are interchangeable), passing ``kwargs`` to its loader.

    Example:
        >>> load_dataset("synthetic", n=50).name
        'synthetic'
    """
    loader = _LOADERS.get(name.lower().replace("_", "-"))
    if loader is None:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return loader(**kwargs)


from exitnet.data.images import digits, fashion_mnist  # noqa: E402  (loaders register below)
from exitnet.data.synthetic import synthetic  # noqa: E402

register_dataset("digits", digits)
register_dataset("fashion-mnist", fashion_mnist)
register_dataset("synthetic", synthetic)
