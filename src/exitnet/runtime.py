"""Real early-exit inference: batched, and each stage runs only on the samples still alive.

For every batch, stage i runs on the samples that have not left yet, head i gives their outputs, the policy
decides who leaves, and the rest are *compacted* with :func:`exitnet.take_rows` (the stream ``h``, the side
inputs ``ctx`` and the policy state alike) before stage i + 1. There is no per-sample Python loop and one
device→host sync per exit (how many samples stay).

**Rebatching** (``rebatch=True``, the default of :func:`predict`): the survivors of exit i are queued across input
batches, and stage i + 1 runs once a full batch of them is there; so a deep stage runs on full batches instead of
the few samples each input batch sends it. At most one partial batch waits per level (memory stays bounded by the
batch size); when nobody leaves and nothing waits, a batch goes straight on (no copy). Parts whose shapes differ
(sequences of another length) are never mixed: the waiting ones run first.

The cost charged to a sample is the network's :class:`~exitnet.cost.CostProfile` for its input shape at its exit:
exactly what ran for it.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from exitnet._utils import eval_mode, module_device
from exitnet.model import MultiExitNetwork
from exitnet.policies import ExitPolicy
from exitnet.rows import Shared, cat_rows, leaves, num_rows, slice_rows, take_rows, to_device
from exitnet.scores import ScoreFn, accuracy_score, as_targets, default_score, prediction

__all__ = [
    "ExitResult",
    "Scheduler",
    "predict",
    "measure_speedup",
    "run_backbone",
    "stream",
    "StreamItem",
    "optimize_for_inference",
    "check_inputs",
]


@dataclass(frozen=True)
class ExitResult:
    """What :func:`predict` returns: per sample the prediction, the exit taken and the FLOPs spent.

    Attributes:
        pred: ``[N, *]``: the predicted class (``[N, T]`` per position) or, for regression, the predicted values.
        exit_index: ``[N]`` exit each sample left at.
        flops: ``[N]`` FLOPs spent on each sample (stages and heads up to its exit, for its input shape).
        seconds: wall-clock seconds of the whole run (device synchronised; input checks are outside the clock).
        num_exits: number of exits of the network.
        task: ``"classification"`` or ``"regression"``.
        mask: ``[N, *]`` valid positions of ``pred`` (per-position outputs of several lengths), or ``None``.
    """

    pred: torch.Tensor
    exit_index: torch.Tensor
    flops: torch.Tensor
    seconds: float
    num_exits: int
    task: str = "classification"
    mask: torch.Tensor | None = None

    @property
    def exit_fractions(self) -> list[float]:
        """Fraction of samples leaving at each exit (the survey's I_i - I_{i+1})."""
        n = max(1, self.exit_index.numel())
        counts = torch.bincount(self.exit_index, minlength=self.num_exits)
        return [float(c) / n for c in counts]

    @property
    def mean_flops(self) -> float:
        return float(self.flops.double().mean()) if self.flops.numel() else 0.0

    def score(self, y: torch.Tensor, score_fn: ScoreFn | None = None) -> float:
        """Mean per-sample score of the predictions on labels ``y`` (accuracy, or minus the squared error)."""
        fn = score_fn if score_fn is not None else default_score(self.task)
        if y.shape[0] != self.pred.shape[0]:
            raise ValueError(f"{self.pred.shape[0]} predictions but {y.shape[0]} labels")
        out_shape = tuple(self.pred.shape) if self.task == "regression" else (*self.pred.shape, 1)
        target = as_targets(y.to(self.pred.device), out_shape, self.task)
        return float(fn(self.pred, target, self.mask).double().mean())

    def accuracy(self, y: torch.Tensor) -> float:
        """Share of samples (of valid positions, per sample, for per-position outputs) predicted right."""
        if self.task != "classification":
            raise ValueError("accuracy is for classification; use .score(y) for regression (minus the squared error)")
        return self.score(y, accuracy_score)


# ------------------------------------------------------------------------------------------------ checks
def _check(net: MultiExitNetwork, policy: ExitPolicy, batch_size: int) -> None:
    if not isinstance(net, MultiExitNetwork):
        raise TypeError(f"predict needs a MultiExitNetwork, got {type(net).__name__}")
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"predict needs an ExitPolicy, got {type(policy).__name__}")
    policy.check_exits(net.num_exits, task=net.task)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (an integer), got {batch_size!r}")


