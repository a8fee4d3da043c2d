"""Training state for resuming a run: weights, optimiser, scheduler, epoch, step and RNG states, no pickle.

Everything lives in one safetensors file (format ``exitnet-training-state``): the model's tensors under
``model/<name>``, every other tensor (optimiser moments, RNG states) under ``state/<n>``, and the structure
around them (optimiser param groups, scheduler counters, numbers) as JSON in the manifest. It is written
atomically, like a checkpoint, so a run killed while saving keeps its previous state file.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exitnet.checkpoint._files import (
    STATE_FORMAT,
    CheckpointError,
    decode,
    encode,
    is_int,
    open_manifest,
    read_tensors,
    write,
)
from exitnet.checkpoint._files import field as _field
from exitnet.checkpoint._network import load_state

_MODEL = "model/"
_STATE = "state/"


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states that training draws from: torch (CPU and every initialised CUDA device), numpy's
    legacy global generator and Python's ``random``. Give it back with :func:`restore_rng_state`.

    Example:
        >>> s = capture_rng_state(); a = torch.rand(1); restore_rng_state(s); torch.equal(a, torch.rand(1))
        True
    """
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002  (the legacy global generator is what old code draws from)
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs from :func:`capture_rng_state`'s dict (keys it does not know are left to the caller)."""
    if not isinstance(state, dict):
        raise TypeError(f"an RNG state must be a dict from capture_rng_state, got {type(state).__name__}")
    try:
        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if "numpy" in state:
            np.random.set_state(state["numpy"])  # noqa: NPY002
        if "python" in state:
            random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = list(state["cuda"])
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"not a valid RNG state: {err}") from err


@dataclass
class TrainingState:
    """What :func:`load_training_state` returns.

    Attributes:
        model: the network's state dict (CPU tensors).
        optimizer: the optimiser's state dict, or ``None``.
        scheduler: the LR scheduler's state dict, or ``None``.
        epoch: epochs completed when it was saved (a resumed run starts at this epoch index).
        step: optimiser steps taken when it was saved.
        rng_state: the RNG states saved with it (see :func:`capture_rng_state`), or ``None``.
        extra: anything else the caller stored (numbers, strings, lists, dicts, tensors).
        exit_names: the network's exit names, when it was a ``MultiExitNetwork``.
    """

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    epoch: int
    step: int
    rng_state: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    exit_names: list[str] | None = None
    path: Path | None = None

    def restore(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        *,
        rng: bool = True,
    ) -> None:
        """Load the weights into ``net``, the states into ``optimizer`` / ``scheduler``, and set the RNGs."""
        where = self.path or Path("training state")
        names = getattr(net, "exit_names", None)
        if self.exit_names is not None and names is not None and list(names) != self.exit_names:
            raise CheckpointError(f"{where}: saved for exits {self.exit_names}, the network has {list(names)}")
        load_state(net, self.model, where)
        for what, obj, state in (("optimizer", optimizer, self.optimizer), ("scheduler", scheduler, self.scheduler)):
            if obj is None:
                continue
            if state is None:
                raise CheckpointError(f"{where}: holds no {what} state to restore")
            try:
                obj.load_state_dict(state)
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise CheckpointError(f"{where}: the saved {what} state does not fit this {what}: {err}") from err
        if rng and self.rng_state is not None:
            restore_rng_state(self.rng_state)


def _state_dict(obj: Any, what: str) -> dict[str, Any] | None:
    if obj is None or isinstance(obj, dict):
        return obj
    if callable(getattr(obj, "state_dict", None)):
        return obj.state_dict()
    raise TypeError(f"{what} must be an object with state_dict(), a state dict or None, got {type(obj).__name__}")


