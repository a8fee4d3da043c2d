"""Scale-out for :func:`~exitnet.train.fit`: torchrun detection, the process group, per-rank batches, reductions.

Under ``torchrun --nproc_per_node=N`` (``python -m torch.distributed.run``) every process runs the same script;
``fit`` sees ``WORLD_SIZE > 1``, joins the process group (gloo on CPU, nccl on GPU), wraps the network in
DistributedDataParallel and gives each rank its share of every global batch. ``batch_size`` stays the *global*
batch: rank r of N takes ``batch_size / N`` samples of it, so a run on N processes sees the same batches (and,
without BatchNorm, the same losses) as one process.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from exitnet.rows import num_rows, take_rows

__all__ = ["DistInfo", "init_distributed", "ShardedBatches", "all_reduce_sum", "broadcast_buffers"]


@dataclass
class DistInfo:
    """This process's place in the run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False  # fit created the process group (and destroys it at the end)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.created and dist.is_initialized():
            dist.destroy_process_group()
            self.created = False


def init_distributed(
    distributed: bool | str, device: torch.device | str | None, *, timeout_s: float = 600.0
) -> tuple[DistInfo, torch.device | str | None]:
    """Join (or create) the process group when asked to, or when torchrun started this process (``"auto"``).

    Returns:
        This process's :class:`DistInfo` and the device to train on (``cuda:LOCAL_RANK`` under nccl).
    """
    if distributed not in (True, False, "auto"):
        raise ValueError(f"distributed must be True, False or 'auto', got {distributed!r}")
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    initialized = dist.is_available() and dist.is_initialized()
    if distributed is False or (distributed == "auto" and world_env <= 1 and not initialized):
        return DistInfo(), device
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; train with distributed=False")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not initialized:
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(
                f"distributed training needs torchrun (missing environment {', '.join(missing)}): "
                "torchrun --nproc_per_node=N your_script.py, or initialise a process group first"
            )
        want_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        if want_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if want_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        created = True
    if device is None and dist.get_backend() == "nccl":
        device = torch.device("cuda", local)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, created=created), device


class ShardedBatches:
    """``(x, y)`` batches of one rank: DistributedSampler's order, batched by slicing (no per-sample collate).

    Each epoch a permutation seeded by ``seed + epoch`` (the same on every rank) is padded to a multiple of the
    world size by repeating its head, and rank r takes every ``world``-th index from position r. Rank r's k-th batch
    then holds exactly rank r's part of the k-th global batch of ``batch_size × world`` samples.

    Example:
        >>> x, y = torch.arange(8.0).unsqueeze(1), torch.arange(8)
        >>> b = ShardedBatches(x, y, 2, seed=0, shuffle=False, rank=1, world=2)
        >>> [yb.tolist() for _, yb in b]
        [[1, 3], [5, 7]]
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        n = num_rows(x)
        if n != y.shape[0]:
            raise ValueError(f"inputs and labels disagree on the number of samples: {n} vs {y.shape[0]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.n = x, y, n
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = self.n
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        total = math.ceil(n / self.world) * self.world
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank : total : self.world]

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        mine = self._indices()
        for start in range(0, mine.numel(), self.batch_size):
            idx = mine[start : start + self.batch_size]
            yield take_rows(self.x, idx), self.y[idx]


def all_reduce_sum(values: list[float], device: torch.device | str) -> list[float]:
    """Sum numbers over all ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that all ranks evaluate alike."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)
