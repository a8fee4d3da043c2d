"""Cost regularisation, eq. (13)-(14): p_ij = g_j ∏_{l<j} (1 − g_l), penalty λ Σ_j p_ij ε_j."""

from __future__ import annotations

import pytest
import torch

import exitnet as ee
from exitnet.train import CostRegularized
from exitnet.train.cost_regularized import normalized_exit_costs, soft_cost
from exitnet.train.gated import exit_probabilities, gate_scores, gated_nll, log_exit_probabilities


def test_eq13_by_hand() -> None:
    # two samples, three exits; costs of leaving at each exit 0.2, 0.5, 1.0
    p = exit_probabilities(torch.tensor([[0.5, 1.0], [0.2, 0.0]]))  # sample 1: 0.5, 0.1, 0.4; sample 2: 1, 0, 0
    cost = torch.tensor([0.2, 0.5, 1.0])
    # sample 1: 0.5·0.2 + 0.1·0.5 + 0.4·1.0 = 0.55; sample 2: 0.2; mean 0.375
    assert float(soft_cost(p, cost)) == pytest.approx(0.375)


def test_eq13_equals_plain_loop_and_eq12_form() -> None:
    g = torch.rand(3, 9)
    cum = torch.tensor([0.1, 0.3, 0.6, 1.0])  # cost of leaving at exit j (cumulative)
    p = exit_probabilities(g)
    loop = sum(float(p[j, i] * cum[j]) for i in range(9) for j in range(4)) / 9
    assert float(soft_cost(p, cum)) == pytest.approx(loop, rel=1e-5)
    # the same as Σ_j P(reach j) · ε_j with the increments ε_j of eq. (12)
    eps = torch.diff(cum, prepend=torch.zeros(1))
    reach = torch.cumprod(torch.cat([torch.ones(1, 9), 1 - g]), dim=0)
    assert float(soft_cost(p, cum)) == pytest.approx(float((reach * eps[:, None]).sum(0).mean()), rel=1e-5)


def test_costs_come_from_the_cost_profile(tiny_resnet) -> None:
    cost = normalized_exit_costs(tiny_resnet)
    profile = tiny_resnet.cost_profile()
    assert cost == pytest.approx([f / profile.backbone_flops for f in profile.exit_flops])
    assert cost == sorted(cost) and cost[-1] >= 1.0  # the last exit pays the backbone and every auxiliary head


def test_loss_is_gated_nll_plus_lambda_cost(tiny_mlp) -> None:
    s = CostRegularized(lam=0.7, cost=[0.25, 0.5, 1.0])
    s.setup(tiny_mlp)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    out = tiny_mlp(x)
    log_p = log_exit_probabilities(gate_scores(s.gates_, out))
    expected = gated_nll(out.stack(), log_p, y) + 0.7 * soft_cost(log_p.exp(), torch.tensor([0.25, 0.5, 1.0]))
    assert torch.allclose(s.loss(tiny_mlp, out, y, epoch=0, epochs=1), expected)
    assert torch.allclose(s.expected_cost(out), soft_cost(log_p.exp(), torch.tensor([0.25, 0.5, 1.0])))


def test_lambda_trades_accuracy_for_cost() -> None:
    ds = ee.data.synthetic(400, num_classes=3, input_shape=(8,), seed=4)
    costs = {}
    for lam in (0.0, 3.0):
        torch.manual_seed(0)
        net = ee.MultiExitNetwork.from_module(
            ee.backbones.mlp(8, [32, 32], 3), ["blocks.0"], num_classes=3, sample_input=torch.zeros(1, 8), head="linear"
        )
        s = CostRegularized(lam=lam, cost=[0.3, 1.0])
        ee.fit(net, s, ds.train, epochs=3, lr=1e-2, progress=False, batch_size=64)
        with torch.no_grad():
            costs[lam] = float(s.expected_cost(net(ds.val.x)))
    assert costs[3.0] < costs[0.0] - 0.05


def test_bad_arguments(tiny_mlp) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        CostRegularized(lam=-1)
    with pytest.raises(ValueError, match="one value per exit: 3 exits, got 2"):
        CostRegularized(cost=[0.5, 1.0]).setup(tiny_mlp)
