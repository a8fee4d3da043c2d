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

import torch

from exitnet.model import MultiExitNetwork
from exitnet.policies import ExitPolicy

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


def input_layout(net: MultiExitNetwork, x: torch.Tensor) -> torch.Tensor:
    """The input layout the network was optimised for (channels-last after ``optimize_for_inference``)."""
    if getattr(net, "input_memory_format", None) is torch.channels_last and x.dim() == 4:
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
    x = input_layout(net, x)
    last = net.num_exits - 1
    preds, exits = [], []
    for n in range(x.shape[0]):
        h = x[n : n + 1]  # [1, *input_shape]
        state = policy.init_state(1, x.device)
        for i in range(net.num_exits):
            h = net.stages[i](h)
            logits = net.heads[i](h)  # [1, C]
            if i == last:
                break
            leaves, state = policy.step(i, logits, state)
            if bool(leaves[0]):  # one host sync per exit, as in the peers' code
                break
        preds.append(int(logits.argmax(dim=-1)[0]))
        exits.append(i)
    return BaselineResult(torch.tensor(preds, dtype=torch.long), torch.tensor(exits, dtype=torch.long))


@torch.inference_mode()
def run_all_then_mask(net: MultiExitNetwork, x: torch.Tensor, policy: ExitPolicy, batch_size: int) -> BaselineResult:
    """MSDNet / Zero Time Waste evaluation: every exit on every sample, then the policy picks from cached logits."""
    net.eval()
    preds, exits = [], []
    for start in range(0, x.shape[0], batch_size):
        stack = net(input_layout(net, x[start : start + batch_size])).stack()  # [E, b, C]
        exit_index = policy.decide(stack)  # [b]
        logits = stack[exit_index, torch.arange(stack.shape[1], device=stack.device)]  # [b, C]
        preds.append(logits.argmax(dim=-1))
        exits.append(exit_index)
    return BaselineResult(torch.cat(preds).cpu(), torch.cat(exits).cpu())


@torch.inference_mode()
def batch_level_exit(net: MultiExitNetwork, x: torch.Tensor, policy: ExitPolicy, batch_size: int) -> BaselineResult:
    """The batch runs exit after exit and stops only once every one of its samples has been confident."""
    net.eval()
    last = net.num_exits - 1
    preds, exits = [], []
    for start in range(0, x.shape[0], batch_size):
        h = input_layout(net, x[start : start + batch_size])
        b = h.shape[0]
        pred = torch.empty(b, dtype=torch.long, device=h.device)
        exit_index = torch.full((b,), last, dtype=torch.long, device=h.device)
        decided = torch.zeros(b, dtype=torch.bool, device=h.device)
        state = policy.init_state(b, h.device)
        for i in range(net.num_exits):
            h = net.stages[i](h)
            logits = net.heads[i](h)  # [b, C]
            if i == last:
                pred[~decided] = logits.argmax(dim=-1)[~decided]
                break
            leaves, state = policy.step(i, logits, state)
            new = leaves & ~decided
            pred[new] = logits.argmax(dim=-1)[new]
            exit_index[new] = i
            decided |= leaves
            if bool(decided.all()):  # the whole batch is done: stop
                break
        preds.append(pred)
        exits.append(exit_index)
    return BaselineResult(torch.cat(preds).cpu(), torch.cat(exits).cpu())


@torch.inference_mode()
def backbone_alone(net: MultiExitNetwork, x: torch.Tensor, batch_size: int) -> BaselineResult:
    """The original network: every stage, no auxiliary head, no exit decision."""
    net.eval()
    preds = [
        net.forward_backbone(input_layout(net, x[start : start + batch_size])).argmax(dim=-1)
        for start in range(0, x.shape[0], batch_size)
    ]
    pred = torch.cat(preds).cpu()
    return BaselineResult(pred, torch.full_like(pred, net.num_exits - 1))
