"""Splits and datasets: what every loader of :mod:`exitnet.data` returns, and the seeded stratified split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from exitnet.rows import num_rows, slice_rows

__all__ = ["Split", "Dataset", "check_fractions", "stratified_split", "from_arrays"]


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset: normalised inputs ``x`` ``[N, *input_shape]`` and int64 labels ``y`` ``[N]``.

    Example:
        >>> s = Split(torch.zeros(10, 3), torch.arange(10) % 2)
        >>> len(s), [tuple(xb.shape) for xb, _ in s.loader(batch_size=4)]
        (10, [(4, 3), (4, 3), (2, 3)])
    """

    x: Any
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.y, torch.Tensor) or self.y.dim() < 1:
            raise ValueError(f"Split needs labels y [N, ...] as a tensor, got {type(self.y).__name__}")
        n = num_rows(self.x)
        if n != self.y.shape[0]:
            raise ValueError(
                f"Split needs x [N, ...] and y [N, ...] with the same N, got {n} inputs and {self.y.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        x = f"{tuple(self.x.shape)} {self.x.dtype}" if isinstance(self.x, torch.Tensor) else type(self.x).__name__
        return f"Split(n={len(self)}, x={x}, y={tuple(self.y.shape)} {self.y.dtype})"

    def loader(
        self, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> DataLoader:
        """A DataLoader of ``(x, y)`` batches; with ``shuffle`` the order depends only on ``seed``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if not isinstance(self.x, torch.Tensor):
            raise TypeError("Split.loader needs tensor inputs; pass the Split itself (or (x, y)) to exitnet functions")
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            TensorDataset(self.x, self.y),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset with train/val/test splits, the number of classes (``None`` for regression), the per-sample
    input shape (of the first input, for several inputs; ``None`` when it varies) and the task.

    Example:
        >>> from exitnet.data import synthetic
        >>> ds = synthetic(100, num_classes=3, input_shape=(2, 4))
        >>> ds.name, ds.num_classes, ds.input_shape, len(ds.train) + len(ds.val) + len(ds.test)
        ('synthetic', 3, (2, 4), 100)
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int | None
    input_shape: tuple[int, ...] | None
    task: str = "classification"

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-sample input shape; ``ValueError`` for a dataset whose inputs vary in shape or are several."""
        if self.input_shape is None:
            raise ValueError(f"dataset {self.name!r} has no fixed input shape (several inputs, or varying sizes)")
        return self.input_shape

    def sample_input(self) -> Any:
        """The first training sample as a batch of one (a tensor, or the tuple / dict of the inputs)."""
        return slice_rows(self.train.x, 0, 1)

    def __post_init__(self) -> None:
        if self.input_shape is None:
            return
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        for part in ("train", "val", "test"):
            x = getattr(self, part).x
            if not isinstance(x, torch.Tensor):
                continue
            got = tuple(x.shape[1:])
            if got != self.input_shape:
                raise ValueError(f"{self.name}: {part} inputs have shape {got}, expected {self.input_shape}")


# ----------------------------------------------------------------------------------------------- helpers
def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )


def stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, val, test) index arrays with each class spread evenly over the three parts."""
    n = len(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(y[order], kind="stable")]  # grouped by class, random within a class
    counts = np.bincount(y)
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)  # position within its class
    key = (rank + 0.5) / np.repeat(counts, counts)  # each class spread evenly over [0, 1)
    order = order[np.lexsort((rng.random(n), key))]  # by key, ties broken at random
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise ValueError(
            f"{n} samples are too few for val_fraction={val_fraction}, test_fraction={test_fraction}: "
            f"that gives {n - n_test - n_val} train / {n_val} val / {n_test} test; every split needs >= 1"
        )
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return np.sort(train), np.sort(val), np.sort(test)


def from_arrays(
    name: str, x: torch.Tensor, y: np.ndarray, num_classes: int, seed: int, val_frac: float, test_frac: float
) -> Dataset:
    """Split ``x``/``y`` stratified and standardise everything with the train split's mean and std."""
    train, val, test = stratified_split(y, val_frac, test_frac, seed)
    x_train = x[torch.from_numpy(train)]
    mean, std = x_train.mean().item(), x_train.std(unbiased=False).item()
    std = std if std > 0 else 1.0
    x = ((x - mean) / std).float()
    labels = torch.from_numpy(y.astype(np.int64))
    tr, va, te = (Split(x[torch.from_numpy(i)], labels[torch.from_numpy(i)]) for i in (train, val, test))
    return Dataset(name, tr, va, te, num_classes=num_classes, input_shape=tuple(x.shape[1:]))
