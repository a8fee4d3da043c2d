"""Gated combination, eq. (9), and the exit probabilities of eq. (14)."""

from __future__ import annotations

import math

import pytest
import torch

import exitnet as ee
from exitnet.outputs import ExitOutputs
from exitnet.train import Gated
from exitnet.train.gated import (
    exit_probabilities,
    gate_scores,
    gated_nll,
    log_exit_probabilities,
    make_gates,
    recursive_combination,
)


def test_eq9_by_hand() -> None:
    # E = 3, B = 1, C = 2: c_1 = [1, 0], c_2 = [0.5, 0.5], c_3 = f(x) = [0, 1]; g_1 = 0.5, g_2 = 0.2
    probs = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 1.0]]])
    g = torch.tensor([[0.5], [0.2]])
    # ĉ_2 = 0.2·[0.5, 0.5] + 0.8·[0, 1] = [0.1, 0.9]; ĉ_1 = 0.5·[1, 0] + 0.5·[0.1, 0.9] = [0.55, 0.45]
    assert torch.allclose(recursive_combination(probs, g), torch.tensor([[0.55, 0.45]]))


def test_eq14_by_hand() -> None:
    # p_1 = g_1 = 0.5; p_2 = g_2 (1 − g_1) = 0.1; p_3 = (1 − g_1)(1 − g_2) = 0.4
    p = exit_probabilities(torch.tensor([[0.5], [0.2]]))
    assert torch.allclose(p.squeeze(1), torch.tensor([0.5, 0.1, 0.4]))


def test_eq14_equals_plain_loop() -> None:
    g = torch.rand(4, 7)  # E = 5 exits
    p = exit_probabilities(g)
    for i in range(7):
        for j in range(5):
            gj = g[j, i] if j < 4 else torch.tensor(1.0)
            expected = gj * math.prod(float(1 - g[l, i]) for l in range(j))
            assert float(p[j, i]) == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose(p.sum(0), torch.ones(7))


def test_log_exit_probabilities_match() -> None:
    a = torch.randn(3, 6) * 3
    assert torch.allclose(log_exit_probabilities(a).exp(), exit_probabilities(torch.sigmoid(a)), atol=1e-6)


def test_unrolled_mixture_equals_recursion() -> None:
    stack = torch.randn(4, 6, 5)
    a = torch.randn(3, 6)
    y = torch.randint(0, 5, (6,))
    c_hat = recursive_combination(torch.softmax(stack, -1), torch.sigmoid(a))  # eq. (9) as written
    loop = -torch.stack([torch.log(c_hat[n, y[n]]) for n in range(6)]).mean()
    assert torch.allclose(gated_nll(stack, log_exit_probabilities(a), y), loop, atol=1e-5)


def test_gates_read_exit_logits_and_train(tiny_resnet) -> None:
    strategy = Gated()
    strategy.setup(tiny_resnet)
    assert strategy.gates_ is not None and len(strategy.gates_) == tiny_resnet.num_exits - 1
    tiny_resnet.train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    out = tiny_resnet(x)
    strategy.loss(tiny_resnet, out, y, epoch=0, epochs=1).backward()
    for name, p in [*tiny_resnet.named_parameters(), *strategy.gates_.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the combined prediction at inference is a distribution equal to the recursion of eq. (9)
    with torch.no_grad():
        g = torch.sigmoid(gate_scores(strategy.gates_, out))
        combined = strategy.combine(out)
        assert torch.allclose(combined, recursive_combination(torch.softmax(out.stack(), -1), g), atol=1e-6)
        assert torch.allclose(combined.sum(-1), torch.ones(6))


def test_detached_gates_leave_the_network_alone(tiny_mlp) -> None:
    strategy = Gated(detach=True)
    strategy.setup(tiny_mlp)
    x = torch.randn(6, 16)
    out = tiny_mlp(x)
    g = gate_scores(strategy.gates_, out, detach=True)
    g.sum().backward()
    assert all(p.grad is None for p in tiny_mlp.parameters())


def test_trained_gates_are_an_exit_policy(tiny_mlp) -> None:
    strategy = Gated()
    strategy.setup(tiny_mlp)
    out = tiny_mlp(torch.randn(32, 16))
    with torch.no_grad():
        g = torch.sigmoid(gate_scores(strategy.gates_, out))  # [E-1, B]
    policy = strategy.policy(threshold=0.5)
    leaves = torch.cat([g > 0.5, torch.ones(1, 32, dtype=torch.bool)])
    assert torch.equal(policy.decide(out), leaves.to(torch.uint8).argmax(0))  # first gate above β
    # the policy holds copies: training on does not change it
    with torch.no_grad():
        for p in strategy.gates_.parameters():
            p.add_(1.0)
    assert torch.equal(policy.decide(out), leaves.to(torch.uint8).argmax(0))


def test_gates_store_in_a_checkpoint(tmp_path, tiny_mlp) -> None:
    strategy = Gated()
    strategy.setup(tiny_mlp)
    path = ee.save(tiny_mlp, tmp_path / "net.safetensors", policy=strategy.policy(0.4))
    loaded = ee.load_policy(path)
    out = tiny_mlp(torch.randn(16, 16))
    assert torch.equal(loaded.decide(out), strategy.policy(0.4).decide(out))


def test_make_gates_checks() -> None:
    with pytest.raises(ValueError, match="hidden width"):
        make_gates(3, 4, hidden=0)
    with pytest.raises(ValueError, match="at least one auxiliary exit"):
        make_gates(1, 4)
    out = ExitOutputs((torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="2 gates for a network of 2 exits"):
        gate_scores(make_gates(3, 4), out)


def test_policy_before_training() -> None:
    with pytest.raises(RuntimeError, match="no gates yet"):
        Gated().policy()
