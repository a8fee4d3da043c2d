"""The benchmark suite (``exitnet bench``): accuracy vs cost, real speed-ups, memory, the survey's claims.

Each benchmark is a module ``exitnet.bench.<name>`` exposing ``NAME: str``,
``run(suite, device, out_dir) -> dict`` (JSON-serialisable; may write PNGs into ``out_dir``) and
``to_markdown(result) -> str``. :func:`run_suite` imports every module of :data:`MODULES` first (so a module may
register extra rows with another, e.g. :func:`exitnet.bench.claims.register_claim`), skips a module that does
not exist yet with a note, runs the others with torch's threads pinned, and writes ``results.json`` (one key per
module, plus ``meta``), ``summary.md`` (and the same text as ``README.md``) and the figures into the output
folder, whole or not at all.

Example:
    >>> from exitnet.bench import run_suite
    >>> results = run_suite("quick", device="cpu", out_dir="benchmarks/results/cpu-2core")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from exitnet._utils import atomic_directory
from exitnet._version import __version__
from exitnet.bench import zoo
from exitnet.bench.report import figure_speedups, headline, pct

__all__ = ["MODULES", "SUITES", "run_suite", "render", "machine_kind", "default_out_dir", "load_modules"]

#: Benchmark modules in the order they run. ``policies`` (issue 4) and ``training`` (issue 5) are skipped with
#: a note until they exist.
MODULES = ("accuracy", "runtime", "memory", "claims", "policies", "training")
SUITES = ("quick", "full")  # plus "smoke", for tests: tiny synthetic data, seconds
FLOPS_SAVED_GOAL = 0.60  # at <= 0.5 point accuracy drop, on the Fashion-MNIST ResNet


def _check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    return str(dev)


def machine_kind(device: str = "cpu", threads: int | None = None) -> str:
    """A short name for the machine the numbers come from: ``cpu-2core``, ``cuda-nvidia-h100-80gb-hbm3``.

    Example:
        >>> machine_kind("cpu", threads=2)
        'cpu-2core'
    """
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"cpu-{threads or torch.get_num_threads()}core"


def default_out_dir(device: str = "cpu", threads: int | None = None) -> Path:
    """``benchmarks/results/<machine-kind>`` (relative to the current folder)."""
    return Path("benchmarks") / "results" / machine_kind(device, threads)


def load_modules(names: Sequence[str] = MODULES) -> tuple[dict[str, ModuleType], dict[str, str]]:
    """Import ``exitnet.bench.<name>`` for each name: the modules found, and a note for each one skipped."""
    found, skipped = {}, {}
    for name in names:
        module_name = f"exitnet.bench.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            skipped[name] = f"module {module_name} does not exist yet"
            continue
        missing = [a for a in ("NAME", "run", "to_markdown") if not hasattr(module, a)]
        if missing:
            skipped[name] = f"module {module_name} lacks {', '.join(missing)}"
            continue
        found[name] = module
    return found, skipped


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (other processes competing for the cores make timings noisy)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _safe_out_dir(out: Path) -> None:
    """Refuse to replace a folder that is not a benchmark output (the folder is replaced whole)."""
    if out.is_dir() and any(out.iterdir()) and not (out / "results.json").is_file():
        raise FileExistsError(
            f"{out} exists and is not a benchmark output folder (no results.json); the output folder is replaced "
            "whole, so give a new or empty folder with --out"
        )


def run_suite(
    suite: str = "quick",
    *,
    device: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    modules: Sequence[str] = MODULES,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark modules of ``suite`` and write their results into ``out_dir``.

    Args:
        suite: ``"quick"`` (under 10 minutes on 2 CPU cores), ``"full"`` (about an hour) or ``"smoke"`` (tests).
        device: ``"cpu"`` or ``"cuda"``.
        out_dir: output folder, replaced whole at the end (a given folder must be empty, new, or hold a previous
            ``results.json``); defaults to :func:`default_out_dir`, which is always replaced.
        threads: torch threads to pin (default: every core torch sees); restored afterwards.
        modules: benchmark module names to run.
        log: called with one line per step (default: print to stderr).

    Returns:
        The results (also in ``results.json``): ``meta`` and one key per module that ran.

    Raises:
        ValueError: bad suite, device or threads. FileNotFoundError: Fashion-MNIST is not installed (the message
            says how to install it) or ``out_dir`` is a folder that is not a benchmark output.
    """
    if suite not in (*SUITES, "smoke"):
        raise ValueError(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}")
    device = _check_device(device)
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"threads must be a positive integer, got {threads}")
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads else (os.cpu_count() or previous_threads))
    try:
        kind = machine_kind(device, torch.get_num_threads())
        out = Path(out_dir) if out_dir is not None else default_out_dir(device, torch.get_num_threads())
        if out_dir is not None:  # the default folder is the suite's own: always replaced
            _safe_out_dir(out)
        zoo.check_data(suite)
        found, skipped = load_modules(modules)
        for name, note in skipped.items():
            say(f"skip {name}: {note}")
        t_start = time.perf_counter()
        results: dict[str, Any] = {}
        meta: dict[str, Any] = {
            "suite": suite,
            "device": device,
            "machine_kind": kind,
            "threads": torch.get_num_threads(),
            "cpu": _cpu_model(),
            "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
            "torch": torch.__version__,
            "exitnet": __version__,
            "python": platform.python_version(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": _load_average(),
            "skipped": skipped,
            "seconds": {},
            "errors": {},
        }
        with atomic_directory(out) as tmp:
            for name, module in found.items():
                say(f"[{time.perf_counter() - t_start:6.0f}s] {name} ...")
                t0 = time.perf_counter()
                try:
                    results[name] = module.run(suite, device, tmp)
                except (FileNotFoundError, KeyboardInterrupt):
                    raise
                except Exception as err:  # one broken benchmark must not lose the others' numbers
                    meta["errors"][name] = f"{type(err).__name__}: {err}"
                    say(f"error in {name}: {err}\n{traceback.format_exc()}")
                meta["seconds"][name] = time.perf_counter() - t0
            meta["total_seconds"] = time.perf_counter() - t_start
            meta["load_average_at_end"] = _load_average()
            meta["goals"] = goals(results)
            if "runtime" in results:
                results["runtime"]["figure"] = figure_speedups(results["runtime"], tmp / "speedups.png").name
            full = {"meta": meta, **results}
            (tmp / "results.json").write_text(json.dumps(full, indent=1, default=_json_default) + "\n")
            _write_summary(tmp, full, found)
        say(f"[{meta['total_seconds']:6.0f}s] wrote {out}/results.json, summary.md and figures")
        return full
    finally:
        torch.set_num_threads(previous_threads)


def _write_summary(folder: Path, full: dict[str, Any], modules: dict[str, ModuleType]) -> None:
    text = summary_markdown(full, modules)
    (folder / "summary.md").write_text(text)
    (folder / "README.md").write_text(text)


def render(out_dir: str | os.PathLike) -> str:
    """Write ``summary.md`` / ``README.md`` again from an output folder's ``results.json`` (no benchmark runs).

    Returns:
        The Markdown written.
    """
    folder = Path(out_dir)
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {folder}; run `exitnet bench` first")
    full = json.loads(path.read_text())
    found, _ = load_modules([k for k in full if k != "meta"])
    _write_summary(folder, full, found)
    return summary_markdown(full, found)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals with what was measured (reported, never asserted)."""
    out: list[dict[str, Any]] = []
    res = results.get("accuracy", {}).get("networks", {}).get("resnet")
    if res:
        p = next((p for p in res["operating_points"] if p["max_accuracy_drop"] == 0.005), None)
        if p is not None:
            beaten = any(e["accuracy"] > res["final_accuracy"] for e in res["per_exit"][:-1])
            out.append(
                {
                    "goal": "FLOPs saved at ≤ 0.5 pt accuracy drop (ResNet, thresholds from val, measured on test)",
                    "target": FLOPS_SAVED_GOAL,
                    "measured": p["flops_saved"],
                    "met": p["flops_saved"] >= FLOPS_SAVED_GOAL,
                    "note": "flattered: earlier exits beat the under-trained final exit" if beaten else "",
                }
            )
    out += results.get("runtime", {}).get("goals", [])
    for module in ("policies", "training"):  # goals the other benchmark modules measure themselves
        out += results.get(module, {}).get("goals", [])
    return out


def summary_markdown(full: dict[str, Any], modules: dict[str, ModuleType]) -> str:
    """The Markdown summary: meta, headline table and figure, goals, then each module's own section."""
    meta = full["meta"]
    lines = [
        f"# exitnet benchmarks: {meta['suite']} suite on `{meta['machine_kind']}`",
        "",
        f"{meta['date_utc']} · {meta['cpu']}"
        + (f" · {meta['gpu']}" if meta.get("gpu") else "")
        + f" · {meta['threads']} torch thread(s) · torch {meta['torch']} · exitnet {meta['exitnet']} · "
        f"total {meta['total_seconds'] / 60:.1f} min ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in meta["seconds"].items())
        + ")",
        "",
    ]
    loads = [meta.get("load_average_at_start"), meta.get("load_average_at_end")]
    if all(loads) and max(max(v) for v in loads if v) > meta["threads"] + 0.5:
        lines += [
            f"> **Noisy run**: the machine's load average was {loads[0]} at the start and {loads[1]} at the end "
            f"(1/5/15 min) for {meta['threads']} pinned thread(s): other processes competed for the cores, so the "
            "timings (and ratios) are noisier than on a quiet machine.",
            "",
        ]
    if "accuracy" in full or "runtime" in full:
        lines += ["## Headline", "", headline(full), ""]
        if "accuracy" in full:
            lines += [f"![accuracy vs FLOPs]({full['accuracy']['figure']})", ""]
    if meta.get("goals"):
        lines += ["## Goals (reported, not asserted)", "", "| goal | target | measured | met | note |"]
        lines += ["|:--|--:|--:|:-:|:--|"]
        for g in meta["goals"]:
            measured = g["measured"]
            shown = "—" if measured is None else (pct(measured, 1) if "FLOPs saved" in g["goal"] else f"{measured:.3f}")
            target = pct(g["target"], 0) if "FLOPs saved" in g["goal"] else g["target"]
            met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
            lines.append(f"| {g['goal']} | {target} | {shown} | {met} | {g.get('note', '')} |")
        lines.append("")
    titles = {"accuracy": "Accuracy vs cost", "runtime": "Runtime", "memory": "Memory", "claims": "The survey's claims"}
    for name, module in modules.items():
        lines += [f"## {titles.get(name, name.capitalize())}", ""]
        if name in meta["errors"]:
            lines += [f"Not measured: {meta['errors'][name]}", ""]
        elif name in full:
            lines += [module.to_markdown(full[name]).rstrip(), ""]
            if name == "runtime" and full[name].get("figure"):
                lines += [f"![speed-ups]({full[name]['figure']})", ""]
    if meta["skipped"]:
        lines += ["## Not run", ""] + [f"- `{k}`: {v}" for k, v in meta["skipped"].items()] + [""]
    return "\n".join(lines)