def check_inputs(net: MultiExitNetwork, x: Any) -> int:
    """Check ``x`` against the network (form, shapes, dtypes) and for NaN/inf, once; return the number of samples."""
    net.check_input(x)
    for t in leaves(x):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).flatten(1).any(dim=1).sum()) if t.dim() > 1 else -1
            where = f" in {bad} sample(s)" if bad >= 0 else ""
            raise ValueError(f"the input contains NaN or inf{where}; exitnet does not guess an exit for such inputs")
    return num_rows(x)


# ------------------------------------------------------------------------------------------------ scheduler
def _signature(obj: Any) -> Any:
    """What must agree for two parts to be concatenated: shapes (without the batch), dtypes, shared objects."""
    if isinstance(obj, torch.Tensor):
        return ("t", tuple(obj.shape[1:]), obj.dtype, id(obj) if obj.dim() == 0 else None)
    if isinstance(obj, Shared):
        return ("s", id(obj.value))
    if isinstance(obj, (tuple, list)):
        return tuple(_signature(v) for v in obj)
    if isinstance(obj, dict):
        return tuple((k, _signature(v)) for k, v in obj.items())
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if callable(getattr(type(obj), "cat_rows", None)) and callable(getattr(obj, "signature", None)):
        return ("o", obj.signature())
    return ("u", id(obj))  # an object exitnet cannot merge: never mixed with another batch's


@dataclass
class _Part:
    """Samples waiting at one level: stream, side inputs, policy state, original rows, cost table."""

    h: Any
    ctx: dict[str, Any]
    state: dict[str, torch.Tensor]
    rows: torch.Tensor
    cost: torch.Tensor  # [b] id of each sample's cost profile

    @property
    def size(self) -> int:
        return int(self.rows.numel())

    def take(self, idx: torch.Tensor) -> _Part:
        return _Part(take_rows(self.h, idx), take_rows(self.ctx, idx), take_rows(self.state, idx),
                     self.rows.index_select(0, idx), self.cost.index_select(0, idx))  # fmt: skip

    def head(self, n: int) -> tuple[_Part, _Part | None]:
        if n >= self.size:
            return self, None
        first = _Part(slice_rows(self.h, 0, n), slice_rows(self.ctx, 0, n), slice_rows(self.state, 0, n),
                      self.rows[:n], self.cost[:n])  # fmt: skip
        rest = _Part(slice_rows(self.h, n, self.size), slice_rows(self.ctx, n, self.size),
                     slice_rows(self.state, n, self.size), self.rows[n:], self.cost[n:])  # fmt: skip
        return first, rest

    @staticmethod
    def cat(parts: list[_Part]) -> _Part:
        if len(parts) == 1:
            return parts[0]
        return _Part(cat_rows([p.h for p in parts]), cat_rows([p.ctx for p in parts]),
                     cat_rows([p.state for p in parts]), torch.cat([p.rows for p in parts]),
                     torch.cat([p.cost for p in parts]))  # fmt: skip


@dataclass
class _Store:
    """Predictions written by original row; several per-sample shapes (sequence lengths) are padded at the end."""

    n: int
    device: torch.device
    groups: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = field(default_factory=dict)
    exit_index: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.exit_index = torch.full((self.n,), -1, dtype=torch.long, device=self.device)

    def write(self, rows: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor | None, exit_i: int) -> None:
        key = (tuple(pred.shape[1:]), pred.dtype, mask is not None)
        if key not in self.groups:
            store = torch.zeros(self.n, *pred.shape[1:], dtype=pred.dtype, device=self.device)
            mstore = (
                None if mask is None else torch.zeros(self.n, *mask.shape[1:], dtype=torch.bool, device=self.device)
            )
            self.groups[key] = (store, mstore, torch.zeros(self.n, dtype=torch.bool, device=self.device))
        store, mstore, written = self.groups[key]
        store[rows] = pred
        if mstore is not None and mask is not None:
            mstore[rows] = mask
        written[rows] = True
        self.exit_index[rows] = exit_i

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        groups = list(self.groups.values())
        if not groups:
            return torch.zeros(0, dtype=torch.long), None
        if len(groups) == 1:
            store, mstore, _ = groups[0]
            return store.cpu(), None if mstore is None else mstore.cpu()
        shapes = [g[0].shape[1:] for g in groups]
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"the network gave predictions of different ranks: {[tuple(s) for s in shapes]}")
        top = [max(s[d] for s in shapes) for d in range(len(shapes[0]))]
        pred = torch.zeros(self.n, *top, dtype=groups[0][0].dtype)
        mask = torch.zeros(self.n, *top, dtype=torch.bool)
        for store, mstore, written in groups:
            w = written.cpu()
            region: tuple[Any, ...] = (w, *(slice(0, s) for s in store.shape[1:]))
            pred[region] = store.cpu()[w]
            mask[region] = mstore.cpu()[w] if mstore is not None else True
        return pred, mask


