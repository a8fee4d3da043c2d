"""Private: the file format shared by network checkpoints and training states, and the JSON codec.

A file is one safetensors file. Its header metadata holds, under the key ``"exitnet"``, a JSON manifest with
``format``, ``format_version``, ``checksum`` (SHA-256 over every tensor's name, dtype, shape and bytes) and
``manifest_checksum`` (SHA-256 of the manifest itself), so that a flipped byte anywhere is found: in the tensor
data by the first, in the manifest by the second, in the tensor table by safetensors itself.

Structures around tensors (optimiser state, RNG states) are stored by :func:`encode`: tensors go into the file,
the rest into JSON, with markers for what JSON cannot say (tuples, non-string dict keys, numpy arrays).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as _to_bytes

from exitnet._utils import atomic_write_bytes
from exitnet._version import __version__

FORMAT = "exitnet-checkpoint"
STATE_FORMAT = "exitnet-training-state"
FORMAT_VERSION = 1
_KEY = "exitnet"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HINTS = {
    STATE_FORMAT: "; it is a training state: use exitnet.checkpoint.load_training_state",
    FORMAT: "; it is a network checkpoint: use exitnet.load",
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, corrupt, tampered with or does not fit."""


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest without its own ``manifest_checksum`` field (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
    """Add the version and checksums to ``manifest`` and write the file atomically."""
    manifest = {"format_version": FORMAT_VERSION, "exitnet_version": __version__, **manifest}
    manifest["checksum"] = checksum(tensors)
    try:
        manifest = json.loads(json.dumps(manifest))  # what a reader will see (tuples -> lists, int keys -> str)
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint manifest is not JSON-serialisable: {err}") from err
    manifest["manifest_checksum"] = manifest_digest(manifest)
    header = json.dumps(manifest)
    return atomic_write_bytes(path, _to_bytes(tensors, metadata={_KEY: header}))


def sniff(p: Path) -> str:
    """What a file that safetensors cannot open looks like (for the error message)."""
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(16)
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return (
            "it is a PyTorch pickle (torch.save, .pt/.pth); exitnet loads only safetensors files, because "
            "unpickling can run arbitrary code"
        )
    if size < 8:
        return f"the file has {size} bytes, too short for a safetensors header (truncated?)"
    header_len = int.from_bytes(head[:8], "little")
    if header_len > size - 8:
        if header_len > 100_000_000 or (size > 8 and head[8:9] != b"{"):
            return "it is not a safetensors file (no header at its start)"
        return f"the file is truncated: its header alone needs {header_len + 8} bytes, the file has {size}"
    try:
        with p.open("rb") as f:
            f.seek(8)
            table = json.loads(f.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in table.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "its header is corrupt (not the JSON table safetensors writes)"
    if 8 + header_len + end > size:
        return f"the file is truncated: its tensors need {8 + header_len + end} bytes, the file has {size}"
    return "its tensor table is corrupt (offsets, dtypes or shapes do not add up)"


def open_manifest(path: str | os.PathLike, expected: str) -> tuple[Path, dict[str, Any]]:
    """Check that ``path`` is a readable safetensors file of format ``expected``; return its manifest."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p} (file not found)")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a checkpoint file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{p} is not a readable safetensors file: {sniff(p)} ({err})") from err
    if _KEY not in meta:
        raise CheckpointError(f"{p} is a safetensors file but not an exitnet checkpoint (it has no exitnet manifest)")
    try:
        manifest = json.loads(meta[_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{p}: the manifest is not valid JSON (corrupt header?): {err}") from err
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{p}: the manifest must be a JSON object, got {type(manifest).__name__}")
    fmt = manifest.get("format")
    if fmt != expected:
        hint = _HINTS.get(fmt, "") if isinstance(fmt, str) else ""
        raise CheckpointError(f"{p}: manifest format is {fmt!r}, expected {expected!r}{hint}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{p}: manifest format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: written with checkpoint format version {version} by a newer exitnet "
            f"({manifest.get('exitnet_version', '?')}); this exitnet ({__version__}) reads version "
            f"{FORMAT_VERSION}: upgrade exitnet"
        )
    for key in ("checksum", "manifest_checksum"):
        value = manifest.get(key)
        if not isinstance(value, str) or not _HEX64.match(value):
            raise CheckpointError(f"{p}: manifest field {key!r} must be a SHA-256 hex digest, got {value!r}")
    if manifest_digest(manifest) != manifest["manifest_checksum"]:
        raise CheckpointError(f"{p}: the manifest does not match its own checksum (the header was corrupted or edited)")
    field(p, manifest, "exitnet_version", lambda v: isinstance(v, str), "a version string")
    return p, manifest


def read_tensors(p: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """All tensors of the file, checked against the manifest's checksum."""
    try:
        tensors = load_file(str(p))
    except Exception as err:
        raise CheckpointError(f"{p}: cannot read the tensors: {sniff(p)} ({err})") from err
    if checksum(tensors) != manifest["checksum"]:
        raise CheckpointError(
            f"{p}: the tensors do not match the manifest's checksum (the weights were corrupted or changed)"
        )
    return tensors


def field(p: Path, m: dict[str, Any], key: str, ok: Any, expected: str) -> Any:
    """``m[key]`` if present and ``ok(value)``; else a :class:`CheckpointError` naming what was expected."""
    if key not in m:
        raise CheckpointError(f"{p}: the manifest lacks {key!r} ({expected})")
    value = m[key]
    if not ok(value):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:80] + "…"
        raise CheckpointError(f"{p}: manifest field {key!r} must be {expected}, got {shown}")
    return value


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------- JSON codec
_TENSOR, _ARRAY, _TUPLE, _DICT = "__tensor__", "__ndarray__", "__tuple__", "__dict__"
_MARKERS = (_TENSOR, _ARRAY, _TUPLE, _DICT)
_SCALARS = (bool, int, float, str, type(None))


def encode(obj: Any, tensors: dict[str, torch.Tensor], prefix: str, where: str = "state") -> Any:
    """JSON for ``obj``, with every tensor (and numpy array) moved into ``tensors`` under ``prefix<n>``.

    Tuples, dicts with non-string keys and arrays are marked so that :func:`decode` gives back the same
    structure (an optimiser's ``state`` is keyed by int, its ``betas`` is a tuple).

    Example:
        >>> t = {}
        >>> encode({"step": 3, 0: (torch.ones(2), None)}, t, "s/")
        {'__dict__': [['step', 3], [0, {'__tuple__': [{'__tensor__': 's/0'}, None]}]]}
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_complex():
            raise TypeError(f"{where}: complex tensors cannot be stored")
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"{where}: numpy arrays of dtype {obj.dtype} cannot be stored")
        key = f"{prefix}{len(tensors)}"
        flat = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)  # raw bytes, any dtype
        tensors[key] = torch.from_numpy(flat.copy())
        return {_ARRAY: key, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [encode(v, tensors, prefix, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, prefix, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _MARKERS for k in obj):
            return {k: encode(v, tensors, prefix, f"{where}[{k!r}]") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, _SCALARS):
                raise TypeError(f"{where}: dict keys must be str, int, float, bool or None, got {type(k).__name__}")
            items.append([k, encode(v, tensors, prefix, f"{where}[{k!r}]")])
        return {_DICT: items}
    raise TypeError(
        f"{where}: cannot store a {type(obj).__name__} (tensors, arrays, numbers, strings, lists, tuples and "
        "dicts only; no pickle)"
    )


def decode(obj: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    """Inverse of :func:`encode`; records in ``used`` the tensor keys it took. Raises ``ValueError`` on junk."""
    if isinstance(obj, list):
        return [decode(v, tensors, used) for v in obj]
    if not isinstance(obj, dict):
        if not isinstance(obj, _SCALARS):
            raise ValueError(f"unexpected JSON value {obj!r}")
        return obj
    if len(obj) >= 1 and next(iter(obj)) in _MARKERS:
        marker = next(iter(obj))
        if marker == _TUPLE and isinstance(obj[_TUPLE], list):
            return tuple(decode(v, tensors, used) for v in obj[_TUPLE])
        if marker == _DICT and isinstance(obj[_DICT], list):
            out = {}
            for item in obj[_DICT]:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], _SCALARS)):
                    raise ValueError(f"malformed dict entry {item!r}")
                out[item[0]] = decode(item[1], tensors, used)
            return out
        if marker in (_TENSOR, _ARRAY):
            key = obj[marker]
            if not isinstance(key, str) or key not in tensors:
                raise ValueError(f"reference to a tensor {key!r} that the file does not hold")
            used.add(key)
            if marker == _TENSOR:
                return tensors[key]
            dtype, shape = obj.get("dtype"), obj.get("shape")
            if not isinstance(dtype, str) or np.dtype(dtype).kind not in "biuf":
                raise ValueError(f"unsupported array dtype {dtype!r}")
            if not isinstance(shape, list) or not all(is_int(s) and s >= 0 for s in shape):
                raise ValueError(f"malformed array shape {shape!r}")
            raw = tensors[key].numpy().tobytes()
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        raise ValueError(f"malformed {marker} entry")
    return {k: decode(v, tensors, used) for k, v in obj.items()}
