"""Resuming from the training state continues exactly: the same weights as an uninterrupted run (CPU)."""

from __future__ import annotations

import pytest
import torch

import exitnet as ee
from exitnet.train import Freezeout, Gated, Joint, Layerwise


class _Stop(Exception):
    pass


def _interrupting(strategy_cls, at_epoch: int, **kwargs):  # type: ignore[no-untyped-def]
    class Interrupted(strategy_cls):  # type: ignore[misc, valid-type]
        def on_epoch_start(self, net, epoch, epochs):  # type: ignore[no-untyped-def]
            if epoch == at_epoch:
                raise _Stop
            super().on_epoch_start(net, epoch, epochs)

    return Interrupted(**kwargs)


def _net() -> ee.MultiExitNetwork:
    torch.manual_seed(0)
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=3, width=4)
    return ee.MultiExitNetwork.from_module(
        backbone, ["layer1", "layer2.0"], num_classes=3, sample_input=torch.zeros(1, 1, 8, 8)
    )


@pytest.mark.parametrize(
    "cls, kwargs, stop",
    [
        (Joint, {"weights": "sdn"}, 2),
        (Gated, {}, 1),
        (Freezeout, {"t0": 0.3}, 2),
        (Layerwise, {"cache": "memory"}, 2),  # interrupted inside the second phase
        (Layerwise, {"cache": "memory", "epochs_per_stage": [1, 2, 1]}, 1),  # at a phase boundary
    ],
)
def test_resume_equals_uninterrupted(tmp_path, cls, kwargs, stop) -> None:
    ds = ee.data.synthetic(96, num_classes=3, input_shape=(1, 8, 8), seed=7, val_fraction=0.15, test_fraction=0.1)
    common = {"epochs": 4, "lr": 5e-3, "batch_size": 16, "progress": False, "seed": 3}

    reference = _net()
    strategy_ref = cls(**kwargs)
    ref_history = ee.fit(reference, strategy_ref, ds.train, ds.val, out_dir=tmp_path / "ref", **common)

    net = _net()
    with pytest.raises(_Stop):
        ee.fit(net, _interrupting(cls, stop, **kwargs), ds.train, ds.val, out_dir=tmp_path / "run", **common)
    resumed = _net()  # a fresh process would build the network again
    strategy = cls(**kwargs)
    history = ee.fit(resumed, strategy, ds.train, ds.val, out_dir=tmp_path / "run", resume=True, **common)

    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    for name, m in strategy_ref.extra_modules().items():
        for k, v in m.state_dict().items():
            assert torch.equal(v, strategy.extra_modules()[name].state_dict()[k]), (name, k)
    assert history.column("train_loss") == ref_history.column("train_loss")
    assert history.best_epoch == ref_history.best_epoch
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 4


def test_resume_checks_the_settings(tmp_path) -> None:
    ds = ee.data.synthetic(64, num_classes=3, input_shape=(1, 8, 8), seed=7)
    ee.fit(_net(), Joint(), ds.train, epochs=1, batch_size=16, progress=False, out_dir=tmp_path)
    with pytest.raises(ValueError, match="epochs=1, this run has 2"):
        ee.fit(_net(), Joint(), ds.train, epochs=2, batch_size=16, progress=False, out_dir=tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no training state"):
        ee.fit(_net(), Joint(), ds.train, epochs=1, progress=False, resume=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="give out_dir"):
        ee.fit(_net(), Joint(), ds.train, epochs=1, progress=False, resume=True)


def test_resume_without_a_state_starts_afresh(tmp_path) -> None:
    ds = ee.data.synthetic(64, num_classes=3, input_shape=(1, 8, 8), seed=7)
    history = ee.fit(_net(), Joint(), ds.train, epochs=1, batch_size=16, progress=False, out_dir=tmp_path, resume=True)
    assert len(history.rows) == 1 and (tmp_path / "state.safetensors").exists()
