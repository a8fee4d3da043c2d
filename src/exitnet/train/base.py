"""The strategy protocol: what trains, and the loss of a batch. The one loop (`exitnet.train.loop.fit`) runs any
strategy; each training family of the survey is one file of this package."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs

__all__ = ["Strategy"]


class Strategy:
    """Base class of training strategies (one level of inheritance at most: STYLE.md §6).

    A strategy says which parameters train (:meth:`parameters`), may change the network before training
    (:meth:`setup`) or at each epoch (:meth:`on_epoch_start`), and returns the loss of a batch (:meth:`loss`).
    """

    name = "strategy"

    def setup(self, net: MultiExitNetwork) -> None:
        """Called once before the first epoch (freeze parameters, add gates, …)."""

    def parameters(self, net: MultiExitNetwork) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates (default: every parameter that requires a gradient)."""
        return (p for p in net.parameters() if p.requires_grad)

    def on_epoch_start(self, net: MultiExitNetwork, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (0-based) of ``epochs``."""

    def forward(self, net: MultiExitNetwork, x: torch.Tensor) -> ExitOutputs:
        """The outputs the loss needs (default: every exit)."""
        return net(x)

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-serialisable description for checkpoints and metrics."""
        return {"name": self.name}
