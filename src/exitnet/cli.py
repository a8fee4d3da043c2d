"""The ``exitnet`` command. User errors print one line and exit 2; ``--debug`` shows the traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="exitnet",
    help="Multi-exit (early-exit) neural networks: train, calibrate, run early-exit, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
_DEBUG = {"on": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _DEBUG["on"] = debug


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (written whole or not at all).")] = Path(
        "runs/demo"
    ),
    dataset: Annotated[str, typer.Option("--dataset", help="digits | fashion-mnist")] = "digits",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 15,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads (default: torch's).")] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="fashion-mnist only: keep this many samples per split."),
    ] = None,
) -> None:
    """Train a multi-exit ResNet, calibrate its exits, run early exit and compare with the backbone alone."""
    from exitnet.demo import DemoConfig, run_demo

    if dataset not in ("digits", "fashion-mnist"):
        raise typer.BadParameter(f"unknown dataset {dataset!r}; choose one of: digits, fashion-mnist")
    cfg = DemoConfig(
        dataset=dataset, epochs=epochs, seed=seed, threads=threads, limit=limit, progress=sys.stderr.isatty()
    )
    rep = run_demo(cfg, out)
    table = Table(title=f"exitnet demo: {rep['dataset']}, test split ({rep['num_samples']} samples)")
    for col in ("exit", "accuracy", "cumulative MFLOPs", "fraction leaving"):
        table.add_column(col, justify="right")
    for e in rep["per_exit"]:
        table.add_row(
            e["name"], f"{100 * e['accuracy']:.2f}%", f"{e['flops'] / 1e6:.3f}", f"{100 * e['fraction']:.1f}%"
        )
    console.print(table)
    console.print(
        f"final-exit accuracy {100 * rep['final_accuracy']:.2f}% | early-exit accuracy "
        f"{100 * rep['early_exit_accuracy']:.2f}% | FLOPs saved {100 * rep['flops_saved']:.1f}% | "
        f"speed-up: wall-clock {rep['speedup_wall']:.2f}x, FLOPs-predicted {rep['speedup_flops']:.2f}x "
        f"(ratio {rep['realized_over_predicted']:.2f})"
    )
    console.print(f"wrote {out / 'report.json'}, {out / 'accuracy_vs_cost.png'}, {out / 'model.safetensors'}")


def _register_commands() -> None:
    """Commands that live in their own modules (exitnet/commands/<name>.py, each with ``register(app)``)."""
    import importlib

    for name in ("train", "evaluate", "report", "bench"):
        module_name = f"exitnet.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name in (module_name, "exitnet.commands"):
                continue  # not written yet
            raise
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``exitnet`` script: returns the exit status."""
    try:
        # standalone mode: typer prints usage errors itself and exits 2; other errors come here.
        app(args=argv, standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        Console(stderr=True).print("aborted", style="red")
        return 130
    except Exception as err:
        if _DEBUG["on"]:
            raise
        Console(stderr=True).print(f"error: {err}", style="red", markup=False, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    raise SystemExit(main())
