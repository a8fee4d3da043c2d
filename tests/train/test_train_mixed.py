"""Mixed regimen (Kubaty et al.): backbone first, then joint fine-tuning of everything."""

from __future__ import annotations

import pytest
import torch

import exitnet as ee
from exitnet.train import Mixed


def test_phases_and_gradients(tiny_resnet) -> None:
    s = Mixed(backbone_epochs=1)
    assert s.phases(tiny_resnet, 3) == [1, 2]
    assert Mixed().phases(tiny_resnet, 5) == [3, 2]
    with pytest.raises(ValueError, match="more than fit's epochs"):
        Mixed(backbone_epochs=4).phases(tiny_resnet, 3)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    for phase in (0, 1):
        tiny_resnet.zero_grad(set_to_none=True)
        s.start_phase(tiny_resnet, phase, None)
        s.train_mode(tiny_resnet)
        s.loss(tiny_resnet, s.forward(tiny_resnet, x), y, epoch=phase, epochs=3).backward()
        aux = [p.grad is not None for h in tiny_resnet.heads[:-1] for p in h.parameters()]
        assert all(p.grad is not None for p in tiny_resnet.stages.parameters())
        assert all(aux) if phase == 1 else not any(aux)


def test_fit_runs_both_phases() -> None:
    ds = ee.data.synthetic(120, num_classes=3, input_shape=(8,), seed=6)
    net = ee.MultiExitNetwork.from_module(
        ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3, sample_input=torch.zeros(1, 8), head="linear"
    )
    head0 = net.heads[0].fc.weight.clone()
    seen = []

    class Spy(Mixed):
        def on_epoch_start(self, net, epoch, epochs):  # type: ignore[no-untyped-def]
            seen.append((self.phase_, torch.equal(net.heads[0].fc.weight, head0)))

    history = ee.fit(net, Spy(backbone_epochs=2), ds.train, ds.val, epochs=3, progress=False)
    assert seen == [(0, True), (0, True), (1, True)]  # the head is untouched until the joint phase
    assert not torch.equal(net.heads[0].fc.weight, head0)
    assert history.column("phase") == [0, 0, 1]
    assert history.best_epoch == 3  # the best epoch is searched in the last phase
