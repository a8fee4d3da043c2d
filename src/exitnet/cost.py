"""Cost of a multi-exit network: FLOPs (and optionally latency) per stage, per head and up to each exit.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; element-wise ops
such as ReLU and normalisation count 0, as in that counter). Vocabulary of survey §4: ``stage_flops[i]`` is
γ_{f_i}, ``head_flops[i]`` is γ_{c_i}, and ``exit_flops[i]`` is what a sample that leaves at exit i has paid:
stages 0..i and heads 0..i.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from exitnet._utils import eval_mode

__all__ = ["CostProfile", "profile", "expected_cost"]


class _Staged(Protocol):
    stages: nn.ModuleList
    heads: nn.ModuleList
    exit_names: tuple[str, ...]


@dataclass(frozen=True)
class CostProfile:
    """Per-sample cost of every stage and head of a multi-exit network.

    Attributes:
        exit_names: one per exit.
        stage_flops: γ_{f_i}, FLOPs of stage i for one sample.
        head_flops: γ_{c_i}, FLOPs of head i for one sample (0 for the last, identity head).
        stage_params: parameters of each stage.
        head_params: parameters of each head.
        stage_seconds: measured seconds per batch of each stage (``None`` unless measured).
        head_seconds: measured seconds per batch of each head (``None`` unless measured).
        batch_size: batch size of the latency measurement (``None`` unless measured).
    """

    exit_names: tuple[str, ...]
    stage_flops: tuple[int, ...]
    head_flops: tuple[int, ...]
    stage_params: tuple[int, ...]
    head_params: tuple[int, ...]
    stage_seconds: tuple[float, ...] | None = None
    head_seconds: tuple[float, ...] | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        n = len(self.exit_names)
        for field in ("stage_flops", "head_flops", "stage_params", "head_params"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} entries for {n} exits")

    @property
    def num_exits(self) -> int:
        return len(self.exit_names)

    @property
    def exit_flops(self) -> tuple[int, ...]:
        """What a sample leaving at exit i has paid: Σ_{k≤i} (γ_{f_k} + γ_{c_k})."""
        out, total = [], 0
        for s, h in zip(self.stage_flops, self.head_flops, strict=True):
            total += s + h
            out.append(total)
        return tuple(out)

    @property
    def depth_flops(self) -> tuple[int, ...]:
        """Backbone FLOPs up to exit i, heads excluded: Σ_{k≤i} γ_{f_k}."""
        out, total = [], 0
        for s in self.stage_flops:
            total += s
            out.append(total)
        return tuple(out)

    @property
    def backbone_flops(self) -> int:
        """FLOPs of the backbone alone (all stages plus the final head, no auxiliary head)."""
        return sum(self.stage_flops) + self.head_flops[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_flops"] = list(self.exit_flops)
        d["backbone_flops"] = self.backbone_flops
        return d


def _flops(fn: Any, *args: torch.Tensor) -> tuple[int, Any]:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _seconds(fn: Any, x: torch.Tensor, repeats: int) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    fn(x)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(net: _Staged, sample_input: torch.Tensor, *, latency: bool = False, repeats: int = 20) -> CostProfile:
    """Count FLOPs (and optionally time) each stage and head of ``net`` on ``sample_input``.

    Args:
        net: a :class:`~exitnet.model.MultiExitNetwork` (anything with ``stages``, ``heads``, ``exit_names``).
        sample_input: an input batch; FLOPs are divided by its batch size (per sample).
        latency: also measure the median seconds of each stage and head on this batch.
        repeats: timed repetitions per piece when ``latency`` is on.

    Example:
        >>> from exitnet.backbones import mlp
        >>> from exitnet.model import MultiExitNetwork
        >>> net = MultiExitNetwork.from_module(mlp(64, [32, 32], 10), ["blocks.0"], num_classes=10,
        ...                                    sample_input=torch.zeros(1, 64), head="linear")
        >>> p = profile(net, torch.zeros(1, 64))
        >>> p.stage_flops, p.head_flops, p.exit_flops
        ((4096, 2688), (640, 0), (4736, 7424))
    """
    if sample_input.dim() < 1 or sample_input.shape[0] < 1:
        raise ValueError("profile needs a sample input batch with at least one sample")
    batch = sample_input.shape[0]
    stage_flops, head_flops, stage_s, head_s = [], [], [], []
    with eval_mode(net), torch.no_grad():  # type: ignore[arg-type]
        h = sample_input
        for stage, head in zip(net.stages, net.heads, strict=True):
            if latency:
                stage_s.append(_seconds(stage, h, repeats))
            f, h = _flops(stage, h)
            stage_flops.append(f // batch)
            if latency:
                head_s.append(_seconds(head, h, repeats))
            f, _ = _flops(head, h)
            head_flops.append(f // batch)
    return CostProfile(
        exit_names=tuple(net.exit_names),
        stage_flops=tuple(stage_flops),
        head_flops=tuple(head_flops),
        stage_params=tuple(_params(s) for s in net.stages),
        head_params=tuple(_params(h) for h in net.heads),
        stage_seconds=tuple(stage_s) if latency else None,
        head_seconds=tuple(head_s) if latency else None,
        batch_size=batch if latency else None,
    )


def expected_cost(exit_index: torch.Tensor | Sequence[int], exit_cost: Sequence[float]) -> float:
    """Average cost per sample, eq. (12) of the survey divided by the number of samples n.

    ``C[f] = Σ_i Σ_j δ_ij ε_j`` where δ_ij = 1 if sample i reached exit j (``exit_index[i] >= j``) and
    ε_j = ``exit_cost[j] - exit_cost[j-1]`` is the extra cost of exit j over exit j-1 (ε_0 = ``exit_cost[0]``).
    That sum telescopes to the cumulative cost of each sample's exit, which is how it is computed.

    Args:
        exit_index: exit taken by each sample.
        exit_cost: cumulative cost of leaving at each exit (e.g. ``CostProfile.exit_flops``).

    Example:
        >>> expected_cost([0, 2, 1, 2], [10, 25, 40])
        28.75
    """
    idx = torch.as_tensor(exit_index, dtype=torch.long).reshape(-1)
    cost = torch.as_tensor(list(exit_cost), dtype=torch.float64)
    if idx.numel() == 0:
        raise ValueError("expected_cost needs at least one sample")
    if int(idx.min()) < 0 or int(idx.max()) >= cost.numel():
        raise ValueError(f"exit indices must lie in [0, {cost.numel() - 1}], got {int(idx.min())}..{int(idx.max())}")
    return float(cost[idx.cpu()].mean())
