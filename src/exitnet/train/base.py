"""The strategy protocol: what trains, in which phase, and the loss of a batch. The one loop
(`exitnet.train.loop.fit`) runs any strategy; each training family of the survey is one file of this package.

The hooks, in the order :func:`~exitnet.train.fit` calls them::

    setup(net)                                   once
    phases(net, epochs) -> [epochs of phase 0, …]
    for each phase p:
        data = start_phase(net, p, train)        freeze / unfreeze, build caches, fit non-neural heads
        param_groups(net)                        a fresh optimiser for the phase
        for each epoch:
            on_epoch_start(net, epoch, epochs); train_mode(net)
            for each batch: on_step(optimizer, step, total_steps); loss(net, forward(net, x), y, …)
    finish(net)                                  once, also after an error
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs

__all__ = ["Strategy", "set_trainable"]


def set_trainable(modules: Any, trainable: bool) -> None:
    """Set ``requires_grad`` of every parameter of one module or an iterable of modules."""
    for m in [modules] if isinstance(modules, nn.Module) else modules:
        for p in m.parameters():
            p.requires_grad_(trainable)


class Strategy:
    """Base class of training strategies (one level of inheritance at most: STYLE.md §6).

    A strategy says which parameters train (:meth:`parameters`), may change the network before training
    (:meth:`setup`), per phase (:meth:`start_phase`) or at each epoch (:meth:`on_epoch_start`), and returns the
    loss of a batch (:meth:`loss`). Trainable modules it adds beside the network (gates, combination weights)
    are returned by :meth:`extra_modules`: the loop moves them to the device, optimises them, wraps them with the
    network for DistributedDataParallel and stores them in the training state.
    """

    name = "strategy"
    #: True when the strategy sets the learning rates itself in :meth:`on_step` (``fit`` then adds no scheduler).
    schedules_lr: ClassVar[bool] = False
    #: The tasks (``ExitOutputs.task``) this strategy can train.
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")

    def setup(self, net: MultiExitNetwork) -> None:
        """Called once before the first epoch (create gates, check the network, …)."""

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules the strategy adds beside the network (created in :meth:`setup`); default none."""
        return {}

    def phases(self, net: MultiExitNetwork, epochs: int) -> list[int]:
        """Epochs of each training phase; they sum to ``epochs`` (default: one phase)."""
        return [epochs]

    def start_phase(self, net: MultiExitNetwork, phase: int, train: Any) -> Any:
        """Called at the start of each phase with the training data; returns the data this phase trains on."""
        return train

    def parameters(self, net: MultiExitNetwork) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates (default: every parameter of the network and of the
        strategy's extra modules that requires a gradient)."""
        yield from (p for p in net.parameters() if p.requires_grad)
        for m in self.extra_modules().values():
            yield from (p for p in m.parameters() if p.requires_grad)

    def param_groups(self, net: MultiExitNetwork) -> list[dict[str, Any]]:
        """Optimiser parameter groups (default: one group of :meth:`parameters`)."""
        return [{"params": list(self.parameters(net))}]

    def on_epoch_start(self, net: MultiExitNetwork, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (0-based, counted over all phases) of ``epochs``."""

    def train_mode(self, net: MultiExitNetwork) -> None:
        """Put the network (and the extra modules) in training mode; frozen parts may stay in eval mode."""
        net.train()
        for m in self.extra_modules().values():
            m.train()

    def on_step(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        """Called before each optimiser step (``step`` counts from 0 over the whole run)."""

    def forward(self, net: MultiExitNetwork, x: Any) -> ExitOutputs:
        """The outputs the loss needs (default: every exit)."""
        return net(x)

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, net: MultiExitNetwork) -> None:
        """Called once when training ends (or fails): release caches. (``fit`` itself gives every parameter back
        the ``requires_grad`` it had before training.)"""

    def state_dict(self) -> dict[str, Any]:
        """Counters a resumed run needs besides the weights (JSON-serialisable); default none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def describe(self) -> dict:
        """JSON-serialisable description for checkpoints and metrics."""
        return {"name": self.name}