def save_training_state(
    path: str | os.PathLike,
    *,
    net: nn.Module,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    scheduler: Any = None,
    epoch: int,
    step: int = 0,
    rng_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write everything a resumed run needs to ``path`` (safetensors + JSON, atomically, no pickle).

    Args:
        path: destination file (``.safetensors``).
        net: the network being trained (any ``nn.Module``).
        optimizer: the optimiser (or its state dict).
        scheduler: the LR scheduler (or its state dict).
        epoch: epochs completed (the epoch index a resumed run starts at).
        step: optimiser steps taken.
        rng_state: RNG states to keep; ``None`` captures the global ones now (:func:`capture_rng_state`).
            Extra entries (a DataLoader generator's ``get_state()``, say) are kept as they are.
        extra: anything else: numbers, strings, lists, tuples, dicts, tensors, numpy arrays.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> net = torch.nn.Linear(3, 2); opt = torch.optim.Adam(net.parameters())
        >>> net(torch.ones(1, 3)).sum().backward(); opt.step()
        >>> p = save_training_state(Path(tempfile.mkdtemp()) / "s.safetensors", net=net, optimizer=opt, epoch=1, step=1)
        >>> s = load_training_state(p); s.epoch, s.optimizer["param_groups"][0]["betas"]
        (1, (0.9, 0.999))
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    for name, value in (("epoch", epoch), ("step", step)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    tensors = {_MODEL + k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    structure = {
        "optimizer": encode(_state_dict(optimizer, "optimizer"), state, _STATE, "optimizer"),
        "scheduler": encode(_state_dict(scheduler, "scheduler"), state, _STATE, "scheduler"),
        "rng_state": encode(capture_rng_state() if rng_state is None else rng_state, state, _STATE, "rng_state"),
        "extra": encode(extra or {}, state, _STATE, "extra"),
    }
    tensors.update(state)
    names = getattr(net, "exit_names", None)
    manifest = {
        "format": STATE_FORMAT,
        "epoch": int(epoch),
        "step": int(step),
        "exit_names": list(names) if names is not None else None,
        "structure": structure,
    }
    return write(path, tensors, manifest)


def load_training_state(path: str | os.PathLike) -> TrainingState:
    """Read a file written by :func:`save_training_state`, checked (format, version, checksums, structure).

    Raises:
        CheckpointError: missing, not a training state, truncated, corrupt or tampered with.
    """
    p, m = open_manifest(path, STATE_FORMAT)
    epoch = _field(p, m, "epoch", lambda v: is_int(v) and v >= 0, "a non-negative integer")
    step = _field(p, m, "step", lambda v: is_int(v) and v >= 0, "a non-negative integer")
    names = _field(
        p,
        m,
        "exit_names",
        lambda v: v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
        "a list of exit names or null",
    )
    structure = _field(
        p,
        m,
        "structure",
        lambda v: isinstance(v, dict) and {"optimizer", "scheduler", "rng_state", "extra"} <= set(v),
        "an object with optimizer, scheduler, rng_state and extra",
    )
    tensors = read_tensors(p, m)
    used: set[str] = set()
    try:
        parts = {k: decode(structure[k], tensors, used) for k in ("optimizer", "scheduler", "rng_state", "extra")}
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{p}: the training state's structure is corrupt: {err}") from err
    stray = sorted(k for k in tensors if not k.startswith(_MODEL) and k not in used)
    if stray:
        raise CheckpointError(f"{p}: holds tensors that nothing refers to: {stray[:5]}")
    for key, kind in (("optimizer", dict), ("scheduler", dict), ("rng_state", dict), ("extra", dict)):
        if parts[key] is not None and not isinstance(parts[key], kind):
            raise CheckpointError(f"{p}: {key} must be an object, got {type(parts[key]).__name__}")
    return TrainingState(
        model={k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)},
        optimizer=parts["optimizer"],
        scheduler=parts["scheduler"],
        epoch=epoch,
        step=step,
        rng_state=parts["rng_state"],
        extra=parts["extra"] or {},
        exit_names=names,
        path=p,
    )
