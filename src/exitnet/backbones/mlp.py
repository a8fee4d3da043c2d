"""Multilayer perceptron backbone: ``flatten`` -> ``blocks.0`` ... ``blocks.{k-1}`` -> ``fc``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from exitnet.backbones._checks import check_float, check_int, check_int_list, check_num_classes
from exitnet.backbones._registry import register


class MLP(nn.Module):
    """Flatten, then blocks of Linear -> BatchNorm1d -> ReLU [-> Dropout], then a linear classifier.

    Each block is a named ``nn.Sequential`` (``blocks.0.linear``, ``blocks.0.bn``, ``blocks.0.relu``
    and, when ``dropout > 0``, ``blocks.0.dropout``); the blocks are the natural exit points.

    Args:
        in_features: Values per sample after ``torch.flatten(x, 1)``.
        hidden: Width of each hidden block; may be empty (then the model is a linear classifier).
        num_classes: Output logits.
        dropout: Dropout probability after each block's ReLU (0 leaves the Dropout out).

    Example:
        >>> net = MLP(in_features=64, hidden=[32, 32], num_classes=10)
        >>> net(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.flatten = nn.Flatten()
        blocks = []
        width = in_features
        for out in hidden:
            layers: OrderedDict[str, nn.Module] = OrderedDict(
                linear=nn.Linear(width, out), bn=nn.BatchNorm1d(out), relu=nn.ReLU()
            )
            if dropout > 0:
                layers["dropout"] = nn.Dropout(dropout)
            blocks.append(nn.Sequential(layers))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # [B, ...] -> [B, in_features]
        try:
            x = self.blocks(x)
            return self.fc(x)
        except RuntimeError as err:  # only reached on bad input; never traced
            if x.dim() == 2 and x.shape[1] != self.in_features:
                raise ValueError(
                    f"mlp expects in_features={self.in_features} values per sample after flattening, "
                    f"got {x.shape[1]} (flattened shape {list(x.shape)})"
                ) from err
            raise


@register("mlp")
def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (128, 128, 128),
    num_classes: int = 10,
    *,
    dropout: float = 0.0,
) -> nn.Module:
    """Build an :class:`MLP`; exit points are ``"blocks.0"``, ``"blocks.1"``, ...

    Args:
        in_features: Values per sample after flattening (64 for 8x8 digits, 784 for 28x28 images).
        hidden: Width of each hidden block.
        num_classes: Output logits, at least 2.
        dropout: Dropout probability in [0, 1) after each block.

    Returns:
        The model, with ``model.config`` for :func:`exitnet.backbones.build`.

    Raises:
        ValueError: A size is not a positive int, ``num_classes < 2`` or ``dropout`` outside [0, 1).

    Example:
        >>> net = mlp(in_features=784, hidden=(256, 128), num_classes=10)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.config["kwargs"]["hidden"]
        [256, 128]
    """
    return MLP(
        in_features=check_int("mlp", "in_features", in_features),
        hidden=check_int_list("mlp", "hidden", hidden),
        num_classes=check_num_classes("mlp", num_classes),
        dropout=check_float("mlp", "dropout", dropout, 0.0, 1.0),
    )
