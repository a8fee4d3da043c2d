"""Regularising for computational cost, eq. (13)-(14) of the survey (§6.1).

The gated combination of eq. (9) (:mod:`exitnet.train.gated`) gives every sample i a probability p_ij of leaving
at exit j, eq. (14): p_ij = g_j(x_i) ∏_{l<j} (1 − g_l(x_i)). The soft cost of eq. (13), C = Σ_i Σ_j p_ij ε_j, is
differentiable, so λ·C joins the loss and trades accuracy for cost: a sweep of λ traces the trade-off.

Which ε_j: p_ij is the probability of *leaving* at j, and a sample that leaves at j has paid for every stage and
head up to j. So ε_j here is the cumulative cost Γ_j of exit j (``CostProfile.exit_flops``), divided by the
backbone's FLOPs (1.0 = the cost of the backbone alone). Σ_j p_ij Γ_j equals Σ_j P(sample i reaches j) · γ_j
with the per-exit increments γ_j = Γ_j − Γ_{j−1} of eq. (12): the expected cost, whose hard version is eq. (12)
(:func:`exitnet.cost.expected_cost`). The penalty is averaged over the batch (per-sample cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from exitnet._utils import module_device
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.train.base import Strategy
from exitnet.train.gated import (
    build_gates,
    gate_policy,
    gate_scores,
    gated_nll,
    log_exit_probabilities,
    mixture,
)
from exitnet.train.joint import SCHEMES, exit_weights
from exitnet.train.losses import weighted_exit_loss

__all__ = ["CostRegularized", "soft_cost", "normalized_exit_costs"]


def soft_cost(p: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Eq. (13) per sample: mean_i Σ_j p_ij ε_j.

    Args:
        p: exit probabilities ``[E, B]`` (eq. (14), :func:`exitnet.train.gated.exit_probabilities`).
        cost: cost ε_j of leaving at exit j, ``[E]``.

    Example:
        >>> soft_cost(torch.tensor([[0.5], [0.1], [0.4]]), torch.tensor([0.2, 0.5, 1.0]))
        tensor(0.5500)
    """
    if cost.shape != p.shape[:1]:
        raise ValueError(f"need one cost per exit: {p.shape[0]} exits, got cost of shape {tuple(cost.shape)}")
    return (p * cost.to(p.dtype).unsqueeze(1)).sum(dim=0).mean()  # [E, B] * [E, 1] -> [B] -> mean


def normalized_exit_costs(net: MultiExitNetwork) -> list[float]:
    """Cost of leaving at each exit (stages and heads up to it) over the backbone's FLOPs, from the
    network's :class:`~exitnet.cost.CostProfile`."""
    profile = net.cost_profile()
    return [f / profile.backbone_flops for f in profile.exit_flops]


class CostRegularized(Strategy):
    """Gated training (eq. (9)) plus λ times the soft expected cost of eq. (13)-(14).

    Args:
        lam: λ, the weight of the cost term (0: plain gated training).
        cost: cost of leaving at each exit (default: :func:`normalized_exit_costs` of the network).
        hidden: hidden width of each gate.
        joint: also add the per-exit loss of eq. (6) with these weights (``None``: none).
        detach: gates read detached logits.

    Example:
        >>> import exitnet as ee
        >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
        ...                                       sample_input=torch.zeros(1, 8), head="linear")
        >>> strategy = CostRegularized(lam=0.5, cost=[0.4, 1.0]); strategy.setup(net)
        >>> float(strategy.expected_cost(net(torch.zeros(2, 8))).detach()) <= 1.0
        True
    """

    name = "cost"
    tasks = ("classification",)  # it mixes class probabilities

    def __init__(
        self,
        lam: float = 0.1,
        *,
        cost: Sequence[float] | None = None,
        hidden: int = 16,
        joint: str | Sequence[float] | None = None,
        detach: bool = False,
    ) -> None:
        if not lam >= 0:
            raise ValueError(f"lam must be a non-negative weight, got {lam}")
        if isinstance(joint, str) and joint not in SCHEMES:
            raise ValueError(f"unknown joint weights {joint!r}; choose one of: {', '.join(SCHEMES)}, a list or None")
        self.lam = float(lam)
        self.cost = cost
        self.hidden = hidden
        self.joint = joint
        self.detach = detach
        self.gates_: nn.ModuleList | None = None
        self.cost_: torch.Tensor | None = None

    def setup(self, net: MultiExitNetwork) -> None:
        cost = list(self.cost) if self.cost is not None else normalized_exit_costs(net)
        if len(cost) != net.num_exits:
            raise ValueError(f"cost needs one value per exit: {net.num_exits} exits, got {len(cost)}")
        self.cost_ = torch.tensor([float(c) for c in cost], device=module_device(net))
        if self.gates_ is None or len(self.gates_) != net.num_exits - 1:  # a second fit goes on with the same gates
            self.gates_ = build_gates(net, self.hidden)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"gates": self.gates_} if self.gates_ is not None else {}

    def log_exit_probabilities(self, outputs: ExitOutputs) -> torch.Tensor:
        """log p_ij of eq. (14), ``[E, B]``."""
        if self.gates_ is None:
            raise RuntimeError("CostRegularized has no gates yet: call fit(net, strategy, …) (or strategy.setup)")
        return log_exit_probabilities(gate_scores(self.gates_, outputs, detach=self.detach))

    def expected_cost(self, outputs: ExitOutputs) -> torch.Tensor:
        """The soft cost of eq. (13), per sample (batch mean)."""
        assert self.cost_ is not None
        return soft_cost(self.log_exit_probabilities(outputs).exp(), self.cost_)

    def combine(self, outputs: ExitOutputs) -> torch.Tensor:
        """The combined prediction ĉ_1 of eq. (9) (class probabilities ``[B, C]``)."""
        return mixture(self.log_exit_probabilities(outputs), outputs.stack())

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        assert self.cost_ is not None
        stack = outputs.stack()
        log_p = self.log_exit_probabilities(outputs)
        loss = gated_nll(stack, log_p, y) + self.lam * soft_cost(log_p.exp(), self.cost_.to(log_p.device))
        if self.joint is not None:
            loss = loss + weighted_exit_loss(
                stack, y, exit_weights(self.joint, len(outputs), epoch=epoch, epochs=epochs), mask=outputs.mask
            )
        return loss

    def policy(self, threshold: float | Sequence[float] = 0.5) -> Any:
        """The trained gates as an :class:`exitnet.policies.Gate` exit policy (leave exit i when g_i > β)."""
        return gate_policy(self.gates_, threshold)

    def describe(self) -> dict:
        out: dict = {"name": self.name, "lam": self.lam, "hidden": self.hidden, "detach": self.detach}
        if self.cost_ is not None:
            out["cost"] = [float(c) for c in self.cost_.cpu()]
        if self.joint is not None:
            out["joint"] = self.joint if isinstance(self.joint, str) else list(self.joint)
        return out
