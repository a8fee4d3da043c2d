"""Reference backbones small enough to train on a CPU, with torchvision-style module names.

Every builder returns a module that ``torch.fx.symbolic_trace`` can trace and that carries
``module.config = {"name": ..., "kwargs": {...}}`` (JSON literals only), so
``build(module.config)`` rebuilds the same architecture without pickling.

Example:
    >>> import torch
    >>> net = get_backbone("resnet", depth=8, in_chans=1, num_classes=10)
    >>> net(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> list_backbones()
    ['mlp', 'resnet', 'vgg']
"""

from __future__ import annotations

# Importing a builder's module registers it; a new backbone is one more line here.
from exitnet.backbones._registry import build, get_backbone, list_backbones
from exitnet.backbones.mlp import mlp
from exitnet.backbones.resnet import resnet
from exitnet.backbones.vgg import vgg

__all__ = ["build", "get_backbone", "list_backbones", "mlp", "resnet", "vgg"]
