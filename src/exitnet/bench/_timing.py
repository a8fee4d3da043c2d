"""Timing for the benchmarks: interleaved repetitions, medians and spreads, ratios paired within a repetition.

Every method of a comparison runs once per repetition, in an order rotated from one repetition to the next, so
that a slow patch of the machine (another process, a frequency change) hits every method alike; a ratio is taken
between the two methods' times *of the same repetition* and its median over repetitions is reported with its
range. On CUDA the time of a call is taken with CUDA events after a synchronisation (the host's clock would only
time the kernel launches).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["time_call", "interleaved", "summarize", "paired_ratio"]


def time_call(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes on ``device`` (synchronised), and what it returned."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(
    methods: Mapping[str, Callable[[], Any]], *, repeats: int, device: str | torch.device = "cpu", warmup: int = 1
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
            seconds, outputs[name] = time_call(methods[name], device)
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
