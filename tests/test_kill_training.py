"""Training survives interruption: killed (SIGKILL) mid-epoch and resumed, it ends with the weights of an
uninterrupted run, bit for bit (CPU, same seed), and ``metrics.csv`` holds every epoch exactly once.

One worker subprocess (torch imported once, one thread, so forking is safe) first trains a reference run to the
end, then trains the same run in another folder in forked children that it kills with SIGKILL at a random
point of a random epoch, each new child resuming with ``fit(..., resume=True)`` from ``state.safetensors``,
until one finishes. The
network has dropout, so the RNG states must come back too. The test then compares the two folders.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from exitnet.train import fit

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL (POSIX)")

EPOCHS = 4

WORKER = r'''
import json, os, random, signal, sys, time, traceback
from pathlib import Path

import torch

torch.set_num_threads(1)  # no OpenMP pool: forking below is safe
import exitnet as ee
from exitnet.train import Joint, fit

root, kills, seed, epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
data = ee.data.synthetic(960, num_classes=4, input_shape=(16,), seed=0)


class SlowJoint(Joint):
    """Joint training with a short pause per batch, so that an epoch lasts long enough to be cut in the middle."""

    def loss(self, *args, **kwargs):
        time.sleep(0.002)
        return super().loss(*args, **kwargs)


def train(out):
    torch.manual_seed(0)
    backbone = ee.backbones.mlp(16, [64, 64, 64], 4, dropout=0.2)
    net = ee.MultiExitNetwork.from_module(
        backbone, ["blocks.0", "blocks.1"], num_classes=4, sample_input=torch.zeros(1, 16), head="mlp"
    )
    fit(net, SlowJoint(), data.train, data.val, epochs=epochs, lr=3e-3, batch_size=32, out_dir=out, resume=True,
        progress=False, seed=0)
    ee.save(net, out / "final.safetensors")


def start(out):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            train(out)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return pid


def rows(out):
    path = out / "metrics.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def wait_rows(out, pid, n):
    """Poll until metrics.csv has n rows; False if the child ended first."""
    while rows(out) < n:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
        time.sleep(0.002)
    return True


# The reference runs here, in the worker itself: it also warms up torch (lazy imports, first-call setup), so
# the forked children start training at once.
t0 = time.perf_counter()
train(root / "reference")
full = time.perf_counter() - t0
epoch_seconds = full / epochs

out = root / "resumed"
report = {"epoch_seconds": epoch_seconds, "kills": []}
targets = sorted(rng.choice(range(epochs - 1)) for _ in range(kills))  # kill during epoch target + 1
for target in targets:
    pid = start(out)
    assert wait_rows(out, pid, target), "a child ended before it was killed"
    time.sleep(rng.uniform(0.05, 0.95) * epoch_seconds)
    before = rows(out)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    report["kills"].append({"target": target, "rows_at_kill": before, "state": (out / "state.safetensors").exists()})
pid = start(out)
report["last_exit_status"] = os.waitpid(pid, 0)[1]
print(json.dumps(report))
'''


def _run(tmp_path: Path, kills: int, seed: int) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(kills), str(seed), str(EPOCHS)],
        capture_output=True,
        text=True,
        timeout=500,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["last_exit_status"] == 0, proc.stderr[-3000:]
    return report


def _metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if "second" not in k and "time" not in k} for row in csv.DictReader(f)]


def _check_same_run(reference: Path, resumed: Path) -> None:
    for name in ("final.safetensors", "last.safetensors", "best.safetensors"):
        ref, got = load_file(str(reference / name)), load_file(str(resumed / name))
        assert ref.keys() == got.keys()
        different = [k for k in ref if not torch.equal(ref[k], got[k])]
        assert not different, f"{name}: tensors differ from the uninterrupted run: {different[:5]}"
    rows = _metrics(resumed / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1)), "each epoch exactly once, in order"
    assert rows == _metrics(reference / "metrics.csv")  # same losses, learning rates and accuracies


def test_killed_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    report = _run(tmp_path, kills=2, seed=0)
    assert len(report["kills"]) == 2
    _check_same_run(tmp_path / "reference", tmp_path / "resumed")


@pytest.mark.slow
def test_killed_training_resumes_many_times(tmp_path: Path) -> None:
    report = _run(tmp_path, kills=6, seed=1)
    assert len(report["kills"]) == 6
    _check_same_run(tmp_path / "reference", tmp_path / "resumed")


def test_cli_train_can_resume() -> None:
    import contextlib
    import io

    import typer.main

    from exitnet import cli

    if "train" not in getattr(typer.main.get_command(cli.app), "commands", {}):
        pytest.skip("exitnet train is not written yet (src/exitnet/commands/train.py)")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["train", "--help"]) == 0
    assert "--resume" in out.getvalue()


def test_killed_before_the_first_state_starts_clean(tmp_path: Path) -> None:
    """A run killed after writing its first metrics row but before its first training state: the next run starts
    afresh, and metrics.csv must not keep the dead run's row."""
    import exitnet as ee

    torch.set_num_threads(1)
    data = ee.data.synthetic(200, num_classes=3, input_shape=(8,), seed=0)

    def run() -> None:
        torch.manual_seed(0)
        net = ee.MultiExitNetwork.from_module(
            ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3, sample_input=torch.zeros(1, 8)
        )
        fit(net, ee.train.Joint(), data.train, data.val, epochs=2, out_dir=tmp_path, resume=True, progress=False)

    run()
    (tmp_path / "state.safetensors").unlink()  # as if killed before the state was written
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    (tmp_path / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")  # the dead run's first row only
    run()
    assert [int(r["epoch"]) for r in _metrics(tmp_path / "metrics.csv")] == [1, 2]
