"""The ``exitnet`` command. A user error prints one line and exits non-zero; ``--debug`` shows the traceback."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Annotated, Any

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


# typer >= 0.20 vendors click as typer._click; older typer runs on click itself.
_click: Any = importlib.import_module("typer._click" if importlib.util.find_spec("typer._click") else "click")
_UsageError = _click.exceptions.UsageError
_ClickException = _click.exceptions.ClickException
_NoArgsIsHelpError = getattr(_click.exceptions, "NoArgsIsHelpError", ())


def _say(message: str) -> None:
    """Print ``message`` as one line on stderr (no wrapping, no markup)."""
    line = " ".join(str(message).split())
    Console(stderr=True, soft_wrap=True).print(line, style="red", markup=False, highlight=False)


def _usage_hint(err: Any) -> str:
    ctx = getattr(err, "ctx", None)
    path = ctx.command_path if ctx is not None else "exitnet"
    return f" (see '{path} --help')"


#: Errors that mean "the user asked for something that cannot be done" (wrong value, missing file, bad
#: checkpoint, policy not fitted, loss became NaN, optional dependency missing): printed as they are.
#: Anything else (KeyError, AttributeError, ...) is a bug, and the line says so.
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ArithmeticError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``exitnet`` script: returns the exit status.

    A user error prints one line, ``error: …``, on stderr and returns 1 (2 for a bad command line); no traceback
    unless ``--debug`` is given, in which case the exception propagates with its traceback.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
        0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    # The callback sets it too, but only once parsing gets that far; like the callback, only a --debug before the
    # command counts ("exitnet demo --debug" is a usage error, reported as one).
    head = args[: next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))]
    _DEBUG["on"] = "--debug" in head
    if not [a for a in args if a != "--debug"]:
        args.append("--help")  # a bare "exitnet" shows the help and succeeds
    try:
        result = app(args=args, prog_name="exitnet", standalone_mode=False)
    except _NoArgsIsHelpError:  # no_args_is_help on a group (a bare "exitnet" is handled below)
        app(args=[*args, "--help"], prog_name="exitnet", standalone_mode=False)
        return 0
    except _UsageError as err:  # bad option, missing argument, BadParameter raised by a command
        if _DEBUG["on"]:
            raise
        _say(f"error: {err.format_message()}{_usage_hint(err)}")
        return err.exit_code
    except _ClickException as err:
        if _DEBUG["on"]:
            raise
        _say(f"error: {err.format_message()}")
        return err.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _say("aborted")
        return 130
    except typer.Exit as err:
        return int(err.exit_code)
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except Exception as err:
        if _DEBUG["on"]:
            raise
        if isinstance(err, _USER_ERRORS):
            _say(f"error: {err}")
        else:
            _say(f"error: internal error ({type(err).__name__}: {err}); run again with --debug for the traceback")
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())
