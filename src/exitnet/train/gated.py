"""Gated combination of the exits, eq. (9) of the survey (§5.2): ĉ_i = g_i c_i + (1 − g_i) ĉ_{i+1}, ĉ_L = f(x).

Each auxiliary exit i gets a gate g_i ∈ [0, 1] that says how much its prediction c_i (the softmax of its logits)
is trusted. Following survey §6 ("learning the confidence score on top of c_i(x) with a separate trainable
function g_i(c_i(x))") a gate reads only its exit's logits, so the trained gates are an exit policy as they are:
:meth:`Gated.policy` returns an :class:`exitnet.policies.Gate` that leaves exit i when g_i > β.

Unrolled, the recursion is a mixture: ĉ_1 = Σ_j p_j c_j with p_j = g_j ∏_{l<j} (1 − g_l) (g_L = 1), the exit
probabilities of eq. (14). The loss is the negative log-likelihood of the label under ĉ_1, computed in log space.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exitnet._utils import module_device
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.train.base import Strategy
from exitnet.train.joint import SCHEMES, exit_weights
from exitnet.train.losses import weighted_exit_loss

__all__ = [
    "Gated",
    "make_gates",
    "gate_scores",
    "exit_probabilities",
    "log_exit_probabilities",
    "recursive_combination",
    "gated_nll",
    "build_gates",
    "mixture",
    "gate_policy",
]


def make_gates(num_exits: int, num_classes: int, *, hidden: int = 16) -> nn.ModuleList:
    """One gate per auxiliary exit: softmax → Linear(C, hidden) → ReLU → Linear(hidden, 1) → sigmoid, ``[b, C]
    -> [b]``. Plain ``nn.Sequential`` layers, so a :class:`exitnet.policies.Gate` built from them can be stored
    in a checkpoint."""
    if int(hidden) < 1:
        raise ValueError(f"gate hidden width must be >= 1, got {hidden}")
    if num_exits < 2:
        raise ValueError(f"gates need at least one auxiliary exit, the network has {num_exits} exit(s)")
    return nn.ModuleList(
        nn.Sequential(
            nn.Softmax(dim=-1),
            nn.Linear(num_classes, int(hidden)),
            nn.ReLU(),
            nn.Linear(int(hidden), 1),
            nn.Sigmoid(),
            nn.Flatten(0),  # [b, 1] -> [b]
        )
        for _ in range(num_exits - 1)
    )


def gate_scores(gates: nn.ModuleList, outputs: ExitOutputs, *, detach: bool = False) -> torch.Tensor:
    """Pre-sigmoid gate scores a_i (g_i = sigmoid(a_i)) of every auxiliary exit, ``[E-1, B]``."""
    if len(gates) != len(outputs) - 1:
        raise ValueError(f"{len(gates)} gates for a network of {len(outputs)} exits (needs {len(outputs) - 1})")
    scores = []
    for gate, logits in zip(gates, outputs.logits[:-1], strict=False):
        if not isinstance(gate, nn.Sequential):
            raise TypeError(
                f"gates must be nn.Sequential ending in Sigmoid, Flatten (make_gates), got {type(gate).__name__}"
            )
        body = gate[:-2]  # everything before the sigmoid: [b, C] -> [b, 1]
        scores.append(body((logits.detach() if detach else logits).float()).squeeze(-1))
    return torch.stack(scores)


def exit_probabilities(g: torch.Tensor) -> torch.Tensor:
    """Eq. (14): p_j = g_j ∏_{l<j} (1 − g_l), the probability of leaving at exit j; the last exit takes the rest.

    Args:
        g: gate values of the auxiliary exits, ``[E-1, B]`` in [0, 1].

    Returns:
        ``[E, B]``, summing to 1 over exits.

    Example:
        >>> exit_probabilities(torch.tensor([[0.5], [0.2]])).squeeze(1)
        tensor([0.5000, 0.1000, 0.4000])
    """
    reach = torch.cumprod(torch.cat([torch.ones_like(g[:1]), 1 - g]), dim=0)  # [E, B]: ∏_{l<j} (1 − g_l)
    return reach * torch.cat([g, torch.ones_like(g[:1])])  # g_L = 1


def log_exit_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """``log`` of eq. (14) from pre-sigmoid scores ``[E-1, B]`` (stable: log g = logsigmoid(a), log(1 − g) =
    logsigmoid(−a)); ``[E, B]``."""
    log_stay = torch.cumsum(F.logsigmoid(-scores), dim=0)  # [E-1, B]: Σ_{l≤j} log(1 − g_l)
    log_reach = torch.cat([torch.zeros_like(scores[:1]), log_stay])  # [E, B]: Σ_{l<j} log(1 − g_l)
    return log_reach + torch.cat([F.logsigmoid(scores), torch.zeros_like(scores[:1])])


def recursive_combination(probs: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. (9) as written, for reference: ĉ_L = c_L, then ĉ_i = g_i c_i + (1 − g_i) ĉ_{i+1} down to i = 1.

    Args:
        probs: every exit's prediction c_i, ``[E, B, C]``.
        g: gates of the auxiliary exits, ``[E-1, B]``.

    Returns:
        ĉ_1, ``[B, C]``.
    """
    c_hat = probs[-1]
    for i in range(probs.shape[0] - 2, -1, -1):
        gi = g[i].unsqueeze(-1)  # [B] -> [B, 1]
        c_hat = gi * probs[i] + (1 - gi) * c_hat
    return c_hat


