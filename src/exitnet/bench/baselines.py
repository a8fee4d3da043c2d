"""How peers run early exits, written plainly as they do, to time against :func:`exitnet.runtime.predict`.

- :func:`per_sample_early_exit`: one sample at a time (batch 1), a Python ``break`` at the first confident exit.
  This is how SDN (``sdn_test_early_exits``), DeeBERT (a ``HighwayException`` raised at batch size 1) and
  PABEE (a patience counter at batch size 1) run early exit at inference.
- :func:`run_all_then_mask`: run every exit on every sample, then pick each sample's exit from the cached logits;
  the saving is only *counted* in FLOPs, never realised. This is how MSDNet's budgeted evaluation and Zero Time
  Waste's evaluation simulate early exit.
- :func:`batch_level_exit`: run the batch exit by exit and stop only when every sample of the batch is
  confident. Each sample still answers from its own first confident exit (so the predictions equal the
  per-sample rule), but the whole batch pays until its least confident sample is done.
- :func:`backbone_alone`: the network without any auxiliary head: the baseline of every speed-up.

Every function takes a :class:`~exitnet.model.MultiExitNetwork`, inputs ``[N, *input_shape]`` already on the
network's device, and a fitted :class:`~exitnet.policies.ExitPolicy` (whose ``step`` is the exit criterion, so the
decisions are exactly the policy's), and returns a :class:`BaselineResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from exitnet.model import MultiExitNetwork
from exitnet.policies import ExitPolicy
from exitnet.rows import num_rows, slice_rows
from exitnet.scores import prediction

__all__ = [
    "BaselineResult",
    "input_layout",
    "per_sample_early_exit",
    "run_all_then_mask",
    "batch_level_exit",
    "backbone_alone",
]


@dataclass(frozen=True)
class BaselineResult:
    """Predicted class ``[N]`` and exit taken ``[N]`` (``num_exits - 1`` for the backbone alone)."""

    pred: torch.Tensor
    exit_index: torch.Tensor


def input_layout(net: MultiExitNetwork, x: Any) -> Any:
    """The input layout the network was optimised for (channels-last after ``optimize_for_inference``)."""
    if (
        getattr(net, "input_memory_format", None) is torch.channels_last
        and isinstance(x, torch.Tensor)
        and x.dim() == 4
    ):
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.inference_mode()
def per_sample_early_exit(net: MultiExitNetwork, x: torch.Tensor, policy: ExitPolicy) -> BaselineResult:
    """SDN / DeeBERT / PABEE: for each sample, run exit after exit and ``break`` at the first confident one.

    Example:
        >>> from exitnet.backbones import mlp
        >>> from exitnet.policies import MaxProb
        >>> net = MultiExitNetwork.from_module(mlp(8, [16, 16], 3), ["blocks.0"], num_classes=3,
        ...                                    sample_input=torch.zeros(1, 8), head="linear").eval()
        >>> r = per_sample_early_exit(net, torch.randn(5, 8), MaxProb(thresholds=0.0).fit(torch.zeros(2, 1, 3)))
        >>> r.exit_index.tolist()
        [0, 0, 0, 0, 0]
    """
    net.eval()
    policy.check_exits(net.num_exits, task=net.task)
    x = input_layout(net, x)
    last = net.num_exits - 1
    preds, exits = [], []
    for n in range(num_rows(x)):
        h, ctx = net.begin(slice_rows(x, n, n + 1))  # one sample
        state: dict[str, torch.Tensor] = {}
        for i in range(net.num_exits):
            h = net.forward_stage(i, h, ctx)
            logits = net.run_head(i, h, ctx)  # [1, C]
            mask = net.outputs_mask(ctx)
            if i == 0:
                state = policy.init_state(1, logits.device, output_shape=tuple(logits.shape[1:]))
            if i == last:
                pred = policy.final_prediction(logits, state, mask, task=net.task)
                break
            leaves, state = policy.step(i, logits, state, mask)
            if bool(leaves[0]):  # one host sync per exit, as in the peers' code
                pred = prediction(logits, net.task)
                break
        preds.append(pred[0])
        exits.append(i)
    return BaselineResult(torch.stack(preds).cpu(), torch.tensor(exits, dtype=torch.long))


@torch.inference_mode()
def run_all_then_mask(net: MultiExitNetwork, x: torch.Tensor, policy: ExitPolicy, batch_size: int) -> BaselineResult:
    """MSDNet / Zero Time Waste evaluation: every exit on every sample, then the policy picks from cached logits."""
    net.eval()
    preds, exits = [], []
    for start in range(0, num_rows(x), batch_size):
        outputs = net(input_layout(net, slice_rows(x, start, start + batch_size)))  # every exit
        preds.append(policy.predict(outputs))
        exits.append(policy.decide(outputs))
    return BaselineResult(torch.cat(preds).cpu(), torch.cat(exits).cpu())


@torch.inference_mode()
def batch_level_exit(net: MultiExitNetwork, x: torch.Tensor, policy: ExitPolicy, batch_size: int) -> BaselineResult:
    """The batch runs exit after exit and stops only once every one of its samples has been confident."""
    net.eval()
    policy.check_exits(net.num_exits, task=net.task)
    last = net.num_exits - 1
    preds, exits = [], []
    for start in range(0, num_rows(x), batch_size):
        h, ctx = net.begin(input_layout(net, slice_rows(x, start, start + batch_size)))
        b = num_rows(h)
        pred: torch.Tensor | None = None
        exit_index = torch.full((b,), last, dtype=torch.long)
        decided = torch.zeros(b, dtype=torch.bool)
        state: dict[str, torch.Tensor] = {}
        for i in range(net.num_exits):
            h = net.forward_stage(i, h, ctx)
            logits = net.run_head(i, h, ctx)  # [b, C]
            mask = net.outputs_mask(ctx)
            if i == 0:
                state = policy.init_state(b, logits.device, output_shape=tuple(logits.shape[1:]))
                decided = decided.to(logits.device)
                exit_index = exit_index.to(logits.device)
            if i == last:
                final = policy.final_prediction(logits, state, mask, task=net.task)
                pred = final if pred is None else torch.where(_rows(decided, final), pred, final)
                break
            leaves, state = policy.step(i, logits, state, mask)
            here = prediction(logits, net.task)
            new = leaves & ~decided
            pred = here if pred is None else torch.where(_rows(new, here), here, pred)
            exit_index[new] = i
            decided |= leaves
            if bool(decided.all()):  # the whole batch is done: stop
                break
        assert pred is not None
        preds.append(pred)
        exits.append(exit_index)
    return BaselineResult(torch.cat(preds).cpu(), torch.cat(exits).cpu())


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample mask ``[b]`` broadcast to ``like`` ``[b, *]``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


@torch.inference_mode()
def backbone_alone(net: MultiExitNetwork, x: torch.Tensor, batch_size: int) -> BaselineResult:
    """The original network: every stage, no auxiliary head, no exit decision."""
    net.eval()
    preds = [
        prediction(net.forward_backbone(input_layout(net, slice_rows(x, start, start + batch_size))), net.task)
        for start in range(0, num_rows(x), batch_size)
    ]
    pred = torch.cat(preds).cpu()
    return BaselineResult(pred, torch.full_like(pred, net.num_exits - 1))
