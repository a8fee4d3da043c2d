"""Cost of a multi-exit network: FLOPs and measured seconds per stage, per head and up to each exit.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; element-wise ops
such as ReLU and normalisation count 0, as in that counter). Vocabulary of survey §4: ``stage_flops[i]`` is
γ_{f_i}, ``head_flops[i]`` is γ_{c_i}, and ``exit_flops[i]`` is what a sample that leaves at exit i has paid:
stages 0..i and heads 0..i.

FLOPs mispredict time where work is memory-bound (normalisation, element-wise ops, copies) or where per-call
overhead dominates (small batches). So a profile also holds :class:`Timing` s: measured seconds per sample of
each stage, head and policy step, for one device, thread count and batch size each (:func:`measure_time`);
``exit_seconds`` is then the time twin of ``exit_flops``, and calibration can budget either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from exitnet._utils import eval_mode
from exitnet.rows import leaves, num_rows
from exitnet.timing import clock_for, median_seconds

__all__ = ["CostProfile", "Timing", "profile", "measure_time", "expected_cost"]


class _Staged(Protocol):
    """What :func:`profile` needs of a network: the seam of :class:`~exitnet.model.MultiExitNetwork`."""

    stages: nn.ModuleList
    heads: nn.ModuleList
    exit_names: tuple[str, ...]

    def begin(self, x: Any) -> tuple[Any, dict[str, Any]]: ...

    def forward_stage(self, i: int, h: Any, ctx: Any = None) -> Any: ...

    def run_head(self, i: int, h: Any, ctx: Any = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Timing:
    """Measured seconds *per sample* of each stage, head and policy step, at one device, thread count and batch size.

    Attributes:
        device: ``"cpu"``, ``"cuda"``, …
        threads: torch's intra-op threads during the measurement.
        batch_size: the batch the pieces were timed on (per-sample seconds = batch seconds / batch size).
        stage_seconds: per stage (the prologue counts as stage 0's).
        head_seconds: per head (the last, identity head costs ~0).
        policy_seconds: per auxiliary exit, the exit decision (``policy.step``); zeros when no policy was timed.
        clock: ``"thread_time"``, ``"perf_counter"`` or ``"cuda_events"`` (see :func:`exitnet.timing.clock_for`).
    """

    device: str
    threads: int
    batch_size: int
    stage_seconds: tuple[float, ...]
    head_seconds: tuple[float, ...]
    policy_seconds: tuple[float, ...]
    clock: str = "perf_counter"

    @property
    def exit_seconds(self) -> tuple[float, ...]:
        """Seconds a sample leaving at exit i has paid: stages, heads and decisions 0..i (no decision at the last)."""
        out, total = [], 0.0
        for i, (s, h) in enumerate(zip(self.stage_seconds, self.head_seconds, strict=True)):
            total += s + h + (self.policy_seconds[i] if i < len(self.policy_seconds) else 0.0)
            out.append(total)
        return tuple(out)

    @property
    def backbone_seconds(self) -> float:
        """Seconds per sample of the backbone alone (every stage and the final head; no exit is decided)."""
        return sum(self.stage_seconds) + self.head_seconds[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_seconds"] = list(self.exit_seconds)
        d["backbone_seconds"] = self.backbone_seconds
        return d


@dataclass(frozen=True)
class CostProfile:
    """Per-sample cost of every stage and head of a multi-exit network.

    Attributes:
        exit_names: one per exit.
        stage_flops: γ_{f_i}, FLOPs of stage i for one sample.
        head_flops: γ_{c_i}, FLOPs of head i for one sample (0 for the last, identity head).
        stage_params: parameters of each stage.
        head_params: parameters of each head.
        stage_seconds: measured seconds per batch of each stage (``None`` unless ``profile(latency=True)``).
        head_seconds: measured seconds per batch of each head (``None`` unless measured).
        batch_size: batch size of that latency measurement (``None`` unless measured).
        timings: measured :class:`Timing` s (per sample), one per device, thread count and batch size.
    """

    exit_names: tuple[str, ...]
    stage_flops: tuple[int, ...]
    head_flops: tuple[int, ...]
    stage_params: tuple[int, ...]
    head_params: tuple[int, ...]
    stage_seconds: tuple[float, ...] | None = None
    head_seconds: tuple[float, ...] | None = None
    batch_size: int | None = None
    timings: tuple[Timing, ...] = ()

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

    def timing(self, *, batch_size: int | None = None, device: str | None = None, threads: int | None = None) -> Timing:
        """The measured :class:`Timing` that matches (the latest one when several do; the nearest batch size when
        none has exactly ``batch_size``).

        Raises:
            ValueError: nothing was measured for this device / thread count; the message says how to measure.
        """
        found = [
            t
            for t in self.timings
            if (device is None or t.device == device) and (threads is None or t.threads == threads)
        ]
        if not found:
            raise ValueError(
                "this cost profile has no measured time"
                + (f" for device={device!r}, threads={threads}" if device or threads else "")
                + "; measure it: net.measure_time(x, batch_size=…) (exitnet.cost.measure_time)"
            )
        if batch_size is None:
            return found[-1]
        return min(reversed(found), key=lambda t: abs(t.batch_size - batch_size))

    @property
    def exit_seconds(self) -> tuple[float, ...]:
        """Seconds per sample paid by a sample leaving at each exit, from the latest :class:`Timing`."""
        return self.timing().exit_seconds

    def with_timing(self, timing: Timing) -> CostProfile:
        """A copy with ``timing`` added (replacing one of the same device, thread count and batch size)."""
        if len(timing.stage_seconds) != self.num_exits:
            raise ValueError(f"a timing of {len(timing.stage_seconds)} stages for a profile of {self.num_exits} exits")
        keep = tuple(
            t
            for t in self.timings
            if (t.device, t.threads, t.batch_size) != (timing.device, timing.threads, timing.batch_size)
        )
        return dataclasses.replace(self, timings=(*keep, timing))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_flops"] = list(self.exit_flops)
        d["backbone_flops"] = self.backbone_flops
        d["timings"] = [t.to_dict() for t in self.timings]
        return d


def _flops(fn: Any, *args: Any) -> tuple[int, Any]:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _seconds(fn: Any, *args: Any, cuda: bool = False, repeats: int, clock: str | None = None) -> float:
    """Median seconds of ``fn(*args)`` over ``repeats`` calls after one warm-up."""
    return median_seconds(lambda: fn(*args), repeats=repeats, device="cuda" if cuda else "cpu", clock=clock)


def profile(net: _Staged, sample_input: Any, *, latency: bool = False, repeats: int = 20) -> CostProfile:
    """Count FLOPs (and optionally time) each stage and head of ``net`` on ``sample_input``, through the network's
    seam (``begin``, ``forward_stage``, ``run_head``); the prologue's cost counts as stage 0's.

    Args:
        net: a :class:`~exitnet.model.MultiExitNetwork`.
        sample_input: an input batch (a tensor, or the tuple / dict a multi-input network takes); FLOPs are
            divided by its batch size (per sample).
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
    batch = num_rows(sample_input)
    if batch < 1:
        raise ValueError("profile needs a sample input batch with at least one sample")
    cuda = any(t.is_cuda for t in leaves(sample_input))
    stage_flops, head_flops, stage_s, head_s = [], [], [], []
    with eval_mode(net), torch.no_grad():  # type: ignore[arg-type]
        begin_flops, (h, ctx) = _flops(net.begin, sample_input)
        begin_s = _seconds(net.begin, sample_input, cuda=cuda, repeats=repeats) if latency else 0.0
        for i in range(len(net.stages)):
            if latency:
                stage_s.append(
                    _seconds(net.forward_stage, i, h, ctx, cuda=cuda, repeats=repeats) + (begin_s if i == 0 else 0.0)
                )
            f, h = _flops(net.forward_stage, i, h, ctx)
            stage_flops.append((f + (begin_flops if i == 0 else 0)) // batch)
            if latency:
                head_s.append(_seconds(net.run_head, i, h, ctx, cuda=cuda, repeats=repeats))
            f, _ = _flops(net.run_head, i, h, ctx)
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


def measure_time(net: _Staged, x: Any, *, policy: Any = None, repeats: int = 9) -> Timing:
    """Time each stage, head and exit decision of ``net`` on the batch ``x`` (its rows = the batch size).

    Each piece runs on the real output of the piece before it (in eval mode, without gradients), ``repeats`` times
    after a warm-up; the median is divided by the batch size. On a CPU with one torch thread the clock is the
    thread's CPU time (:func:`exitnet.timing.clock_for`), so a busy machine does not inflate the numbers.

    Args:
        net: a :class:`~exitnet.model.MultiExitNetwork` (put it through ``optimize_for_inference`` first to time
            what the runtime runs).
        x: an input batch.
        policy: an exit policy whose ``step`` is timed at every auxiliary exit (``None``: decisions count 0).
        repeats: timed calls per piece.

    Example:
        >>> from exitnet.backbones import mlp
        >>> from exitnet.model import MultiExitNetwork
        >>> net = MultiExitNetwork.from_module(mlp(64, [32, 32], 10), ["blocks.0"], num_classes=10,
        ...                                    sample_input=torch.zeros(1, 64), head="linear")
        >>> t = measure_time(net, torch.zeros(8, 64), repeats=2)
        >>> t.batch_size, len(t.exit_seconds)
        (8, 2)
    """
    batch = num_rows(x)
    if batch < 1:
        raise ValueError("measure_time needs a batch with at least one sample")
    first = leaves(x)[0]
    cuda = first.is_cuda
    clock = clock_for(first.device)
    stage_s, head_s, policy_s = [], [], []
    num = len(net.stages)
    if policy is not None:
        policy.check_exits(num, task=getattr(net, "task", "classification"))
    with eval_mode(net), torch.inference_mode():  # type: ignore[arg-type]
        begin_s = _seconds(net.begin, x, cuda=cuda, repeats=repeats, clock=clock)
        h, ctx = net.begin(x)
        state: Any = None
        for i in range(num):
            stage_s.append(_seconds(net.forward_stage, i, h, ctx, cuda=cuda, repeats=repeats, clock=clock))
            h = net.forward_stage(i, h, ctx)
            head_s.append(_seconds(net.run_head, i, h, ctx, cuda=cuda, repeats=repeats, clock=clock))
            if policy is None or i == num - 1:
                continue
            out = net.run_head(i, h, ctx)
            if state is None:
                state = policy.init_state(batch, out.device, output_shape=tuple(out.shape[1:]))
            step_state = state
            policy_s.append(_seconds(lambda o=out, st=step_state, i=i: policy.step(i, o, st), cuda=cuda,
                                     repeats=repeats, clock=clock))  # fmt: skip
            _, state = policy.step(i, out, state)
    stage_s[0] += begin_s
    if len(policy_s) < num - 1:
        policy_s = [0.0] * (num - 1)
    return Timing(
        device=first.device.type,
        threads=torch.get_num_threads(),
        batch_size=batch,
        stage_seconds=tuple(s / batch for s in stage_s),
        head_seconds=tuple(s / batch for s in head_s),
        policy_seconds=tuple(s / batch for s in policy_s),
        clock=clock,
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
