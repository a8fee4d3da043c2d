"""Tests of exitnet.data: IDX reading, Fashion-MNIST lookup/download on tiny fake files, digits, synthetic."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitnet.data import (
    Dataset,
    Split,
    digits,
    fashion_mnist,
    images,
    list_datasets,
    load_dataset,
    read_idx,
    sources,
    splits,
    synthetic,
)

CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C}
CODES |= {np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}
STEMS = list(images.FMNIST_FILES)


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_fmnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: tuple[int, ...] = (0, 1, 0, 1)) -> Path:
    """Tiny Fashion-MNIST look-alike; returns the folder. Images are random, hence all distinct."""
    rng = np.random.default_rng(123)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8),
    ]
    for stem, arr, z in zip(STEMS, arrays, gz, strict=True):
        write_idx(folder / (stem + (".gz" if z else "")), arr, gz=bool(z))
    return folder


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No test may see the real data folders or the network: point everything inside tmp_path."""
    monkeypatch.setattr(images, "_FMNIST_URL", (tmp_path / "no-mirror").as_uri() + "/")
    monkeypatch.setattr(images, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EXITNET_DATA", raising=False)


# ------------------------------------------------------------------------------------------------- IDX
@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(sorted(CODES, key=str)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    gz=st.booleans(),
)
def test_read_idx_round_trips_every_dtype(tmp_path_factory, dtype, shape, gz):
    arr = (np.arange(int(np.prod(shape))) * 37 - 50).astype(dtype).reshape(shape)
    path = write_idx(tmp_path_factory.mktemp("idx") / "a-idx", arr, gz=gz)
    out = read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative and out.shape == tuple(shape)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_truncated_names_file_and_sizes(tmp_path):
    raw = idx_bytes(np.zeros((60000, 28, 28), np.uint8))[: 16 + 1000]
    for path in (tmp_path / "cut-idx3-ubyte", tmp_path / "cut-idx3-ubyte.gz"):
        path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
        with pytest.raises(ValueError, match="expected 47040000 bytes of data, found 1000") as err:
            read_idx(path)
        assert path.name in str(err.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "bad IDX magic"),
        (b"\x00\x01\x08\x01\x00\x00\x00\x01\x05", "bad IDX magic 00 01 08 01"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "bad IDX magic"),
        (b"\x00\x00\x08\x00", "bad IDX magic"),
        (b"\x00\x00\x08\x03\x00\x00", "needs 16 bytes, found 6"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02\x05\x06\x07", "expected 2 bytes of data, found 3"),
        (gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12], "corrupt or truncated gzip"),
        (b"\x1f\x8b not really gzip", "corrupt or truncated gzip"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "bad-file.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        read_idx(path)
    assert "bad-file.gz" in str(err.value)


# ------------------------------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_from_tiny_fake_files(tmp_path):
    ds = fashion_mnist(fake_fmnist(tmp_path / "fm"), val_size=10, download=False)
    assert isinstance(ds, Dataset) and ds.name == "fashion-mnist" and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 20)
    assert ds.input_shape == (1, 28, 28) and ds.train.x.dtype == torch.float32 and ds.test.y.dtype == torch.int64
    assert abs(ds.train.x.mean().item()) < 1e-4 and abs(ds.train.x.std(unbiased=False).item() - 1) < 1e-4
    both = torch.cat([ds.train.x, ds.val.x]).flatten(1)
    assert len(torch.unique(both, dim=0)) == 60  # train and val are disjoint and cover the official train set
    np.testing.assert_array_equal(ds.test.y.numpy(), np.arange(20) % 10)  # test keeps the file order


def test_fashion_mnist_plain_and_gzip_agree_and_seed_is_deterministic(tmp_path):
    a = fashion_mnist(fake_fmnist(tmp_path / "a", gz=(0, 0, 0, 0)), val_size=10, seed=3)
    b = fashion_mnist(fake_fmnist(tmp_path / "b", gz=(1, 1, 1, 1)), val_size=10, seed=3)
    c = fashion_mnist(tmp_path / "b", val_size=10, seed=4)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)


def test_fashion_mnist_limit_keeps_first_of_each_split(tmp_path):
    full = fashion_mnist(fake_fmnist(tmp_path / "fm"), val_size=10)
    small = fashion_mnist(tmp_path / "fm", val_size=10, limit=4)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(small, part).x, getattr(full, part).x[:4])


