"""Runtime benchmark: real early-exit speed-ups against the FLOPs-predicted ones, and against peers' ways.

For each benchmark network (entropy thresholds calibrated on the validation split for at most a 0.5-point
accuracy drop) and each batch size, in one run and interleaved (see :mod:`exitnet.timing`):

- ``backbone``: the network without auxiliary heads (the baseline of every speed-up);
- ``exitnet``: :func:`exitnet.runtime.predict` (stages run only on the samples still alive);
- ``exitnet_half_budget``: the same with the most accurate thresholds within half the backbone's FLOPs (found on
  validation), an operating point whose samples spread over several exits, so that compaction is at work;
- ``never_exit``: ``predict`` with :class:`~exitnet.policies.NeverExit`: every head runs, nobody leaves (the
  runtime's own overhead);
- ``run_all_then_mask`` and ``batch_level_exit`` (batch > 1) and ``per_sample`` (batch 1, and beside batch 256
  for the throughput comparison): the peers' ways, from :mod:`exitnet.bench.baselines`.

Every method times the same optimised network (:func:`exitnet.runtime.optimize_for_inference`: BatchNorm
folded, channels-last), with torch's threads pinned by the runner.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from exitnet.bench import baselines, zoo
from exitnet.calibration import calibrate
from exitnet.cost import profile
from exitnet.model import MultiExitNetwork
from exitnet.policies import Entropy, ExitPolicy, NeverExit
from exitnet.runtime import optimize_for_inference, predict
from exitnet.timing import interleaved, paired_ratio, summarize

__all__ = ["NAME", "run", "to_markdown", "SETTINGS"]

NAME = "runtime"
MAX_DROP = 0.005
SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"n": 96, "n_per_sample": 16, "batch_sizes": [1, 16, 64], "repeats": 2, "networks": ["resnet", "mlp"]},
    "quick": {
        "n": 1024,
        "n_per_sample": 128,
        "batch_sizes": [1, 64, 256, 1024],
        "repeats": 5,
        "networks": ["resnet", "mlp"],
    },
    "full": {
        "n": 8192,
        "n_per_sample": 1024,
        "batch_sizes": [1, 64, 256, 1024],
        "repeats": 9,
        "networks": ["resnet", "mlp"],
    },
}
THROUGHPUT_BATCH = 256  # the batch size whose throughput is compared with the per-sample baseline


def _batch_level_flops(exit_index: torch.Tensor, exit_flops: list[int], batch_size: int) -> float:
    """Mean FLOPs per sample when each batch runs up to the deepest exit any of its samples takes."""
    total = 0.0
    for start in range(0, exit_index.numel(), batch_size):
        chunk = exit_index[start : start + batch_size]
        total += chunk.numel() * exit_flops[int(chunk.max())]
    return total / max(1, exit_index.numel())


def _mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.cpu() != b.cpu()).sum())


def _bench_batch(
    fast: MultiExitNetwork,
    x: torch.Tensor,
    x_ps: torch.Tensor,
    policy: ExitPolicy,
    spread: ExitPolicy,
    b: int,
    repeats: int,
    device: str,
) -> dict[str, Any]:
    never = NeverExit()
    methods: dict[str, Callable[[], Any]] = {
        "backbone": functools.partial(baselines.backbone_alone, fast, x, b),
        "exitnet": functools.partial(predict, fast, x, policy, batch_size=b),
        "exitnet_half_budget": functools.partial(predict, fast, x, spread, batch_size=b),
        "never_exit": functools.partial(predict, fast, x, never, batch_size=b),
        "run_all_then_mask": functools.partial(baselines.run_all_then_mask, fast, x, policy, b),
    }
    if b == 1:
        methods["per_sample"] = functools.partial(baselines.per_sample_early_exit, fast, x, policy)
    else:
        methods["batch_level_exit"] = functools.partial(baselines.batch_level_exit, fast, x, policy, b)
        if b == THROUGHPUT_BATCH:
            methods["per_sample"] = functools.partial(baselines.per_sample_early_exit, fast, x_ps, policy)
    times, outs = interleaved(methods, repeats=repeats, device=device)
    n = x.shape[0]
    samples = {name: (x_ps.shape[0] if name == "per_sample" and b != 1 else n) for name in methods}
    cost = fast.cost_profile()
    ee = outs["exitnet"]
    predicted = cost.backbone_flops / ee.mean_flops
    realized = paired_ratio(times["backbone"], times["exitnet"])
    row: dict[str, Any] = {
        "batch_size": b,
        "num_samples": n,
        "seconds": {name: summarize(t) for name, t in times.items()},
        "throughput": {name: samples[name] / summarize(t)["median"] for name, t in times.items()},
        "speedup_flops": predicted,
        "speedup_wall": realized,
        "realized_over_predicted": realized["median"] / predicted,
        "half_budget": _speedup(times, outs["exitnet_half_budget"], "exitnet_half_budget", cost.backbone_flops),
        "never_exit_overhead": paired_ratio(times["never_exit"], times["backbone"]),
        "run_all_then_mask": {
            "speedup_claimed_flops": predicted,
            "speedup_wall": paired_ratio(times["backbone"], times["run_all_then_mask"]),
        },
        "exit_fractions": ee.exit_fractions,
        "mismatches_vs_exitnet": {
            name: _mismatches(outs[name].pred, ee.pred[: outs[name].pred.numel()])
            for name in methods
            if name not in ("exitnet", "exitnet_half_budget", "never_exit", "backbone")
        },
        "never_exit_matches_backbone": _mismatches(outs["never_exit"].pred, outs["backbone"].pred) == 0,
    }
    if "batch_level_exit" in times:
        bl_flops = _batch_level_flops(ee.exit_index, list(cost.exit_flops), b)
        row["batch_level_exit"] = {
            "speedup_flops": cost.backbone_flops / bl_flops,
            "speedup_wall": paired_ratio(times["backbone"], times["batch_level_exit"]),
        }
    if "per_sample" in times:
        # throughput ratio, paired per repetition: (n / t_exitnet) / (n_ps / t_per_sample)
        scale = n / samples["per_sample"]
        ratio = paired_ratio(times["per_sample"], times["exitnet"])
        row["exitnet_over_per_sample_throughput"] = {k: v * scale for k, v in ratio.items()}
    return row


def _speedup(times: dict[str, list[float]], result: Any, name: str, backbone_flops: int) -> dict[str, Any]:
    predicted = backbone_flops / result.mean_flops
    realized = paired_ratio(times["backbone"], times[name])
    return {
        "speedup_flops": predicted,
        "speedup_wall": realized,
        "realized_over_predicted": realized["median"] / predicted,
        "exit_fractions": result.exit_fractions,
    }


def _stage_time_fractions(fast: MultiExitNetwork, x: torch.Tensor) -> dict[str, Any]:
    """Share of backbone time vs share of backbone FLOPs of each stage (measured at this batch)."""
    p = profile(fast, baselines.input_layout(fast, x), latency=True, repeats=5)
    assert p.stage_seconds is not None
    total_s = sum(p.stage_seconds)
    total_f = sum(p.stage_flops)
    return {
        "batch_size": int(x.shape[0]),
        "time": [s / total_s for s in p.stage_seconds],
        "flops": [f / total_f for f in p.stage_flops],
        "head_time": [h / total_s for h in (p.head_seconds or ())],
    }


def time_predicted_speedup(shares: dict[str, Any], exit_fractions: list[float]) -> float:
    """Speed-up that the measured time of each stage and head predicts for these exit fractions.

    A sample leaving at exit i costs the time shares of stages and heads 0..i (the backbone = the stages = 1).

    Example:
        >>> time_predicted_speedup({"time": [0.5, 0.5], "head_time": [0.0, 0.0]}, [0.5, 0.5])
        1.3333333333333333
    """
    mean, cum = 0.0, 0.0
    for stage, head, frac in zip(shares["time"], shares["head_time"], exit_fractions, strict=True):
        cum += stage + head
        mean += frac * cum
    return 1.0 / mean if mean > 0 else float("inf")


def _bench_network(name: str, suite: str, device: str, cfg: dict[str, Any]) -> dict[str, Any]:
    net, ds = zoo.trained(name, suite, device=device)
    policy = calibrate(Entropy(), *zoo.outputs(name, suite, "val", device=device), max_accuracy_drop=MAX_DROP,
                       cost=net.cost_profile())  # fmt: skip
    cost = net.cost_profile()
    # A second operating point whose samples spread over the exits (compaction at work): the most accurate
    # thresholds within half the backbone's FLOPs (or the first exit's cost, if that is more).
    spread = calibrate(Entropy(), *zoo.outputs(name, suite, "val", device=device),
                       flops_budget=max(0.5 * cost.backbone_flops, cost.exit_flops[0]), cost=cost)  # fmt: skip
    fast = optimize_for_inference(net)
    x = ds.test.x[: cfg["n"]].to(device)
    x_ps = x[: cfg["n_per_sample"]]
    rows = []
    for b in cfg["batch_sizes"]:
        xb = x_ps if b == 1 else x  # batch 1 on the smaller set: it is the slow case
        rows.append(_bench_batch(fast, xb, x_ps, policy, spread, b, cfg["repeats"], device))
    probe = x[: min(THROUGHPUT_BATCH, x.shape[0])]
    shares = _stage_time_fractions(fast, probe)
    for row in rows:  # what the stages' measured times predict: separates "FLOPs ≠ time" from runtime overhead
        if row["batch_size"] == shares["batch_size"]:
            row["speedup_time_predicted"] = time_predicted_speedup(shares, row["exit_fractions"])
            hb = row["half_budget"]
            hb["speedup_time_predicted"] = time_predicted_speedup(shares, hb["exit_fractions"])
    return {
        "network": name,
        "exit_names": list(net.exit_names),
        "exit_flops": list(cost.exit_flops),
        "backbone_flops": cost.backbone_flops,
        "thresholds": getattr(policy, "thresholds_", None),
        "policy": f"entropy, calibrated on val for <= {100 * MAX_DROP:.1f} point drop",
        "half_budget_thresholds": getattr(spread, "thresholds_", None),
        "batches": rows,
        "stage_time_vs_flops": shares,
    }


def _goals(networks: dict[str, Any]) -> list[dict[str, Any]]:
    res = networks.get("resnet")
    if res is None:
        return []
    by_b = {r["batch_size"]: r for r in res["batches"]}
    goals = []

    def add(goal: str, measured: float | None, target: float, higher: bool) -> None:
        met = None if measured is None else (measured >= target if higher else measured <= target)
        goals.append({"goal": goal, "target": target, "measured": measured, "met": met})

    for b, target in ((256, 0.95), (64, 0.8)):
        add(f"realized / predicted speed-up at batch {b} (ResNet)",
            by_b[b]["realized_over_predicted"] if b in by_b else None, target, True)  # fmt: skip
    never = by_b.get(THROUGHPUT_BATCH, {}).get("never_exit_overhead")
    add(f"never-exit overhead ÷ backbone at batch {THROUGHPUT_BATCH} (ResNet)", never["median"] if never else None,
        1.03, False)  # fmt: skip
    tp = by_b.get(THROUGHPUT_BATCH, {}).get("exitnet_over_per_sample_throughput")
    add(f"throughput at batch {THROUGHPUT_BATCH} ÷ per-sample baseline (ResNet)", tp["median"] if tp else None, 20.0,
        True)  # fmt: skip
    return goals


def run(suite: str, device: str, out_dir: Path) -> dict[str, Any]:
    """Run the runtime benchmark of ``suite`` on ``device``; return JSON-serialisable results."""
    cfg = SETTINGS[suite]
    networks = {name: _bench_network(name, suite, device, cfg) for name in cfg["networks"]}
    return {
        "settings": {**cfg, "max_accuracy_drop": MAX_DROP, "device": device, "threads": torch.get_num_threads()},
        "networks": networks,
        "goals": _goals(networks),
    }


def _gap(r: dict[str, Any], label: str) -> str:
    """Split realized ÷ FLOPs-predicted into (time-predicted ÷ FLOPs-predicted) × (realized ÷ time-predicted)."""
    flops, timed, wall = r["speedup_flops"], r["speedup_time_predicted"], r["speedup_wall"]["median"]
    return (
        f"{label}: FLOPs predict {flops:.2f}×, the stages' and heads' measured times {timed:.2f}× "
        f"(time follows FLOPs to {timed / flops:.2f}), realized {wall:.2f}× ({wall / timed:.2f} of the time-predicted "
        "one; the rest is the runtime's own cost — decisions, compaction, one sync per exit — and timing noise)"
    )


def _fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]"


def to_markdown(result: dict[str, Any]) -> str:
    """The runtime tables: speed-ups per batch size and the peers' ways (the runner lists the goals)."""
    s = result["settings"]
    lines = [
        f"Device `{s['device']}`, {s['threads']} thread(s); {s['repeats']} interleaved repetitions per method; "
        f"median [min–max] of per-repetition ratios. Thresholds: entropy calibrated on the validation split for "
        f"≤ {100 * s['max_accuracy_drop']:.1f} point drop. Batch 1 uses the first {s['n_per_sample']} test "
        f"samples, other batch sizes the first {s['n']}.",
        "",
    ]
    for name, net in result["networks"].items():
        lines += [
            f"**{name}** (backbone {net['backbone_flops'] / 1e6:.2f} MFLOPs/sample)",
            "",
            "| batch | predicted (FLOPs) | realized (wall) | realized ÷ predicted | at ½ FLOPs budget: predicted, "
            "realized ÷ predicted | never-exit ÷ backbone | run-all-then-mask (wall) | batch-level exit (wall / FLOPs) "
            "| exitnet samples/s | per-sample samples/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in net["batches"]:
            bl = r.get("batch_level_exit")
            bl_s = f"{_fmt_ratio(bl['speedup_wall'])} / {bl['speedup_flops']:.2f}" if bl else "—"
            ps = r["throughput"].get("per_sample")
            lines.append(
                f"| {r['batch_size']} | {r['speedup_flops']:.2f}× | {_fmt_ratio(r['speedup_wall'])}× "
                f"| **{r['realized_over_predicted']:.2f}** "
                f"| {r['half_budget']['speedup_flops']:.2f}×, {r['half_budget']['realized_over_predicted']:.2f} "
                f"| {_fmt_ratio(r['never_exit_overhead'])} "
                f"| {_fmt_ratio(r['run_all_then_mask']['speedup_wall'])}× | {bl_s} "
                f"| {r['throughput']['exitnet']:.0f} | {f'{ps:.0f}' if ps else '—'} |"
            )
        fr = {r["batch_size"]: r for r in net["batches"]}.get(THROUGHPUT_BATCH) or net["batches"][-1]
        lines += [
            "",
            f"Share of samples leaving at each exit (batch {fr['batch_size']}): "
            + " / ".join(f"{100 * f:.0f}%" for f in fr["exit_fractions"])
            + "; at ½ FLOPs budget: "
            + " / ".join(f"{100 * f:.0f}%" for f in fr["half_budget"]["exit_fractions"])
            + ".",
        ]
        mism = {f"{k}@{r['batch_size']}": v for r in net["batches"] for k, v in r["mismatches_vs_exitnet"].items() if v}
        lines += [
            "",
            "Predictions of every baseline equal exitnet's on the same samples and thresholds."
            if not mism
            else f"Prediction mismatches with exitnet (float rounding at a threshold): {mism}.",
            "",
        ]
        st = net.get("stage_time_vs_flops")
        if st:
            lines += [
                f"Share of backbone time vs share of FLOPs per stage (batch {st['batch_size']}, measured one stage at "
                "a time): "
                + ", ".join(f"{100 * t:.0f}%/{100 * f:.0f}%" for t, f in zip(st["time"], st["flops"], strict=True))
                + "; heads' time: "
                + ", ".join(f"{100 * h:.1f}%" for h in st["head_time"][:-1])
                + ".",
                "",
            ]
            row = {r["batch_size"]: r for r in net["batches"]}.get(st["batch_size"])
            if row and "speedup_time_predicted" in row:
                hb = row["half_budget"]
                lines += [f"At batch {st['batch_size']}: " + "; ".join(_gap(r, label) for r, label in
                          ((row, "these thresholds"), (hb, "½ budget"))), ""]  # fmt: skip
    return "\n".join(lines)
