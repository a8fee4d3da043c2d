"""Network checkpoints: :func:`save`, :func:`load`, :func:`load_into`, :func:`load_policy`, :func:`read_manifest`."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exitnet.checkpoint._files import (
    FORMAT,
    CheckpointError,
    field,
    is_int,
    open_manifest,
    read_tensors,
    write,
)
from exitnet.model import InputSpec, MultiExitNetwork
from exitnet.policies import ExitPolicy, NotFittedError, policy_from_config, policy_to_config


def _check_policy(policy: ExitPolicy, num_exits: int) -> None:
    """Refuse a policy that cannot run on a network of ``num_exits`` exits, through the policy's own
    ``check_exits`` (on a copy: saving or loading never changes the policy). An unfitted policy that needs data
    passes: it is stored as it is, to be fitted or calibrated later."""
    probe = copy.deepcopy(policy)
    try:
        probe.check_exits(num_exits)
    except NotFittedError:
        return


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
        path: destination file; a process killed mid-save leaves the previous file there, whole.
        policy: an exit policy to store with it (fitted or not).
        extra: any JSON-serialisable data to keep in the manifest (metrics, training config).

    Returns:
        The path written.

    Example:
        >>> import tempfile, exitnet as ee
        >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"],
        ...                                       num_classes=3, sample_input=torch.zeros(1, 8))
        >>> path = save(net, Path(tempfile.mkdtemp()) / "net.safetensors")
        >>> torch.equal(load(path)(torch.ones(2, 8)).stack(), net(torch.ones(2, 8)).stack())
        True
    """
    if not isinstance(net, MultiExitNetwork):
        raise TypeError(f"save needs a MultiExitNetwork, got {type(net).__name__}")
    from exitnet.heads import SklearnHead

    sklearn_heads = [i for i, h in enumerate(net.heads) if isinstance(h, SklearnHead)]
    if sklearn_heads:
        raise CheckpointError(
            f"exit(s) {sklearn_heads} have scikit-learn heads, whose fitted estimators are not tensors: a safetensors "
            "checkpoint cannot hold them (and exitnet never pickles); save the other weights by replacing those heads, "
            "or refit the heads after loading"
        )
    if policy is not None:
        if not isinstance(policy, ExitPolicy):
            raise TypeError(f"policy must be an exitnet ExitPolicy or None, got {type(policy).__name__}")
        _check_policy(policy, net.num_exits)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    manifest = {
        "format": FORMAT,
        "network": net.spec,
        "exit_names": list(net.exit_names),
        "num_classes": net.num_classes,
        "input_shape": list(net.input_shape) if net.input_shape is not None else None,
        "policy": policy_to_config(policy) if policy is not None else None,
        "extra": extra or {},
    }
    return write(path, tensors, manifest)


def _names_ok(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(s, str) for s in v) and len(set(v)) == len(v)


def _policy_ok(v: Any) -> bool:
    return v is None or (
        isinstance(v, dict)
        and isinstance(v.get("name"), str)
        and isinstance(v.get("params", {}), dict)
        and (v.get("state") is None or isinstance(v["state"], dict))
    )


