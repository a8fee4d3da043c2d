"""`fit` under torchrun: 2 CPU processes (gloo) end with identical parameters on both ranks and the same losses
as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import exitnet as ee

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    import exitnet as ee

    torch.set_num_threads(1)
    out = sys.argv[1]
    sys.path.insert(0, os.path.dirname(__file__))
    from common import make_data, make_net

    net = make_net()
    x, y = make_data()
    history = ee.fit(net, ee.train.Gated(joint="uniform"), (x, y), epochs=2, batch_size=16, lr=1e-2, seed=1,
                     progress=False, grad_clip=1.0, out_dir=os.path.join(out, "run"))
    rank = int(os.environ["RANK"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"loss": history.column("train_loss"), "world": int(os.environ["WORLD_SIZE"])}, f)
    """
)

COMMON = textwrap.dedent(
    """
    import torch
    from torch import nn
    import exitnet as ee

    def make_net():
        torch.manual_seed(0)  # no BatchNorm: per-rank batch statistics would differ from the global batch's
        seq = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        return ee.MultiExitNetwork.from_sequential(
            seq, [1], num_classes=3, sample_input=torch.zeros(1, 8), head="linear"
        )

    def make_data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=g)
        return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    """
)


def test_two_processes_match_one(tmp_path) -> None:
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "common.py").write_text(COMMON)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(tmp_path / "worker.py"), str(tmp_path)]  # fmt: skip
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:  # never hang the suite
        pytest.fail("torchrun did not finish within 120 s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # DDP keeps the replicas identical
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["world"] == 2 and logs[0]["loss"] == logs[1]["loss"]
    assert (tmp_path / "run" / "metrics.csv").exists()  # written by rank 0

    sys.path.insert(0, str(tmp_path))
    try:
        from common import make_data, make_net  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    net = make_net()
    history = ee.fit(net, ee.train.Gated(joint="uniform"), make_data(), epochs=2, batch_size=16, lr=1e-2, seed=1,
                     progress=False, grad_clip=1.0, distributed=False)  # fmt: skip
    assert history.column("train_loss") == pytest.approx(logs[0]["loss"], rel=1e-5)
    for k, v in net.state_dict().items():
        assert torch.allclose(v, ranks[0][k], atol=1e-5), k


def test_batch_must_split_over_processes(monkeypatch) -> None:
    from exitnet.train.distributed import ShardedBatches

    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    one = [yb.tolist() for _, yb in ShardedBatches(x, y, 4, seed=2)]
    parts = [[yb.tolist() for _, yb in ShardedBatches(x, y, 2, seed=2, rank=r, world=2)] for r in (0, 1)]
    for k, batch in enumerate(one[:2]):  # every full global batch is the union of the ranks' batches
        assert sorted(parts[0][k] + parts[1][k]) == sorted(batch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="needs torchrun"):
        ee.fit(ee.MultiExitNetwork.from_sequential(torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Linear(4, 2)),
               [0], num_classes=2, sample_input=torch.zeros(1, 1), head="linear"), ee.train.Joint(), (x, y % 2),
               epochs=1, progress=False)  # fmt: skip
