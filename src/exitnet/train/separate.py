"""Separate training (survey §5.4, Fig. 3b): the backbone first (or given), then only the heads.

Phase 0 trains the backbone alone on its own loss (the auxiliary heads are neither run nor trained); phase 1
freezes it, BatchNorm statistics too (eval mode, no gradient), and trains the auxiliary heads on the fixed
embeddings. Non-neural heads (:class:`exitnet.heads.SklearnHead`: logistic regression, SVM, trees, kNN) are fitted
once at the start of phase 1 on the pooled embeddings of the training data. :class:`Backbone` is phase 0 alone:
the baseline every training cost is compared with.
"""

from __future__ import annotations

from typing import Any

import torch

from exitnet._batches import iter_batches
from exitnet._utils import eval_mode, module_device
from exitnet.heads import SklearnHead
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.rows import to_device
from exitnet.train.base import Strategy, set_trainable
from exitnet.train.losses import exit_loss, per_exit_loss

__all__ = ["Backbone", "Separate", "fit_sklearn_heads", "backbone_forward", "train_backbone"]


def backbone_forward(net: MultiExitNetwork, x: Any) -> ExitOutputs:
    """The final exit alone (every stage, no auxiliary head), as an ``ExitOutputs`` of one exit."""
    net.check_input(x)
    h, ctx = net.begin(x)
    for i in range(net.num_exits):
        h = net.forward_stage(i, h, ctx)
    out = net.run_head(net.num_exits - 1, h, ctx)
    return ExitOutputs((out,), (net.exit_names[-1],), task=net.task, mask=net.outputs_mask(ctx))


def train_backbone(net: MultiExitNetwork) -> None:
    """Make the backbone (every stage and the final head) trainable and the auxiliary heads frozen."""
    set_trainable(net, False)
    set_trainable([*net.stages, net.heads[-1]], True)


def fit_sklearn_heads(net: MultiExitNetwork, data: Any, *, batch_size: int = 256) -> list[int]:
    """Fit every :class:`~exitnet.heads.SklearnHead` of ``net`` on the pooled stage outputs of ``data``.

    The stages run once over ``data`` in eval mode without gradients.

    Returns:
        The indices of the exits whose heads were fitted.
    """
    heads = {i: h for i, h in enumerate(net.heads) if isinstance(h, SklearnHead)}
    which = sorted(heads)
    if not which:
        return []
    feats: dict[int, list[torch.Tensor]] = {i: [] for i in which}
    labels = []
    device = module_device(net)
    with torch.no_grad(), eval_mode(net):
        for x, y in iter_batches(data, batch_size):
            net.check_input(x)
            h, ctx = net.begin(to_device(x, device))
            for i in range(max(which) + 1):
                h = net.forward_stage(i, h, ctx)
                if i in feats:
                    feats[i].append(heads[i].features(h).cpu())
            labels.append(y.reshape(-1).cpu())
    if not labels:
        raise ValueError("the training data holds no samples")
    y_all = torch.cat(labels)
    for i in which:
        heads[i].fit(torch.cat(feats[i]), y_all, pooled=True)
    return which


class Backbone(Strategy):
    """Train the backbone alone (every stage and the final exit on the final loss, eq. (2)); the auxiliary heads
    are neither run nor trained. The baseline of the training benchmark, and phase 0 of :class:`Separate` and
    :class:`~exitnet.train.Mixed`."""

    name = "backbone"

    def start_phase(self, net: MultiExitNetwork, phase: int, train: Any) -> Any:
        train_backbone(net)
        return train

    def forward(self, net: MultiExitNetwork, x: torch.Tensor) -> ExitOutputs:
        return backbone_forward(net, x)

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        return exit_loss(outputs, y)


