"""Layer-wise training (survey §5.3, Fig. 3a; "forward thinking", "deep cascade learning").

Phase k trains stage k and head k alone, on the loss of exit k (L_k of eq. (7)); the stages before it are frozen
(no gradient, eval mode, so BatchNorm statistics stay as they are). With a cache, the frozen stages are run once
more at the start of each phase to "replace the inputs by their embeddings": the training data of phase k is
then (h_k, y) with h_k the output of stage k − 1, and frozen stages are never run again during training.

- ``cache="memory"``: the embeddings live in RAM (fastest; costs N × |h_k| bytes, reported in ``cache_bytes_``).
- ``cache="disk"``: the embeddings go to a memory-mapped file in ``cache_dir`` (a temporary folder by default).
- ``cache="none"``: the frozen prefix runs on every batch, without gradients.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitnet._batches import iter_batches
from exitnet._utils import eval_mode, module_device
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.rows import cat_rows, to_device
from exitnet.train.base import Strategy, set_trainable
from exitnet.train.losses import exit_loss

__all__ = ["Layerwise", "split_epochs"]

_CACHES = ("memory", "disk", "none")


def split_epochs(epochs: int, num_stages: int, per_stage: int | Sequence[int] | None) -> list[int]:
    """Epochs of each stage: ``per_stage`` as given (checked against ``epochs``), or ``epochs`` split evenly with the
    remainder going to the deepest stages.

    Example:
        >>> split_epochs(7, 3, None), split_epochs(6, 3, 2), split_epochs(5, 2, [1, 4])
        ([2, 2, 3], [2, 2, 2], [1, 4])
    """
    if per_stage is None:
        base, extra = divmod(epochs, num_stages)
        return [base + (1 if i >= num_stages - extra else 0) for i in range(num_stages)]
    plan = [int(per_stage)] * num_stages if isinstance(per_stage, int) else [int(e) for e in per_stage]
    if len(plan) != num_stages or any(e < 0 for e in plan):
        raise ValueError(f"epochs_per_stage needs {num_stages} non-negative numbers (one per stage), got {per_stage}")
    if sum(plan) != epochs:
        raise ValueError(
            f"layer-wise training of {num_stages} stages with epochs_per_stage={per_stage} takes {sum(plan)} epochs; "
            f"call fit with epochs={sum(plan)} (got {epochs})"
        )
    return plan


class Layerwise(Strategy):
    """Train stage 1 + head 1, freeze, then stage 2 + head 2 on the embeddings, and so on (survey §5.3).

    Args:
        epochs_per_stage: epochs of each phase (one number for all stages, or one per stage); ``None`` splits
            the epochs given to ``fit`` evenly. ``fit``'s ``epochs`` must equal their sum.
        cache: ``"memory"``, ``"disk"`` or ``"none"`` (see the module docstring).
        cache_dir: folder for ``cache="disk"`` (a temporary folder, removed at the end, by default).
        batch_size: batch size of the passes that build the cache.

    Example:
        >>> import exitnet as ee
        >>> ds = ee.data.synthetic(120, num_classes=3, input_shape=(8,))
        >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
        ...                                       sample_input=torch.zeros(1, 8), head="linear")
        >>> history = ee.fit(net, Layerwise(epochs_per_stage=1), ds.train, epochs=2, progress=False)
        >>> len(history.rows)
        2
    """

    name = "layerwise"

    def __init__(
        self,
        epochs_per_stage: int | Sequence[int] | None = None,
        *,
        cache: str = "memory",
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
    ) -> None:
        if cache not in _CACHES:
            raise ValueError(f"unknown cache {cache!r}; choose one of: {', '.join(_CACHES)}")
        self.epochs_per_stage = epochs_per_stage
        self.cache = cache
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.phase_ = 0
        self.cache_bytes_ = 0  # largest cache held at once (RAM for "memory", disk for "disk")
        self._cached: tuple[Any, torch.Tensor] | None = None
        self._tmp: Path | None = None
        self._file: Path | None = None

    def phases(self, net: MultiExitNetwork, epochs: int) -> list[int]:
        return split_epochs(epochs, net.num_exits, self.epochs_per_stage)

    def start_phase(self, net: MultiExitNetwork, phase: int, train: Any) -> Any:
        self.phase_ = phase
        set_trainable(net, False)
        set_trainable([net.stages[phase], net.heads[phase]], True)
        if self.cache == "none" or phase == 0:
            return train
        if self._cached is None:  # a resumed run: run the frozen stages once each, from the inputs
            for stage in range(phase):
                self._cached = self._embed(net, stage, self._cached if self._cached is not None else train)
        else:
            self._cached = self._embed(net, phase - 1, self._cached)
        return self._cached

    def _embed(self, net: MultiExitNetwork, stage: int, source: Any) -> tuple[Any, torch.Tensor]:
        """Run the frozen ``stage`` once over ``source`` (inputs, or the previous embeddings) in eval mode.

        The cache holds ``{"h": stage outputs, "ctx": side inputs}`` per sample; with ``cache="disk"`` the stage
        outputs go to a memory-mapped file (the side inputs, small, stay in memory).
        """
        parts, ctxs, labels = [], [], []
        path: Path | None = None
        if self.cache == "disk":
            if self._tmp is None:
                root = Path(self.cache_dir) if self.cache_dir is not None else None
                if root is not None:
                    root.mkdir(parents=True, exist_ok=True)
                self._tmp = Path(tempfile.mkdtemp(prefix="exitnet-layerwise-", dir=root))
            path = self._tmp / f"stage{stage}.bin"
        device = module_device(net)
        shape: tuple[int, ...] | None = None
        count = 0
        with contextlib.ExitStack() as stack:
            file = stack.enter_context(path.open("wb")) if path is not None else None
            stack.enter_context(torch.no_grad())
            stack.enter_context(eval_mode(net))
            for x, y in iter_batches(source, self.batch_size):
                x = to_device(x, device)
                if stage == 0:
                    net.check_input(x)
                    h, ctx = net.begin(x)
                else:
                    h, ctx = x["h"], x["ctx"]
                out = net.forward_stage(stage, h, ctx)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"layer-wise caching needs stage outputs that are tensors, stage {stage} gives "
                                    f"{type(out).__name__}; use cache='none'")  # fmt: skip
                out = out.float().cpu().contiguous()
                shape, count = tuple(out.shape[1:]), count + out.shape[0]
                labels.append(y.cpu())
                ctxs.append(to_device(ctx, "cpu"))
                if file is not None:
                    file.write(out.numpy().tobytes())
                else:
                    parts.append(out)
        if shape is None:
            raise ValueError("the training data holds no samples")
        self._cached = None  # the previous cache is no longer needed
        if self._file is not None and self._file != path:
            self._file.unlink(missing_ok=True)
        self._file = path
        y_all = torch.cat(labels)
        if path is not None:
            h_all = torch.from_numpy(np.memmap(path, dtype=np.float32, mode="c", shape=(count, *shape)))
        else:
            h_all = torch.cat(parts)
        self.cache_bytes_ = max(self.cache_bytes_, h_all.numel() * h_all.element_size())
        return {"h": h_all, "ctx": cat_rows(ctxs)}, y_all

    def train_mode(self, net: MultiExitNetwork) -> None:
        net.eval()  # frozen stages and heads keep their BatchNorm statistics
        net.stages[self.phase_].train()
        net.heads[self.phase_].train()

    def forward(self, net: MultiExitNetwork, x: Any) -> ExitOutputs:
        k = self.phase_
        if self.cache == "none" or k == 0:
            net.check_input(x)
            with torch.no_grad():
                h, ctx = net.begin(x)
                for i in range(k):
                    h = net.forward_stage(i, h, ctx)
        else:
            h, ctx = x["h"], x["ctx"]
        h = net.forward_stage(k, h, ctx)
        out = net.run_head(k, h, ctx)
        return ExitOutputs((out,), (net.exit_names[k],), task=net.task, mask=net.outputs_mask(ctx))

    def loss(
        self, net: MultiExitNetwork, outputs: ExitOutputs, y: torch.Tensor, *, epoch: int, epochs: int
    ) -> torch.Tensor:
        return exit_loss(outputs, y)  # L_k of eq. (7), mean over the batch

    def finish(self, net: MultiExitNetwork) -> None:
        self._cached = None
        self._file = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def describe(self) -> dict:
        per = self.epochs_per_stage
        return {
            "name": self.name,
            "epochs_per_stage": per if per is None or isinstance(per, int) else list(per),
            "cache": self.cache,
        }