def test_fashion_mnist_missing_without_download(tmp_path):
    fm = fake_fmnist(tmp_path / "partial")
    next(fm.glob("t10k-labels*")).unlink()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as err:
        fashion_mnist(fm, download=False)
    msg = str(err.value)
    assert str(fm) in msg and "lacks t10k-labels-idx1-ubyte" in msg and "download=False" in msg
    with pytest.raises(FileNotFoundError, match=r"EXITNET_DATA") as err:
        fashion_mnist(download=False)
    assert str(tmp_path / "home" / ".cache" / "exitnet" / "fashion-mnist") in str(err.value)
    assert "no-system-dir (no such folder)" in str(err.value)


@pytest.mark.parametrize("sub", ["", "fashion-mnist"])
def test_fashion_mnist_finds_exitnet_data(tmp_path, monkeypatch, sub):
    fake_fmnist(tmp_path / "store" / sub)
    monkeypatch.setenv("EXITNET_DATA", str(tmp_path / "store"))
    assert len(fashion_mnist(val_size=10, download=False).train) == 50


def _mirror(tmp_path: Path, monkeypatch, md5_ok: bool = True) -> None:
    mirror = fake_fmnist(tmp_path / "mirror", gz=(1, 1, 1, 1))
    md5s = {s: hashlib.md5((mirror / f"{s}.gz").read_bytes()).hexdigest() for s in STEMS}
    if not md5_ok:
        md5s[STEMS[0]] = "0" * 32
    monkeypatch.setattr(images, "_FMNIST_URL", mirror.as_uri() + "/")
    monkeypatch.setattr(images, "FMNIST_FILES", md5s)


def test_fashion_mnist_downloads_into_cache(tmp_path, monkeypatch):
    _mirror(tmp_path, monkeypatch)
    ds = fashion_mnist(val_size=10)
    cache = tmp_path / "home" / ".cache" / "exitnet" / "fashion-mnist"
    assert len(ds.train) == 50 and sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in STEMS)


def test_fashion_mnist_bad_checksum_leaves_no_file(tmp_path, monkeypatch):
    _mirror(tmp_path, monkeypatch, md5_ok=False)
    with pytest.raises(FileNotFoundError, match="does not match the published 0{32}"):
        fashion_mnist(tmp_path / "dl", val_size=10)
    assert list((tmp_path / "dl").iterdir()) == []  # neither the bad file nor a temp file remains


def test_fashion_mnist_failed_download_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="Downloading from .* failed") as err:
        fashion_mnist(tmp_path / "empty")
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_fashion_mnist_corrupt_or_inconsistent_files(tmp_path):
    fm = fake_fmnist(tmp_path / "fm")
    with pytest.raises(ValueError, match="val_size=60 must be smaller than the 60"):
        fashion_mnist(fm, val_size=60)
    write_idx(fm / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8), gz=True)
    with pytest.raises(ValueError, match=r"t10k-labels as \[N\]"):
        fashion_mnist(fm, val_size=10)
    (fm / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((60, 28, 28), np.uint8))[:500])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: .*expected 47040 bytes"):
        fashion_mnist(fm, val_size=10)
    for bad in ({"val_size": 0}, {"limit": 0}):
        with pytest.raises(ValueError, match="positive integer"):
            fashion_mnist(fm, **bad)


def test_real_fashion_mnist_if_installed(monkeypatch):
    monkeypatch.undo()  # see the real folders again
    found = [
        d
        for d in sources.search_dirs("fashion-mnist", None, images.FMNIST_SYSTEM_DIR)
        if len(images.find_files(d)) == 4
    ]
    if not found:
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    files = images.find_files(found[0])
    assert len(read_idx(files["train-labels-idx1-ubyte"])) - 5000 == 55000
    assert len(read_idx(files["t10k-labels-idx1-ubyte"])) == 10000
    ds = fashion_mnist(download=False, limit=64)
    assert ds.input_shape == (1, 28, 28) and tuple(ds.train.x.shape) == (64, 1, 28, 28)
    assert len(ds.val) == len(ds.test) == 64 and set(ds.test.y.tolist()) <= set(range(10))