class Scheduler:
    """The runtime core: runs batches through the network exit by exit, compacting the samples that leave, and
    (with ``rebatch``) regrouping the survivors of several input batches into full batches per level.

    Used by :func:`predict`, :func:`stream` and the serving tiers. Call :meth:`submit` with input batches (already
    checked, on the device), then :meth:`flush`; answers go to the ``store``.
    """

    def __init__(self, net: MultiExitNetwork, policy: ExitPolicy, store: _Store, *, batch_size: int, rebatch: bool):
        self.net, self.policy, self.store = net, policy, store
        self.batch_size, self.rebatch = batch_size, rebatch
        self.last = net.num_exits - 1
        self.queues: list[list[_Part]] = [[] for _ in range(net.num_exits)]
        self.cuda = store.device.type == "cuda"
        self.layout = getattr(net, "input_memory_format", None)

    def submit(self, x: Any, rows: torch.Tensor, cost_id: int) -> None:
        """Run one input batch (original row indices ``rows``) as far as it goes."""
        h, ctx = self.net.begin(x)
        if self.layout is not None and isinstance(h, torch.Tensor) and h.dim() == 4:
            h = h.contiguous(memory_format=self.layout)
        b = int(rows.numel())
        part = _Part(h, ctx, {}, rows, torch.full((b,), cost_id, dtype=torch.long, device=rows.device))
        self._run(0, part)

    def _run(self, level: int, part: _Part) -> None:
        """Run ``part`` from stage ``level`` until all of it has left or it waits in a queue."""
        net, policy = self.net, self.policy
        i = level
        while True:
            part.h = net.forward_stage(i, part.h, part.ctx)
            out = net.run_head(i, part.h, part.ctx)
            mask = net.outputs_mask(part.ctx)
            if i == 0:  # the state's shapes follow the outputs' (per-position outputs vary in length)
                part.state = policy.init_state(part.size, out.device, output_shape=tuple(out.shape[1:]))
            if i == self.last:
                pred = policy.final_prediction(out, part.state, mask, task=net.task)
                self.store.write(part.rows, pred, mask, i)
                return
            leave, part.state = policy.step(i, out, part.state, mask)
            b = part.size
            keep: torch.Tensor | None
            if self.cuda:  # one host sync per exit: the count; the order comes without another
                n_out = int(leave.sum())
                order = torch.argsort(leave.to(torch.uint8), stable=True)
                keep, gone = order[: b - n_out], order[b - n_out :]
            else:
                gone = leave.nonzero().squeeze(1)
                n_out = int(gone.numel())
                keep = (~leave).nonzero().squeeze(1) if 0 < n_out < b else None
            if n_out:
                self.store.write(part.rows.index_select(0, gone), prediction(out.index_select(0, gone), net.task),
                                 None if mask is None else mask.index_select(0, gone), i)  # fmt: skip
                if n_out == b:
                    return
                assert keep is not None
                part = part.take(keep)  # compaction: left samples never reach stage i + 1
            if self.rebatch and (self.queues[i] or part.size < self.batch_size):
                self._enqueue(i, part)
                return
            i += 1

    def _enqueue(self, i: int, part: _Part) -> None:
        """Queue survivors of exit ``i``; run stage ``i + 1`` on every full batch that forms."""
        queue = self.queues[i]
        if queue and _signature((queue[0].h, queue[0].ctx, queue[0].state)) != _signature(
            (part.h, part.ctx, part.state)
        ):
            self._drain(i)  # another shape: what waits runs first, as it is
        queue.append(part)
        while sum(p.size for p in queue) >= self.batch_size:
            merged = _Part.cat(queue)
            full, rest = merged.head(self.batch_size)
            queue[:] = [rest] if rest is not None else []
            self._run(i + 1, full)

    def _drain(self, i: int) -> None:
        queue = self.queues[i]
        if queue:
            merged = _Part.cat(queue)
            queue.clear()
            self._run(i + 1, merged)

    def flush(self) -> None:
        """Run every partial batch still waiting, shallowest level first."""
        for i in range(self.last):
            self._drain(i)


