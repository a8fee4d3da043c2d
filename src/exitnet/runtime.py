"""Real early-exit inference: batched, and each stage runs only on the samples still alive.

For every batch, stage i runs on the samples that have not left yet, head i gives their logits, the policy
decides who leaves, and the rest are *compacted* (``index_select``) before stage i + 1. There is no per-sample
Python loop and one device→host sync per exit (to learn how many samples stay). The FLOPs charged to a sample
are ``CostProfile.exit_flops`` of its exit: exactly what ran for it.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import fx

from exitnet._utils import check_finite, eval_mode
from exitnet.model import MultiExitNetwork
from exitnet.policies import ExitPolicy

__all__ = ["ExitResult", "predict", "stream", "StreamItem", "measure_speedup", "optimize_for_inference"]


@dataclass(frozen=True)
class ExitResult:
    """What :func:`predict` returns: per sample the predicted class, the exit taken and the FLOPs spent.

    Attributes:
        pred: ``[N]`` predicted class.
        exit_index: ``[N]`` exit each sample left at.
        flops: ``[N]`` FLOPs spent on each sample (stages and heads up to its exit).
        seconds: wall-clock seconds of the whole run (device synchronised).
        num_exits: number of exits of the network.
    """

    pred: torch.Tensor
    exit_index: torch.Tensor
    flops: torch.Tensor
    seconds: float
    num_exits: int

    @property
    def exit_fractions(self) -> list[float]:
        """Fraction of samples leaving at each exit (the survey's I_i - I_{i+1})."""
        n = max(1, self.exit_index.numel())
        counts = torch.bincount(self.exit_index, minlength=self.num_exits)
        return [float(c) / n for c in counts]

    @property
    def mean_flops(self) -> float:
        return float(self.flops.double().mean()) if self.flops.numel() else 0.0

    def accuracy(self, y: torch.Tensor) -> float:
        y = y.reshape(-1).to(self.pred.device)
        if y.shape != self.pred.shape:
            raise ValueError(f"{self.pred.numel()} predictions but {y.numel()} labels")
        return float((self.pred == y).double().mean())


def _check(net: MultiExitNetwork, policy: ExitPolicy, batch_size: int) -> None:
    if not isinstance(net, MultiExitNetwork):
        raise TypeError(f"predict needs a MultiExitNetwork, got {type(net).__name__}")
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"predict needs an ExitPolicy, got {type(policy).__name__}")
    policy.check_is_fitted()
    thresholds = getattr(policy, "thresholds_", None)
    if isinstance(thresholds, list) and len(thresholds) != net.num_exits - 1:
        raise ValueError(
            f"the policy has {len(thresholds)} thresholds but the network has {net.num_exits} exits "
            f"(needs {net.num_exits - 1}, one per auxiliary exit); fit or calibrate it on this network"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (an integer), got {batch_size!r}")


def _take(h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of ``h`` along dim 0, keeping a channels-last layout (``index_select`` would make it NCHW)."""
    if h.dim() == 4 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last):
        return h[rows]
    return h.index_select(0, rows)


def _to_device(net: MultiExitNetwork, xb: torch.Tensor, device: torch.device) -> torch.Tensor:
    xb = xb.to(device, non_blocking=True)
    if getattr(net, "input_memory_format", None) is torch.channels_last and xb.dim() == 4:
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb


def optimize_for_inference(
    net: MultiExitNetwork, *, fuse_batchnorm: bool = True, channels_last: bool | None = None
) -> MultiExitNetwork:
    """An inference-only copy of ``net``: BatchNorm folded into the preceding conv/linear, and (for image
    networks) channels-last memory layout. Outputs equal ``net``'s in eval mode up to float rounding.

    On a CPU this makes time per stage follow FLOPs much more closely (BatchNorm is memory-bound work that
    FLOPs do not count, and oneDNN's convolutions run faster channels-last), so early exits save the time
    their FLOPs predict. The copy keeps ``net``'s cost profile: FLOPs are those of the original network.

    Args:
        net: a trained network (left untouched).
        fuse_batchnorm: fold BatchNorm layers into the conv/linear before them (``torch.fx`` pass).
        channels_last: use channels-last layout; ``None`` = when the input is an image (C, H, W).
    """
    from torch.fx.experimental.optimization import fuse

    profile_ = net.cost_profile()
    out = copy.deepcopy(net).eval()
    if fuse_batchnorm:
        out.stages = torch.nn.ModuleList([fuse(fx.symbolic_trace(s)) for s in out.stages])
    if channels_last is None:
        channels_last = net.input_shape is not None and len(net.input_shape) == 3
    if channels_last:
        out = out.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        out.input_memory_format = torch.channels_last
    out._cost_profile = profile_
    for param in out.parameters():
        param.requires_grad_(False)
    return out


def _run_batch(
    net: MultiExitNetwork, policy: ExitPolicy, xb: torch.Tensor, pred: torch.Tensor, exit_index: torch.Tensor
) -> None:
    """Early-exit one batch, writing into ``pred`` and ``exit_index`` (both ``[b]``, on xb's device)."""
    last = net.num_exits - 1
    alive = torch.arange(xb.shape[0], device=xb.device)  # original row of each live sample
    state = policy.init_state(xb.shape[0], xb.device)
    h = xb
    for i in range(net.num_exits):
        h = net.stages[i](h)
        logits = net.heads[i](h)  # [b_alive, C]
        if i == last:
            pred[alive] = logits.argmax(dim=-1)
            exit_index[alive] = last
            return
        leaves, state = policy.step(i, logits, state)
        out = leaves.nonzero().squeeze(1)  # the one sync of this exit
        if out.numel() == 0:
            continue
        pred[alive[out]] = logits.index_select(0, out).argmax(dim=-1)
        exit_index[alive[out]] = i
        if out.numel() == alive.numel():
            return
        keep = (~leaves).nonzero().squeeze(1)
        alive = alive.index_select(0, keep)
        h = _take(h, keep)  # compaction: left samples never reach stage i + 1
        state = {k: v.index_select(0, keep) for k, v in state.items()}


def predict(
    net: MultiExitNetwork,
    x: torch.Tensor,
    policy: ExitPolicy,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> ExitResult:
    """Early-exit inference over ``x`` with ``policy``, in batches of ``batch_size``.

    Args:
        net: the multi-exit network (put in eval mode for the call).
        x: inputs ``[N, *input_shape]`` (any device; moved batch by batch to ``device``).
        policy: a fitted exit policy.
        batch_size: samples per batch; memory stays bounded by it whatever N is.
        device: where to run; defaults to the network's device.

    Returns:
        :class:`ExitResult` with ``pred``, ``exit_index``, ``flops`` (CPU tensors) and ``seconds``.

    Raises:
        ValueError: input of the wrong shape, or NaN/inf in the input (no exit is guessed for those).

    Example:
        >>> from exitnet.backbones import mlp
        >>> from exitnet.policies import MaxProb
        >>> net = MultiExitNetwork.from_module(mlp(16, [32, 32], 4), ["blocks.0"], num_classes=4,
        ...                                    sample_input=torch.zeros(1, 16), head="linear")
        >>> r = predict(net, torch.randn(10, 16), MaxProb(thresholds=0.0).fit(torch.zeros(2, 1, 4)))
        >>> r.exit_index.tolist() == [0] * 10, r.pred.shape
        (True, torch.Size([10]))
    """
    _check(net, policy, batch_size)
    net.check_input(x)
    check_finite(x, "the input")
    if device is None:
        p = next(net.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    exit_flops = torch.tensor(net.cost_profile().exit_flops, dtype=torch.long)  # before the clock starts
    n = x.shape[0]
    pred = torch.empty(n, dtype=torch.long, device=device)
    exit_index = torch.empty(n, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with eval_mode(net), torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        for start in range(0, n, batch_size):
            xb = _to_device(net, x[start : start + batch_size], device)
            _run_batch(net, policy, xb, pred[start : start + batch_size], exit_index[start : start + batch_size])
        sync()
        seconds = time.perf_counter() - t0
    exit_index = exit_index.cpu()
    return ExitResult(pred.cpu(), exit_index, exit_flops[exit_index], seconds, net.num_exits)


@dataclass(frozen=True)
class StreamItem:
    """One sample's answer from :func:`stream`."""

    pred: int
    exit_index: int
    flops: int
    seconds: float


def stream(net: MultiExitNetwork, samples: Iterable[torch.Tensor], policy: ExitPolicy) -> Iterator[StreamItem]:
    """Per-sample (batch 1) early exit, for inputs that arrive one at a time (a sensor, a request queue).

    Each sample may be ``[*input_shape]`` or ``[1, *input_shape]``; each answer is yielded as soon as it exists.
    """
    _check(net, policy, 1)
    exit_flops = net.cost_profile().exit_flops
    p = next(net.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    pred = torch.empty(1, dtype=torch.long, device=device)
    exit_index = torch.empty(1, dtype=torch.long, device=device)
    with eval_mode(net), torch.inference_mode():
        for sample in samples:
            xb = sample.unsqueeze(0) if net.input_shape is not None and sample.dim() == len(net.input_shape) else sample
            net.check_input(xb)
            if xb.shape[0] != 1:
                raise ValueError(f"stream takes one sample at a time, got a batch of {xb.shape[0]}")
            check_finite(xb, "the input")
            t0 = time.perf_counter()
            _run_batch(net, policy, _to_device(net, xb, device), pred, exit_index)
            e = int(exit_index[0])
            yield StreamItem(int(pred[0]), e, int(exit_flops[e]), time.perf_counter() - t0)


def _backbone_seconds(net: MultiExitNetwork, x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with eval_mode(net), torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        for start in range(0, x.shape[0], batch_size):
            net.forward_backbone(_to_device(net, x[start : start + batch_size], device))
        sync()
        return time.perf_counter() - t0


def measure_speedup(
    net: MultiExitNetwork, x: torch.Tensor, policy: ExitPolicy, *, batch_size: int = 256, repeats: int = 7
) -> dict[str, float]:
    """Wall-clock speed-up of early exit over the backbone alone, on the same inputs and batch size.

    The two runs are interleaved ``repeats`` times after one warm-up each; medians are compared, and the
    FLOPs-predicted speed-up (backbone FLOPs ÷ mean FLOPs spent) is reported next to it.

    Returns:
        ``backbone_seconds``, ``early_exit_seconds`` (medians), ``speedup_wall``, ``speedup_flops``,
        ``realized_over_predicted`` and the spread (max/min - 1) of each timing.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    p = next(net.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    predict(net, x, policy, batch_size=batch_size)  # warm-up
    _backbone_seconds(net, x, batch_size, device)
    full, early = [], []
    result = None
    for _ in range(repeats):
        full.append(_backbone_seconds(net, x, batch_size, device))
        result = predict(net, x, policy, batch_size=batch_size)
        early.append(result.seconds)
    assert result is not None
    med_full, med_early = statistics.median(full), statistics.median(early)
    speedup_flops = net.cost_profile().backbone_flops / max(1e-12, result.mean_flops)
    speedup_wall = med_full / med_early
    return {
        "backbone_seconds": med_full,
        "early_exit_seconds": med_early,
        "speedup_wall": speedup_wall,
        "speedup_flops": speedup_flops,
        "realized_over_predicted": speedup_wall / speedup_flops,
        "backbone_spread": max(full) / min(full) - 1,
        "early_exit_spread": max(early) / min(early) - 1,
        "repeats": repeats,
        "batch_size": batch_size,
    }
