"""Tests for exitnet.backbones: shapes, names, fx tracing, config round-trip and argument checks."""

from __future__ import annotations

import doctest
import importlib
import json
from typing import Any

import pytest
import torch
import torch.fx
from torch import nn

from exitnet.backbones import build, get_backbone, list_backbones, mlp, resnet, vgg

# Small configurations of every backbone, with an input each accepts.
SMALL: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("mlp", {"in_features": 64, "hidden": (32, 16), "num_classes": 10, "dropout": 0.1}, (3, 1, 8, 8)),
    ("resnet", {"depth": 8, "in_chans": 1, "num_classes": 10, "width": 8}, (3, 1, 28, 28)),
    ("resnet", {"depth": 14, "in_chans": 3, "num_classes": 5, "width": 4}, (3, 3, 32, 32)),
    (
        "vgg",
        {"cfg": "vgg-tiny", "in_chans": 3, "num_classes": 7, "width_mult": 0.25, "hidden": 16},
        (3, 3, 8, 8),
    ),
    (
        "vgg",
        {"cfg": (8, "M", 16), "in_chans": 1, "num_classes": 3, "batch_norm": False, "hidden": 8},
        (3, 1, 6, 6),
    ),
]
SMALL_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(SMALL)]


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_list_backbones() -> None:
    assert list_backbones() == ["mlp", "resnet", "vgg"]


@pytest.mark.parametrize(
    ("make", "shape", "num_classes"),
    [
        (lambda: mlp(), (4, 64), 10),
        (lambda: mlp(), (4, 1, 8, 8), 10),
        (lambda: mlp(784, [64], 3), (2, 1, 28, 28), 3),
        (lambda: resnet(8, 1, 10, width=4), (2, 1, 4, 4), 10),
        (lambda: resnet(8, 1, 10, width=4), (2, 1, 8, 8), 10),
        (lambda: resnet(8, 1, 10, width=4), (2, 1, 28, 28), 10),
        (lambda: resnet(8, 3, 100, width=4), (2, 3, 32, 32), 100),
        (lambda: resnet(8, 3, 10, width=4), (2, 3, 17, 23), 10),
        (lambda: vgg("vgg-tiny", 1, 10, width_mult=0.25, hidden=16), (2, 1, 4, 4), 10),
        (lambda: vgg("vgg-tiny", 1, 10, width_mult=0.25, hidden=16), (2, 1, 28, 28), 10),
        (lambda: vgg("vgg-tiny", 3, 10, width_mult=0.25, hidden=16), (2, 3, 32, 32), 10),
        (lambda: vgg("vgg11", 3, 10, width_mult=0.125, hidden=16), (2, 3, 32, 32), 10),
        (lambda: vgg("vgg19", 1, 4, width_mult=0.0625, hidden=8, batch_norm=False), (2, 1, 32, 32), 4),
    ],
)
def test_output_shapes(make: Any, shape: tuple[int, ...], num_classes: int) -> None:
    assert make()(torch.randn(*shape)).shape == (shape[0], num_classes)


def test_resnet20_has_paper_parameter_count() -> None:
    assert _n_params(resnet(20, 3, 10)) == 272_474


@pytest.mark.parametrize(("depth", "n"), [(8, 1), (14, 2), (20, 3), (32, 5), (56, 9)])
def test_resnet_depth_gives_n_blocks_per_stage(depth: int, n: int) -> None:
    net = resnet(depth, width=2)
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [n, n, n]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convs plus fc; 1x1 projections are not counted


def test_resnet_torchvision_names_and_init() -> None:
    net = resnet(20)
    names = dict(net.named_modules())
    for expected in [
        "conv1",
        "bn1",
        "relu",
        "layer1",
        "layer1.0",
        "layer1.0.conv1",
        "layer2.2",
        "avgpool",
        "fc",
    ]:
        assert expected in names
    assert isinstance(names["layer2.0.downsample.0"], nn.Conv2d)
    assert names["layer2.0.downsample.0"].stride == (2, 2)
    assert isinstance(names["layer3.0.downsample.1"], nn.BatchNorm2d)
    assert "layer1.0.downsample" not in names and "layer2.1.downsample" not in names
    assert [n for n, _ in names["layer2.0"].named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "conv2",
        "bn2",
        "downsample",
    ]
    assert [names[f"layer{i}.0.conv2"].out_channels for i in (1, 2, 3)] == [16, 32, 64]
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    std = names["layer1.0.conv1"].weight.std().item()
    assert 0.5 < std / (2 / (16 * 9)) ** 0.5 < 1.5  # kaiming fan_out


def test_mlp_and_vgg_names() -> None:
    names = dict(mlp().named_modules())
    assert {"flatten", "blocks", "blocks.0", "blocks.1", "blocks.2", "fc"} <= set(names)
    assert isinstance(names["blocks.1.bn"], nn.BatchNorm1d)
    assert "blocks.0.dropout" not in names and "blocks.0.dropout" in dict(mlp(dropout=0.5).named_modules())
    bn = dict(vgg("vgg11", width_mult=0.125).named_modules())
    assert isinstance(bn["features.3"], nn.MaxPool2d) and isinstance(bn["features.4"], nn.Conv2d)
    plain = dict(vgg("vgg11", batch_norm=False, width_mult=0.125).named_modules())
    assert isinstance(plain["features.2"], nn.MaxPool2d) and isinstance(plain["features.3"], nn.Conv2d)
    assert {"avgpool", "classifier.0", "classifier.3"} <= set(bn)
    assert isinstance(bn["classifier.3"], nn.Linear) and bn["classifier.3"].out_features == 10


