"""Checkpoints: one safetensors file whose header carries a JSON manifest. Never pickle.

The manifest (``format``, ``format_version``, the network's recipe, the exit names, the policy and a SHA-256
of every tensor) lets :func:`load` rebuild a network made from a reference backbone with no code from the user,
and refuse a truncated, corrupted, tampered or mismatched file with a message that says what is wrong.
Saving is atomic: a temporary file in the same folder, ``fsync``, then ``os.replace``; a crash mid-save
leaves the previous file as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as _to_bytes

from exitnet._version import __version__
from exitnet.model import MultiExitNetwork
from exitnet.policies import ExitPolicy, policy_from_config, policy_to_config

__all__ = ["save", "load", "load_into", "load_policy", "read_manifest", "CheckpointError", "FORMAT_VERSION"]

FORMAT = "exitnet-checkpoint"
FORMAT_VERSION = 1
_KEY = "exitnet"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, corrupt, tampered with or does not fit."""


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(
    net: MultiExitNetwork,
    path: str | os.PathLike,
    policy: ExitPolicy | None = None,
    *,
    extra: dict | None = None,
) -> Path:
    """Write ``net`` (and optionally a policy) to ``path`` (a ``.safetensors`` file), atomically.

    Args:
        net: the network; its weights and buffers are stored, its recipe goes into the manifest.
        path: destination file.
        policy: an exit policy to store with it (fitted or not).
        extra: any JSON-serialisable data to keep in the manifest (metrics, training config).

    Returns:
        The path written.
    """
    if not isinstance(net, MultiExitNetwork):
        raise TypeError(f"save needs a MultiExitNetwork, got {type(net).__name__}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exitnet_version": __version__,
        "network": net.spec,
        "exit_names": list(net.exit_names),
        "num_classes": net.num_classes,
        "input_shape": list(net.input_shape) if net.input_shape is not None else None,
        "policy": policy_to_config(policy) if policy is not None else None,
        "checksum": _checksum(tensors),
        "extra": extra or {},
    }
    try:
        header = json.dumps(manifest)
    except TypeError as err:
        raise TypeError(f"checkpoint manifest is not JSON-serialisable: {err}") from err
    out = Path(path)
    _write_atomic(out, _to_bytes(tensors, metadata={_KEY: header}))
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a checkpoint, validated (format, version, required keys)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{p} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    if _KEY not in meta:
        raise CheckpointError(f"{p} is a safetensors file but not an exitnet checkpoint (no manifest)")
    try:
        manifest = json.loads(meta[_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{p}: the manifest is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{p}: manifest format is not {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {version}, this exitnet reads {FORMAT_VERSION}")
    for key in ("network", "exit_names", "checksum", "input_shape", "num_classes"):
        if key not in manifest:
            raise CheckpointError(f"{p}: manifest lacks {key!r}")
    return manifest


def _rebuild(manifest: dict[str, Any], backbone: torch.nn.Module | None, path: Path) -> MultiExitNetwork:
    spec = manifest["network"] or {}
    if backbone is None:
        config = spec.get("backbone")
        if config is None:
            raise CheckpointError(
                f"{path}: the network was not built from a reference backbone; pass the same backbone "
                "architecture: exitnet.load(path, backbone=my_model)"
            )
        from exitnet.backbones import build

        backbone = build(config)
    heads = spec.get("heads") or []
    if any(h is None for h in heads):
        raise CheckpointError(f"{path}: a head was built by a custom factory; rebuild the network and use load_into")
    if manifest["input_shape"] is None:
        raise CheckpointError(f"{path}: the manifest has no input_shape")
    sample = torch.zeros(1, *manifest["input_shape"])
    num_classes = int(manifest["num_classes"])
    if spec.get("builder") == "from_module":
        return MultiExitNetwork.from_module(
            backbone, spec["points"], num_classes=num_classes, sample_input=sample, head=heads
        )
    if spec.get("builder") == "from_sequential":
        return MultiExitNetwork.from_sequential(
            backbone,  # type: ignore[arg-type]
            spec["exits"],
            num_classes=num_classes,
            sample_input=sample,
            head=heads,
        )
    raise CheckpointError(f"{path}: unknown network builder {spec.get('builder')!r}")


def _read_tensors(path: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read the weights (truncated or corrupt?): {err}") from err
    if _checksum(tensors) != manifest["checksum"]:
        raise CheckpointError(f"{path}: weights do not match the manifest's checksum (corrupted or tampered with)")
    return tensors


def load_into(net: MultiExitNetwork, path: str | os.PathLike) -> MultiExitNetwork:
    """Load a checkpoint's weights into an existing network of the same architecture."""
    p = Path(path)
    manifest = read_manifest(p)
    tensors = _read_tensors(p, manifest)
    if list(manifest["exit_names"]) != list(net.exit_names):
        raise CheckpointError(
            f"{p}: checkpoint exits {manifest['exit_names']} but the network has {list(net.exit_names)}"
        )
    own = net.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{p}: does not fit this network: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{p}: {k} has shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the network"
            )
    net.load_state_dict(tensors, strict=True)
    return net


def load(path: str | os.PathLike, *, backbone: torch.nn.Module | None = None) -> MultiExitNetwork:
    """Rebuild a network from a checkpoint written by :func:`save` (bit-identical outputs).

    Args:
        path: the ``.safetensors`` file.
        backbone: an untrained backbone of the same architecture, needed only when the network was not built
            from one of :mod:`exitnet.backbones`.
    """
    p = Path(path)
    manifest = read_manifest(p)
    net = _rebuild(manifest, backbone, p)
    return load_into(net, p)


def load_policy(path: str | os.PathLike) -> ExitPolicy | None:
    """The exit policy stored in a checkpoint, or ``None``."""
    config = read_manifest(path).get("policy")
    if config is None:
        return None
    try:
        return policy_from_config(config)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: invalid policy in the manifest: {err}") from err