def gated_nll(stack: torch.Tensor, log_p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean −log ĉ_1(x)[y] with ĉ_1 = Σ_j p_j softmax(z_j) (eq. (9) unrolled), in log space.

    Args:
        stack: logits ``[E, B, C]``.
        log_p: log exit probabilities ``[E, B]`` (:func:`log_exit_probabilities`).
        y: labels ``[B]``.
    """
    log_c = F.log_softmax(stack.float(), dim=-1)  # [E, B, C]
    index = y.view(1, -1, 1).expand(stack.shape[0], -1, 1)  # [B] -> [E, B, 1]
    log_c_y = log_c.gather(-1, index).squeeze(-1)  # [E, B]
    return -torch.logsumexp(log_p + log_c_y, dim=0).mean()


def build_gates(net: MultiExitNetwork, hidden: int) -> nn.ModuleList:
    """:func:`make_gates` for ``net`` (its number of exits and classes), on its device."""
    num_classes = net.num_classes
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(net(net.sample_input(1)).final.shape[-1])
    return make_gates(net.num_exits, int(num_classes), hidden=hidden).to(module_device(net))


def mixture(log_p: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """ĉ_1 = Σ_j p_j softmax(z_j) (eq. (9) unrolled): class probabilities ``[B, C]`` from log exit probabilities
    ``[E, B]`` and logits ``[E, B, C]``."""
    return (log_p.exp().unsqueeze(-1) * torch.softmax(stack.float(), dim=-1)).sum(dim=0)  # [E, B, 1] * [E, B, C]


def gate_policy(gates: nn.ModuleList | None, threshold: float | Sequence[float] = 0.5) -> Any:
    """Trained gates as an exit policy: :class:`exitnet.policies.Gate` leaving exit i when g_i > β (copies of the
    gates, so that training on does not change the policy)."""
    if gates is None:
        raise RuntimeError("no gates yet: train with fit(net, strategy, …) first")
    from exitnet.policies import Gate

    return Gate.from_gates([copy.deepcopy(g).cpu().eval().requires_grad_(False) for g in gates], threshold)


class Gated(Strategy):
    """Train the network and one gate per auxiliary exit on the gated combination of eq. (9).

    Args:
        hidden: hidden width of each gate.
        joint: also add the per-exit loss of eq. (6) with these weights (``None``: the combination only).
        detach: gates read detached logits (the gate loss then trains only the gates, not the heads).

    Example:
        >>> import exitnet as ee
        >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
        ...                                       sample_input=torch.zeros(1, 8))
        >>> strategy = Gated(); strategy.setup(net)
        >>> out = net(torch.zeros(4, 8))
        >>> strategy.combine(out).shape, strategy.policy().decide(out).shape
        (torch.Size([4, 3]), torch.Size([4]))
    """

    name = "gated"
    tasks = ("classification",)  # it mixes class probabilities

    def __init__(self, *, hidden: int = 16, joint: str | Sequence[float] | None = None, detach: bool = False) -> None:
        if isinstance(joint, str) and joint not in SCHEMES:
            raise ValueError(f"unknown joint weights {joint!r}; choose one of: {', '.join(SCHEMES)}, a list or None")
        self.hidden = hidden
        self.joint = joint
        self.detach = detach
        self.gates_: nn.ModuleList | None = None

    def setup(self, net: MultiExitNetwork) -> None:
        if self.gates_ is None or len(self.gates_) != net.num_exits - 1:  # a second fit goes on with the same gates
            self.gates_ = build_gates(net, self.hidden)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"gates": self.gates_} if self.gates_ is not None else {}

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        stack = outputs.stack()
        loss = gated_nll(stack, self.log_exit_probabilities(outputs), y)
        if self.joint is not None:
            loss = loss + weighted_exit_loss(
                stack, y, exit_weights(self.joint, len(outputs), epoch=epoch, epochs=epochs), mask=outputs.mask
            )
        return loss

    def log_exit_probabilities(self, outputs: ExitOutputs) -> torch.Tensor:
        """log p_j of eq. (14) for every exit and sample, ``[E, B]``."""
        if self.gates_ is None:
            raise RuntimeError("Gated has no gates yet: call fit(net, strategy, …) (or strategy.setup(net))")
        return log_exit_probabilities(gate_scores(self.gates_, outputs, detach=self.detach))

    def combine(self, outputs: ExitOutputs) -> torch.Tensor:
        """The combined prediction ĉ_1 of eq. (9) (class probabilities ``[B, C]``), for inference."""
        return mixture(self.log_exit_probabilities(outputs), outputs.stack())

    def policy(self, threshold: float | Sequence[float] = 0.5) -> Any:
        """The trained gates as an :class:`exitnet.policies.Gate` exit policy (leave exit i when g_i > β)."""
        return gate_policy(self.gates_, threshold)

    def describe(self) -> dict:
        out: dict = {"name": self.name, "hidden": self.hidden, "detach": self.detach}
        if self.joint is not None:
            out["joint"] = self.joint if isinstance(self.joint, str) else list(self.joint)
        return out
