"""Image datasets: scikit-learn's bundled digits and Fashion-MNIST from its IDX files."""

from __future__ import annotations

import hashlib
import math
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exitnet._utils import atomic_write_bytes
from exitnet.data.sources import cache_dir, missing_data_error, read_idx, search_dirs
from exitnet.data.splits import Dataset, Split, check_fractions, from_arrays

__all__ = ["digits", "fashion_mnist", "FMNIST_FILES", "FMNIST_SYSTEM_DIR", "find_files"]


def digits(*, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2, size: int = 8) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes) as ``[N, 1, size, size]``.

    Pixels are divided by 16, upsampled bilinearly when ``size > 8``, split stratified by class with ``seed``
    and standardised with the train split's mean and std. No network access.

    Example:
        >>> ds = digits(size=16)
        >>> ds.input_shape, ds.num_classes, len(ds.train) + len(ds.val) + len(ds.test)
        ((1, 16, 16), 10, 1797)
    """
    check_fractions(val_fraction, test_fraction)
    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8x8 images; larger sizes upsample), got {size}")
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    if size > 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return from_arrays("digits", x, np.asarray(bunch.target), 10, seed, val_fraction, test_fraction)


_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_FILES = {  # file stem -> published MD5 of its .gz (only checked on download: Debian recompresses)
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
_DOWNLOAD_TIMEOUT_S = 10.0


def find_files(folder: Path) -> dict[str, Path]:
    """The Fashion-MNIST files present in ``folder`` (plain preferred over .gz), by stem."""
    found = {}
    for stem in FMNIST_FILES:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
    return found


def _download(folder: Path) -> None:
    """Fetch the missing .gz files into ``folder``, checking MD5s; a file appears whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, md5 in FMNIST_FILES.items():
        if stem in find_files(folder):
            continue
        url = _FMNIST_URL + f"{stem}.gz"
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            data = resp.read()
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if digest != md5:
            raise ValueError(f"{url}: MD5 {digest} does not match the published {md5}")
        atomic_write_bytes(folder / f"{stem}.gz", data)


def _not_found(dirs: list[Path], download: bool, error: Exception | None) -> FileNotFoundError:
    def lacks(d: Path) -> str:
        return "lacks " + ", ".join(s for s in FMNIST_FILES if s not in find_files(d))

    tried = f"Downloading from {_FMNIST_URL} failed: {error}\n" if error else ""
    tried += "" if download else "(download=False, so no download was tried)\n"
    return missing_data_error(
        f"Fashion-MNIST: no folder holds all of {', '.join(FMNIST_FILES)} (plain or .gz)",
        dirs,
        lacks,
        f"`apt-get install dataset-fashion-mnist` (installs {FMNIST_SYSTEM_DIR}), or put the four IDX files in "
        "$EXITNET_DATA (or $EXITNET_DATA/fashion-mnist), or pass root=FOLDER.",
        tried,
    )


def fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_size: int = 5000,
    download: bool = True,
    limit: int | None = None,
) -> Dataset:
    """Zalando's Fashion-MNIST (1x28x28 grey images, 10 classes) from its IDX files.

    Looks in ``root`` if given, else in ``$EXITNET_DATA`` (or ``$EXITNET_DATA/fashion-mnist``),
    ``~/.cache/exitnet/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``. If none holds the four
    files and ``download`` is set, they are downloaded (MD5-checked) into ``root`` or the cache folder.
    ``val`` is a seeded random ``val_size`` subset of the official train set and ``train`` the rest, in a
    seeded random order; ``test`` is the official test set. Pixels are divided by 255 and standardised with
    the train split's mean and std (before ``limit``, which then keeps the first ``limit`` of each split).

    Raises:
        FileNotFoundError: the files are nowhere and could not be downloaded; says where it looked.
        ValueError: bad arguments, or the files are corrupt or inconsistent.

    Example:
        >>> ds = fashion_mnist(limit=1000)  # doctest: +SKIP
        >>> len(ds.train), len(ds.val), len(ds.test), ds.input_shape  # doctest: +SKIP
        (1000, 1000, 1000, (1, 28, 28))
    """
    if val_size < 1:
        raise ValueError(f"val_size must be a positive integer, got {val_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or a positive integer, got {limit}")
    dirs = search_dirs("fashion-mnist", root, FMNIST_SYSTEM_DIR)
    folder = next((d for d in dirs if len(find_files(d)) == len(FMNIST_FILES)), None)
    if folder is None:
        error = None
        if download:
            target = dirs[0] if root is not None else cache_dir("fashion-mnist")
            try:
                _download(target)
                folder = target
            except Exception as e:  # any failure (no network, HTTP error, bad MD5) becomes one clear message
                error = e
        if folder is None:
            raise _not_found(dirs, download, error) from error

    files = find_files(folder)
    x_train, y_train, x_test, y_test = (read_idx(files[s]) for s in FMNIST_FILES)
    for x, y, xs, ys in (
        (x_train, y_train, "train-images", "train-labels"),
        (x_test, y_test, "t10k-images", "t10k-labels"),
    ):
        if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{folder}: expected {xs} as uint8 [N, H, W] and {ys} as [N], "
                f"got {x.dtype} {x.shape} and {y.dtype} {y.shape}"
            )
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{folder}: {ys} must be in 0..9, found {y.min()}..{y.max()}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{folder}: train images are {x_train.shape[1:]} but test images {x_test.shape[1:]}")
    if val_size >= len(x_train):
        raise ValueError(f"val_size={val_size} must be smaller than the {len(x_train)} official train images")

    order = np.random.default_rng(seed).permutation(len(x_train))
    val_idx, train_idx = order[:val_size], order[val_size:]
    # Pixel histogram of the train split (all minus val): exact, cheap stats that do not depend on limit.
    hist = np.bincount(x_train.ravel(), minlength=256) - np.bincount(x_train[val_idx].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    mean = float((hist * values).sum() / hist.sum())
    std = math.sqrt(float((hist * (values - mean) ** 2).sum() / hist.sum())) or 1.0

    def make(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> Split:
        idx = idx[:limit]
        x = torch.from_numpy(images[idx]).float().div_(255.0).sub_(mean).div_(std).unsqueeze(1)
        return Split(x, torch.from_numpy(labels[idx].astype(np.int64)))

    train, val = make(x_train, y_train, train_idx), make(x_train, y_train, val_idx)
    test = make(x_test, y_test, np.arange(len(x_test)))
    return Dataset("fashion-mnist", train, val, test, num_classes=10, input_shape=(1, *x_train.shape[1:]))