class Separate(Strategy):
    """Backbone first (or given), then frozen, BatchNorm statistics included; only the auxiliary heads train.

    Args:
        pretrained: the backbone is already trained: skip phase 0 and train the heads for all epochs.
        backbone_epochs: epochs of phase 0 (default: half of ``fit``'s epochs, or all of them when every auxiliary
            head is a :class:`~exitnet.heads.SklearnHead`).
        batch_size: batch size of the pass that fits the non-neural heads.

    Example:
        >>> import exitnet as ee
        >>> ds = ee.data.synthetic(120, num_classes=3, input_shape=(8,))
        >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
        ...                                       sample_input=torch.zeros(1, 8), head="linear")
        >>> before = {k: v.clone() for k, v in net.stages.state_dict().items()}
        >>> _ = ee.fit(net, Separate(pretrained=True), ds.train, epochs=1, progress=False)
        >>> all(torch.equal(v, net.stages.state_dict()[k]) for k, v in before.items())  # BatchNorm buffers too
        True
    """

    name = "separate"

    def __init__(self, *, pretrained: bool = False, backbone_epochs: int | None = None, batch_size: int = 256) -> None:
        if backbone_epochs is not None and backbone_epochs < 0:
            raise ValueError(f"backbone_epochs must be >= 0, got {backbone_epochs}")
        if pretrained and backbone_epochs:
            raise ValueError("pretrained=True skips the backbone phase; do not also give backbone_epochs")
        self.pretrained = pretrained
        self.backbone_epochs = backbone_epochs
        self.batch_size = batch_size
        self.phase_ = 0

    @staticmethod
    def _neural_heads(net: MultiExitNetwork) -> list[int]:
        return [i for i in range(net.num_exits - 1) if not isinstance(net.heads[i], SklearnHead)]

    def phases(self, net: MultiExitNetwork, epochs: int) -> list[int]:
        if self.pretrained:
            return [0, epochs]
        if self.backbone_epochs is not None:
            if self.backbone_epochs > epochs:
                raise ValueError(f"backbone_epochs={self.backbone_epochs} is more than fit's epochs={epochs}")
            first = self.backbone_epochs
        else:
            first = (epochs + 1) // 2 if self._neural_heads(net) else epochs
        return [first, epochs - first]

    def start_phase(self, net: MultiExitNetwork, phase: int, train: Any) -> Any:
        self.phase_ = phase
        if phase == 0:
            train_backbone(net)
            return train
        set_trainable(net, False)
        set_trainable([net.heads[i] for i in self._neural_heads(net)], True)
        fit_sklearn_heads(net, train, batch_size=self.batch_size)
        return train

    def train_mode(self, net: MultiExitNetwork) -> None:
        if self.phase_ == 0:
            net.train()
            return
        net.eval()  # the frozen backbone keeps its BatchNorm statistics
        for i in self._neural_heads(net):
            net.heads[i].train()

    def forward(self, net: MultiExitNetwork, x: torch.Tensor) -> ExitOutputs:
        if self.phase_ == 0:
            return backbone_forward(net, x)
        net.check_input(x)
        neural = set(self._neural_heads(net))
        logits = []
        with torch.no_grad():
            h, ctx = net.begin(x)
        for i in range(net.num_exits):
            with torch.no_grad():
                h = net.forward_stage(i, h, ctx)
            with torch.set_grad_enabled(torch.is_grad_enabled() and i in neural):
                logits.append(net.run_head(i, h, ctx))
        return ExitOutputs(tuple(logits), net.exit_names, task=net.task, mask=net.outputs_mask(ctx))

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        if self.phase_ == 0:
            return exit_loss(outputs, y)
        neural = self._neural_heads(net)
        if not neural:
            return outputs.final.new_zeros(())
        stack = torch.stack([outputs[i] for i in neural])  # [E', B, ...]
        return per_exit_loss(stack, y, task=outputs.task, mask=outputs.mask).sum()  # Σ_i L_i over trained heads

    def describe(self) -> dict:
        return {"name": self.name, "pretrained": self.pretrained, "backbone_epochs": self.backbone_epochs}
