"""Seeded synthetic data for tests and quick demos."""

from __future__ import annotations

import math

import numpy as np
import torch

from exitnet.data.splits import Dataset, check_fractions, from_arrays

__all__ = ["synthetic"]


def synthetic(
    n: int = 1000,
    *,
    num_classes: int = 4,
    input_shape: tuple[int, ...] = (16,),
    noise: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> Dataset:
    """Seeded Gaussian class clusters mixing easy and hard samples, for tests and quick demos.

    Class means are random with an expected pairwise distance of about 5.7 whatever the dimension; each
    sample gets its own noise std ``noise * s`` with ``s`` log-uniform in [0.25, 4], so some samples are
    trivial (an early exit should take them) and some are near-hopeless. With the defaults a perfect
    classifier gets about 89%.

    Example:
        >>> ds = synthetic(200, num_classes=3, input_shape=(1, 4, 4), seed=1)
        >>> ds.train.x.shape[1:], ds.train.y.dtype
        (torch.Size([1, 4, 4]), torch.int64)
    """
    check_fractions(val_fraction, test_fraction)
    input_shape = tuple(int(d) for d in input_shape)
    if n < 1 or num_classes < 2 or not input_shape or min(input_shape) < 1:
        raise ValueError(
            f"need n >= 1, num_classes >= 2 and a non-empty input_shape of positive sizes, "
            f"got n={n}, num_classes={num_classes}, input_shape={input_shape}"
        )
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    dim = math.prod(input_shape)
    means = rng.normal(size=(num_classes, dim)) * (4.0 / math.sqrt(dim))
    y = rng.permutation(np.arange(n) % num_classes)
    scale = noise * np.exp(rng.uniform(math.log(0.25), math.log(4.0), size=n))
    x = means[y] + rng.normal(size=(n, dim)) * scale[:, None]
    x_t = torch.from_numpy(x.astype(np.float32)).reshape(n, *input_shape)
    return from_arrays("synthetic", x_t, y, num_classes, seed, val_fraction, test_fraction)
