"""Analysis of a multi-exit network's outputs: per-exit accuracy, what a policy does, the oracle, overthinking.

Everything is computed from cached logits of every exit (so the numbers are those of the runtime: contract 3)
and returned as plain dicts that ``json.dump`` writes as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exitnet.cost import CostProfile, expected_cost
from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies import ExitPolicy

__all__ = ["report", "oracle_exit", "overthinking_rate"]


def oracle_exit(stack: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Earliest exit that predicts each sample right (the last exit where none does): ``[B]``."""
    correct = stack.argmax(dim=-1) == y.unsqueeze(0)  # [E, B]
    correct[-1] = True  # nobody right: the oracle still has to answer, at the last exit
    return correct.to(torch.uint8).argmax(dim=0)


def overthinking_rate(stack: torch.Tensor, y: torch.Tensor) -> float:
    """Share of samples wrong at the final exit but right at some earlier exit (Kaya et al.'s overthinking)."""
    correct = stack.argmax(dim=-1) == y.unsqueeze(0)  # [E, B]
    if correct.shape[0] < 2:
        return 0.0
    return float((~correct[-1] & correct[:-1].any(dim=0)).double().mean())


def report(
    logits: ExitOutputs | torch.Tensor,
    y: torch.Tensor,
    *,
    policy: ExitPolicy | None = None,
    exit_index: torch.Tensor | None = None,
    cost: CostProfile | Sequence[float] | None = None,
    baseline_cost: float | None = None,
) -> dict[str, Any]:
    """Numbers that describe a multi-exit network on labelled data.

    Args:
        logits: outputs of every exit (``ExitOutputs`` or ``[E, B, C]``).
        y: labels ``[B]``.
        policy: a fitted policy whose decisions to report (or pass ``exit_index``).
        exit_index: the exit each sample took (e.g. ``ExitResult.exit_index``).
        cost: a ``CostProfile`` or cumulative cost per exit; defaults to 1, 2, …, E units.
        baseline_cost: cost of the network without early exits; defaults to the profile's ``backbone_flops``
            (or the last exit's cost).

    Returns:
        A dict with ``num_samples``, ``exit_names``, ``per_exit`` (list of ``{name, accuracy, flops, fraction}``),
        ``final_accuracy``, and when a policy or ``exit_index`` is given ``early_exit_accuracy``, ``mean_flops``
        (eq. (12) per sample), ``flops_saved`` and ``speedup_flops``; always ``oracle`` (accuracy, mean_flops,
        flops_saved of the earliest correct exit) and ``overthinking_rate``.

    Example:
        >>> stack = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]]])  # [E=2, B=2, C=2]
        >>> r = report(stack, torch.tensor([0, 1]), exit_index=torch.tensor([0, 1]), cost=[1.0, 3.0])
        >>> r["early_exit_accuracy"], r["mean_flops"], r["overthinking_rate"]
        (0.5, 2.0, 0.5)
    """
    stack = as_stack(logits)
    names = list(logits.names) if isinstance(logits, ExitOutputs) else [f"exit{i}" for i in range(stack.shape[0])]
    y = y.reshape(-1).to(stack.device)
    num_exits, n = stack.shape[0], stack.shape[1]
    if y.shape[0] != n:
        raise ValueError(f"logits hold {n} samples but there are {y.shape[0]} labels")
    if n == 0:
        raise ValueError("report needs at least one sample")
    if isinstance(cost, CostProfile):
        exit_cost = [float(c) for c in cost.exit_flops]
        base = float(cost.backbone_flops) if baseline_cost is None else float(baseline_cost)
    else:
        exit_cost = [float(c) for c in cost] if cost is not None else [float(i + 1) for i in range(num_exits)]
        base = exit_cost[-1] if baseline_cost is None else float(baseline_cost)
    if len(exit_cost) != num_exits:
        raise ValueError(f"cost has {len(exit_cost)} entries for {num_exits} exits")
    correct = stack.argmax(dim=-1) == y.unsqueeze(0)  # [E, B]
    per_exit_acc = correct.double().mean(dim=1).tolist()
    if exit_index is None and policy is not None:
        exit_index = policy.decide(stack)
    out: dict[str, Any] = {
        "num_samples": n,
        "num_exits": num_exits,
        "exit_names": names,
        "final_accuracy": per_exit_acc[-1],
        "baseline_flops": base,
    }
    fractions: list[float | None] = [None] * num_exits
    if exit_index is not None:
        exit_index = exit_index.reshape(-1).to(stack.device)
        if exit_index.shape[0] != n:
            raise ValueError(f"exit_index has {exit_index.shape[0]} entries for {n} samples")
        counts = torch.bincount(exit_index, minlength=num_exits)
        fractions = [float(c) / n for c in counts]
        chosen = correct[exit_index, torch.arange(n, device=stack.device)]
        mean_cost = expected_cost(exit_index, exit_cost)
        out.update(
            early_exit_accuracy=float(chosen.double().mean()),
            mean_flops=mean_cost,
            flops_saved=1.0 - mean_cost / base,
            speedup_flops=base / mean_cost,
        )
    out["per_exit"] = [
        {"name": names[i], "accuracy": per_exit_acc[i], "flops": exit_cost[i], "fraction": fractions[i]}
        for i in range(num_exits)
    ]
    oracle = oracle_exit(stack, y)
    oracle_cost = expected_cost(oracle, exit_cost)
    out["oracle"] = {
        "accuracy": float(correct.any(dim=0).double().mean()),
        "mean_flops": oracle_cost,
        "flops_saved": 1.0 - oracle_cost / base,
        "exit_fractions": [float(c) / n for c in torch.bincount(oracle, minlength=num_exits)],
    }
    out["overthinking_rate"] = overthinking_rate(stack, y)
    return out
