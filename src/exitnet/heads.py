"""Exit heads (the survey's auxiliary classifiers c_i, eq. (3)) and `create_head`.

A head maps the output of a stage (the embedding h_i) to logits ``[B, C]``. Survey §4: for fully-connected
features a linear classifier or a small MLP; for convolutional features strong dimensionality reduction first
(global average pooling, or SDN's mixed max/average pooling); for transformers a token pooling.

Pick one with :func:`create_head`; :func:`list_heads` lists the kinds (STYLE.md §2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["create_head", "list_heads", "LinearHead", "MLPHead", "PoolHead", "SDNHead", "TokenHead"]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class LinearHead(nn.Module):
    """Flatten, then one linear layer: ``[B, *feature_shape] -> [B, num_classes]``."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(_numel(feature_shape), num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(h, 1))  # [B, F] -> [B, C]


class MLPHead(nn.Module):
    """Flatten, one hidden layer with ReLU, then a linear layer (the 'small network' of survey §4)."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int, *, hidden: int = 128) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"mlp head hidden size must be >= 1, got {hidden}")
        self.net = nn.Sequential(
            nn.Linear(_numel(feature_shape), hidden), nn.ReLU(inplace=False), nn.Linear(hidden, num_classes)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(h, 1))


class PoolHead(nn.Module):
    """Global average pooling over every dimension after the channels, then a linear layer.

    ``[B, C, *spatial] -> mean over spatial -> [B, C] -> [B, num_classes]``; on ``[B, C]`` features it is a
    plain linear head.
    """

    def __init__(self, feature_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(feature_shape) < 1:
            raise ValueError("pool head needs features with a channel dimension, got a scalar per sample")
        self.spatial_dims = tuple(range(2, 1 + len(feature_shape)))
        self.fc = nn.Linear(int(feature_shape[0]), num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims:
            h = h.mean(dim=self.spatial_dims)  # [B, C, *spatial] -> [B, C]
        return self.fc(h)


class SDNHead(nn.Module):
    """Shallow-Deep Networks' internal classifier (Kaya et al., 2019): mixed max/avg pooling + linear.

    The feature map ``[B, C, H, W]`` is reduced to at most ``size x size`` (4 x 4 in SDN) by
    ``alpha * maxpool + (1 - alpha) * avgpool`` with a learned scalar ``alpha`` (initialised to 0.5), then
    flattened into a linear layer.
    """

    def __init__(self, feature_shape: Sequence[int], num_classes: int, *, size: int = 4) -> None:
        super().__init__()
        if len(feature_shape) != 3:
            raise ValueError(
                f"sdn head needs image features (C, H, W), got shape {tuple(feature_shape)}; "
                "use 'pool', 'linear' or 'mlp' for these features"
            )
        c, height, width = (int(s) for s in feature_shape)
        self.out_hw = (min(size, height), min(size, width))
        self.max_pool = nn.AdaptiveMaxPool2d(self.out_hw)
        self.avg_pool = nn.AdaptiveAvgPool2d(self.out_hw)
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.fc = nn.Linear(c * self.out_hw[0] * self.out_hw[1], num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mixed = self.alpha * self.max_pool(h) + (1 - self.alpha) * self.avg_pool(h)  # [B, C, s, s]
        return self.fc(torch.flatten(mixed, 1))  # [B, C*s*s] -> [B, num_classes]


class TokenHead(nn.Module):
    """Token pooling for transformer features ``[B, T, D]``: the CLS token (index 0) or the mean token,
    then LayerNorm and a linear layer."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int, *, pooling: str = "cls") -> None:
        super().__init__()
        if len(feature_shape) != 2:
            raise ValueError(f"token head needs token features (T, D), got shape {tuple(feature_shape)}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"token head pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        dim = int(feature_shape[1])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pooled = h[:, 0] if self.pooling == "cls" else h.mean(dim=1)  # [B, T, D] -> [B, D]
        return self.fc(self.norm(pooled))


_HEADS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    "pool": PoolHead,
    "sdn": SDNHead,
    "token": TokenHead,
}


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`."""
    return sorted(_HEADS)


def register_head(kind: str, factory: Callable[..., nn.Module]) -> None:
    """Add a head kind: ``factory(feature_shape, num_classes, **kwargs) -> nn.Module``."""
    if kind in _HEADS:
        raise ValueError(f"head kind {kind!r} is already registered")
    _HEADS[kind] = factory


def create_head(kind: str, feature_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build an exit head for features of ``feature_shape`` (per sample, no batch dimension).

    Args:
        kind: one of :func:`list_heads`.
        feature_shape: the stage output's shape without the batch dimension, e.g. ``(16, 8, 8)``.
        num_classes: number of output logits.
        **kwargs: options of that head (``hidden`` for mlp, ``size`` for sdn, ``pooling`` for token).

    Returns:
        A module mapping ``[B, *feature_shape]`` to ``[B, num_classes]``.

    Example:
        >>> head = create_head("pool", (16, 8, 8), 10)
        >>> head(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 10])
    """
    if kind not in _HEADS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of: {', '.join(list_heads())}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    shape = tuple(int(s) for s in feature_shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"feature shape must be positive, got {shape}")
    return _HEADS[kind](shape, int(num_classes), **kwargs)
