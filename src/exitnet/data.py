"""Datasets for multi-exit experiments: scikit-learn's digits, Fashion-MNIST and a synthetic set for tests.

Every loader returns a :class:`Dataset` of three disjoint, seeded :class:`Split` s (train/val/test) whose
inputs are float32 tensors already standardised with the *train* split's mean and std (one scalar each).
Nothing here needs the network: digits ships with scikit-learn, Fashion-MNIST is read from local IDX files
(Debian's ``dataset-fashion-mnist`` package, ``$EXITNET_DATA`` or a cache folder) and only downloaded as a
last resort.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "Dataset",
    "Split",
    "digits",
    "fashion_mnist",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "synthetic",
]


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset: normalised inputs ``x`` ``[N, *input_shape]`` and int64 labels ``y`` ``[N]``.

    Example:
        >>> s = Split(torch.zeros(10, 3), torch.arange(10) % 2)
        >>> len(s), [tuple(xb.shape) for xb, _ in s.loader(batch_size=4)]
        (10, [(4, 3), (4, 3), (2, 3)])
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.y.dim() != 1 or self.x.dim() < 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"Split needs x [N, ...] and y [N] with the same N, got x {tuple(self.x.shape)} "
                f"and y {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, x={tuple(self.x.shape)} {self.x.dtype}, y={self.y.dtype})"

    def loader(
        self, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> DataLoader:
        """A DataLoader of ``(x, y)`` batches; with ``shuffle`` the order depends only on ``seed``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            TensorDataset(self.x, self.y),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset with train/val/test splits, the number of classes and the per-sample input shape.

    Example:
        >>> ds = synthetic(100, num_classes=3, input_shape=(2, 4))
        >>> ds.name, ds.num_classes, ds.input_shape, len(ds.train) + len(ds.val) + len(ds.test)
        ('synthetic', 3, (2, 4), 100)
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        for part in ("train", "val", "test"):
            got = tuple(getattr(self, part).x.shape[1:])
            if got != self.input_shape:
                raise ValueError(f"{self.name}: {part} inputs have shape {got}, expected {self.input_shape}")


# ----------------------------------------------------------------------------------------------- helpers
def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )


def _stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, val, test) index arrays with each class spread evenly over the three parts."""
    n = len(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(y[order], kind="stable")]  # grouped by class, random within a class
    counts = np.bincount(y)
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)  # position within its class
    key = (rank + 0.5) / np.repeat(counts, counts)  # each class spread evenly over [0, 1)
    order = order[np.lexsort((rng.random(n), key))]  # by key, ties broken at random
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise ValueError(
            f"{n} samples are too few for val_fraction={val_fraction}, test_fraction={test_fraction}: "
            f"that gives {n - n_test - n_val} train / {n_val} val / {n_test} test; every split needs >= 1"
        )
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return np.sort(train), np.sort(val), np.sort(test)


def _from_arrays(
    name: str, x: torch.Tensor, y: np.ndarray, num_classes: int, seed: int, val_frac: float, test_frac: float
) -> Dataset:
    """Split ``x``/``y`` stratified and standardise everything with the train split's mean and std."""
    train, val, test = _stratified_split(y, val_frac, test_frac, seed)
    x_train = x[torch.from_numpy(train)]
    mean, std = x_train.mean().item(), x_train.std(unbiased=False).item()
    std = std if std > 0 else 1.0
    x = ((x - mean) / std).float()
    labels = torch.from_numpy(y.astype(np.int64))
    tr, va, te = (Split(x[torch.from_numpy(i)], labels[torch.from_numpy(i)]) for i in (train, val, test))
    return Dataset(name, tr, va, te, num_classes=num_classes, input_shape=tuple(x.shape[1:]))


