"""The training benchmark's memory meter, and (slow) its smoke suite end to end."""

from __future__ import annotations

import json

import pytest
import torch

from exitnet.bench import training


def test_saved_activations_by_hand() -> None:
    lin = torch.nn.Linear(100, 100)
    with training.SavedActivations(lin.parameters()) as meter:
        x = torch.randn(8, 100)
        y = lin(x).relu()  # linear keeps its input (8×100 floats), ReLU its output (8×100 floats)
        assert meter.current == 2 * 8 * 100 * 4
        y.sum().backward()
        del y
    assert meter.peak == 6400 and meter.current == 0  # freed with the graph after backward


def test_shared_storage_counts_once() -> None:
    with training.SavedActivations() as meter:
        x = torch.randn(4, 50, requires_grad=True)
        h = x.exp()  # exp saves its output
        (h * h).sum().backward()  # mul saves both operands: the same storage as exp's output
    assert meter.peak == 4 * 50 * 4


@pytest.mark.slow
def test_smoke_suite(tmp_path) -> None:
    result = training.run("smoke", "cpu", tmp_path)
    json.dumps(result)
    assert set(result["strategies"]) >= {"backbone", "joint", "layer-wise (cache on disk)", "freezeout (t0=0.5)"}
    assert (tmp_path / result["lambda_sweep"]["figure"]).exists()
    assert "| strategy |" in training.to_markdown(result)
