from __future__ import annotations

import csv

import pytest
import torch

import exitnet as ee


def _mlp_net(ds):
    backbone = ee.backbones.mlp(ds.input_shape[0], [32, 32], ds.num_classes)
    return ee.MultiExitNetwork.from_module(
        backbone, ["blocks.0"], num_classes=ds.num_classes, sample_input=torch.zeros(1, *ds.input_shape), head="linear"
    )


def test_fit_learns_and_writes_metrics(tmp_path) -> None:
    ds = ee.data.synthetic(600, num_classes=3, input_shape=(8,), seed=1)
    net = _mlp_net(ds)
    out = tmp_path / "run"
    history = ee.fit(
        net, ee.train.Joint(weights="uniform"), ds.train, ds.val, epochs=4, lr=1e-2, out_dir=out, progress=False
    )
    assert [r["epoch"] for r in history.rows] == [1, 2, 3, 4]
    first, last = history.rows[0], history.rows[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_acc_final"] > 0.6  # synthetic clusters are learnable; chance is 1/3
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"val_acc_blocks.0", "val_acc_final", "train_loss"} <= set(rows[0])
    loaded = ee.load(out / "best.safetensors")
    assert loaded.exit_names == net.exit_names


def test_fit_restores_the_best_epoch() -> None:
    ds = ee.data.synthetic(300, num_classes=3, input_shape=(8,), seed=2)
    net = _mlp_net(ds)
    history = ee.fit(net, ee.train.Joint(), ds.train, ds.val, epochs=3, lr=1e-2, progress=False)
    outputs, y = ee._batches.collect_outputs(net, ds.val)
    assert (outputs.final.argmax(-1) == y).double().mean().item() == pytest.approx(history.best_score)


def test_fit_accepts_tensors_and_loaders() -> None:
    ds = ee.data.synthetic(200, num_classes=3, input_shape=(8,), seed=3)
    net = _mlp_net(ds)
    ee.fit(net, ee.train.Joint(), (ds.train.x, ds.train.y), epochs=1, progress=False)
    ee.fit(net, ee.train.Joint(), ds.train.loader(32, shuffle=True), (ds.val.x, ds.val.y), epochs=1, progress=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"epochs": -1}, ValueError, "epochs must be >= 0"),
        ({"epochs": 1, "select": "best"}, ValueError, "select must be"),
        ({"epochs": 1, "scheduler": "step"}, ValueError, "scheduler must be"),
    ],
)
def test_fit_bad_arguments(kwargs, error, match) -> None:
    ds = ee.data.synthetic(100, num_classes=3, input_shape=(8,))
    with pytest.raises(error, match=match):
        ee.fit(_mlp_net(ds), ee.train.Joint(), ds.train, progress=False, **kwargs)


def test_fit_refuses_empty_data_and_non_strategies() -> None:
    ds = ee.data.synthetic(100, num_classes=3, input_shape=(8,))
    net = _mlp_net(ds)
    with pytest.raises(ValueError, match="no samples"):
        ee.fit(net, ee.train.Joint(), (ds.train.x[:0], ds.train.y[:0]), epochs=1, progress=False)
    with pytest.raises(TypeError, match="strategy"):
        ee.fit(net, "joint", ds.train, epochs=1, progress=False)  # type: ignore[arg-type]
