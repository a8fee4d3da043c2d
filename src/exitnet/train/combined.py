"""Joint training on a combined output, eq. (8) of the survey (§5.2): ŷ = α f(x) + Σ_i α_i c_i(x).

The exits' logits are merged into one prediction and the loss is the cross-entropy of that prediction. The
weights α, α_i are learned with the network (``"weighted"``: unconstrained; ``"convex"``: a softmax over learned
scores, so a convex combination) or the merge is a fixed pooling (``"mean"``, ``"max"``, as DDNN does). At
inference the same merge is :meth:`ExitOutputs.combined <exitnet.outputs.ExitOutputs.combined>` with
:meth:`Combined.weights_for` (or :meth:`Combined.combine`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from exitnet._utils import module_device
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.train.base import Strategy
from exitnet.train.joint import SCHEMES, exit_weights
from exitnet.train.losses import weighted_exit_loss

__all__ = ["Combined", "COMBINED_MODES"]

COMBINED_MODES = ("weighted", "convex", "mean", "max")


class _Alpha(nn.Module):
    """The learned weights of eq. (8): one scalar per exit."""

    def __init__(self, num_exits: int, init: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_exits,), float(init)))


class Combined(Strategy):
    """Train on the cross-entropy of the exits' combined prediction, eq. (8).

    Args:
        mode: ``"weighted"`` (learned α, α_i, unconstrained, initialised to 1/E: the mean), ``"convex"`` (softmax
            over learned scores, initialised uniform), ``"mean"`` or ``"max"`` (fixed pooling, nothing learned).
        joint: also add the per-exit loss of eq. (6) with these weights (``"uniform"``, ``"sdn"``, … or a list),
            so that every exit is good on its own too; ``None`` trains the combined output only.

    Example:
        >>> import exitnet as ee
        >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
        ...                                       sample_input=torch.zeros(1, 8))
        >>> strategy = Combined("convex"); strategy.setup(net)
        >>> strategy.combine(net(torch.zeros(2, 8))).shape
        torch.Size([2, 3])
    """

    name = "combined"
    tasks = ("classification",)  # it mixes class probabilities

    def __init__(self, mode: str = "convex", *, joint: str | Sequence[float] | None = None) -> None:
        if mode not in COMBINED_MODES:
            raise ValueError(f"unknown combined mode {mode!r}; choose one of: {', '.join(COMBINED_MODES)}")
        if isinstance(joint, str) and joint not in SCHEMES:
            raise ValueError(f"unknown joint weights {joint!r}; choose one of: {', '.join(SCHEMES)}, a list or None")
        self.mode = mode
        self.joint = joint
        self.weights_: _Alpha | None = None

    def setup(self, net: MultiExitNetwork) -> None:
        if self.mode in ("weighted", "convex") and (
            self.weights_ is None or self.weights_.alpha.numel() != net.num_exits
        ):
            alpha = _Alpha(net.num_exits, 1.0 / net.num_exits if self.mode == "weighted" else 0.0)
            self.weights_ = alpha.to(module_device(net))

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"alpha": self.weights_} if self.weights_ is not None else {}

    def weights_for(self) -> torch.Tensor | None:
        """The learned α (``None`` for the fixed poolings); pass to ``ExitOutputs.combined(mode, weights=…)``."""
        if self.mode in ("mean", "max"):
            return None
        if self.weights_ is None:
            raise RuntimeError("Combined has no weights yet: call fit(net, strategy, …) (or strategy.setup(net))")
        return self.weights_.alpha

    def combine(self, outputs: ExitOutputs) -> torch.Tensor:
        """The combined logits ``[B, C]`` of eq. (8) (for inference as well as for the loss)."""
        return outputs.combined(self.mode, weights=self.weights_for())

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        loss = F.cross_entropy(self.combine(outputs), y)
        if self.joint is not None:
            weights = exit_weights(self.joint, len(outputs), epoch=epoch, epochs=epochs)
            loss = loss + weighted_exit_loss(outputs.stack(), y, weights, mask=outputs.mask)
        return loss

    def describe(self) -> dict:
        out: dict = {"name": self.name, "mode": self.mode}
        if self.joint is not None:
            out["joint"] = self.joint if isinstance(self.joint, str) else list(self.joint)
        if self.weights_ is not None:
            out["alpha"] = [float(a) for a in self.weights_.alpha.detach().cpu()]
        return out
