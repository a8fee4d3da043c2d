from __future__ import annotations

import pytest
import torch
from torch import nn

import exitnet as ee


def test_last_exit_equals_backbone_resnet() -> None:
    backbone = ee.backbones.resnet(depth=20, in_chans=1, num_classes=10).eval()
    net = ee.MultiExitNetwork.from_module(
        backbone, ["layer1.2", "layer2.2", "layer3.0"], num_classes=10, sample_input=torch.zeros(1, 1, 28, 28)
    ).eval()
    x = torch.randn(3, 1, 28, 28)
    out = net(x)
    assert len(out) == 4 and out.stack().shape == (4, 3, 10)
    assert torch.allclose(out.final, backbone(x), atol=1e-6)
    assert torch.allclose(net.forward_backbone(x), backbone(x), atol=1e-6)


def test_forward_stage_and_run_head_compose_to_forward(tiny_resnet) -> None:
    x = torch.randn(2, 1, 8, 8)
    h, logits = x, []
    for i in range(tiny_resnet.num_exits):
        h = tiny_resnet.forward_stage(i, h)
        logits.append(tiny_resnet.run_head(i, h))
    assert torch.equal(torch.stack(logits), tiny_resnet(x).stack())


def test_from_sequential_and_negative_indices() -> None:
    seq = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    net = ee.MultiExitNetwork.from_sequential(
        seq, [2, -3], num_classes=3, sample_input=torch.zeros(1, 8), head="linear"
    )
    assert net.exit_names == ("2", "3", "final")
    x = torch.randn(5, 8)
    assert torch.allclose(net(x).final, seq(x))


@pytest.mark.parametrize("exits, match", [([5], "must lie in"), ([1, 0], "increasing"), ([], "at least one")])
def test_from_sequential_bad_indices(exits, match) -> None:
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=match):
        ee.MultiExitNetwork.from_sequential(seq, exits, num_classes=3, sample_input=torch.zeros(1, 4))


def test_head_spec_per_exit_and_factory() -> None:
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=5, width=4)
    net = ee.MultiExitNetwork.from_module(
        backbone,
        ["layer1", "layer2"],
        num_classes=5,
        sample_input=torch.zeros(1, 1, 8, 8),
        head=[{"kind": "mlp", "hidden": 9}, lambda shape, n: nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * 16, n))],
    )
    assert isinstance(net.heads[0], ee.heads.MLPHead)
    assert net(torch.zeros(2, 1, 8, 8)).stack().shape == (3, 2, 5)
    assert net.spec is not None and net.spec["heads"][1] is None  # a factory cannot be stored as JSON


def test_wrong_num_classes_is_caught_at_build() -> None:
    backbone = ee.backbones.mlp(16, [8], 4)
    with pytest.raises(ValueError, match=r"logits \(B, 5\), got \(B, 4\)"):
        ee.MultiExitNetwork.from_module(backbone, ["blocks.0"], num_classes=5, sample_input=torch.zeros(1, 16))


def test_wrong_input_shape_names_the_expected_one(tiny_resnet) -> None:
    with pytest.raises(ValueError, match=r"expects input \(B, 1, \*, \*\), got \(2, 3, 8, 8\)"):
        tiny_resnet(torch.zeros(2, 3, 8, 8))


def test_mismatched_stages_and_heads() -> None:
    with pytest.raises(ValueError, match="2 stages but 1 heads"):
        ee.MultiExitNetwork([nn.Identity(), nn.Identity()], [nn.Identity()])


def test_building_leaves_batchnorm_statistics_alone() -> None:
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=5, width=4)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    ee.MultiExitNetwork.from_module(backbone, ["layer1"], num_classes=5, sample_input=torch.randn(4, 1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert backbone.training  # its mode is restored too
