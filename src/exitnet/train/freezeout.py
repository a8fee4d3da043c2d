"""FreezeOut (Brock et al., 2017), eq. (10) of the survey (§5.4): anneal each stage's learning rate to zero, early
stages first, and drop a frozen stage from the backward pass.

Stage i (with its head) follows η_i(t) = 0.5 η_i(0) (1 + cos(π t / t_i)) for t < t_i and 0 afterwards (t counts
optimiser steps). The freezing points t_i are spread over [t0·T, T] (T: all steps of the run), linearly or with
FreezeOut's cubic scaling: t_i = T · s(t0 + (1 − t0) i / (L − 1)), s(u) = u or u³. Once a stage's rate is 0 for
good, at the next epoch it stops requiring gradients, runs in eval mode and without autograd: the saving of
FreezeOut. The loss is the joint loss of eq. (6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.train.base import Strategy, set_trainable
from exitnet.train.joint import SCHEMES, exit_weights
from exitnet.train.losses import weighted_exit_loss

__all__ = ["Freezeout", "freezeout_lr", "freezeout_points"]

_SCALES = ("linear", "cubic")


def freezeout_points(num_stages: int, total_steps: int, t0: float, scale: str = "linear") -> list[float]:
    """The freezing step t_i of every stage: ``T · s(t0 + (1 − t0) · i / (L − 1))``, the last one at T.

    Example:
        >>> [round(t, 6) for t in freezeout_points(3, 150, 1 / 3)]  # the survey's Fig. 4: L = 3, T = 150
        [50.0, 100.0, 150.0]
        >>> freezeout_points(2, 100, 0.5, "cubic")
        [12.5, 100.0]
    """
    if scale not in _SCALES:
        raise ValueError(f"unknown freezeout scale {scale!r}; choose one of: {', '.join(_SCALES)}")
    if not 0 < t0 <= 1:
        raise ValueError(f"t0 must lie in (0, 1], got {t0}")
    power = 1 if scale == "linear" else 3
    if num_stages == 1:
        return [float(total_steps)]
    return [float(total_steps) * (t0 + (1 - t0) * i / (num_stages - 1)) ** power for i in range(num_stages)]


def freezeout_lr(t: float, t_i: float, lr0: float) -> float:
    """Eq. (10): η_i(t) = 0.5 η_i(0) (1 + cos(π t / t_i)) for t < t_i, else 0.

    Example:
        >>> freezeout_lr(25, 50, 0.1), freezeout_lr(50, 50, 0.1)
        (0.05, 0.0)
    """
    if t >= t_i:
        return 0.0
    return 0.5 * lr0 * (1 + math.cos(math.pi * t / t_i))


class Freezeout(Strategy):
    """Joint training where each stage's learning rate follows eq. (10) and a stage whose rate reached 0 freezes.

    Args:
        t0: the first stage freezes at ``t0`` of the run (in (0, 1]; 1 = plain joint training with cosine decay).
        scale: ``"linear"`` or ``"cubic"`` spacing of the freezing points.
        weights: exit weights of the joint loss, eq. (6) (see :func:`exitnet.train.exit_weights`).
        scale_lr: FreezeOut's option to start stage i at η(0) / s_i (s_i = t_i / T), so that every stage travels
            about the same distance.

    Example:
        >>> strategy = Freezeout(t0=0.5)
        >>> freezeout_points(3, 100, strategy.t0)
        [50.0, 75.0, 100.0]
    """

    name = "freezeout"
    schedules_lr = True

    def __init__(
        self,
        t0: float = 0.5,
        scale: str = "linear",
        *,
        weights: str | Sequence[float] = "uniform",
        scale_lr: bool = False,
    ) -> None:
        freezeout_points(2, 1, t0, scale)  # validates t0 and scale
        if isinstance(weights, str) and weights not in SCHEMES:
            raise ValueError(f"unknown weights {weights!r}; choose one of: {', '.join(SCHEMES)}, or a list")
        self.t0 = float(t0)
        self.scale = scale
        self.weights = weights
        self.scale_lr = scale_lr
        self.frozen_ = 0  # stages 0 .. frozen_ - 1 are frozen
        self._steps_done = 0
        self._total = 0
        self._num_stages = 0

    def setup(self, net: MultiExitNetwork) -> None:
        self._num_stages = net.num_exits

    def param_groups(self, net: MultiExitNetwork) -> list[dict[str, Any]]:
        groups = []
        for i, (stage, head) in enumerate(zip(net.stages, net.heads, strict=True)):
            params = [p for m in (stage, head) for p in m.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "stage": i})
        return groups

    def on_step(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        points = freezeout_points(self._num_stages, total_steps, self.t0, self.scale)
        for group in optimizer.param_groups:
            i = group.get("stage")
            if i is None:
                continue
            base = group.setdefault("base_lr", group["lr"])
            lr0 = base * total_steps / points[i] if self.scale_lr and points[i] > 0 else base
            group["lr"] = freezeout_lr(step, points[i], lr0)
        self._steps_done, self._total = step + 1, total_steps

    def on_epoch_start(self, net: MultiExitNetwork, epoch: int, epochs: int) -> None:
        if self._total == 0:
            return
        points = freezeout_points(net.num_exits, self._total, self.t0, self.scale)
        frozen = sum(1 for t in points[:-1] if t <= self._steps_done)  # the last stage trains to the end
        for i in range(self.frozen_, frozen):
            set_trainable([net.stages[i], net.heads[i]], False)
        self.frozen_ = max(self.frozen_, frozen)

    def train_mode(self, net: MultiExitNetwork) -> None:
        net.train()
        for i in range(self.frozen_):
            net.stages[i].eval()
            net.heads[i].eval()

    def forward(self, net: MultiExitNetwork, x: torch.Tensor) -> ExitOutputs:
        net.check_input(x)
        logits = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_ == 0):
            h, ctx = net.begin(x)
        for i in range(net.num_exits):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= self.frozen_):
                h = net.forward_stage(i, h, ctx)
                logits.append(net.run_head(i, h, ctx))
        return ExitOutputs(tuple(logits), net.exit_names, task=net.task, mask=net.outputs_mask(ctx))

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        return weighted_exit_loss(
            outputs.stack(),
            y,
            exit_weights(self.weights, len(outputs), epoch=epoch, epochs=epochs),
            task=outputs.task,
            mask=outputs.mask,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self._steps_done, "total": self._total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps_done, self._total = int(state["steps_done"]), int(state["total"])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "t0": self.t0,
            "scale": self.scale,
            "weights": self.weights if isinstance(self.weights, str) else list(self.weights),
            "scale_lr": self.scale_lr,
        }
