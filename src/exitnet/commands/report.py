"""``exitnet report RESULTS.json|DIR``: re-render the Markdown page and the figures of a ``report.json``.

Also home of :func:`write_report`, which ``exitnet evaluate`` uses: every file is written in a temporary folder
beside the destination first, so no reader ever sees a half-written report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "write_report", "read_report"]


def read_report(path: Path) -> tuple[dict[str, Any], Path]:
    """The report dict and the file it came from (``path`` may be the JSON file or its folder)."""
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no report at {file}; pass a report.json or a folder holding one")
    try:
        rep = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    missing = [k for k in ("per_exit", "oracle", "final_accuracy", "num_samples", "num_exits") if k not in rep]
    if missing:
        raise ValueError(
            f"{file} is not an exitnet report (missing {', '.join(missing)}); make one with exitnet evaluate"
        )
    return rep, file


def write_report(rep: dict[str, Any], out: Path, *, title: str = "Early-exit report") -> list[Path]:
    """Write ``report.json``, ``report.md`` and the figures into ``out``.

    Everything is written into a temporary folder beside ``out`` first. A new ``out`` then appears whole (one
    rename); into an existing folder each file is moved with an atomic rename, and its other files are left alone.
    """
    from exitnet.analysis import to_markdown
    from exitnet.plots import write_figures

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        (tmp / "report.json").write_text(json.dumps(rep, indent=2, allow_nan=True) + "\n")
        figures = write_figures(rep, tmp)
        (tmp / "report.md").write_text(to_markdown(rep, title=title, figures=figures))
        names = sorted(p.name for p in tmp.iterdir())
        if not out.exists():
            os.replace(tmp, out)
        else:
            if not out.is_dir():
                raise NotADirectoryError(f"{out} exists and is not a folder")
            for name in names:
                os.replace(tmp / name, out / name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in names]


def report(
    results: Annotated[Path, typer.Argument(help="A report.json, or a folder holding one.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder [default: the folder of the report.json].")
    ] = None,
) -> None:
    """Re-render report.md and the figures (accuracy vs FLOPs, exit histogram, per-exit accuracy, overthinking)."""
    rep, file = read_report(results)
    dest = out if out is not None else file.parent
    written = write_report(rep, dest, title=str(rep.get("title", "Early-exit report")))
    print(f"wrote {', '.join(str(p) for p in written)}")


def register(app: typer.Typer) -> None:
    """Add ``exitnet report`` to the CLI."""
    app.command("report")(report)
