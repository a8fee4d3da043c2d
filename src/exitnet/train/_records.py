"""What :func:`~exitnet.train.fit` keeps: the per-epoch history, the best epoch's weights, the files of ``out_dir``
(``metrics.csv``, ``best.safetensors``, ``last.safetensors``) and the training state a resumed run starts from
(``state.safetensors``, written with :func:`exitnet.checkpoint.save_training_state`: no pickle)."""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exitnet._batches import collect_outputs
from exitnet.checkpoint import save, save_training_state
from exitnet.model import MultiExitNetwork
from exitnet.train.base import Strategy
from exitnet.train.distributed import DistInfo

__all__ = ["History", "Records", "STATE_FILE", "state_path"]

STATE_FILE = "state.safetensors"


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run, and which epoch was best."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf

    def column(self, key: str) -> list[Any]:
        return [r[key] for r in self.rows]


def state_path(resume: bool | str | Path, out: Path | None) -> Path | None:
    """The training state to resume from (``None``: start afresh)."""
    if resume is False or resume is None:
        return None
    if resume is True:
        if out is None:
            raise ValueError("resume=True continues from out_dir/state.safetensors; give out_dir")
        path = out / STATE_FILE
        return path if path.exists() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume at {path}")
    return path


def _exit_accuracies(net: MultiExitNetwork, val: Any, batch_size: int) -> list[float]:
    outputs, y = collect_outputs(net, val, batch_size=batch_size)
    return (outputs.predictions() == y.unsqueeze(0)).double().mean(dim=1).tolist()


class Records:
    """History, best weights and files of one :func:`fit` call (only rank 0 writes)."""

    def __init__(
        self, net: MultiExitNetwork, strategy: Strategy, extras: nn.ModuleDict, info: DistInfo, out: Path | None
    ) -> None:
        self.net, self.strategy, self.extras, self.info, self.out = net, strategy, extras, info, out
        self.history = History()
        self.best: dict[str, Any] | None = None
        if out is not None and info.is_main:
            out.mkdir(parents=True, exist_ok=True)

    def start_afresh(self) -> None:
        """Remove the metrics of an earlier run in the same folder (this run is not resuming it)."""
        if self.out is not None and self.info.is_main:
            (self.out / "metrics.csv").unlink(missing_ok=True)

    def validate(self, row: dict[str, Any], val: Any, select: str, track: bool, batch_size: int) -> None:
        """Add every exit's validation accuracy to ``row``; keep the weights if ``track`` and it is the best."""
        if val is None:
            return
        accs = _exit_accuracies(self.net, val, batch_size)
        row.update({f"val_acc_{name}": a for name, a in zip(self.net.exit_names, accs, strict=True)})
        score = accs[-1] if select == "final" else sum(accs) / len(accs)
        if track and score > self.history.best_score:
            self.history.best_score, self.history.best_epoch = score, row["epoch"]
            self.best = {"net": copy.deepcopy(self.net.state_dict()), "extras": copy.deepcopy(self.extras.state_dict())}
            if self.out is not None and self.info.is_main:
                save(self.net, self.out / "best.safetensors", extra={"epoch": row["epoch"], "metrics": row})

    def write(
        self,
        row: dict[str, Any],
        opt: torch.optim.Optimizer,
        sched: Any,
        step: int,
        phase: int,
        fit_config: dict[str, Any],
        every: int,
        last: bool,
    ) -> None:
        """Append ``row`` to metrics.csv, save last.safetensors and, every ``every`` epochs, the training state."""
        if self.out is None or not self.info.is_main:
            return
        _append_csv(self.out / "metrics.csv", row)
        save(self.net, self.out / "last.safetensors", extra={"epoch": row["epoch"], "metrics": row})
        if row["epoch"] % every and not last:
            return
        best = self.history.best_score
        save_training_state(
            self.out / STATE_FILE,
            net=self.net,
            optimizer=opt,
            scheduler=sched,
            epoch=row["epoch"],
            step=step,
            extra={
                "fit": fit_config,
                "phase": phase,
                "history": self.history.rows,
                "best_epoch": self.history.best_epoch,
                "best_score": best if math.isfinite(best) else None,
                "best": self.best,
                "extras": self.extras.state_dict(),
                "strategy": self.strategy.state_dict(),
            },
        )

    def resume(self, state: Any, fit_config: dict[str, Any]) -> int:
        """Load a training state (weights, extra modules, counters, history); return the epochs it completed."""
        saved = state.extra.get("fit", {})
        for key in ("epochs", "phases", "global_batch", "seed", "strategy"):
            if saved.get(key) != fit_config[key]:
                raise ValueError(
                    f"{state.path}: saved by a run with {key}={saved.get(key)!r}, this run has {fit_config[key]!r}; "
                    "resume with the same settings or start afresh (resume=False)"
                )
        state.restore(self.net, rng=False)
        self.extras.load_state_dict(state.extra.get("extras") or {})
        self.strategy.load_state_dict(state.extra.get("strategy") or {})
        self.history.rows = [dict(r) for r in state.extra.get("history") or []]
        self.history.best_epoch = state.extra.get("best_epoch")
        score = state.extra.get("best_score")
        self.history.best_score = -math.inf if score is None else float(score)
        self.best = state.extra.get("best")
        if self.out is not None and self.info.is_main:
            (self.out / "metrics.csv").unlink(missing_ok=True)
            for r in self.history.rows:
                _append_csv(self.out / "metrics.csv", r)
        return int(state.epoch)

    def restore_best(self) -> None:
        """Load the best epoch's weights (and extra modules), if validation found one."""
        if self.best is not None:
            self.net.load_state_dict(self.best["net"])
            self.extras.load_state_dict(self.best["extras"])


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
