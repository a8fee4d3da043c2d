"""`exitnet train`: flags or a config file, a checkpoint that `exitnet.load` (and `exitnet evaluate`) reads."""

from __future__ import annotations

import json

import pytest
import torch

import exitnet as ee
from exitnet.cli import main
from exitnet.commands.train import TrainConfig, load_config, train_from_config

FAST = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--backbone", "mlp",
        "--backbone-option", "hidden=[16, 16, 16]", "--head", "linear"]  # fmt: skip


@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("joint", ["--weights", "uniform", "--distill", "0.5"]),
        ("cost", ["--lam", "0.3"]),
        ("layerwise", ["--epochs", "3"]),
    ],
)
def test_train_writes_a_checkpoint_evaluate_reads(tmp_path, capsys, strategy, extra) -> None:
    out = tmp_path / "run"
    assert main(["train", "--strategy", strategy, *FAST, *extra, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    net = ee.load(out / "model.safetensors")
    manifest = ee.checkpoint.read_manifest(out / "model.safetensors")
    assert manifest["extra"]["data"] == {"name": "digits", "kwargs": {"seed": 0}}
    assert manifest["extra"]["strategy"]["name"] == strategy
    assert net(torch.zeros(2, 1, 8, 8)).stack().shape == (3, 2, 10)
    policy = ee.load_policy(out / "model.safetensors")
    assert (policy is not None) == (strategy == "cost")  # the trained gates travel as a Gate policy
    assert (out / "metrics.csv").exists() and (out / "state.safetensors").exists()


def test_config_file_and_flags(tmp_path) -> None:
    cfg_path = tmp_path / "train.json"
    cfg_path.write_text(json.dumps({"strategy": "combined", "strategy_options": {"mode": "mean"}, "epochs": 2}))
    settings = load_config(cfg_path)
    overrides = {"dataset": "digits", "backbone": "mlp", "head": "linear", "out": str(tmp_path / "o")}
    cfg = TrainConfig(**{**settings, **overrides, "backbone_options": {"hidden": [16, 16, 16]}, "progress": False})
    summary = train_from_config(cfg)
    assert len(summary["history"]) == 2 and summary["strategy"] == {"name": "combined", "mode": "mean"}
    yaml = pytest.importorskip("yaml")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"strategy": "gated", "lr": 0.01}))
    assert load_config(tmp_path / "train.yaml") == {"strategy": "gated", "lr": 0.01}


def test_user_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["train", "--strategy", "boosting", *FAST, "--out", str(tmp_path)]) == 1
    assert "unknown strategy 'boosting'; choose one of" in capsys.readouterr().err
    assert main(["train", "--strategy", "joint", "--lam", "0.1", *FAST, "--out", str(tmp_path)]) == 1
    assert "strategy 'joint' does not take these options ['lam']" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(ValueError, match="unknown settings \\['epoch'\\]"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="no config file"):
        load_config(tmp_path / "missing.yaml")
