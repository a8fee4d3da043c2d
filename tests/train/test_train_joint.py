from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import exitnet as ee
from exitnet.train.joint import Joint, exit_weights, weighted_exit_loss


def test_weight_schemes_by_hand() -> None:
    assert exit_weights("uniform", 3) == [1.0, 1.0, 1.0]
    assert exit_weights("inception", 4) == [0.3, 0.3, 0.3, 1.0]
    assert exit_weights([0.2, 0.5, 1.0], 3) == [0.2, 0.5, 1.0]
    # SDN, 3 auxiliary exits: maxima 0.3, 0.6, 0.9; at the midpoint of 3 epochs (epoch 1 of 0..2) -> 0.01 + m/2
    assert exit_weights("sdn", 4, epoch=1, epochs=3) == pytest.approx([0.16, 0.31, 0.46, 1.0])
    assert exit_weights("sdn", 4, epoch=2, epochs=3) == pytest.approx([0.3, 0.6, 0.9, 1.0])  # capped at the max


@pytest.mark.parametrize(
    "scheme, match", [("sdm", "unknown weights"), ([1.0, 2.0], "2 exit weights for 3"), ([1, -1, 1], "non-negative")]
)
def test_bad_weights(scheme, match) -> None:
    with pytest.raises(ValueError, match=match):
        exit_weights(scheme, 3)


def test_weighted_loss_equals_plain_loop() -> None:
    stack = torch.randn(4, 9, 5)
    y = torch.randint(0, 5, (9,))
    w = [0.1, 0.2, 0.3, 1.0]
    loop = sum(w[i] * F.cross_entropy(stack[i], y) for i in range(4))  # eq. (6) with mean losses
    assert torch.allclose(weighted_exit_loss(stack, y, w), loop)


def test_joint_trains_every_stage_and_head(tiny_resnet) -> None:
    strategy = Joint(weights="uniform")
    strategy.on_epoch_start(tiny_resnet, 0, 1)
    tiny_resnet.train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    strategy.loss(tiny_resnet, tiny_resnet(x), y, epoch=0, epochs=1).backward()
    for name, p in tiny_resnet.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_unknown_weights_at_construction() -> None:
    with pytest.raises(ValueError, match="choose one of: uniform, inception, sdn"):
        ee.train.Joint(weights="linear")
