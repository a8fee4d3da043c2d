from __future__ import annotations

import pytest
import torch
from torch import nn

import exitnet as ee
from exitnet.cost import CostProfile, expected_cost, profile


def test_flops_by_hand_for_an_mlp() -> None:
    # Linear(in, out) costs 2*in*out FLOPs (a multiply-add is 2); BatchNorm and ReLU count 0.
    net = ee.MultiExitNetwork.from_module(
        ee.backbones.mlp(64, [32, 32], 10), ["blocks.0"], num_classes=10, sample_input=torch.zeros(1, 64), head="linear"
    )
    p = profile(net, torch.zeros(3, 64))  # per sample, whatever the batch
    assert p.stage_flops == (2 * 64 * 32, 2 * 32 * 32 + 2 * 32 * 10)
    assert p.head_flops == (2 * 32 * 10, 0)
    assert p.exit_flops == (2 * 64 * 32 + 2 * 32 * 10, 2 * 64 * 32 + 2 * 32 * 10 + 2 * 32 * 32 + 2 * 32 * 10)
    assert p.backbone_flops == 2 * 64 * 32 + 2 * 32 * 32 + 2 * 32 * 10
    assert p.stage_params[0] == 64 * 32 + 32 + 2 * 32  # linear + batchnorm affine


def test_conv_flops_by_hand() -> None:
    seq = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    net = ee.MultiExitNetwork.from_sequential(seq, [1], num_classes=3, sample_input=torch.zeros(1, 2, 5, 5))
    p = profile(net, torch.zeros(1, 2, 5, 5))
    assert p.stage_flops[0] == 2 * (2 * 9) * 4 * 25  # 2 * (Cin*k*k) * Cout * H*W
    assert p.head_flops[0] == 2 * 4 * 3  # pool head: mean (0) + Linear(4, 3)


def test_exit_flops_is_a_running_sum(tiny_resnet) -> None:
    p = tiny_resnet.cost_profile()
    running = 0
    for i in range(p.num_exits):  # plain loop against the vectorised property
        running += p.stage_flops[i] + p.head_flops[i]
        assert p.exit_flops[i] == running
    assert p.depth_flops[-1] == sum(p.stage_flops)


def test_latency_is_measured_when_asked(tiny_mlp) -> None:
    p = profile(tiny_mlp, torch.zeros(8, 16), latency=True, repeats=2)
    assert p.stage_seconds is not None and len(p.stage_seconds) == 3 and all(s > 0 for s in p.stage_seconds)
    assert p.batch_size == 8
    assert p.to_dict()["exit_flops"] == list(p.exit_flops)


def test_expected_cost_eq12_by_hand() -> None:
    # eq. (12): C[f] = sum_i sum_j delta_ij eps_j. Cumulative cost [10, 25, 40] -> eps = [10, 15, 15].
    # samples exit at 0, 2, 1, 2: 10 + (10+15+15) + (10+15) + (10+15+15) = 115, mean 28.75
    assert expected_cost([0, 2, 1, 2], [10, 25, 40]) == pytest.approx(28.75)


def test_expected_cost_equals_plain_double_sum() -> None:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 4, (50,), generator=g)
    cum = [3.0, 7.0, 12.0, 20.0]
    eps = [cum[0]] + [cum[j] - cum[j - 1] for j in range(1, 4)]
    total = sum(eps[j] for i in idx.tolist() for j in range(4) if i >= j)  # delta_ij = 1 iff sample reached j
    assert expected_cost(idx, cum) == pytest.approx(total / 50)


@pytest.mark.parametrize("idx, match", [([], "at least one"), ([3], "must lie in")])
def test_expected_cost_bad_input(idx, match) -> None:
    with pytest.raises(ValueError, match=match):
        expected_cost(idx, [1.0, 2.0])


def test_profile_validates_lengths() -> None:
    with pytest.raises(ValueError, match="stage_flops has 1 entries for 2 exits"):
        CostProfile(("a", "b"), (1,), (1, 2), (1, 2), (1, 2))


def test_measured_time_per_stage_head_and_decision(tiny_mlp) -> None:
    from exitnet.policies import Entropy

    x = torch.randn(32, 16)
    profile = tiny_mlp.measure_time(x, policy=Entropy(thresholds=0.5), repeats=3)
    t = profile.timing(batch_size=32)
    assert (t.batch_size, t.device, t.threads) == (32, "cpu", torch.get_num_threads())
    assert t.clock == ("thread_time" if torch.get_num_threads() == 1 else "perf_counter")
    assert len(t.stage_seconds) == len(t.head_seconds) == 3 and len(t.policy_seconds) == 2
    assert all(s > 0 for s in t.stage_seconds) and all(s > 0 for s in t.policy_seconds)
    # exit_seconds is cumulative: stages, heads and decisions up to the exit (no decision at the last)
    manual = [sum(t.stage_seconds[: i + 1]) + sum(t.head_seconds[: i + 1]) + sum(t.policy_seconds[: i + 1])
              for i in range(3)]  # fmt: skip
    assert list(t.exit_seconds) == pytest.approx(manual)
    assert profile.exit_seconds == t.exit_seconds
    assert tiny_mlp.cost_profile(x).timings == profile.timings  # cached with the profile of this shape
    assert profile.exit_flops == tiny_mlp.cost_profile().exit_flops


def test_time_budget_calibration_uses_measured_seconds(tiny_mlp) -> None:
    from exitnet.policies import Entropy

    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    seconds = tiny_mlp.measure_time(x[:32], repeats=3).exit_seconds
    budget = (seconds[0] + seconds[-1]) / 2
    policy = ee.calibrate(Entropy(), tiny_mlp, (x, y), time_budget=budget, batch_size=32)
    assert policy.calibration_["mean_cost"] <= budget * (1 + 1e-9)
    assert policy.calibration_["full_cost"] == pytest.approx(seconds[-1])
    with pytest.raises(ValueError, match="not both"):
        ee.calibrate(Entropy(), tiny_mlp, (x, y), time_budget=budget, flops_budget=1.0)


def test_a_profile_without_time_says_how_to_measure(tiny_mlp) -> None:
    with pytest.raises(ValueError, match="measure_time"):
        _ = tiny_mlp.cost_profile(torch.zeros(3, 16)).exit_seconds
