"""Synthetic exit logits shared by the policy and calibration tests (importable: tests/ is on sys.path)."""

from __future__ import annotations

import torch


def exit_logits(seed: int = 0, exits: int = 4, n: int = 300, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [E, N, C] whose exits get better with depth, and labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(exits, n, classes, generator=g)
    for i in range(exits):
        logits[i, torch.arange(n), y] += (1.0 + i) * torch.rand(n, generator=g) * 2
    return logits, y