def _validate(p: Path, m: dict[str, Any]) -> None:
    """Type and consistency checks of every field of a network checkpoint's manifest."""
    names = field(p, m, "exit_names", _names_ok, "a non-empty list of distinct exit names")
    field(p, m, "num_classes", lambda v: v is None or (is_int(v) and v >= 1), "a positive integer or null")
    field(
        p,
        m,
        "input_shape",
        lambda v: v is None or (isinstance(v, list) and all(is_int(s) and s >= 1 for s in v)),
        "a list of positive integers or null",
    )
    field(p, m, "policy", _policy_ok, "null or an object with 'name', 'params' and 'state'")
    field(p, m, "extra", lambda v: isinstance(v, dict), "an object")
    spec = field(p, m, "network", lambda v: v is None or isinstance(v, dict), "an object or null")
    if spec is None:
        return
    field(p, spec, "builder", lambda v: isinstance(v, str), "the name of the builder")
    if "backbone" in spec:
        field(
            p,
            spec,
            "backbone",
            lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("name"), str)),
            "null or a backbone config with a 'name'",
        )
    if "heads" in spec:
        heads = field(
            p,
            spec,
            "heads",
            lambda v: isinstance(v, list) and all(h is None or (isinstance(h, dict) and "kind" in h) for h in v),
            "a list of head specs ({'kind': ...} or null)",
        )
        if len(heads) != len(names) - 1:
            raise CheckpointError(f"{p}: the manifest lists {len(heads)} heads for {len(names)} exits")
    for key, ok, what in (("points", lambda s: isinstance(s, str), "exit points"), ("exits", is_int, "exit indices")):
        if key in spec:
            values = field(
                p, spec, key, lambda v, ok=ok: isinstance(v, list) and all(ok(s) for s in v), f"a list of {what}"
            )
            if len(values) != len(names) - 1:
                raise CheckpointError(f"{p}: the manifest lists {len(values)} {what} for {len(names)} exits")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a checkpoint, validated (format, version, checksum of the manifest, every field's type).

    Raises:
        CheckpointError: the file is missing, not a safetensors file, not an exitnet checkpoint, from a newer
            exitnet, or its manifest is corrupt.
    """
    p, manifest = open_manifest(path, FORMAT)
    _validate(p, manifest)
    return manifest


def _sample(spec: dict[str, Any], manifest: dict[str, Any], path: Path) -> Any:
    """A neutral input of the network's input spec, to rebuild it with."""
    inputs = spec.get("inputs")
    if inputs is not None:
        try:
            return InputSpec.from_dict(inputs).zeros(1)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: invalid input spec in the manifest: {err}") from err
    if manifest["input_shape"] is None:
        raise CheckpointError(f"{path}: the manifest has no input_shape to rebuild the network")
    return torch.zeros(1, *manifest["input_shape"])


def _build(spec: dict[str, Any], backbone: nn.Module, manifest: dict[str, Any], path: Path) -> MultiExitNetwork:
    heads = spec.get("heads") or []
    if any(h is None for h in heads):
        raise CheckpointError(f"{path}: a head was built by a custom factory; rebuild the network and use load_into")
    task = spec.get("task", "classification")
    if task == "classification" and manifest["num_classes"] is None:
        raise CheckpointError(f"{path}: the manifest has no num_classes to rebuild the network")
    sample = _sample(spec, manifest, path)
    num_classes = int(manifest["num_classes"]) if manifest["num_classes"] is not None else None
    if spec["builder"] == "from_module" and "points" in spec:
        inputs = spec.get("inputs")
        axes: dict[str, list[int]] | None = None
        if inputs is not None:  # the dims the saved network marked dynamic (no new probing)
            axes = {
                n: [d for d, s in enumerate(shape) if s is None]
                for n, shape in zip(inputs["names"], inputs["shapes"], strict=True)
            }
        return MultiExitNetwork.from_module(
            backbone, spec["points"], num_classes=num_classes, sample_input=sample, head=heads, task=task,
            dynamic_axes=axes if axes is not None else "auto", output_mask=spec.get("output_mask"),
        )  # fmt: skip
    if spec["builder"] == "from_sequential" and "exits" in spec:
        return MultiExitNetwork.from_sequential(
            backbone,  # type: ignore[arg-type]
            spec["exits"],
            num_classes=num_classes,
            sample_input=sample,
            head=heads,
            task=task,
        )
    raise CheckpointError(f"{path}: unknown network builder {spec['builder']!r}")


def _rebuild(manifest: dict[str, Any], backbone: nn.Module | None, path: Path) -> MultiExitNetwork:
    spec = manifest["network"]
    if spec is None:
        raise CheckpointError(
            f"{path}: the network was built with MultiExitNetwork(stages, heads), which has no recipe to rebuild; "
            "build it again and use exitnet.checkpoint.load_into(net, path)"
        )
    if backbone is None:
        config = spec.get("backbone")
        if config is None:
            raise CheckpointError(
                f"{path}: the network was not built from a reference backbone; pass the same backbone "
                "architecture: exitnet.load(path, backbone=my_model)"
            )
        from exitnet.backbones import build

        try:
            backbone = build(config)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: cannot rebuild the backbone {config.get('name')!r}: {err}") from err
    elif not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
    try:
        return _build(spec, backbone, manifest, path)
    except CheckpointError:
        raise
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the network cannot be rebuilt from this backbone: {err}") from err


def load_state(module: nn.Module, tensors: dict[str, torch.Tensor], p: Path) -> None:
    """``module.load_state_dict(tensors)`` with an error that names the missing, unexpected or misshapen tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{p}: does not fit this network: {len(missing)} tensors missing from the file {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}"
        )
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{p}: {k} has shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the network"
            )
    module.load_state_dict(tensors, strict=True)


def load_into(net: MultiExitNetwork, path: str | os.PathLike) -> MultiExitNetwork:
    """Load a checkpoint's weights into an existing network of the same architecture (returns ``net``)."""
    if not isinstance(net, MultiExitNetwork):
        raise TypeError(f"load_into needs a MultiExitNetwork, got {type(net).__name__}")
    manifest = read_manifest(path)
    p = Path(path)
    tensors = read_tensors(p, manifest)
    if list(manifest["exit_names"]) != list(net.exit_names):
        raise CheckpointError(
            f"{p}: the checkpoint has exits {manifest['exit_names']} but the network has {list(net.exit_names)}"
        )
    load_state(net, tensors, p)
    return net


def load(path: str | os.PathLike, *, backbone: nn.Module | None = None) -> MultiExitNetwork:
    """Rebuild a network from a checkpoint written by :func:`save` (bit-identical outputs).

    Args:
        path: the ``.safetensors`` file.
        backbone: an untrained backbone of the same architecture, needed only when the network was not built
            from one of :mod:`exitnet.backbones`.

    Raises:
        CheckpointError: (a ``ValueError``) the file is missing, not a safetensors checkpoint (a pickle, say),
            truncated, corrupt, tampered with, or does not fit ``backbone``; the message says which.
    """
    manifest = read_manifest(path)
    p = Path(path)
    net = _rebuild(manifest, backbone, p)
    return load_into(net, p)


def load_policy(path: str | os.PathLike) -> ExitPolicy | None:
    """The exit policy stored in a checkpoint, or ``None``."""
    manifest = read_manifest(path)
    config = manifest["policy"]
    if config is None:
        return None
    try:
        policy = policy_from_config(config)
        _check_policy(policy, len(manifest["exit_names"]))
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: invalid policy in the manifest: {err}") from err
    return policy