# ------------------------------------------------------------------------------------------------ digits
def test_digits_splits_disjoint_stratified_normalised():
    ds = digits(seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1168, 270, 359)
    rows = torch.cat([ds.train.x, ds.val.x, ds.test.x]).flatten(1)
    assert len(torch.unique(rows, dim=0)) == 1797  # the 1797 digits images are distinct
    per_class = torch.bincount(torch.cat([ds.train.y, ds.val.y, ds.test.y])).float()
    for part, frac in ((ds.val, 0.15), (ds.test, 0.2)):
        counts = torch.bincount(part.y, minlength=10).float()
        assert (counts - frac * per_class).abs().max() <= 1  # each class close to its share
    assert abs(ds.train.x.mean().item()) < 1e-5 and abs(ds.train.x.std(unbiased=False).item() - 1) < 1e-5
    assert ds.val.x.mean().item() != 0.0


def test_digits_deterministic_per_seed_and_upsampled():
    a, b, c = digits(seed=1), digits(seed=1), digits(seed=2)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.test.y, c.test.y)
    big = digits(size=16)
    assert big.input_shape == (1, 16, 16) and tuple(big.val.x.shape) == (270, 1, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 7}, "size must be >= 8"),
        ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0"),
        ({"test_fraction": 1.5}, "test_fraction must be in"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "0.5 \\+ 0.5 = 1.0"),
    ],
)
def test_digits_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        digits(**kwargs)


def test_stratified_split_partitions():
    y = np.arange(103) % 7
    train, val, test = splits.stratified_split(y, 0.2, 0.3, seed=5)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(103))
    assert (len(val), len(test)) == (21, 31)
    with pytest.raises(ValueError, match="2 samples are too few"):
        splits.stratified_split(np.arange(2), 0.2, 0.2, seed=0)


# --------------------------------------------------------------------------------------- synthetic, Split
def test_synthetic_shapes_determinism_and_difficulty():
    ds = synthetic(600, num_classes=3, input_shape=(2, 3, 4), seed=7)
    assert ds.input_shape == (2, 3, 4) and tuple(ds.train.x.shape) == (360, 2, 3, 4)
    assert torch.bincount(ds.train.y).tolist() == [120, 120, 120]
    assert torch.equal(ds.test.x, synthetic(600, num_classes=3, input_shape=(2, 3, 4), seed=7).test.x)
    assert not torch.equal(ds.test.x, synthetic(600, num_classes=3, input_shape=(2, 3, 4), seed=8).test.x)
    # nearest class mean: far above chance, far from perfect (easy and hard samples mixed)
    x, y = ds.train.x.flatten(1), ds.train.y
    means = torch.stack([x[y == c].mean(0) for c in range(3)])
    acc = (torch.cdist(ds.test.x.flatten(1), means).argmin(1) == ds.test.y).float().mean().item()
    assert 0.6 < acc < 0.99


@pytest.mark.parametrize(
    "kwargs", [{"n": 0}, {"num_classes": 1}, {"input_shape": ()}, {"input_shape": (3, 0)}, {"noise": -1.0}]
)
def test_synthetic_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="got"):
        synthetic(**kwargs)


def test_loader_determinism():
    s = Split(torch.arange(10.0).unsqueeze(1), torch.arange(10))
    order = lambda **kw: torch.cat([y for _, y in s.loader(3, **kw)]).tolist()  # noqa: E731
    assert order() == list(range(10))
    assert order(shuffle=True, seed=1) == order(shuffle=True, seed=1) != order(shuffle=True, seed=2)
    assert sorted(order(shuffle=True)) == list(range(10))
    assert len(list(s.loader(3, drop_last=True))) == 3
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        s.loader(0)


def test_split_and_dataset_validate():
    with pytest.raises(ValueError, match=r"got 3 inputs and 4 labels"):
        Split(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    s = Split(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    assert repr(s) == "Split(n=3, x=(3, 2) torch.float32, y=(3,) torch.int64)"
    with pytest.raises(ValueError, match=r"train inputs have shape \(2,\), expected \(4,\)"):
        Dataset("x", s, s, s, num_classes=2, input_shape=(4,))


def test_registry():
    assert {"digits", "fashion-mnist", "synthetic"} <= set(list_datasets())
    assert load_dataset("synthetic", n=50, seed=2).name == "synthetic"
    with pytest.raises(ValueError, match="^unknown dataset 'x'; choose one of: digits, fashion-mnist, .*synthetic"):
        load_dataset("x")


def test_registry_passes_kwargs_to_fashion_mnist(tmp_path):
    assert len(load_dataset("fashion_mnist", root=fake_fmnist(tmp_path / "fm"), val_size=10).val) == 10
