"""Mixed regimen (Kubaty et al.): train the backbone first, then fine-tune everything jointly.

Phase 0 is :class:`~exitnet.train.Backbone` (the final exit's loss, auxiliary heads untouched); phase 1 is joint
training of every stage and head on eq. (6), with a fresh optimiser and learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.train.base import Strategy, set_trainable
from exitnet.train.joint import SCHEMES, exit_weights
from exitnet.train.losses import exit_loss, weighted_exit_loss
from exitnet.train.separate import backbone_forward, train_backbone

__all__ = ["Mixed"]


class Mixed(Strategy):
    """Backbone first, then joint fine-tuning of the whole network.

    Args:
        backbone_epochs: epochs of the backbone phase (default: half of ``fit``'s epochs, rounded up).
        weights: exit weights of the joint phase, eq. (6) (see :func:`exitnet.train.exit_weights`).

    Example:
        >>> import exitnet as ee
        >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
        ...                                       sample_input=torch.zeros(1, 8), head="linear")
        >>> Mixed().phases(net, 5)
        [3, 2]
    """

    name = "mixed"

    def __init__(self, backbone_epochs: int | None = None, *, weights: str | Sequence[float] = "uniform") -> None:
        if backbone_epochs is not None and backbone_epochs < 0:
            raise ValueError(f"backbone_epochs must be >= 0, got {backbone_epochs}")
        if isinstance(weights, str) and weights not in SCHEMES:
            raise ValueError(f"unknown weights {weights!r}; choose one of: {', '.join(SCHEMES)}, or a list")
        self.backbone_epochs = backbone_epochs
        self.weights = weights
        self.phase_ = 0

    def phases(self, net: MultiExitNetwork, epochs: int) -> list[int]:
        first = (epochs + 1) // 2 if self.backbone_epochs is None else self.backbone_epochs
        if first > epochs:
            raise ValueError(f"backbone_epochs={first} is more than fit's epochs={epochs}")
        return [first, epochs - first]

    def start_phase(self, net: MultiExitNetwork, phase: int, train: Any) -> Any:
        self.phase_ = phase
        if phase == 0:
            train_backbone(net)
        else:
            set_trainable(net, True)
        return train

    def forward(self, net: MultiExitNetwork, x: torch.Tensor) -> ExitOutputs:
        return backbone_forward(net, x) if self.phase_ == 0 else net(x)

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        if self.phase_ == 0:
            return exit_loss(outputs, y)
        weights = exit_weights(self.weights, len(outputs), epoch=epoch, epochs=epochs)
        return weighted_exit_loss(outputs.stack(), y, weights, task=outputs.task, mask=outputs.mask)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "backbone_epochs": self.backbone_epochs,
            "weights": self.weights if isinstance(self.weights, str) else list(self.weights),
        }
