"""Shared fixtures: tiny networks that build in milliseconds."""

from __future__ import annotations

import pytest
import torch

import exitnet as ee

# One thread: the tests' tensors are tiny, and a second thread only adds contention (on a busy 2-core machine,
# tiny ops ran ~1000x slower with two threads). Benchmarks set their own thread count.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_resnet() -> ee.MultiExitNetwork:
    """A depth-8 ResNet on 1x8x8 inputs with exits after layer1 and layer2.0 (3 exits)."""
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=5, width=4)
    return ee.MultiExitNetwork.from_module(
        backbone, ["layer1", "layer2.0"], num_classes=5, sample_input=torch.zeros(1, 1, 8, 8)
    ).eval()


@pytest.fixture
def tiny_mlp() -> ee.MultiExitNetwork:
    """An MLP on 16 features with exits after blocks.0 and blocks.1 (3 exits)."""
    backbone = ee.backbones.mlp(16, [32, 32, 32], 4)
    return ee.MultiExitNetwork.from_module(
        backbone, ["blocks.0", "blocks.1"], num_classes=4, sample_input=torch.zeros(1, 16), head="linear"
    ).eval()
