"""`fit`: the one training loop every strategy runs in.

Per epoch: the strategy's hook, a pass over the training data (loss from the strategy, one optimiser step per
batch), then the validation accuracy of every exit. The best epoch's weights are kept (in memory, and in
``out_dir/best.safetensors`` when ``out_dir`` is given) and metrics go to ``out_dir/metrics.csv``.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from exitnet._batches import collect_outputs, num_samples
from exitnet.checkpoint import save
from exitnet.model import MultiExitNetwork
from exitnet.train.base import Strategy

__all__ = ["fit", "History"]

OptimizerSpec = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run, and which epoch was best."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf

    def column(self, key: str) -> list[Any]:
        return [r[key] for r in self.rows]


def _train_loader(train: Any, batch_size: int, seed: int) -> Iterable:
    if hasattr(train, "loader") and callable(train.loader):
        return train.loader(batch_size, shuffle=True, seed=seed)
    if isinstance(train, tuple) and len(train) == 2 and all(isinstance(t, torch.Tensor) for t in train):
        ds = torch.utils.data.TensorDataset(*train)
        gen = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen)
    if isinstance(train, Iterable):
        return train
    raise TypeError(f"train must be a DataLoader, an (x, y) tuple or a Split, got {type(train).__name__}")


def _make_optimizer(
    spec: OptimizerSpec, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("the strategy leaves no parameter to train")
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if spec is None:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return spec(params)


def _exit_accuracies(net: MultiExitNetwork, val: Any, batch_size: int) -> list[float]:
    outputs, y = collect_outputs(net, val, batch_size=batch_size)
    return (outputs.predictions() == y.unsqueeze(0)).double().mean(dim=1).tolist()


def fit(
    net: MultiExitNetwork,
    strategy: Strategy,
    train: Any,
    val: Any = None,
    *,
    epochs: int,
    optimizer: OptimizerSpec = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    scheduler: str | None = "cosine",
    grad_clip: float | None = None,
    select: str = "final",
    restore_best: bool = True,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> History:
    """Train ``net`` with ``strategy``; validate every exit after each epoch.

    Args:
        net: the multi-exit network (trained in place).
        strategy: e.g. ``exitnet.train.Joint(weights="sdn")``.
        train: training data: a ``DataLoader``, an ``(x, y)`` tuple (shuffled with ``seed``) or a ``Split``.
        val: validation data in any of those forms, or ``None``.
        epochs: number of passes over ``train``.
        optimizer: an optimiser, a factory ``params -> optimiser``, or ``None`` for Adam(``lr``, ``weight_decay``).
        scheduler: ``"cosine"`` (per-step cosine decay to 0) or ``None``.
        grad_clip: clip the gradient norm to this value.
        select: which validation accuracy picks the best epoch: ``"final"`` (last exit) or ``"mean"`` (all exits).
        restore_best: load the best epoch's weights at the end (needs ``val``).
        out_dir: if given, write ``metrics.csv``, ``best.safetensors`` and ``last.safetensors`` there.
        seed: seeds torch and the shuffling.
        progress: show a rich progress bar.
        device: where to train (defaults to the network's device).

    Returns:
        The :class:`History` of per-epoch metrics.
    """
    if int(epochs) < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if select not in ("final", "mean"):
        raise ValueError(f"select must be 'final' or 'mean', got {select!r}")
    if scheduler not in (None, "cosine"):
        raise ValueError(f"scheduler must be 'cosine' or None, got {scheduler!r}")
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be an exitnet.train strategy, got {type(strategy).__name__}")
    if num_samples(train) == 0:
        raise ValueError("the training data holds no samples")
    torch.manual_seed(seed)
    if device is not None:
        net.to(device)
    dev = next(net.parameters()).device
    strategy.setup(net)
    params = list(strategy.parameters(net))
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    loader = _train_loader(train, batch_size, seed)
    steps_per_epoch = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    sched = None
    if scheduler == "cosine" and steps_per_epoch:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    history = History()
    best_state: dict[str, torch.Tensor] | None = None
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not progress,
        transient=True,
    )
    with bar:
        task = bar.add_task(f"{strategy.name}", total=epochs * (steps_per_epoch or 0) or None, info="")
        for epoch in range(epochs):
            strategy.on_epoch_start(net, epoch, epochs)
            net.train()
            t0 = time.perf_counter()
            total, count = 0.0, 0
            for x, y in loader:
                x, y = x.to(dev), y.to(dev)
                outputs = strategy.forward(net, x)
                loss = strategy.loss(net, outputs, y, epoch=epoch, epochs=epochs)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the training loss became {float(loss)} at epoch {epoch}; lower the lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * x.shape[0]
                count += x.shape[0]
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {total / max(1, count):.4f}")
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": total / max(1, count),
                "seconds": time.perf_counter() - t0,
                "lr": opt.param_groups[0]["lr"],
            }
            if val is not None:
                accs = _exit_accuracies(net, val, max(batch_size, 256))
                row.update({f"val_acc_{name}": a for name, a in zip(net.exit_names, accs, strict=True)})
                score = accs[-1] if select == "final" else sum(accs) / len(accs)
                if score > history.best_score:
                    history.best_score, history.best_epoch = score, epoch + 1
                    best_state = copy.deepcopy(net.state_dict())
                    if out is not None:
                        save(net, out / "best.safetensors", extra={"epoch": epoch + 1, "metrics": row})
            history.rows.append(row)
            if out is not None:
                _append_csv(out / "metrics.csv", row)
                save(net, out / "last.safetensors", extra={"epoch": epoch + 1, "metrics": row})
    if restore_best and best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