# ------------------------------------------------------------------------------------------------ predict
def _device_of(net: MultiExitNetwork, device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else module_device(net)


def predict(
    net: MultiExitNetwork,
    x: Any,
    policy: ExitPolicy,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    rebatch: bool = True,
    check: bool = True,
) -> ExitResult:
    """Early-exit inference over ``x`` with ``policy``, in batches of ``batch_size``.

    Args:
        net: the multi-exit network (put in eval mode for the call).
        x: inputs ``[N, …]``: a tensor, or the tuple / dict of tensors a multi-input network takes (any device;
            moved batch by batch to ``device``).
        policy: an exit policy (fitted, or usable as it is: explicit thresholds, ``NeverExit``, ``Patience``).
        batch_size: samples per batch; memory stays bounded by it whatever N is.
        device: where to run; defaults to the network's device.
        rebatch: regroup the survivors of several input batches into full batches per level (see the module
            docstring); ``False`` runs each input batch on its own.
        check: check the inputs (shapes, dtypes, NaN/inf) first, outside the clock; ``False`` only for inputs
            checked already (:func:`check_inputs`), as in a timing loop.

    Returns:
        :class:`ExitResult` with ``pred``, ``exit_index``, ``flops`` (CPU tensors) and ``seconds``.

    Raises:
        ValueError: input of the wrong shape or dtype, or NaN/inf in the input (no exit is guessed for those);
            a policy fitted for another number of exits.

    Example:
        >>> from exitnet.backbones import mlp
        >>> from exitnet.policies import MaxProb
        >>> net = MultiExitNetwork.from_module(mlp(16, [32, 32], 4), ["blocks.0"], num_classes=4,
        ...                                    sample_input=torch.zeros(1, 16), head="linear")
        >>> r = predict(net, torch.randn(10, 16), MaxProb(thresholds=0.0))
        >>> r.exit_index.tolist() == [0] * 10, r.pred.shape
        (True, torch.Size([10]))
    """
    _check(net, policy, batch_size)
    n = check_inputs(net, x) if check else num_rows(x)
    dev = _device_of(net, device)
    # Cost profiles of every input shape, before the clock starts (one per shape; cached on the network).
    starts = list(range(0, n, batch_size))
    tables: list[tuple[int, ...]] = []
    ids: dict[tuple[int, ...], int] = {}
    batch_cost = []
    for start in starts:
        xb = slice_rows(x, start, start + batch_size)
        flops = net.cost_profile(xb).exit_flops
        if flops not in ids:
            ids[flops] = len(tables)
            tables.append(flops)
        batch_cost.append(ids[flops])
    store = _Store(n, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with eval_mode(net), torch.inference_mode():
        sched = Scheduler(net, policy, store, batch_size=batch_size, rebatch=rebatch)
        sync()
        t0 = time.perf_counter()
        for start, cost_id in zip(starts, batch_cost, strict=True):
            xb = to_device(slice_rows(x, start, start + batch_size), dev, non_blocking=True)
            rows = torch.arange(start, min(start + batch_size, n), device=dev)
            sched.submit(xb, rows, cost_id)
        sched.flush()
        sync()
        seconds = time.perf_counter() - t0
    pred, mask = store.result()
    exit_index = store.exit_index.cpu()
    cost_table = torch.tensor(tables, dtype=torch.long)  # [profiles, E]
    sizes = torch.tensor([min(batch_size, n - s) for s in starts], dtype=torch.long)
    per_row = torch.repeat_interleave(torch.tensor(batch_cost, dtype=torch.long), sizes)
    flops_ = cost_table[per_row, exit_index] if n else torch.zeros(0, dtype=torch.long)
    return ExitResult(pred, exit_index, flops_, seconds, net.num_exits, net.task, mask)


def run_backbone(
    net: MultiExitNetwork, x: Any, *, batch_size: int = 256, device: torch.device | str | None = None
) -> torch.Tensor:
    """The backbone alone over ``x`` (every stage and the final head, no auxiliary head, no decision): the
    baseline of every speed-up. Inputs are not checked here (check them once, outside any timing).

    Returns:
        The final exit's predictions ``[N, *]`` (on the run's device).
    """
    dev = _device_of(net, device)
    last = net.num_exits - 1
    layout = getattr(net, "input_memory_format", None)
    preds = []
    with eval_mode(net), torch.inference_mode():
        for start in range(0, num_rows(x), batch_size):
            h, ctx = net.begin(to_device(slice_rows(x, start, start + batch_size), dev, non_blocking=True))
            if layout is not None and isinstance(h, torch.Tensor) and h.dim() == 4:
                h = h.contiguous(memory_format=layout)
            for i in range(net.num_exits):
                h = net.forward_stage(i, h, ctx)
            preds.append(prediction(net.run_head(last, h, ctx), net.task))
    return torch.cat(preds)


def measure_speedup(
    net: MultiExitNetwork,
    x: Any,
    policy: ExitPolicy,
    *,
    batch_size: int = 256,
    repeats: int = 7,
    rebatch: bool = True,
    clock: str | None = None,
) -> dict[str, Any]:
    """Speed-up of early exit over the backbone alone, on the same inputs and batch size, measured in one run.

    Both sides run after the inputs are checked once (no validation inside either timed call), interleaved
    ``repeats`` times with a rotating order (:func:`exitnet.timing.interleaved`); the speed-up is the median of the
    per-repetition ratios. The FLOPs-predicted speed-up (backbone FLOPs ÷ mean FLOPs spent) is reported next to it,
    and the time-predicted one when the network's cost profile holds a :class:`~exitnet.cost.Timing`
    (:meth:`MultiExitNetwork.measure_time`).

    Returns:
        ``backbone_seconds``, ``early_exit_seconds`` (medians), ``speedup_wall`` (median paired ratio) with its
        ``speedup_wall_range``, ``speedup_flops``, ``realized_over_predicted``, ``speedup_time`` and
        ``realized_over_time_predicted`` (``None`` without a timing), ``clock``, ``repeats``, ``batch_size``.
    """
    from exitnet.timing import clock_for, interleaved, paired_ratio

    _check(net, policy, batch_size)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    check_inputs(net, x)
    dev = module_device(net)
    clock = clock_for(dev) if clock is None else clock
    methods = {
        "backbone": lambda: run_backbone(net, x, batch_size=batch_size),
        "early_exit": lambda: predict(net, x, policy, batch_size=batch_size, rebatch=rebatch, check=False),
    }
    times, outs = interleaved(methods, repeats=repeats, device=dev, clock=clock)
    result: ExitResult = outs["early_exit"]
    ratio = paired_ratio(times["backbone"], times["early_exit"])
    profile_ = net.cost_profile(slice_rows(x, 0, min(batch_size, num_rows(x))))
    speedup_flops = profile_.backbone_flops / max(1e-12, result.mean_flops)
    speedup_time = None
    try:
        timing = profile_.timing(batch_size=batch_size, device=dev.type)
    except ValueError:
        timing = None
    if timing is not None:
        exit_s = torch.tensor(timing.exit_seconds, dtype=torch.float64)
        speedup_time = timing.backbone_seconds / float(exit_s[result.exit_index].mean())
    return {
        "backbone_seconds": statistics.median(times["backbone"]),
        "early_exit_seconds": statistics.median(times["early_exit"]),
        "speedup_wall": ratio["median"],
        "speedup_wall_range": [ratio["min"], ratio["max"]],
        "speedup_flops": speedup_flops,
        "realized_over_predicted": ratio["median"] / speedup_flops,
        "speedup_time": speedup_time,
        "realized_over_time_predicted": None if speedup_time is None else ratio["median"] / speedup_time,
        "exit_fractions": result.exit_fractions,
        "clock": clock,
        "repeats": repeats,
        "batch_size": batch_size,
    }


@dataclass(frozen=True)
class StreamItem:
    """One sample's answer from :func:`stream`: its prediction, exit, FLOPs and seconds (for its batch)."""

    pred: Any
    exit_index: int
    flops: int
    seconds: float
    index: int = 0


def stream(net: MultiExitNetwork, samples: Iterable[Any], policy: ExitPolicy) -> Iterator[StreamItem]:
    """Per-sample (batch 1) early exit, for inputs that arrive one at a time (a sensor, a request queue).

    Each sample may be one sample (no batch dim) or a batch of one; each answer is yielded as soon as it exists.
    """
    _check(net, policy, 1)
    dev = module_device(net)
    with eval_mode(net), torch.inference_mode():
        for k, sample in enumerate(samples):
            xb = _as_batch_of_one(net, sample)
            check_inputs(net, xb)
            if num_rows(xb) != 1:
                raise ValueError(f"stream takes one sample at a time, got a batch of {num_rows(xb)}")
            flops = net.cost_profile(xb).exit_flops
            store = _Store(1, dev)
            t0 = time.perf_counter()
            Scheduler(net, policy, store, batch_size=1, rebatch=False).submit(
                to_device(xb, dev), torch.zeros(1, dtype=torch.long, device=dev), 0
            )
            seconds = time.perf_counter() - t0
            pred, _ = store.result()
            e = int(store.exit_index[0])
            value = pred[0].item() if pred[0].dim() == 0 and net.task == "classification" else pred[0]
            yield StreamItem(value, e, int(flops[e]), seconds, k)


def _as_batch_of_one(net: MultiExitNetwork, sample: Any) -> Any:
    """Add the batch dim to a single sample (each input one dim short of the network's rank)."""
    spec = net.inputs
    if spec is None:
        return sample
    parts = net.named_inputs(sample)
    if all(isinstance(v, torch.Tensor) and v.dim() == len(s) for v, s in zip(parts.values(), spec.shapes, strict=True)):
        return spec.pack({k: v.unsqueeze(0) for k, v in parts.items()})
    return sample


# ------------------------------------------------------------------------------------------------ inference graph
def optimize_for_inference(
    net: MultiExitNetwork, *, fuse_batchnorm: bool = True, channels_last: bool | None = None
) -> MultiExitNetwork:
    """An inference-only copy of ``net``: BatchNorm folded into the preceding conv/linear, and (for image
    networks) channels-last memory layout. Outputs equal ``net``'s in eval mode up to float rounding.

    On a CPU this makes time per stage follow FLOPs much more closely (BatchNorm is memory-bound work that
    FLOPs do not count, and oneDNN's convolutions run faster channels-last), so early exits save the time
    their FLOPs predict. The copy keeps ``net``'s cost profiles: FLOPs are those of the original network.

    Args:
        net: a trained network (left untouched).
        fuse_batchnorm: fold BatchNorm layers into the conv/linear before them (``torch.fx`` pass).
        channels_last: use channels-last layout; ``None`` = when the input is an image (C, H, W).
    """
    from torch.fx.experimental.optimization import fuse

    profile_ = net.cost_profile()
    out = copy.deepcopy(net).eval()
    if fuse_batchnorm:
        stages = []
        for s in out.stages:
            keys = getattr(s, "ctx_keys", ())
            fused = fuse(fx.symbolic_trace(s))
            if keys:
                fused.ctx_keys = keys
            stages.append(fused)
        out.stages = torch.nn.ModuleList(stages)
    shape = net.input_shape
    if channels_last is None:
        channels_last = shape is not None and len(shape) == 3 and net.inputs is not None and len(net.inputs.names) == 1
    if channels_last:
        out = out.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        out.input_memory_format = torch.channels_last
    out.profile_cache = dict(net.profile_cache)
    out.profile_cache.setdefault(next(iter(net.profile_cache)), profile_)
    for param in out.parameters():
        param.requires_grad_(False)
    return out
