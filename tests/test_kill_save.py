"""A process killed (SIGKILL) while saving a checkpoint leaves the previous checkpoint whole and loadable.

One worker subprocess (so torch is imported once) forks a child that saves a ~5 MB checkpoint in a loop, each
save a new version whose weights carry its version number; the worker kills the child with SIGKILL after a
random delay, then checks that the file at the final name loads (checksums pass), that its weights carry the
version its manifest names, and that versions never go back. Three more kills land at fixed points through
hooks (half the bytes written, everything written but not synced, synced but not renamed), where a temporary
file is certain to exist. Stray temporary files are hidden (``.name…tmp``) and removed by the next save.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL (POSIX)")

WORKER = r'''
import json, os, random, signal, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)  # no OpenMP pool: forking below is safe
import exitnet as ee
from exitnet.checkpoint import read_manifest

path, kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
net = ee.MultiExitNetwork.from_module(
    ee.backbones.mlp(256, [1024, 1024], 10), ["blocks.0"], num_classes=10, sample_input=torch.zeros(1, 256),
    head="linear",
)
MARKER = "stages.0.blocks.0.linear.bias"
marker = dict(net.named_parameters())[MARKER]  # every value = the version number


def save(version):
    with torch.no_grad():
        marker.fill_(float(version))
    ee.save(net, path, extra={"version": version})


def temps():
    return sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp"))


def hook(point, notify):
    """Make the child stop (for the parent to kill it) at a fixed point of the next save."""
    real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace

    def stop():
        os.write(notify, b"x")
        time.sleep(60)

    if point == "half-written":
        class Half:
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *a):
                self.f.close()
            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                stop()
            def __getattr__(self, name):
                return getattr(self.f, name)
        os.fdopen = lambda *a, **k: Half(real_fdopen(*a, **k))
    elif point == "before-fsync":
        os.fsync = lambda fd: stop()
    elif point == "before-rename":
        os.replace = lambda *a: stop()


def check(version_before):
    manifest = read_manifest(path)
    version = manifest["extra"]["version"]
    loaded = ee.load(path)  # raises if truncated, corrupt or half-written
    got = dict(loaded.named_parameters())[MARKER]
    assert bool((got == float(version)).all()), f"weights of version {got[0].item()} under manifest {version}"
    assert version >= version_before, f"went back from version {version_before} to {version}"
    return version


save(0)
version = 0
report = {"random": [], "fixed": []}
plan = [("random", None)] * kills + [("fixed", p) for p in ("half-written", "before-fsync", "before-rename")]
for k, (kind, point) in enumerate(plan):
    read, notify = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: save new versions until killed
        os.close(read)
        if point is not None:
            hook(point, notify)
        v = 1000 * (k + 1)
        while True:
            v += 1
            save(v)
    os.close(notify)
    if point is None:
        time.sleep(rng.uniform(0.0, 0.12))
    else:
        os.read(read, 1)  # the child has reached the point
    tmp_before = temps()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read)
    version = check(version)
    report[kind].append({"point": point, "version": version, "temps": len(tmp_before)})
save(10**9)  # a clean save removes what the killed children left
check(version)
report["left"] = temps()
print(json.dumps(report))
'''


def _run(tmp_path: Path, kills: int, seed: int) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt.safetensors"), str(kills), str(seed)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(report: dict, kills: int) -> None:
    assert len(report["random"]) == kills
    # every fixed kill happened with a temporary file on disk, and the final name still held a whole checkpoint
    assert [r["point"] for r in report["fixed"]] == ["half-written", "before-fsync", "before-rename"]
    assert all(r["temps"] == 1 for r in report["fixed"])
    # ... and the hooked save never reached the final name (its child's first version is 1000 * (k + 1) + 1)
    assert all(r["version"] <= 1000 * (kills + i + 1) for i, r in enumerate(report["fixed"]))
    assert report["left"] == [], f"temporary files left behind: {report['left']}"


def test_kill_during_save_20_times(tmp_path: Path) -> None:
    _check(_run(tmp_path, kills=20, seed=0), kills=20)


@pytest.mark.slow
def test_kill_during_save_many_times(tmp_path: Path) -> None:
    _check(_run(tmp_path, kills=100, seed=1), kills=100)
