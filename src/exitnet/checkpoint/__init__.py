"""Checkpoints: one safetensors file whose header carries a JSON manifest. Never pickle.

The manifest (``format``, ``format_version``, the network's recipe, the exit names, the policy, a SHA-256 of
every tensor and one of the manifest itself) lets :func:`load` rebuild a network made from a reference
backbone with no code from the user, and refuse a missing, truncated, corrupted, tampered or mismatched file
(or a pickle) with a :class:`CheckpointError` that says what is wrong. Saving is atomic: a temporary file
beside the target, ``fsync``, then ``os.replace``; a process killed mid-save leaves the previous file whole.

:func:`save_training_state` / :func:`load_training_state` keep everything a resumed run needs (weights,
optimiser and scheduler state, epoch, step, RNG states) in the same kind of file.

Example:
    >>> import tempfile, torch, exitnet as ee
    >>> net = ee.MultiExitNetwork.from_module(ee.backbones.mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
    ...                                       sample_input=torch.zeros(1, 8))
    >>> path = ee.save(net, tempfile.mkdtemp() + "/net.safetensors")
    >>> read_manifest(path)["exit_names"]
    ['blocks.0', 'final']
"""

from exitnet.checkpoint._files import FORMAT, FORMAT_VERSION, STATE_FORMAT, CheckpointError
from exitnet.checkpoint._network import load, load_into, load_policy, read_manifest, save
from exitnet.checkpoint._training import (
    TrainingState,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)

__all__ = [
    "save",
    "load",
    "load_into",
    "load_policy",
    "read_manifest",
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "STATE_FORMAT",
    "TrainingState",
    "save_training_state",
    "load_training_state",
    "capture_rng_state",
    "restore_rng_state",
]
