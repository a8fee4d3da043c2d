"""Where data files are looked for, and the IDX reader: one set of rules for every file-based dataset.

A dataset stored in files is looked up, in order, in ``root`` (when given), ``$EXITNET_DATA``,
``$EXITNET_DATA/<name>``, ``~/.cache/exitnet/<name>`` and the folder its Debian package installs (for example
``/usr/share/datasets/fashion-mnist``); when it is nowhere the error lists every folder searched with what it lacks,
and says how to get the data.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "search_dirs", "missing_data_error", "read_idx"]


def cache_dir(name: str) -> Path:
    """``~/.cache/exitnet/<name>``: where downloads of dataset ``name`` go."""
    return Path.home() / ".cache" / "exitnet" / name


def search_dirs(name: str, root: str | os.PathLike | None = None, system_dir: Path | None = None) -> list[Path]:
    """The folders dataset ``name`` is looked for in, in order (see the module docstring)."""
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get("EXITNET_DATA")
    dirs = [Path(env).expanduser(), Path(env).expanduser() / name] if env else []
    dirs.append(cache_dir(name))
    if system_dir is not None:
        dirs.append(system_dir)
    return dirs


def missing_data_error(what: str, dirs: list[Path], lacks: Callable[[Path], str], how_to_get: str,
                       tried: str = "") -> FileNotFoundError:  # fmt: skip
    """A ``FileNotFoundError`` naming every folder searched and what each lacks, and how to get the data."""

    def state(d: Path) -> str:
        return "no such folder" if not d.is_dir() else lacks(d)

    searched = "\n".join(f"  {d} ({state(d)})" for d in dirs)
    return FileNotFoundError(f"{what} not found.\nSearched:\n{searched}\n{tried}To get the data: {how_to_get}")


_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed, into a native-endian array.

    Raises:
        ValueError: naming the file, if it is not gzip/IDX, has a bad header or too much or too little data.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a-idx1-ubyte"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p)
        array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix says
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: bad IDX magic {raw[:4].hex(' ') or '(empty file)'}; expected 00 00 <dtype code, one of "
            f"{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}> <ndim >= 1>, or a gzip file of that"
        )
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: the header of a {ndim}-dim IDX file needs {header} bytes, found {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected, found = math.prod(dims) * dtype.itemsize, len(raw) - header
    if found != expected:
        raise ValueError(
            f"{path}: the header says shape {dims} of {dtype.name}, so expected {expected} bytes of data, found {found}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


# ------------------------------------------------------------------------------------------ Fashion-MNIST
