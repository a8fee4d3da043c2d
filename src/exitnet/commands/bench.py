"""``exitnet bench``: run the benchmark suite and write results.json, a Markdown summary and figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def bench(
    suite: Annotated[str, typer.Option("--suite", help="quick (< 10 min on 2 CPU cores) | full (about an hour)")] = (
        "quick"
    ),
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder, replaced whole (default: benchmarks/results/<machine-kind>)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch threads to pin (default: every core).")
    ] = None,
) -> None:
    """Benchmarks: accuracy vs FLOPs, real speed-ups against peers' ways of early exit, memory, the survey's claims."""
    from exitnet.bench import SUITES, run_suite

    if suite not in SUITES:
        raise typer.BadParameter(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}", param_hint="--suite")
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"unknown device {device!r}; choose one of: cpu, cuda", param_hint="--device")
    results = run_suite(suite, device=device, out_dir=out, threads=threads)
    meta = results["meta"]
    for g in meta["goals"]:
        state = "—" if g["met"] is None else ("met" if g["met"] else "NOT met")
        measured = "—" if g["measured"] is None else f"{g['measured']:.3f}"
        print(f"{g['goal']}: {measured} (target {g['target']}) {state}")
    if meta["errors"]:
        print(f"benchmarks that failed: {', '.join(meta['errors'])}", file=sys.stderr)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``exitnet bench`` to the CLI."""
    app.command("bench")(bench)
