"""The trained networks the benchmarks share: a multi-exit ResNet and an MLP on Fashion-MNIST.

Each network is trained once per setting (joint training with SDN's weight schedule, eq. (6) of the survey) and
cached as an exitnet checkpoint under ``~/.cache/exitnet/bench/`` (or ``$EXITNET_BENCH_CACHE``), keyed by a hash
of everything that changes the weights: the recipe, the suite's data budget, the seed and the torch version.
Every benchmark module calls :func:`trained_resnet` / :func:`trained_mlp`, so one training serves them all.

Suites:

- ``quick``: the first 10,000 official training images (validation and test sets whole: 5,000 and 10,000),
  a few epochs; the whole quick suite fits in 10 minutes on 2 CPU cores.
- ``full``: all 55,000 training images and more epochs.
- ``smoke``: tiny synthetic 1x12x12 images and tiny networks, for the test of the runner (seconds).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from exitnet import data as datasets
from exitnet._batches import collect_outputs
from exitnet.backbones import get_backbone
from exitnet.checkpoint import load, read_manifest, save
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.train import Joint, fit

__all__ = [
    "SUITES",
    "Recipe",
    "recipe",
    "list_networks",
    "load_data",
    "check_data",
    "trained",
    "trained_resnet",
    "trained_mlp",
    "cache_dir",
    "training_info",
    "outputs",
]

SUITES = ("smoke", "quick", "full")
_QUICK_LIMIT = 10_000  # first N of each split: train 10k, val 5k (whole), test 10k (whole)


@dataclass(frozen=True)
class Recipe:
    """How one benchmark network is built and trained (everything here is part of the cache key)."""

    name: str
    backbone: str
    backbone_kwargs: dict[str, Any]
    points: list[str]
    head: str
    epochs: int
    lr: float = 3e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    weights: str | list[float] = "sdn"
    extra: dict[str, Any] = field(default_factory=dict)


def _resnet_recipe(suite: str) -> Recipe:
    if suite == "smoke":
        return Recipe("resnet", "resnet", {"depth": 8, "in_chans": 1, "num_classes": 4, "width": 4},
                      ["layer1", "layer2"], "pool", epochs=2)  # fmt: skip
    # ResNet-20 (width 16) with an exit after each of the first seven residual blocks: the blocks cost about the
    # same FLOPs, so the exits sit at ~12%, 23%, ..., 77% of the backbone. Linear heads on the whole feature map
    # (about 0.25 MFLOPs each, 2% of the backbone in all): global pooling throws away the spatial layout that the
    # early exits need, and SDN's adaptive max pooling is slow to train on a CPU.
    points = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer3.0"]
    kwargs = {"depth": 20, "in_chans": 1, "num_classes": 10, "width": 16}
    return Recipe("resnet", "resnet", kwargs, points, "linear", epochs=4 if suite == "quick" else 15)


def _mlp_recipe(suite: str) -> Recipe:
    if suite == "smoke":
        return Recipe("mlp", "mlp", {"in_features": 144, "hidden": [32, 32, 32], "num_classes": 4},
                      ["blocks.0", "blocks.1"], "linear", epochs=2)  # fmt: skip
    kwargs = {"in_features": 784, "hidden": [512, 512, 512, 512], "num_classes": 10}
    return Recipe("mlp", "mlp", kwargs, ["blocks.0", "blocks.1", "blocks.2"], "linear",
                  epochs=8 if suite == "quick" else 20, lr=1e-3)  # fmt: skip


_RECIPES = {"resnet": _resnet_recipe, "mlp": _mlp_recipe}


def list_networks() -> list[str]:
    """Names accepted by :func:`trained` and :func:`recipe`."""
    return sorted(_RECIPES)


def _check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}")
    return suite


def recipe(name: str, suite: str) -> Recipe:
    """The recipe of network ``name`` (see :func:`list_networks`) for ``suite``."""
    _check_suite(suite)
    if name not in _RECIPES:
        raise ValueError(f"unknown benchmark network {name!r}; choose one of: {', '.join(list_networks())}")
    return _RECIPES[name](suite)


@functools.lru_cache(maxsize=4)
def load_data(suite: str) -> datasets.Dataset:
    """The benchmark data of ``suite`` (one split for every seed, so seeds vary only the training).

    Raises:
        FileNotFoundError: Fashion-MNIST is not installed; the message says how to get it.
    """
    _check_suite(suite)
    if suite == "smoke":
        return datasets.synthetic(600, num_classes=4, input_shape=(1, 12, 12), seed=0)
    try:
        return datasets.fashion_mnist(seed=0, limit=_QUICK_LIMIT if suite == "quick" else None)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            "the benchmarks need Fashion-MNIST. Install it with `sudo apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu; `make bench` tries this when run as root) or put the four IDX files in $EXITNET_DATA.\n"
            f"{err}"
        ) from err


def check_data(suite: str) -> None:
    """Fail early, with the install hint, when the data of ``suite`` is missing."""
    load_data(suite)


def cache_dir() -> Path:
    """Where trained benchmark networks are cached: ``$EXITNET_BENCH_CACHE`` or ``~/.cache/exitnet/bench``."""
    env = os.environ.get("EXITNET_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "exitnet" / "bench"


def _key(rec: Recipe, suite: str, seed: int) -> str:
    settings = {
        "recipe": asdict(rec),
        "suite": suite,
        "data_limit": _QUICK_LIMIT if suite == "quick" else None,
        "seed": seed,
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _path(rec: Recipe, suite: str, seed: int) -> Path:
    return cache_dir() / f"{rec.name}-{suite}-seed{seed}-{_key(rec, suite, seed)}.safetensors"


def build(rec: Recipe, ds: datasets.Dataset) -> MultiExitNetwork:
    """The untrained multi-exit network of a recipe (seed torch before calling for reproducible weights)."""
    backbone = get_backbone(rec.backbone, **rec.backbone_kwargs)
    return MultiExitNetwork.from_module(
        backbone, rec.points, num_classes=ds.num_classes, sample_input=torch.zeros(1, *ds.shape), head=rec.head
    )


def trained(
    name: str, suite: str, *, seed: int = 0, device: str = "cpu", weights: str | list[float] | None = None
) -> tuple[MultiExitNetwork, datasets.Dataset]:
    """A trained benchmark network and its data, from the cache or trained now (then cached).

    Args:
        name: ``"resnet"`` or ``"mlp"`` (see :func:`list_networks`).
        suite: ``"quick"``, ``"full"`` or ``"smoke"``.
        seed: training seed (initial weights and batch order); the data split does not depend on it.
        device: where to train and where the returned network lives.
        weights: exit weights of the joint loss (default: the recipe's, SDN's schedule); e.g. ``[0, …, 0, 1]``
            trains the backbone alone (heads untouched).

    Returns:
        ``(net, dataset)``, the network in eval mode.
    """
    rec = recipe(name, suite)
    if weights is not None:
        rec = replace(rec, weights=weights)
    ds = load_data(suite)
    path = _path(rec, suite, seed)
    if path.is_file():
        try:
            return load(path).to(device).eval(), ds
        except (ValueError, OSError):  # a stale or corrupt cache entry: train again
            path.unlink(missing_ok=True)
    torch.manual_seed(seed)
    net = build(rec, ds)
    t0 = time.perf_counter()
    history = fit(
        net,
        Joint(weights=rec.weights),
        ds.train,
        ds.val,
        epochs=rec.epochs,
        lr=rec.lr,
        weight_decay=rec.weight_decay,
        batch_size=rec.batch_size,
        seed=seed,
        progress=False,
        device=device,
    )
    info = {
        "recipe": asdict(rec),
        "suite": suite,
        "seed": seed,
        "train_seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "best_epoch": history.best_epoch,
        "history": history.rows,
    }
    save(net.cpu(), path, extra={"bench": info})
    return net.to(device).eval(), ds


@functools.lru_cache(maxsize=16)
def outputs(
    name: str, suite: str, split: str, *, seed: int = 0, device: str = "cpu"
) -> tuple[ExitOutputs, torch.Tensor]:
    """Logits of every exit of a benchmark network on a split (``"val"`` or ``"test"``), on the CPU, with labels.

    Memoised within the process, so the benchmark modules that need the same outputs run the network once.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    net, ds = trained(name, suite, seed=seed, device=device)
    return collect_outputs(net, getattr(ds, split))


