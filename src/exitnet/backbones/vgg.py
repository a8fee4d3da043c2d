"""VGG backbone (Simonyan & Zisserman 2015) with a global-pool head, named as torchvision.

``features`` holds conv3x3 [+ BN] + ReLU per int entry of the config and ``MaxPool2d(2)`` per
``"M"``; ``avgpool = AdaptiveAvgPool2d(1)`` replaces torchvision's 7x7 pool so that any input
that survives the max-pools works; ``classifier`` is Linear -> ReLU -> Dropout -> Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from exitnet.backbones._checks import check_float, check_int, check_num_classes
from exitnet.backbones._registry import register

VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4, "M"],
    "vgg-tiny": [32, "M", 64, "M", 128, 128],
}


class VGG(nn.Module):
    """Conv stack from a resolved layer list, global average pool, two-layer classifier.

    Args:
        layers: Output channels per conv (ints) and ``"M"`` for a 2x2 max-pool, already scaled.
        in_chans: Input channels.
        num_classes: Output logits.
        batch_norm: Insert BatchNorm2d after each conv.
        hidden: Width of the classifier's hidden layer.
        dropout: Dropout probability in the classifier.
        name: Config name used in error messages.

    Example:
        >>> net = VGG([8, "M", 16], in_chans=1, num_classes=10, hidden=32)
        >>> net(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        layers: Sequence[int | str],
        in_chans: int,
        num_classes: int,
        *,
        batch_norm: bool = True,
        hidden: int = 512,
        dropout: float = 0.0,
        name: str = "custom",
    ) -> None:
        super().__init__()
        self.cfg_name = name
        self.min_input_size = 2 ** sum(1 for v in layers if v == "M")
        features: list[nn.Module] = []
        channels = in_chans
        for v in layers:
            if v == "M":
                features.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            features.append(nn.Conv2d(channels, v, 3, padding=1))
            if batch_norm:
                features.append(nn.BatchNorm2d(v))
            features.append(nn.ReLU())  # out of place: an exit may read the conv/BN output
            channels = v
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            x = self.features(x)
        except RuntimeError as err:  # only reached on bad input; never traced
            if x.dim() == 4 and min(x.shape[-2:]) < self.min_input_size:
                n_pools = self.min_input_size.bit_length() - 1
                raise ValueError(
                    f"vgg {self.cfg_name!r} has {n_pools} max-pools, so inputs must be at least "
                    f"{self.min_input_size}x{self.min_input_size}; got {x.shape[-2]}x{x.shape[-1]} "
                    f"(input shape {list(x.shape)})"
                ) from err
            raise
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # [B, C, 1, 1] -> [B, C]
        return self.classifier(x)


@register("vgg")
def vgg(
    cfg: str | Sequence[int | str] = "vgg11",
    in_chans: int = 3,
    num_classes: int = 10,
    *,
    batch_norm: bool = True,
    width_mult: float = 1.0,
    hidden: int = 512,
    dropout: float = 0.0,
) -> nn.Module:
    """Build a :class:`VGG` from a named or explicit config.

    Exit points are ``features.<i>`` (e.g. the ReLU or max-pool closing a conv group). With
    ``batch_norm=True`` each conv is 3 modules (conv, BN, ReLU), otherwise 2 (conv, ReLU).

    Args:
        cfg: ``"vgg11"``, ``"vgg13"``, ``"vgg16"``, ``"vgg19"``, ``"vgg-tiny"``
            (``[32, "M", 64, "M", 128, 128]``, for CPU tests), or a list of ints and ``"M"``.
        in_chans: Input channels.
        num_classes: Output logits, at least 2.
        batch_norm: BatchNorm2d after each conv.
        width_mult: Multiplies every conv width (rounded, at least 1 channel).
        hidden: Width of the classifier's hidden layer.
        dropout: Dropout probability in [0, 1) in the classifier.

    Returns:
        The model, with ``model.config`` for :func:`exitnet.backbones.build`. Inputs must be at
        least ``2 ** (number of "M")`` pixels per side (``model.min_input_size``: 32 for vgg11).

    Raises:
        ValueError: Unknown cfg name (the message lists the valid ones), a bad cfg entry, a size
            that is not positive, ``num_classes < 2`` or ``dropout`` outside [0, 1).

    Example:
        >>> net = vgg("vgg-tiny", in_chans=1, num_classes=10, width_mult=0.5, hidden=64)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.features[0]
        Conv2d(1, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """
    if isinstance(cfg, str):
        if cfg not in VGG_CFGS:
            raise ValueError(f"vgg: unknown cfg {cfg!r}; valid names: {list(VGG_CFGS)} or a list of ints and 'M'")
        name, entries = cfg, VGG_CFGS[cfg]
    elif isinstance(cfg, Sequence):
        name, entries = "custom", list(cfg)
    else:
        raise ValueError(f"vgg: cfg must be one of {list(VGG_CFGS)} or a list of ints and 'M', got {cfg!r}")
    if not any(v != "M" for v in entries):
        raise ValueError(f"vgg: cfg needs at least one conv width (int), got {entries!r}")
    width_mult = check_float("vgg", "width_mult", width_mult, 0.0, float("inf"), include_low=False)
    layers: list[int | str] = []
    for i, v in enumerate(entries):
        if v == "M":
            layers.append("M")
        else:
            width = check_int("vgg", f"cfg[{i}] (a conv width, or 'M' for a max-pool)", v)
            layers.append(max(1, round(width * width_mult)))
    if not isinstance(batch_norm, bool):
        raise ValueError(f"vgg: batch_norm must be True or False, got {batch_norm!r}")
    return VGG(
        layers,
        in_chans=check_int("vgg", "in_chans", in_chans),
        num_classes=check_num_classes("vgg", num_classes),
        batch_norm=batch_norm,
        hidden=check_int("vgg", "hidden", hidden),
        dropout=check_float("vgg", "dropout", dropout, 0.0, 1.0),
        name=name,
    )
