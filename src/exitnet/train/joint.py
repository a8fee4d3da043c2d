"""Joint (deeply-supervised) training, eq. (6)-(7) of the survey: one loss, a weighted sum over exits, optionally
with self-distillation from the final exit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.train.base import Strategy
from exitnet.train.losses import weighted_exit_loss

__all__ = ["Joint", "exit_weights", "weighted_exit_loss", "distillation_loss", "SCHEMES"]

SCHEMES = ("uniform", "inception", "sdn")


def exit_weights(scheme: str | Sequence[float], num_exits: int, *, epoch: int = 0, epochs: int = 1) -> list[float]:
    """Weights α_i of eq. (6) for every exit (the last is the overall loss L, weight 1 unless a list says).

    - ``"uniform"``: 1 for every exit.
    - ``"inception"``: 0.3 for every auxiliary exit, 1 for the final one (Szegedy et al.).
    - ``"sdn"``: Shallow-Deep Networks' schedule: auxiliary exit i's weight grows linearly over training from
      0.01 to its maximum ``0.9 (i + 1) / (E - 1)`` (0.15, 0.3, …, 0.9 for six auxiliary exits), reached at the
      last epoch; the final exit keeps weight 1.
    - a list of ``num_exits`` non-negative numbers.

    Example:
        >>> exit_weights("inception", 3)
        [0.3, 0.3, 1.0]
        >>> [round(w, 3) for w in exit_weights("sdn", 3, epoch=0, epochs=4)]
        [0.01, 0.01, 1.0]
    """
    if isinstance(scheme, str):
        if scheme == "uniform":
            return [1.0] * num_exits
        if scheme == "inception":
            return [0.3] * (num_exits - 1) + [1.0]
        if scheme == "sdn":
            aux = num_exits - 1
            progress = epoch / max(1, epochs - 1)
            maxima = [0.9 * (i + 1) / aux for i in range(aux)]
            return [min(m, 0.01 + progress * m) for m in maxima] + [1.0]
        raise ValueError(f"unknown weights {scheme!r}; choose one of: {', '.join(SCHEMES)}, or a list")
    weights = [float(w) for w in scheme]
    if len(weights) != num_exits:
        raise ValueError(f"got {len(weights)} exit weights for {num_exits} exits")
    if any(w < 0 or w != w for w in weights):
        raise ValueError(f"exit weights must be non-negative numbers, got {weights}")
    return weights


def distillation_loss(stack: torch.Tensor, temperature: float) -> torch.Tensor:
    """Self-distillation term: Σ_{i<E-1} T² · KL(softmax(z_E / T) ‖ softmax(z_i / T)), batch mean.

    Each auxiliary exit matches the final exit's softened prediction (FastBERT; Zhang et al., "Be your own
    teacher"); the teacher is detached, so this term trains the auxiliary exits only. ``stack`` is ``[E, B, C]``.
    """
    aux, teacher = stack[:-1], stack[-1].detach()  # [E-1, B, C], [B, C]
    log_q = F.log_softmax(aux / temperature, dim=-1)  # students
    log_p = F.log_softmax(teacher / temperature, dim=-1).expand_as(log_q)  # [B, C] -> [E-1, B, C]
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [E-1, B]
    return temperature**2 * kl.mean(dim=1).sum()


class Joint(Strategy):
    """Train every stage and head together on the weighted sum of the exits' losses, eq. (6).

    With ``distill > 0`` each auxiliary exit also matches the final exit's softened prediction (self-distillation,
    FastBERT / "Be your own teacher"): ``loss = eq. (6) + distill · T² Σ_i KL(softmax(z_final/T) ‖ softmax(z_i/T))``.

    Args:
        weights: ``"uniform"``, ``"inception"``, ``"sdn"`` or one weight per exit (see :func:`exit_weights`).
        distill: weight of the self-distillation term (0: none).
        temperature: softening temperature T of the distillation term.

    Example:
        >>> strategy = Joint(weights="uniform", distill=0.5, temperature=3.0)
        >>> strategy.describe()["distill"]
        {'weight': 0.5, 'temperature': 3.0}
    """

    name = "joint"

    def __init__(
        self, weights: str | Sequence[float] = "sdn", *, distill: float = 0.0, temperature: float = 1.0
    ) -> None:
        if isinstance(weights, str) and weights not in SCHEMES:
            raise ValueError(f"unknown weights {weights!r}; choose one of: {', '.join(SCHEMES)}, or a list")
        if not distill >= 0:
            raise ValueError(f"distill must be a non-negative weight, got {distill}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.weights = weights
        self.distill = float(distill)
        self.temperature = float(temperature)
        self._current: list[float] | None = None

    def on_epoch_start(self, net: MultiExitNetwork, epoch: int, epochs: int) -> None:
        self._current = exit_weights(self.weights, net.num_exits, epoch=epoch, epochs=epochs)

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        weights = self._current or exit_weights(self.weights, len(outputs), epoch=epoch, epochs=epochs)
        stack = outputs.stack()
        loss = weighted_exit_loss(stack, y, weights, task=outputs.task, mask=outputs.mask)
        if self.distill > 0 and len(outputs) > 1:
            if outputs.task != "classification":
                raise ValueError("self-distillation matches class probabilities; it needs a classification network")
            loss = loss + self.distill * distillation_loss(stack, self.temperature)
        return loss

    def describe(self) -> dict:
        out: dict = {
            "name": self.name,
            "weights": self.weights if isinstance(self.weights, str) else list(self.weights),
        }
        if self.distill > 0:
            out["distill"] = {"weight": self.distill, "temperature": self.temperature}
        return out
