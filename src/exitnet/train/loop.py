"""`fit`: the one training loop every strategy runs in.

Per phase of the strategy (one for most; one per stage for layer-wise training; backbone, then heads or joint for
separate and mixed training) a fresh optimiser and learning-rate schedule; per epoch the strategy's hook, a pass
over the training data (loss from the strategy, one optimiser step per batch), then the validation accuracy of
every exit. The best epoch of the last phase is kept (in memory, and in ``out_dir/best.safetensors`` when
``out_dir`` is given), metrics go to ``out_dir/metrics.csv`` and everything a resumed run needs to
``out_dir/state.safetensors``. Under ``torchrun`` the same call trains with DistributedDataParallel
(:mod:`exitnet.train.distributed`); only rank 0 logs and writes files.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from exitnet._batches import as_xy, num_samples
from exitnet._utils import module_device
from exitnet.checkpoint import load_training_state, restore_rng_state
from exitnet.model import MultiExitNetwork
from exitnet.rows import num_rows, to_device
from exitnet.scores import as_targets
from exitnet.train._records import STATE_FILE, History, Records, state_path
from exitnet.train.base import Strategy
from exitnet.train.distributed import DistInfo, ShardedBatches, all_reduce_sum, broadcast_buffers, init_distributed

__all__ = ["fit", "History", "STATE_FILE"]

OptimizerSpec = torch.optim.Optimizer | Callable[[Iterable[Any]], torch.optim.Optimizer] | None


class _Step(nn.Module):
    """The network and the strategy's extra modules as one module whose forward returns the loss of a batch: what
    DistributedDataParallel wraps."""

    def __init__(self, net: MultiExitNetwork, extras: nn.ModuleDict, strategy: Strategy) -> None:
        super().__init__()
        self.net = net
        self.extras = extras
        self.strategy = strategy

    def forward(self, x: Any, y: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        outputs = self.strategy.forward(self.net, x)
        y = as_targets(y, tuple(outputs.logits[-1].shape), outputs.task, num_classes=self.net.num_classes)
        return self.strategy.loss(self.net, outputs, y, epoch=epoch, epochs=epochs)


def _loader(data: Any, batch_size: int, seed: int, info: DistInfo) -> Iterable:
    xy = as_xy(data)
    if xy is not None:
        return ShardedBatches(xy[0], xy[1], batch_size, seed=seed, rank=info.rank, world=info.world)
    if isinstance(data, Iterable):
        sampler = getattr(data, "sampler", None)
        if info.enabled and type(sampler).__name__ != "DistributedSampler":
            warnings.warn(
                "under torchrun a DataLoader without a DistributedSampler gives every rank all the data; pass a "
                "Split or an (x, y) tuple and fit shards it",
                stacklevel=3,
            )
        return data
    raise TypeError(f"train must be a DataLoader, an (x, y) tuple or a Split, got {type(data).__name__}")


def _make_optimizer(
    spec: OptimizerSpec, groups: list[dict[str, Any]], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if not any(g["params"] for g in groups):
        raise ValueError("the strategy leaves no parameter to train")
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if spec is None:
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return spec(groups)


def _trainable(model: nn.Module) -> tuple[int, ...]:
    return tuple(i for i, p in enumerate(model.parameters()) if p.requires_grad)


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
    resume: bool | str | Path = False,
    checkpoint_every: int = 1,
    distributed: bool | str = "auto",
    bf16: bool = False,
) -> History:
    """Train ``net`` with ``strategy``; validate every exit after each epoch.

    Args:
        net: the multi-exit network (trained in place).
        strategy: e.g. ``exitnet.train.Joint(weights="sdn")``; see :func:`exitnet.train.list_strategies`.
        train: training data: a ``Split`` or an ``(x, y)`` tuple (shuffled each epoch with ``seed + epoch``,
            sharded over ranks under torchrun) or a ``DataLoader`` used as it is.
        val: validation data in any of those forms, or ``None``.
        epochs: number of passes over ``train``, over all of the strategy's phases.
        optimizer: an optimiser, a factory ``param_groups -> optimiser``, or ``None`` for Adam(``lr``,
            ``weight_decay``). A factory or ``None`` gives each phase a fresh optimiser.
        batch_size: the global batch size (split over the ranks under torchrun).
        scheduler: ``"cosine"`` (per-step cosine decay to 0 within each phase) or ``None``; strategies that set
            their own rates (FreezeOut) replace it.
        grad_clip: clip the gradient norm to this value.
        select: which validation accuracy picks the best epoch: ``"final"`` (last exit) or ``"mean"`` (all exits).
        restore_best: load the best epoch's weights at the end (needs ``val``); the best epoch is searched in the
            last phase that trains (earlier phases train only part of the network).
        out_dir: if given, rank 0 writes ``metrics.csv``, ``best.safetensors``, ``last.safetensors`` and the
            training state ``state.safetensors`` there.
        seed: seeds torch and the shuffling.
        progress: show a rich progress bar (rank 0 only).
        device: where to train (defaults to the network's device; ``cuda:LOCAL_RANK`` under torchrun with nccl).
        resume: ``True`` continues from ``out_dir/state.safetensors`` if it exists (else starts afresh); a path
            continues from that file. On a CPU the resumed run ends with the same weights as an uninterrupted one.
        checkpoint_every: write the training state every this many epochs (and after the last).
        distributed: ``"auto"`` (DistributedDataParallel when torchrun started the process), ``True`` or ``False``.
        bf16: run forward and loss under ``torch.autocast`` with bfloat16.

    Returns:
        The :class:`History` of per-epoch metrics.
    """
    epochs = int(epochs)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if select not in ("final", "mean"):
        raise ValueError(f"select must be 'final' or 'mean', got {select!r}")
    if scheduler not in (None, "cosine"):
        raise ValueError(f"scheduler must be 'cosine' or None, got {scheduler!r}")
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be an exitnet.train strategy, got {type(strategy).__name__}")
    if net.task not in strategy.tasks:
        raise ValueError(
            f"{strategy.name} training is for {' and '.join(strategy.tasks)} networks; this one is a {net.task}"
        )
    if strategy.schedules_lr and isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            f"{strategy.name} sets a learning rate per parameter group it builds; pass optimizer=None or a factory "
            "(param_groups -> optimiser), not an optimiser instance"
        )
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if num_samples(train) == 0:
        raise ValueError("the training data holds no samples")
    out = Path(out_dir) if out_dir is not None else None
    path = state_path(resume, out)
    info, device = init_distributed(distributed, device)
    flags = [(p, p.requires_grad) for p in net.parameters()]
    try:
        if batch_size % info.world:
            raise ValueError(f"the global batch_size={batch_size} must be a multiple of the {info.world} processes")
        torch.manual_seed(seed)
        if device is not None:
            net.to(device)
        dev = module_device(net)
        run = _Run(net, strategy, info, out, dev, epochs, progress and info.is_main)
        return run.train(
            train,
            val,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size // info.world,
            scheduler=scheduler,
            grad_clip=grad_clip,
            select=select,
            restore_best=restore_best,
            seed=seed,
            state_path=path,
            checkpoint_every=int(checkpoint_every),
            bf16=bf16,
            global_batch=batch_size,
        )
    finally:
        strategy.finish(net)
        for p, flag in flags:
            p.requires_grad_(flag)
        info.close()


class _Run:
    """One call of :func:`fit` (private: keeps the loop readable)."""

    def __init__(
        self,
        net: MultiExitNetwork,
        strategy: Strategy,
        info: DistInfo,
        out: Path | None,
        dev: torch.device,
        epochs: int,
        progress: bool,
    ) -> None:
        self.net, self.strategy, self.info, self.out, self.dev, self.epochs = net, strategy, info, out, dev, epochs
        self.progress = progress

    # ------------------------------------------------------------------ the loop
    def train(self, train: Any, val: Any, **kw: Any) -> History:
        net, strategy, info = self.net, self.strategy, self.info
        strategy.setup(net)
        extras = nn.ModuleDict(strategy.extra_modules()).to(self.dev)
        plan = [int(e) for e in strategy.phases(net, self.epochs)]
        if sum(plan) != self.epochs or any(e < 0 for e in plan):
            raise ValueError(f"{strategy.name}: phases {plan} do not add up to epochs={self.epochs}")
        last_phase = max((i for i, e in enumerate(plan) if e > 0), default=-1)
        fit_config = {
            "epochs": self.epochs,
            "phases": plan,
            "global_batch": kw["global_batch"],
            "seed": kw["seed"],
            "strategy": strategy.name,
        }
        records = Records(net, strategy, extras, info, self.out)
        state = load_training_state(kw["state_path"]) if kw["state_path"] is not None else None
        if state is not None:
            start = records.resume(state, fit_config)
        else:
            start = 0
            records.start_afresh()  # a new run into an old out_dir must not append to its metrics.csv
        step_module = _Step(net, extras, strategy)
        self.bar = bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not self.progress,
            transient=True,
        )
        with bar:
            self.task = task = bar.add_task(strategy.name, total=None, info="")
            for phase, count in enumerate(plan):
                first, end = sum(plan[:phase]), sum(plan[: phase + 1])
                if end < start or (count > 0 and end <= start):
                    continue  # finished before the interruption
                data = strategy.start_phase(net, phase, train)
                if count == 0:
                    continue
                loader = _loader(data, kw["batch_size"], kw["seed"], info)
                steps = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
                groups = strategy.param_groups(net)
                params = [p for g in groups for p in g["params"]]
                opt = _make_optimizer(kw["optimizer"], groups, kw["lr"], kw["weight_decay"])
                sched = None
                if kw["scheduler"] == "cosine" and steps and not strategy.schedules_lr:
                    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, count * steps))
                step = 0
                if state is not None and first < start < end:  # interrupted inside this phase
                    state.restore(net, opt, sched, rng=False)
                    step = state.step
                if state is not None and first <= start < end and state.rng_state is not None:
                    restore_rng_state(state.rng_state)
                total = count * steps if steps else 0
                bar.update(task, total=(total or None), completed=step)
                model: nn.Module = step_module
                wrapped: tuple[int, ...] | None = None
                for epoch in range(max(first, start), end):
                    strategy.on_epoch_start(net, epoch, self.epochs)
                    if info.enabled and _trainable(step_module) != wrapped:
                        model, wrapped = self._ddp(step_module), _trainable(step_module)
                    strategy.train_mode(net)
                    if hasattr(loader, "set_epoch"):
                        loader.set_epoch(epoch)
                    elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
                        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
                    t0, c0 = time.perf_counter(), time.process_time()
                    loss_sum, count_sum, step = self._epoch(model, loader, opt, sched, params, epoch, step, total, kw)
                    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
                    if info.enabled:
                        broadcast_buffers(net)
                        broadcast_buffers(extras)
                    row: dict[str, Any] = {
                        "epoch": epoch + 1,
                        "phase": phase,
                        "train_loss": loss_sum / max(1.0, count_sum),
                        "seconds": seconds,
                        "cpu_seconds": cpu_seconds,
                        "lr": opt.param_groups[0]["lr"],
                    }
                    records.validate(row, val, kw["select"], phase == last_phase, max(kw["batch_size"], 256))
                    records.history.rows.append(row)
                    last = epoch + 1 == self.epochs
                    records.write(row, opt, sched, step, phase, fit_config, kw["checkpoint_every"], last)
                    self.bar.update(task, info=f"epoch {epoch + 1}/{self.epochs} loss {row['train_loss']:.4f}")
        if kw["restore_best"]:
            records.restore_best()
        net.eval()
        return records.history

    def _epoch(
        self,
        model: nn.Module,
        loader: Iterable,
        opt: torch.optim.Optimizer,
        sched: Any,
        params: list[nn.Parameter],
        epoch: int,
        step: int,
        total: int,
        kw: dict[str, Any],
    ) -> tuple[float, float, int]:
        """One pass over ``loader``: returns the summed loss, the number of samples (over all ranks) and the step."""
        strategy, world = self.strategy, self.info.world
        loss_sum, count_sum = 0.0, 0.0
        for x, y in loader:
            x, y = to_device(x, self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
            strategy.on_step(opt, step, total)
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=kw["bf16"]):
                loss = model(x, y, epoch, self.epochs)
            value = float(loss.detach())
            if self.info.enabled:
                value = all_reduce_sum([value], self.dev)[0] / world
            if not math.isfinite(value):
                raise FloatingPointError(f"the training loss became {value} at epoch {epoch + 1}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if kw["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(params, kw["grad_clip"])
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            rows = num_rows(x)
            loss_sum += value * rows * world
            count_sum += rows * world
            self.bar.advance(self.task)
        return loss_sum, count_sum, step

    def _ddp(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.dev.index] if self.dev.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