# ------------------------------------------------------------------------------------------------ digits
def digits(*, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2, size: int = 8) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes) as ``[N, 1, size, size]``.

    Pixels are divided by 16, upsampled bilinearly when ``size > 8``, split stratified by class with ``seed``
    and standardised with the train split's mean and std. No network access.

    Example:
        >>> ds = digits(size=16)
        >>> ds.input_shape, ds.num_classes, len(ds.train) + len(ds.val) + len(ds.test)
        ((1, 16, 16), 10, 1797)
    """
    _check_fractions(val_fraction, test_fraction)
    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8x8 images; larger sizes upsample), got {size}")
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    if size > 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return _from_arrays("digits", x, np.asarray(bunch.target), 10, seed, val_fraction, test_fraction)


# --------------------------------------------------------------------------------------------- synthetic
def synthetic(
    n: int = 1000,
    *,
    num_classes: int = 4,
    input_shape: tuple[int, ...] = (16,),
    noise: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> Dataset:
    """Seeded Gaussian class clusters mixing easy and hard samples, for tests and quick demos.

    Class means are random with an expected pairwise distance of about 5.7 whatever the dimension; each
    sample gets its own noise std ``noise * s`` with ``s`` log-uniform in [0.25, 4], so some samples are
    trivial (an early exit should take them) and some are near-hopeless. With the defaults a perfect
    classifier gets about 89%.

    Example:
        >>> ds = synthetic(200, num_classes=3, input_shape=(1, 4, 4), seed=1)
        >>> ds.train.x.shape[1:], ds.train.y.dtype
        (torch.Size([1, 4, 4]), torch.int64)
    """
    _check_fractions(val_fraction, test_fraction)
    input_shape = tuple(int(d) for d in input_shape)
    if n < 1 or num_classes < 2 or not input_shape or min(input_shape) < 1:
        raise ValueError(
            f"need n >= 1, num_classes >= 2 and a non-empty input_shape of positive sizes, "
            f"got n={n}, num_classes={num_classes}, input_shape={input_shape}"
        )
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    dim = math.prod(input_shape)
    means = rng.normal(size=(num_classes, dim)) * (4.0 / math.sqrt(dim))
    y = rng.permutation(np.arange(n) % num_classes)
    scale = noise * np.exp(rng.uniform(math.log(0.25), math.log(4.0), size=n))
    x = means[y] + rng.normal(size=(n, dim)) * scale[:, None]
    x_t = torch.from_numpy(x.astype(np.float32)).reshape(n, *input_shape)
    return _from_arrays("synthetic", x_t, y, num_classes, seed, val_fraction, test_fraction)


# ------------------------------------------------------------------------------------------------- IDX
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed, into a native-endian array.

    Raises:
        ValueError: naming the file, if it is not gzip/IDX, has a bad header or too much or too little data.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a-idx1-ubyte"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p)
        array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix says
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: bad IDX magic {raw[:4].hex(' ') or '(empty file)'}; expected 00 00 <dtype code, one of "
            f"{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}> <ndim >= 1>, or a gzip file of that"
        )
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: the header of a {ndim}-dim IDX file needs {header} bytes, found {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected, found = math.prod(dims) * dtype.itemsize, len(raw) - header
    if found != expected:
        raise ValueError(
            f"{path}: the header says shape {dims} of {dtype.name}, so expected {expected} bytes of data, found {found}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


# ------------------------------------------------------------------------------------------ Fashion-MNIST
_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FMNIST_FILES = {  # file stem -> published MD5 of its .gz (only checked on download: Debian recompresses)
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
_DOWNLOAD_TIMEOUT_S = 10.0


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "exitnet" / "fashion-mnist"


def _search_dirs(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get("EXITNET_DATA")
    dirs = [Path(env).expanduser(), Path(env).expanduser() / "fashion-mnist"] if env else []
    return [*dirs, _cache_dir(), _SYSTEM_DIR]


def _find_files(folder: Path) -> dict[str, Path]:
    """The Fashion-MNIST files present in ``folder`` (plain preferred over .gz), by stem."""
    found = {}
    for stem in _FMNIST_FILES:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
    return found


def _download(folder: Path) -> None:
    """Fetch the missing .gz files into ``folder``, checking MD5s; a file appears whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, md5 in _FMNIST_FILES.items():
        if stem in _find_files(folder):
            continue
        url, target = _FMNIST_URL + f"{stem}.gz", folder / f"{stem}.gz"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".part")
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != md5:
                raise ValueError(f"{url}: MD5 {digest.hexdigest()} does not match the published {md5}")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)


def _not_found(dirs: list[Path], download: bool, error: Exception | None) -> FileNotFoundError:
    def state(d: Path) -> str:
        if not d.is_dir():
            return "no such folder"
        missing = [s for s in _FMNIST_FILES if s not in _find_files(d)]
        return "lacks " + ", ".join(missing)

    searched = "\n".join(f"  {d} ({state(d)})" for d in dirs)
    tried = f"Downloading from {_FMNIST_URL} failed: {error}\n" if error else ""
    tried += "" if download else "(download=False, so no download was tried)\n"
    return FileNotFoundError(
        f"Fashion-MNIST not found: no folder holds all of {', '.join(_FMNIST_FILES)} (plain or .gz).\n"
        f"Searched:\n{searched}\n{tried}"
        f"To get the data: `apt-get install dataset-fashion-mnist` (installs {_SYSTEM_DIR}), or put the "
        f"four IDX files in $EXITNET_DATA (or $EXITNET_DATA/fashion-mnist), or pass root=FOLDER."
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
    dirs = _search_dirs(root)
    folder = next((d for d in dirs if len(_find_files(d)) == len(_FMNIST_FILES)), None)
    if folder is None:
        error = None
        if download:
            target = dirs[0] if root is not None else _cache_dir()
            try:
                _download(target)
                folder = target
            except Exception as e:  # any failure (no network, HTTP error, bad MD5) becomes one clear message
                error = e
        if folder is None:
            raise _not_found(dirs, download, error) from error

    files = _find_files(folder)
    x_train, y_train, x_test, y_test = (read_idx(files[s]) for s in _FMNIST_FILES)
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


# ------------------------------------------------------------------------------------------------ registry
_LOADERS: dict[str, Any] = {"digits": digits, "fashion-mnist": fashion_mnist, "synthetic": synthetic}


def list_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts.

    Example:
        >>> list_datasets()
        ['digits', 'fashion-mnist', 'synthetic']
    """
    return sorted(_LOADERS)


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load a dataset by name (``_`` and ``-`` are interchangeable), passing ``kwargs`` to its loader.

    Example:
        >>> load_dataset("synthetic", n=50).name
        'synthetic'
    """
    loader = _LOADERS.get(name.lower().replace("_", "-"))
    if loader is None:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return loader(**kwargs)
