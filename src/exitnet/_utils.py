"""Small private helpers shared by several layers (no exitnet imports here)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own previous mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def shape_str(shape: Sequence[int | None]) -> str:
    """``(16, 8, 8)`` -> ``"(B, 16, 8, 8)"``: a per-sample shape as error messages print it (``None``: any size)."""
    return "(" + ", ".join(["B", *("*" if s is None else str(int(s)) for s in shape)]) + ")"


def module_device(module: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of a module's first parameter (or buffer), ``default`` when it has none: the one device lookup."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device(default)


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter, ``None`` when it has none."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return None


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf (one device sync)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum()) if x.dim() > 1 else -1
        where = f" in {bad} sample(s)" if bad >= 0 else ""
        raise ValueError(f"{what} contains NaN or inf{where}; exitnet does not guess an exit for such inputs")


def check_probability(value: float, name: str) -> float:
    """Return ``value`` as float if it lies in [0, 1], else raise a ``ValueError`` naming it."""
    v = float(value)
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return v


# ---------------------------------------------------------------------- atomic files and folders
# A temporary name starts with "." and carries the writer's host and pid, so that a later writer can tell the
# leftovers of a killed process (same host, pid no longer alive) from a write in progress, and remove them.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files or folders that killed writers of ``target`` left beside it.

    Only leftovers of this host whose process is gone are removed; a write in progress is never touched.

    Returns:
        The paths removed.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]+\.tmp$")
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or m["host"] != _HOST or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not let a folder be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``, never part.

    The bytes go to a temporary file beside ``path`` (a name starting with ``.``), are flushed and
    ``fsync``-ed, and the file is renamed over ``path`` with ``os.replace`` (atomic on POSIX); then the folder is
    synced so the rename itself survives a power cut. A process killed at any point leaves ``path`` as it was,
    plus at worst a hidden temporary file that the next write removes.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.bin"
        >>> atomic_write_bytes(p, b"hello").read_bytes()
        b'hello'
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write a file at {target}: it is a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = _temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return target


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder whole or not at all: yield a temporary folder, then rename it to ``path``.

    On success an existing ``path`` is replaced (moved aside, the new folder renamed in, the old one
    deleted); on an exception the temporary folder is deleted and ``path`` is left as it was.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_directory(out) as tmp:
        ...     _ = (tmp / "report.json").write_text("{}")
        >>> sorted(p.name for p in out.iterdir())
        ['report.json']
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"cannot write a folder at {target}: a file is there")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = _temp_name(target)
    tmp.mkdir(mode=0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = _temp_name(target)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
