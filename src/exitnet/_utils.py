"""Small private helpers shared by several layers (no exitnet imports here)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own previous mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def shape_str(shape: Sequence[int]) -> str:
    """``(16, 8, 8)`` -> ``"(B, 16, 8, 8)"``: a per-sample shape as error messages print it."""
    return "(" + ", ".join(["B", *(str(int(s)) for s in shape)]) + ")"


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf (one device sync)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum()) if x.dim() > 1 else -1
        where = f" in {bad} sample(s)" if bad >= 0 else ""
        raise ValueError(f"{what} contains NaN or inf{where}; exitnet does not guess an exit for such inputs")


def check_probability(value: float, name: str) -> float:
    """Return ``value`` as float if it lies in [0, 1], else raise a ``ValueError`` naming it."""
    v = float(value)
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return v