def test_no_inplace_relu() -> None:
    # An exit head may read a conv/BN output; an in-place ReLU after it would corrupt it.
    for name, kwargs, _ in SMALL:
        assert not any(getattr(m, "inplace", False) for m in get_backbone(name, **kwargs).modules())


def test_vgg_width_mult_rounds_and_keeps_one_channel() -> None:
    assert vgg("vgg-tiny", width_mult=0.5).features[0].out_channels == 16
    assert vgg("vgg-tiny", width_mult=1e-4).features[0].out_channels == 1
    assert vgg([3, "M", 5], width_mult=2.0).features[4].out_channels == 10


@pytest.mark.parametrize(("name", "kwargs", "shape"), SMALL, ids=SMALL_IDS)
def test_fx_trace_matches_eager(name: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    net = get_backbone(name, **kwargs).eval()
    traced = torch.fx.symbolic_trace(net)
    x = torch.randn(*shape)
    torch.testing.assert_close(traced(x), net(x))
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert "fc" in targets or "classifier.3" in targets


@pytest.mark.parametrize(("name", "kwargs", "shape"), SMALL, ids=SMALL_IDS)
def test_build_round_trip_through_json(name: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    net = get_backbone(name, **kwargs)
    config = json.loads(json.dumps(net.config))
    assert config == net.config and config["name"] == name
    rebuilt = build(config)
    assert rebuilt.config == net.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    net.eval()(torch.randn(*shape))  # a forward pass so BN stats are not the defaults
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(*shape)
    torch.testing.assert_close(rebuilt.eval()(x), net(x), rtol=0, atol=0)


def test_config_holds_every_argument_as_json_literals() -> None:
    net = vgg(cfg=(16, "M", 32), in_chans=1)
    assert net.config == {
        "name": "vgg",
        "kwargs": {
            "cfg": [16, "M", 32],
            "in_chans": 1,
            "num_classes": 10,
            "batch_norm": True,
            "width_mult": 1.0,
            "hidden": 512,
            "dropout": 0.0,
        },
    }
    assert mlp(hidden=(8,)).config["kwargs"]["hidden"] == [8]
    assert resnet(8).config == {
        "name": "resnet",
        "kwargs": {"depth": 8, "in_chans": 3, "num_classes": 10, "width": 16},
    }


def test_build_fills_left_out_arguments_with_defaults() -> None:
    assert build({"name": "resnet", "kwargs": {"depth": 8}}).config == resnet(8).config


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: resnet(21), "resnet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got 21"),
        (lambda: resnet(2), "got 2"),
        (lambda: resnet(20, width=0), "resnet: width must be an int >= 1, got 0"),
        (lambda: resnet(20, in_chans=True), "in_chans must be an int >= 1, got True"),
        (lambda: resnet(20, num_classes=1), "num_classes must be an int >= 2, got 1"),
        (
            lambda: vgg("vgg12"),
            "unknown cfg 'vgg12'; valid names: ['vgg11', 'vgg13', 'vgg16', 'vgg19', 'vgg-tiny']",
        ),
        (lambda: vgg(["M"]), "at least one conv width"),
        (lambda: vgg([16, "X"]), "cfg[1]"),
        (lambda: vgg(width_mult=0), "width_mult must be a number in (0.0, inf), got 0"),
        (lambda: vgg(dropout=1.0), "dropout must be a number in [0.0, 1.0), got 1.0"),
        (lambda: vgg(batch_norm="yes"), "batch_norm must be True or False"),
        (lambda: mlp(hidden=[32, 0]), "hidden[1] must be an int >= 1, got 0"),
        (lambda: mlp(hidden=32), "hidden must be a sequence of ints"),
        (lambda: mlp(in_features=-1), "in_features must be an int >= 1, got -1"),
        (lambda: get_backbone("vit"), "unknown backbone 'vit'; valid names: ['mlp', 'resnet', 'vgg']"),
        (
            lambda: get_backbone("resnet", depht=20),
            "unknown argument(s) ['depht']; valid arguments: ['depth',",
        ),
        (lambda: build({"name": "nope", "kwargs": {}}), "valid names: ['mlp', 'resnet', 'vgg']"),
        (lambda: build({"name": "mlp"}), "missing ['kwargs']"),
        (lambda: build({"kwargs": {}, "name": "mlp", "x": 1}), "unexpected ['x']"),
        (lambda: build({"name": "mlp", "kwargs": [64]}), "'kwargs' must be a mapping"),
        (lambda: build({"name": "mlp", "kwargs": {"hidden": "big"}}), "hidden must be a sequence of ints"),
        (lambda: build(["mlp"]), "must be a mapping"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(call: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


def test_input_too_small_for_vgg_says_the_minimum() -> None:
    net = vgg("vgg11", width_mult=0.125, hidden=8)
    assert net.min_input_size == 32
    with pytest.raises(ValueError, match=r"'vgg11' has 5 max-pools, so inputs must be at least 32x32; got 16x24"):
        net(torch.randn(2, 3, 16, 24))
    with pytest.raises(ValueError, match="at least 4x4; got 3x3"):
        vgg("vgg-tiny", width_mult=0.25)(torch.randn(2, 3, 3, 3))
    with pytest.raises(RuntimeError):  # a channel mismatch is not a size problem: PyTorch's error stays
        vgg("vgg-tiny", in_chans=3, width_mult=0.25)(torch.randn(2, 1, 8, 8))


def test_mlp_wrong_input_size_says_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"in_features=64 .* got 784 \(flattened shape \[2, 784\]\)"):
        mlp()(torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("module", ["_checks", "_registry", "mlp", "resnet", "vgg", "__init__"])
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module("exitnet.backbones" + ("" if module == "__init__" else f".{module}"))
    result = doctest.testmod(mod, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
