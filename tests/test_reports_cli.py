"""``exitnet evaluate`` and ``exitnet report``: a report folder from a checkpoint, re-rendered from its JSON."""

from __future__ import annotations

import json

import pytest
import torch

import exitnet as ee
from exitnet.cli import main
from exitnet.policies import MaxProb

FILES = {"report.json", "report.md", "accuracy_vs_flops.png", "exit_histogram.png", "per_exit_accuracy.png",
         "overthinking.png"}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """An MLP on the synthetic data (16 features, 4 classes), trained for a moment; saved without a policy
    (``"bare"``) and with a fitted one (``"fitted"``)."""
    folder = tmp_path_factory.mktemp("ckpt")
    ds = ee.data.synthetic()  # what `--data synthetic` loads
    torch.manual_seed(0)
    backbone = ee.backbones.mlp(16, [32, 32], 4)
    net = ee.MultiExitNetwork.from_module(
        backbone, ["blocks.0"], num_classes=4, sample_input=torch.zeros(1, 16), head="linear"
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(15):
        opt.zero_grad()
        loss = sum(torch.nn.functional.cross_entropy(z, ds.train.y) for z in net(ds.train.x))
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        policy = MaxProb(0.8).fit(net(ds.val.x))
    (folder / "bare").mkdir()
    (folder / "fitted").mkdir()
    return {
        "bare": ee.save(net, folder / "bare" / "model.safetensors"),
        "fitted": ee.save(net, folder / "fitted" / "model.safetensors", policy=policy),
    }


def test_evaluate_writes_a_whole_report_folder(checkpoints, tmp_path, capsys) -> None:
    ckpt = checkpoints["bare"]
    out = tmp_path / "eval"
    assert main(["evaluate", str(ckpt), "--data", "synthetic", "--out", str(out), "--max-drop", "0.01"]) == 0
    assert {p.name for p in out.iterdir()} == FILES
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no temporary folder left
    rep = json.loads((out / "report.json").read_text())
    assert rep["runtime_matches_policy"] is True and rep["runtime_accuracy"] == rep["early_exit_accuracy"]
    assert rep["policy_source"] == "calibrated on the val split here" and rep["policy"]["name"] == "entropy"
    assert rep["pareto_front"] and rep["split"] == "test" and rep["num_samples"] == 200
    assert rep["calibration"]["max_accuracy_drop"] == 0.01
    md = (out / "report.md").read_text()
    assert "## Per exit" in md and "![Exit histogram](exit_histogram.png)" in md and "Warning" in md
    printed = capsys.readouterr().out
    assert "FLOPs saved" in printed and "report.md" in printed


def test_evaluate_uses_the_stored_policy_and_other_policies(checkpoints, tmp_path) -> None:
    ckpt = checkpoints["fitted"]
    assert main(["evaluate", str(ckpt), "--data", "synthetic", "--split", "val"]) == 0
    rep = json.loads((ckpt.parent / "eval-val" / "report.json").read_text())  # default: beside the checkpoint
    assert rep["policy_source"] == "stored in the checkpoint" and rep["policy"]["state"]["thresholds_"] == [0.8]
    for name in ("patience", "temperature:maxprob"):
        out = tmp_path / name.replace(":", "-")
        assert main(["evaluate", str(ckpt), "--data", "synthetic", "--policy", name, "--out", str(out)]) == 0
        rep = json.loads((out / "report.json").read_text())
        assert rep["runtime_matches_policy"] is True and rep["policy"]["name"] == name.split(":")[0]


def test_report_re_renders_from_json(checkpoints, tmp_path) -> None:
    ckpt = checkpoints["bare"]
    src = tmp_path / "eval"
    assert main(["evaluate", str(ckpt), "--data", "synthetic", "--out", str(src)]) == 0
    (src / "report.md").unlink()
    (src / "notes.txt").write_text("mine")
    assert main(["report", str(src)]) == 0  # in place: other files are left alone
    assert (src / "report.md").is_file() and (src / "notes.txt").read_text() == "mine"
    other = tmp_path / "copy"
    assert main(["report", str(src / "report.json"), "--out", str(other)]) == 0
    assert {p.name for p in other.iterdir()} == FILES
    assert json.loads((other / "report.json").read_text()) == json.loads((src / "report.json").read_text())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "missing.safetensors", "--data", "synthetic"], "no checkpoint at missing.safetensors"),
        (["report", "nowhere"], "no report at nowhere"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_wrong_dataset_or_json_is_a_clear_error(checkpoints, tmp_path, capsys) -> None:
    ckpt = checkpoints["bare"]
    assert main(["evaluate", str(ckpt), "--data", "digits"]) == 1
    assert "expects" in capsys.readouterr().err  # the network's input shape does not fit the digits
    (tmp_path / "x.json").write_text('{"a": 1}')
    assert main(["report", str(tmp_path / "x.json")]) == 1
    assert "not an exitnet report" in capsys.readouterr().err
