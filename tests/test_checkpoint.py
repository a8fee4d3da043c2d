"""Checkpoints: bit-identical round trips, and a clear refusal of every bad file (contract 5)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

import exitnet as ee
from exitnet._utils import atomic_directory, atomic_write_bytes, remove_stale_temps
from exitnet.checkpoint import (
    CheckpointError,
    load_into,
    load_training_state,
    read_manifest,
    save_training_state,
)
from exitnet.checkpoint._files import manifest_digest
from exitnet.policies import Entropy, MaxProb


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy shared CPU, OpenMP threads spin-wait and tiny ops take 1000x longer."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(width: int = 32, points: tuple[str, ...] = ("blocks.0", "blocks.1")) -> ee.MultiExitNetwork:
    backbone = ee.backbones.mlp(16, [width, width, width], 4)
    return ee.MultiExitNetwork.from_module(
        backbone, list(points), num_classes=4, sample_input=torch.zeros(1, 16), head="linear"
    ).eval()


@pytest.fixture
def saved(tmp_path: Path, tiny_mlp: ee.MultiExitNetwork) -> Path:
    return ee.save(
        tiny_mlp, tmp_path / "net.safetensors", policy=Entropy(thresholds=[0.3, 0.6]).fit(torch.zeros(3, 1, 4))
    )


def _rewrite_manifest(path: Path, edit, *, resign: bool = True) -> None:
    """Rewrite ``path`` with the same tensors and an edited manifest (re-signed unless ``resign`` is False)."""
    with safe_open(str(path), framework="pt") as f:
        manifest = json.loads(f.metadata()["exitnet"])
    tensors = load_file(str(path))
    edit(manifest)
    if resign:
        manifest["manifest_checksum"] = manifest_digest(manifest)
    path.write_bytes(st_save(tensors, metadata={"exitnet": json.dumps(manifest)}))


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fixture", ["tiny_mlp", "tiny_resnet"])
def test_save_load_bit_identical(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    net = request.getfixturevalue(fixture)
    with torch.no_grad():  # make the weights differ from a fresh init
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = ee.save(net, tmp_path / "m.safetensors", extra={"note": "hello"})
    back = ee.load(path).eval()
    x = net.sample_input(5).normal_()
    assert torch.equal(back(x).stack(), net(x).stack())
    assert back.exit_names == net.exit_names
    assert read_manifest(path)["extra"] == {"note": "hello"}
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_policy_round_trip(saved: Path) -> None:
    policy = ee.load_policy(saved)
    assert isinstance(policy, Entropy) and policy.thresholds_ == [0.3, 0.6]


def test_load_into_and_custom_backbone(tmp_path: Path) -> None:
    net = _mlp()
    path = ee.save(net, tmp_path / "m.safetensors")
    other = _mlp()
    load_into(other, path)
    x = torch.randn(3, 16)
    assert torch.equal(other(x).stack(), net(x).stack())
    back = ee.load(path, backbone=ee.backbones.mlp(16, [32, 32, 32], 4)).eval()
    assert torch.equal(back(x).stack(), net(x).stack())


# ------------------------------------------------------------------------------------------------ bad files
def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="file not found"):
        ee.load(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        ee.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\x80\x02}q\x00.", "pickle"),
        (b"PK\x03\x04" + bytes(100), "pickle"),
        (b"hello, this is a text file and not a checkpoint\n", "not a safetensors file"),
        (bytes(range(256)) * 4, "not a safetensors file"),
        (b"abc", "too short"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        ee.load(path)


def test_real_torch_pickle_is_refused(tmp_path: Path, tiny_mlp: ee.MultiExitNetwork) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny_mlp.state_dict(), path)
    with pytest.raises(CheckpointError, match="unpickling can run arbitrary code"):
        ee.load(path)


def test_plain_safetensors_and_training_state_are_told_apart(tmp_path: Path, tiny_mlp: ee.MultiExitNetwork) -> None:
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(st_save({"w": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="not an exitnet checkpoint"):
        ee.load(plain)
    state = save_training_state(tmp_path / "state.safetensors", net=tiny_mlp, epoch=0)
    with pytest.raises(CheckpointError, match="load_training_state"):
        ee.load(state)
    with pytest.raises(CheckpointError, match="exitnet.load"):
        load_training_state(ee.save(tiny_mlp, tmp_path / "net.safetensors"))


def test_truncated_at_every_kind_of_offset(saved: Path) -> None:
    data = saved.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cuts = {0, 1, 7, 8, 9, 8 + header_len // 2, 8 + header_len - 1, 8 + header_len, 8 + header_len + 1}
    cuts |= {(len(data) + 8 + header_len) // 2, len(data) - 1}
    for cut in sorted(cuts):
        saved.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            ee.load(saved)
        assert str(saved) in str(info.value)


def test_flipped_bytes_in_header_and_data(saved: Path) -> None:
    data = saved.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(0)
    header_positions = [0, 3, 8, 9, header_end - 1, *rng.sample(range(8, header_end), 60)]
    data_positions = [header_end, len(data) - 1, *rng.sample(range(header_end, len(data)), 30)]
    for pos in header_positions + data_positions:
        for mask in (0x01, 0x80):
            broken = bytearray(data)
            broken[pos] ^= mask
            saved.write_bytes(bytes(broken))
            with pytest.raises(CheckpointError) as info:
                ee.load(saved)
            if pos >= header_end:
                assert "checksum" in str(info.value)


def test_weights_changed_without_the_checksum(saved: Path) -> None:
    with safe_open(str(saved), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(saved))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3  # a valid safetensors file, same manifest, other weights
    saved.write_bytes(st_save(tensors, metadata=metadata))
    with pytest.raises(CheckpointError, match="do not match the manifest's checksum"):
        ee.load(saved)


def test_manifest_edited_without_its_checksum(saved: Path) -> None:
    _rewrite_manifest(saved, lambda m: m.update(num_classes=7), resign=False)
    with pytest.raises(CheckpointError, match="does not match its own checksum"):
        ee.load(saved)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=2), "newer exitnet"),
        (lambda m: m.update(format_version="1"), "format_version must be a positive integer"),
        (lambda m: m.update(format="other"), "manifest format is 'other'"),
        (lambda m: m.update(exit_names="final"), "exit_names"),
        (lambda m: m.update(exit_names=["a", "a", "b"]), "distinct"),
        (lambda m: m.update(num_classes="4"), "num_classes"),
        (lambda m: m.update(num_classes=True), "num_classes"),
        (lambda m: m.update(input_shape=[-16]), "input_shape"),
        (lambda m: m.pop("extra"), "lacks 'extra'"),
        (lambda m: m.update(policy={"name": 3}), "policy"),
        (lambda m: m.update(checksum="abc"), "SHA-256"),
        (lambda m: m["network"].update(points=["blocks.0"]), "1 exit points for 3 exits"),
        (lambda m: m["network"].update(heads=[{"kind": "linear"}]), "1 heads for 3 exits"),
        (lambda m: m["network"].update(backbone={"kwargs": {}}), "backbone"),
        (lambda m: m["network"].update(builder="from_magic"), "unknown network builder"),
        (lambda m: m["network"]["backbone"].update(name="no-such-net"), "cannot rebuild the backbone"),
        (lambda m: m.update(num_classes=5), "cannot be rebuilt|does not fit|shape"),
        (lambda m: m.update(policy={"name": "nope", "params": {}, "state": None}), "unknown policy"),
        (lambda m: m.update(policy={"name": "entropy", "params": {}, "state": {"thresholds_": [2.0, 0.1]}}), "[0, 1]"),
        (
            lambda m: m.update(policy={"name": "entropy", "params": {}, "state": {"thresholds_": [0.1]}}),
            "fitted for 2 exits; the network has 3",
        ),
    ],
)
def test_invalid_manifest_fields(saved: Path, edit, message: str) -> None:
    _rewrite_manifest(saved, edit)
    with pytest.raises(CheckpointError, match=message):
        ee.load(saved)
        ee.load_policy(saved)


def test_mismatched_network(tmp_path: Path) -> None:
    path = ee.save(_mlp(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="has shape"):
        load_into(_mlp(width=8), path)
    with pytest.raises(CheckpointError, match="exits"):
        load_into(_mlp(points=("blocks.1",)), path)
    with pytest.raises(CheckpointError, match="cannot be rebuilt"):
        ee.load(path, backbone=ee.backbones.resnet(depth=8, in_chans=1, num_classes=4))
    with pytest.raises(TypeError, match="MultiExitNetwork"):
        ee.save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fitted for 4 exits; the network has 3"):
        ee.save(_mlp(), tmp_path / "x.safetensors", policy=MaxProb(thresholds=[0.5] * 3).fit(torch.zeros(4, 1, 4)))


def test_network_without_recipe_needs_load_into(tmp_path: Path) -> None:
    net = ee.MultiExitNetwork(
        [torch.nn.Linear(4, 3), torch.nn.Linear(3, 3)], [torch.nn.Linear(3, 3), torch.nn.Identity()]
    )
    path = ee.save(net, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="load_into"):
        ee.load(path)
    again = ee.MultiExitNetwork(
        [torch.nn.Linear(4, 3), torch.nn.Linear(3, 3)], [torch.nn.Linear(3, 3), torch.nn.Identity()]
    )
    load_into(again, path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values(), strict=True))


# ------------------------------------------------------------------------------------------------ atomic writes
def test_failed_save_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _mlp()
    path = ee.save(net, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ee.save(_mlp(width=8), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_save_onto_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="folder"):
        ee.save(_mlp(), tmp_path)


def test_stale_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    from exitnet._utils import _HOST

    target = tmp_path / "m.safetensors"
    stale = tmp_path / f".m.safetensors.{_HOST}-{dead_pid}-0badc0de.tmp"
    stale.write_bytes(b"half a file")
    alive = tmp_path / f".m.safetensors.{_HOST}-{os.getppid()}-0badc0de.tmp"  # a live process: a write in progress
    alive.write_bytes(b"in progress")
    other_host = tmp_path / f".m.safetensors.elsewhere-{dead_pid}-0badc0de.tmp"
    other_host.write_bytes(b"another machine")
    ee.save(_mlp(), target)  # the stray files do not get in the way
    ee.load(target)
    assert not stale.exists() and alive.exists() and other_host.exists()
    assert remove_stale_temps(target) == []


def test_atomic_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("killed halfway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_directory(out) as tmp:
        (tmp / "c.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    atomic_write_bytes(tmp_path / "f", b"x")
    with pytest.raises(FileExistsError):
        atomic_directory(tmp_path / "f").__enter__()


# ------------------------------------------------------------------------------------------------ training state
def _train_steps(net: ee.MultiExitNetwork, opt: torch.optim.Optimizer, sched, n: int) -> None:
    for _ in range(n):
        x = torch.randn(16, 16)  # drawn from the global RNG: resuming must restore it
        y = torch.randint(0, 4, (16,))
        loss = sum(torch.nn.functional.cross_entropy(logits, y) for logits in net(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _setup(seed: int) -> tuple[ee.MultiExitNetwork, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    net = _mlp().train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    return net, opt, sched


def test_training_state_resume_is_bit_identical(tmp_path: Path) -> None:
    net, opt, sched = _setup(0)
    _train_steps(net, opt, sched, 10)
    reference = {k: v.clone() for k, v in net.state_dict().items()}

    net, opt, sched = _setup(0)
    _train_steps(net, opt, sched, 4)
    np_extra = np.arange(6, dtype=np.uint32).reshape(2, 3)
    path = save_training_state(
        tmp_path / "state.safetensors",
        net=net,
        optimizer=opt,
        scheduler=sched,
        epoch=1,
        step=4,
        extra={"best": 0.5, "pair": (1, "a"), 7: np_extra, "t": torch.arange(3)},
    )
    torch.rand(100)  # the RNG moves on before the "crash"

    fresh, opt2, sched2 = _setup(123)
    state = load_training_state(path)
    assert (state.epoch, state.step) == (1, 4)
    assert state.extra["pair"] == (1, "a") and np.array_equal(state.extra[7], np_extra)
    assert state.extra[7].dtype == np.uint32 and torch.equal(state.extra["t"], torch.arange(3))
    state.restore(fresh, opt2, sched2)
    _train_steps(fresh, opt2, sched2, 6)
    assert all(torch.equal(reference[k], v) for k, v in fresh.state_dict().items())


def test_training_state_refuses_bad_files(tmp_path: Path) -> None:
    net, opt, sched = _setup(0)
    _train_steps(net, opt, sched, 1)
    path = save_training_state(tmp_path / "s.safetensors", net=net, optimizer=opt, scheduler=sched, epoch=1)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    key = next(k for k in tensors if k.startswith("state/") and tensors[k].is_floating_point())
    tensors[key] = tensors[key] + 1
    path.write_bytes(st_save(tensors, metadata=metadata))
    with pytest.raises(CheckpointError, match="checksum"):
        load_training_state(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        load_training_state(path)
    with pytest.raises(TypeError, match="cannot store a object"):
        save_training_state(tmp_path / "x.safetensors", net=net, epoch=0, extra={"f": object()})
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        save_training_state(tmp_path / "x.safetensors", net=net, epoch=-1)
    good = save_training_state(tmp_path / "g.safetensors", net=net, optimizer=opt, epoch=0)
    other, opt3, _ = _setup(0)
    other_opt = torch.optim.SGD(list(other.parameters())[:2], lr=0.1)
    with pytest.raises(CheckpointError, match="does not fit this optimizer"):
        load_training_state(good).restore(other, other_opt)
    with pytest.raises(CheckpointError, match="exits"):
        load_training_state(good).restore(_mlp(points=("blocks.1",)), opt3)
