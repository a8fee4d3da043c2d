from __future__ import annotations

import itertools

import pytest
import torch

from exitnet.backbones import resnet
from exitnet.placement import efficiency_gain, exhaustive_placement, greedy_th, keeps_exit_th, percentile_points


def test_eq4_by_hand() -> None:
    # (30 - 10) * (1.0 - 0.4) - 10 * 0.4 = 12 - 4 = 8 > 0: the exit pays for itself
    assert efficiency_gain(10, 30, 1.0, 0.4) == pytest.approx(8.0)
    # few leave: (30 - 10) * (1.0 - 0.9) - 10 * 0.9 = 2 - 9 = -7 < 0
    assert efficiency_gain(10, 30, 1.0, 0.9) == pytest.approx(-7.0)


def test_eq5_by_hand() -> None:
    # (0.9 - 0.5) * 20 - (1 - 0.5) * 2 - (1 - 0.9) * 10 = 8 - 1 - 1 = 6
    assert keeps_exit_th(0.9, 0.5, 10, 20, 2) == pytest.approx(6.0)
    # (0.5 - 0.8) * 20 - 0.2 * 2 - 0.5 * 10 = -6 - 0.4 - 5 = -11.4
    assert keeps_exit_th(0.5, 0.8, 10, 20, 2) == pytest.approx(-11.4)


def test_greedy_th_merges_dropped_stages() -> None:
    stages, heads = [10, 20, 20, 30], [2, 2, 2, 0]
    # exit 0: (0.9-0.95)*20 - 0.05*2 - 0.1*10 = -2.1 -> dropped, its 10 FLOPs carry into stage 1
    # exit 1: (0.9-0.3)*20 - 0.7*2 - 0.1*(10+20) = 12 - 1.4 - 3 = 7.6 -> kept
    # exit 2: (0.9-0.5)*30 - 0.5*2 - 0.1*20 = 12 - 1 - 2 = 9 -> kept
    assert greedy_th(stages, heads, [0.95, 0.3, 0.5], th=0.9) == [1, 2]
    assert greedy_th(stages, heads, [0.95, 0.3, 0.5], th=0.0) == []


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: efficiency_gain(1, 2, 0.5, 0.7), "reach fractions"),
        (lambda: keeps_exit_th(1.5, 0.5, 1, 1, 1), "TH must lie"),
        (lambda: greedy_th([1, 2], [1], [0.5], 0.5), "need E stage costs"),
        (lambda: percentile_points(resnet(8, 1, 4), torch.zeros(1, 1, 8, 8), [1.2]), "fractions"),
    ],
)
def test_bad_input(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_percentile_points_are_valid_and_ordered() -> None:
    model = resnet(depth=20, in_chans=1, num_classes=10)
    points = percentile_points(model, torch.zeros(1, 1, 8, 8), (0.25, 0.5, 0.75))
    assert points == ["layer1.1", "layer2.0", "layer3.0"]


def test_exhaustive_equals_brute_force_by_hand() -> None:
    cost, acc, leave = [1.0, 2.0, 3.0, 4.0], [0.99, 0.97, 0.99, 0.98], [0.5, 0.5, 0.5, 1.0]
    chosen, best = exhaustive_placement(cost, acc, leave, max_exits=3)

    def evaluate(subset):
        reach, c, a = 1.0, 0.0, 0.0
        for j in subset:
            c, a, reach = c + reach * leave[j] * cost[j], a + reach * leave[j] * acc[j], reach * (1 - leave[j])
        return c + reach * cost[-1], a + reach * acc[-1]

    feasible = [
        (evaluate(s)[0], list(s))
        for k in range(1, 4)
        for s in itertools.combinations(range(3), k)
        if evaluate(s)[1] >= acc[-1] - 1e-12
    ]
    assert (best, chosen) == min(feasible)