def training_info(name: str, suite: str, *, seed: int = 0, weights: str | list[float] | None = None) -> dict:
    """What :func:`trained` recorded about a cached network (recipe, history, seconds); ``{}`` if not cached."""
    rec = recipe(name, suite)
    if weights is not None:
        rec = replace(rec, weights=weights)
    path = _path(rec, suite, seed)
    if not path.is_file():
        return {}
    return dict(read_manifest(path).get("extra", {}).get("bench", {}))


def trained_resnet(suite: str, *, seed: int = 0, device: str = "cpu") -> tuple[MultiExitNetwork, datasets.Dataset]:
    """The multi-exit ResNet-20 on Fashion-MNIST (8 exits), trained jointly with SDN weights; cached.

    Example:
        >>> net, ds = trained_resnet("quick")  # doctest: +SKIP
        >>> net.exit_names[-1], ds.name  # doctest: +SKIP
        ('final', 'fashion-mnist')
    """
    return trained("resnet", suite, seed=seed, device=device)


def trained_mlp(suite: str, *, seed: int = 0, device: str = "cpu") -> tuple[MultiExitNetwork, datasets.Dataset]:
    """The multi-exit MLP (784-512-512-512-512-10, 4 exits) on Fashion-MNIST, trained jointly; cached."""
    return trained("mlp", suite, seed=seed, device=device)
