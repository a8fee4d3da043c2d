"""fit's scale-out options on one process: bf16 autocast, gradient clipping, seeds, per-phase optimisers."""

from __future__ import annotations

import pytest
import torch

import exitnet as ee
from exitnet.train import Joint, Strategy


def _net(seed: int = 0) -> ee.MultiExitNetwork:
    torch.manual_seed(seed)
    return ee.MultiExitNetwork.from_module(
        ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3, sample_input=torch.zeros(1, 8), head="linear"
    )


def _data() -> ee.data.Dataset:
    return ee.data.synthetic(128, num_classes=3, input_shape=(8,), seed=9)


def test_bf16_autocast_trains() -> None:
    seen = []

    class Spy(Joint):
        def loss(self, net, outputs, y, *, epoch, epochs):  # type: ignore[no-untyped-def]
            seen.append(outputs[0].dtype)
            return super().loss(net, outputs, y, epoch=epoch, epochs=epochs)

    net = _net()
    history = ee.fit(net, Spy(), _data().train, epochs=1, bf16=True, progress=False)
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # weights stay float32
    assert history.rows[0]["train_loss"] > 0


def test_gradient_clipping_bounds_each_update() -> None:
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    ds = _data()
    lr, clip = 0.1, 1e-3
    ee.fit(net, Joint(), (ds.train.x[:32], ds.train.y[:32]), epochs=1, batch_size=32, grad_clip=clip, scheduler=None,
           optimizer=lambda groups: torch.optim.SGD(groups, lr=lr), progress=False)  # fmt: skip
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before, strict=True)))
    assert float(step) <= lr * clip * 1.0001  # one SGD step of a clipped gradient


def test_seeds() -> None:
    ds = _data()
    runs = []
    for seed in (1, 1, 2):
        net = _net()
        ee.fit(net, Joint(), ds.train, epochs=2, batch_size=16, seed=seed, progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_phases_must_add_up() -> None:
    class Broken(Joint):
        def phases(self, net, epochs):  # type: ignore[no-untyped-def]
            return [1, 1]

    with pytest.raises(ValueError, match="phases \\[1, 1\\] do not add up to epochs=3"):
        ee.fit(_net(), Broken(), _data().train, epochs=3, progress=False)


def test_a_strategy_that_trains_nothing() -> None:
    class Nothing(Strategy):
        def parameters(self, net):  # type: ignore[no-untyped-def]
            return iter(())

    with pytest.raises(ValueError, match="leaves no parameter to train"):
        ee.fit(_net(), Nothing(), _data().train, epochs=1, progress=False)


def test_global_batch_must_split_over_processes() -> None:
    from exitnet.train.distributed import ShardedBatches

    b = ShardedBatches(torch.zeros(10, 1), torch.zeros(10), 3, seed=0, rank=2, world=3)
    assert len(b) == 2 and sum(len(yb) for _, yb in b) == 4  # 10 padded to 12, 4 per rank
