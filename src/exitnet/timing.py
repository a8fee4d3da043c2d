"""The one timing helper: clocks, single calls, medians, and interleaved comparisons with paired ratios.

- **Clock.** CUDA events on a GPU (the host's clock would only time kernel launches); on a CPU with one torch
  thread, the thread's CPU time (``time.thread_time``: what the work costs, whatever else a shared machine runs);
  otherwise the wall clock.
- **Interleaving.** Every method of a comparison runs once per repetition, in an order rotated from one repetition
  to the next, so that a slow patch of the machine hits every method alike; a ratio is taken between two methods'
  times *of the same repetition*, and its median over repetitions is reported with its range.

Used by the cost model (:func:`exitnet.cost.measure_time`), the runtime (:func:`exitnet.runtime.measure_speedup`)
and the benchmarks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["clock_for", "time_call", "median_seconds", "interleaved", "summarize", "paired_ratio"]

CLOCKS = ("thread_time", "perf_counter", "cuda_events")


def clock_for(device: torch.device | str, threads: int | None = None) -> str:
    """The clock for a measurement on ``device`` with ``threads`` torch threads (default: the current count)."""
    if torch.device(device).type == "cuda":
        return "cuda_events"
    threads = torch.get_num_threads() if threads is None else threads
    return "thread_time" if threads == 1 else "perf_counter"


def time_call(
    fn: Callable[[], Any], device: str | torch.device = "cpu", *, clock: str | None = None
) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes on ``device`` (synchronised), and what it returned.

    Example:
        >>> seconds, out = time_call(lambda: 3, clock="perf_counter")
        >>> out, seconds >= 0
        (3, True)
    """
    clock = clock_for(device) if clock is None else clock
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose one of: {', '.join(CLOCKS)}")
    if clock == "cuda_events":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, out
    now = time.thread_time if clock == "thread_time" else time.perf_counter
    t0 = now()
    out = fn()
    return now() - t0, out


def median_seconds(
    fn: Callable[[], Any], *, repeats: int, device: str | torch.device = "cpu", clock: str | None = None
) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fn()
    return statistics.median(time_call(fn, device, clock=clock)[0] for _ in range(repeats))


def interleaved(
    methods: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    clock: str | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every method ``repeats`` times, interleaved (rotating order), after ``warmup`` untimed calls each.

    Returns:
        ``(times, outputs)``: the seconds of each repetition per method, and each method's last return value.

    Example:
        >>> times, outs = interleaved({"a": lambda: 1, "b": lambda: 2}, repeats=3)
        >>> len(times["a"]), outs["b"]
        (3, 2)
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(methods)
    outputs: dict[str, Any] = {}
    for _ in range(warmup):
        for name in names:
            outputs[name] = methods[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            seconds, outputs[name] = time_call(methods[name], device, clock=clock)
            times[name].append(seconds)
    return times, outputs


def summarize(times: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of a list of timings.

    Example:
        >>> summarize([1.0, 2.0, 3.0])
        {'median': 2.0, 'min': 1.0, 'max': 3.0, 'spread': 1.0, 'repeats': 3}
    """
    med = statistics.median(times)
    return {
        "median": med,
        "min": min(times),
        "max": max(times),
        "spread": (max(times) - min(times)) / med if med > 0 else 0.0,
        "repeats": len(times),
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Per-repetition ratios ``numerator[r] / denominator[r]``: their median, min and max.

    Example:
        >>> paired_ratio([2.0, 4.0, 3.0], [1.0, 2.0, 1.0])
        {'median': 2.0, 'min': 2.0, 'max': 3.0}
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need two equally long, non-empty lists, got {len(numerator)} and {len(denominator)}")
    ratios = [n / d for n, d in zip(numerator, denominator, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
