"""Where to put the exits (survey §4): cost-percentile placement, the efficiency test eq. (4), the greedy TH
rule eq. (5), and an exhaustive search for small depth.

Notation of the survey: γ_i is the cost of running the network up to exit i, γ_{f_i} the cost of block f_i,
γ_{c_i} the cost of head c_i, I_i the fraction of samples that *reach* exit i (I_0 = 1; I_i − I_{i+1} leave at
exit i) and cm_i = I_{i+1} / I_i the share of those reaching exit i that go on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from exitnet.cost import profile
from exitnet.model import MultiExitNetwork
from exitnet.points import list_exit_points

__all__ = ["efficiency_gain", "keeps_exit_th", "greedy_th", "percentile_points", "exhaustive_placement"]


def efficiency_gain(gamma_i: float, gamma_next: float, reach_i: float, reach_next: float) -> float:
    """Left side minus right side of eq. (4): ``(γ_{i+1} − γ_i)(I_i − I_{i+1}) − γ_i I_{i+1}``.

    Exit i improves efficiency when this is > 0: the samples that leave at i save the cost up to exit i + 1,
    weighed against the cost γ_i charged to the samples that go on.

    Example:
        >>> efficiency_gain(gamma_i=10, gamma_next=30, reach_i=1.0, reach_next=0.4)  # 20 * 0.6 - 10 * 0.4
        8.0
    """
    if not (0.0 <= reach_next <= reach_i <= 1.0):
        raise ValueError(
            f"reach fractions must satisfy 0 <= I_(i+1) <= I_i <= 1, got I_i={reach_i}, I_(i+1)={reach_next}"
        )
    return (gamma_next - gamma_i) * (reach_i - reach_next) - gamma_i * reach_next


def keeps_exit_th(th: float, cm_i: float, stage_cost: float, next_stage_cost: float, head_cost: float) -> float:
    """Left side of eq. (5), the greedy rule of Baccarelli et al.: keep exit i when it is ``>= 0``.

    ``(TH − cm_i) γ_{f_{i+1}} − (1 − cm_i) γ_{c_i} − (1 − TH) γ_{f_i}``.

    Example:
        >>> keeps_exit_th(th=0.9, cm_i=0.5, stage_cost=10, next_stage_cost=20, head_cost=2)  # 8 - 1 - 1
        6.0
    """
    if not 0.0 <= th <= 1.0:
        raise ValueError(f"TH must lie in [0, 1], got {th}")
    if not 0.0 <= cm_i <= 1.0:
        raise ValueError(f"compression cm_i must lie in [0, 1], got {cm_i}")
    return (th - cm_i) * next_stage_cost - (1 - cm_i) * head_cost - (1 - th) * stage_cost


def greedy_th(
    stage_flops: Sequence[float], head_flops: Sequence[float], compression: Sequence[float], th: float
) -> list[int]:
    """Indices of the auxiliary exits that eq. (5) keeps, scanning from the input to the output.

    Args:
        stage_flops: γ_{f_i} of every stage (E values, the last one ending at the backbone's output).
        head_flops: γ_{c_i} of every head (E values; the last one is ignored).
        compression: cm_i of every auxiliary exit (E − 1 values), e.g. measured with a calibrated policy.
        th: the TH hyper-parameter in [0, 1]: higher keeps more exits.

    A dropped exit's stage merges into the next one (its cost adds to γ_{f_{i+1}} of the next test), as the
    greedy pass of the survey's [3] walks the network.
    """
    num_exits = len(stage_flops)
    if len(head_flops) != num_exits or len(compression) != num_exits - 1:
        raise ValueError(
            f"need E stage costs, E head costs and E-1 compressions; got {len(stage_flops)}, {len(head_flops)}, "
            f"{len(compression)}"
        )
    kept: list[int] = []
    carried = 0.0  # cost of stages merged into the current one
    for i in range(num_exits - 1):
        stage = carried + float(stage_flops[i])
        if keeps_exit_th(th, float(compression[i]), stage, float(stage_flops[i + 1]), float(head_flops[i])) >= 0:
            kept.append(i)
            carried = 0.0
        else:
            carried = stage
    return kept


def percentile_points(
    model: nn.Module, sample_input: torch.Tensor, fractions: Sequence[float] = (0.25, 0.5, 0.75)
) -> list[str]:
    """SDN's rule (survey §4): exit points at given fractions of the backbone's total FLOPs.

    For each fraction, the valid exit point whose cumulative FLOPs are closest to it (each point at most once;
    the deepest module wins ties, so ``layer1.2`` rather than ``layer1``).

    Example:
        >>> from exitnet.backbones import resnet
        >>> percentile_points(resnet(depth=20, in_chans=1, num_classes=10), torch.zeros(1, 1, 8, 8))
        ['layer1.1', 'layer2.0', 'layer3.0']
    """
    if any(not 0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1), got {list(fractions)}")
    candidates = [p.name for p in list_exit_points(model, sample_input)]
    if not candidates:
        raise ValueError("this network has no valid exit point")
    # one split per candidate: cumulative FLOPs of the first stage
    cum: dict[str, int] = {}
    total = None
    for name in candidates:
        try:
            net = MultiExitNetwork.from_module(
                model, [name], num_classes=_num_outputs(model, sample_input), sample_input=sample_input, head="pool"
            )
        except (ValueError, TypeError):
            continue
        p = profile(net, sample_input[:1])
        cum[name] = p.stage_flops[0]
        total = p.depth_flops[-1]
    assert total is not None
    chosen: list[str] = []
    for f in sorted(fractions):
        target = f * total
        options = [n for n in cum if n not in chosen]
        best = min(options, key=lambda n: (abs(cum[n] - target), -n.count("."), candidates.index(n)))
        chosen.append(best)
    return sorted(chosen, key=candidates.index)


def _num_outputs(model: nn.Module, sample_input: torch.Tensor) -> int:
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample_input[:1])
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise TypeError("placement needs a backbone whose output is logits (B, C)")
    return int(out.shape[1])


def exhaustive_placement(
    exit_cost: Sequence[float], exit_accuracy: Sequence[float], leave_fraction: Sequence[float], *, max_exits: int
) -> tuple[list[int], float]:
    """Best subset of at most ``max_exits`` auxiliary exits under a simple separable model (small depth only).

    Every candidate exit j has a cumulative cost ``exit_cost[j]``, an accuracy on the samples it would take and
    the share ``leave_fraction[j]`` of the samples reaching it that it would take. The objective is the expected
    cost per sample of eq. (12) among subsets whose expected accuracy is at least the last exit's; the number
    of subsets grows as 2^L, hence "small depth" (survey §4).

    Returns:
        The chosen candidate indices and their expected cost.
    """
    n = len(exit_cost)
    if not (len(exit_accuracy) == len(leave_fraction) == n) or n < 1:
        raise ValueError("exit_cost, exit_accuracy and leave_fraction need one value per candidate (last = final)")
    if n - 1 > 16:
        raise ValueError(f"exhaustive search over {n - 1} candidates is too large (2^{n - 1} subsets); use greedy_th")
    final_acc = float(exit_accuracy[-1])
    best: tuple[list[int], float] = ([], float(exit_cost[-1]))
    for k in range(1, max_exits + 1):
        for subset in itertools.combinations(range(n - 1), k):
            reach, cost, acc = 1.0, 0.0, 0.0
            for j in subset:
                leave = reach * float(leave_fraction[j])
                cost += leave * float(exit_cost[j])
                acc += leave * float(exit_accuracy[j])
                reach -= leave
            cost += reach * float(exit_cost[-1])
            acc += reach * final_acc
            if acc >= final_acc - 1e-12 and cost < best[1]:
                best = (list(subset), cost)
    return best
