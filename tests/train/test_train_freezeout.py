"""FreezeOut, eq. (10): η_i(t) = 0.5 η_i(0) (1 + cos(π t / t_i)) for t < t_i, 0 afterwards."""

from __future__ import annotations

import math

import pytest
import torch

import exitnet as ee
from exitnet.train import Freezeout, freezeout_lr, freezeout_points


def test_fig4_learning_rates_by_hand() -> None:
    # The survey's Fig. 4: L = 3 stages, T = 150 iterations, η(0) = 0.1, freezing points equispaced: 50, 100, 150
    points = freezeout_points(3, 150, 1 / 3)
    assert points == pytest.approx([50, 100, 150])
    lr = [[freezeout_lr(t, t_i, 0.1) for t_i in points] for t in (0, 25, 50, 75, 100, 149)]
    assert lr[0] == pytest.approx([0.1, 0.1, 0.1])
    assert lr[1] == pytest.approx([0.05, 0.05 * (1 + math.cos(math.pi / 4)), 0.05 * (1 + math.cos(math.pi / 6))])
    assert lr[2] == pytest.approx([0.0, 0.05, 0.075])  # stage 1 frozen at t = 50; cos(π/2) = 0, cos(π/3) = 0.5
    assert lr[3] == pytest.approx([0.0, 0.05 * (1 + math.cos(3 * math.pi / 4)), 0.05])
    assert lr[4] == pytest.approx([0.0, 0.0, 0.025])  # cos(2π/3) = −0.5
    assert lr[5][:2] == [0.0, 0.0] and 0 < lr[5][2] < 1e-4


def test_freezing_points_linear_and_cubic() -> None:
    assert freezeout_points(4, 100, 0.5) == pytest.approx([50, 50 + 50 / 3, 50 + 100 / 3, 100])
    assert freezeout_points(3, 100, 0.5, "cubic") == pytest.approx([12.5, 100 * 0.75**3, 100])
    assert freezeout_points(1, 80, 0.5) == [80.0]
    with pytest.raises(ValueError, match="t0 must lie in"):
        freezeout_points(3, 100, 0.0)
    with pytest.raises(ValueError, match="choose one of: linear, cubic"):
        Freezeout(scale="square")


def _net() -> ee.MultiExitNetwork:
    torch.manual_seed(0)
    return ee.MultiExitNetwork.from_module(
        ee.backbones.mlp(8, [16, 16, 16], 3),
        ["blocks.0", "blocks.1"],
        num_classes=3,
        sample_input=torch.zeros(1, 8),
        head="linear",
    )


def test_per_stage_learning_rates_follow_eq10() -> None:
    net = _net()
    s = Freezeout(t0=1 / 3)
    s.setup(net)
    opt = torch.optim.SGD(s.param_groups(net), lr=0.1)
    assert [g["stage"] for g in opt.param_groups] == [0, 1, 2]
    for t in (0, 25, 60, 120):
        s.on_step(opt, t, 150)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([freezeout_lr(t, ti, 0.1) for ti in (50, 100, 150)])


def test_a_frozen_stage_leaves_the_backward_pass() -> None:
    ds = ee.data.synthetic(128, num_classes=3, input_shape=(8,), seed=2, val_fraction=0.1, test_fraction=0.1)
    net = _net()
    snapshots = {}

    class Spy(Freezeout):
        def on_epoch_start(self, net, epoch, epochs):  # type: ignore[no-untyped-def]
            super().on_epoch_start(net, epoch, epochs)
            snapshots[epoch] = (self.frozen_, {k: v.clone() for k, v in net.state_dict().items()})

    s = Spy(t0=0.25)
    ee.fit(net, s, ds.train, epochs=4, lr=1e-2, progress=False, batch_size=16)
    # points at 25%, 62.5% and 100% of the steps: stage 0 is frozen from the 2nd epoch on, stage 1 from the 4th
    assert [snapshots[e][0] for e in range(4)] == [0, 1, 1, 2]
    final = net.state_dict()
    for k, v in snapshots[1][1].items():
        if k.startswith(("stages.0.", "heads.0.")):
            assert torch.equal(v, final[k]), k
    # in the frozen state no gradient reaches stage 0: it runs without autograd
    s.train_mode(net)
    out = s.forward(net, ds.train.x[:4])
    s.loss(net, out, ds.train.y[:4], epoch=3, epochs=4).backward()
    assert all(p.grad is None for p in net.stages[0].parameters())
    assert all(p.grad is not None for p in net.stages[2].parameters())
    assert not out[0].requires_grad and out[2].requires_grad


def test_freezeout_needs_its_own_param_groups() -> None:
    net = _net()
    ds = ee.data.synthetic(32, num_classes=3, input_shape=(8,))
    with pytest.raises(ValueError, match="optimizer=None or a factory"):
        ee.fit(
            net, Freezeout(), ds.train, epochs=1, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), progress=False
        )
