from __future__ import annotations

import pytest
import torch
from torch import nn

import exitnet as ee
from exitnet.points import list_exit_points, split_module


class Block(nn.Module):
    """torchvision-style BasicBlock (names conv1, bn1, relu, conv2, bn2, downsample)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyTorchvisionResNet(nn.Module):
    """A nested module laid out like torchvision's ResNet (layer1, layer2.0, ..., avgpool, fc)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


X = torch.zeros(1, 3, 12, 12)


def test_list_exit_points_gives_names_and_shapes() -> None:
    points = {p.name: p.shape for p in list_exit_points(TinyTorchvisionResNet(), X)}
    assert points["layer1"] == (1, 8, 12, 12)
    assert points["layer2.0"] == (1, 16, 6, 6)
    assert points["layer1.1"] == (1, 8, 12, 12)
    # inside a residual block the input is still needed later: not a cut
    assert "layer1.0.conv1" not in points and "layer1.0.bn1" not in points
    # the block's relu runs twice; the network's output is not an exit point
    assert "layer1.0.relu" not in points and "fc" not in points


def test_from_module_on_torchvision_style_resnet_equals_backbone() -> None:
    model = TinyTorchvisionResNet().eval()
    net = ee.MultiExitNetwork.from_module(model, ["layer1", "layer2.0"], num_classes=7, sample_input=X).eval()
    x = torch.randn(4, 3, 12, 12)
    out = net(x)
    assert out.names == ("layer1", "layer2.0", "final")
    assert torch.allclose(out.final, model(x), atol=1e-6)  # contract 1
    assert net.feature_shapes == ((8, 12, 12), (16, 6, 6), (7,))


def test_stages_share_parameters_with_the_backbone() -> None:
    model = TinyTorchvisionResNet()
    stages = split_module(model, ["layer1"], X).stages
    own = {id(p) for p in model.parameters()}
    assert {id(p) for s in stages for p in s.parameters()} == own


def test_unknown_point_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'layer9' is not a module.*valid exit points: .*layer1.*layer2\.0"):
        ee.MultiExitNetwork.from_module(TinyTorchvisionResNet(), ["layer9"], num_classes=7, sample_input=X)


def test_point_inside_a_residual_block_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a cut"):
        split_module(TinyTorchvisionResNet(), ["layer1.0.bn1"], X)


@pytest.mark.parametrize(
    "points, match",
    [
        (["layer2", "layer1"], "execution order"),
        (["layer1", "layer1.0"], "nested"),
        (["layer1", "layer1"], "distinct"),
        ([], "at least one"),
        (["fc"], "network's output"),
    ],
)
def test_bad_point_lists(points, match) -> None:
    with pytest.raises(ValueError, match=match):
        split_module(TinyTorchvisionResNet(), points, X)


def test_untraceable_module_says_what_to_do() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(TypeError, match="torch.fx.*from_sequential"):
        split_module(Dynamic(), ["a"], torch.zeros(1, 4))
