"""Combined output, eq. (8): ŷ = α f(x) + Σ_i α_i c_i(x), and ExitOutputs.combined."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exitnet.outputs import ExitOutputs
from exitnet.train import Combined


def _outputs() -> ExitOutputs:
    # E = 3 exits, B = 1 sample, C = 2 classes
    return ExitOutputs((torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[3.0, -1.0]])))


def test_eq8_by_hand() -> None:
    out = _outputs()
    # weighted: 0.5·[1, 0] + 0.25·[0, 2] + 1·[3, -1] = [3.5, -0.5]
    assert torch.allclose(out.combined("weighted", [0.5, 0.25, 1.0]), torch.tensor([[3.5, -0.5]]))
    # convex with equal scores: the mean, [4/3, 1/3]
    assert torch.allclose(out.combined("convex", [0.0, 0.0, 0.0]), torch.tensor([[4 / 3, 1 / 3]]))
    # convex with scores [0, 0, ln 2]: weights 1/4, 1/4, 1/2 -> [0.25 + 1.5, 0.5 - 0.5] = [1.75, 0]
    assert torch.allclose(
        out.combined("convex", [0.0, 0.0, float(torch.log(torch.tensor(2.0)))]), torch.tensor([[1.75, 0.0]])
    )
    assert torch.allclose(out.combined("mean"), torch.tensor([[4 / 3, 1 / 3]]))
    assert torch.allclose(out.combined("max"), torch.tensor([[3.0, 2.0]]))


def test_combined_equals_plain_loop() -> None:
    logits = tuple(torch.randn(5, 4) for _ in range(3))
    out = ExitOutputs(logits)
    w = torch.randn(3)
    loop = torch.zeros(5, 4)
    for i in range(3):
        loop = loop + w[i] * logits[i]
    assert torch.allclose(out.combined("weighted", w), loop, atol=1e-6)
    loop_max = logits[0]
    for t in logits[1:]:
        loop_max = torch.maximum(loop_max, t)
    assert torch.equal(out.combined("max"), loop_max)


@pytest.mark.parametrize(
    "mode, weights, match",
    [
        ("sum", None, "unknown combined mode"),
        ("mean", [1, 1, 1], "takes no weights"),
        ("weighted", None, "needs one"),
        ("convex", [1.0, 2.0], "needs 3 weights"),
    ],
)
def test_combined_bad_arguments(mode, weights, match) -> None:
    with pytest.raises(ValueError, match=match):
        _outputs().combined(mode, weights)


@pytest.mark.parametrize("mode", ["weighted", "convex"])
def test_learned_weights_train_with_the_network(tiny_mlp, mode) -> None:
    strategy = Combined(mode)
    strategy.setup(tiny_mlp)
    tiny_mlp.train()
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    out = tiny_mlp(x)
    loss = strategy.loss(tiny_mlp, out, y, epoch=0, epochs=1)
    alpha = strategy.weights_for()
    assert alpha is not None
    expected = F.cross_entropy(out.combined(mode, alpha), y)  # eq. (8), then the usual cross-entropy
    assert torch.allclose(loss, expected)
    loss.backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tiny_mlp.parameters())
    assert {id(p) for p in strategy.parameters(tiny_mlp)} >= {id(alpha)}


def test_initial_weights_give_the_mean(tiny_mlp) -> None:
    out = tiny_mlp(torch.randn(3, 16))
    for mode in ("weighted", "convex"):
        s = Combined(mode)
        s.setup(tiny_mlp)
        assert torch.allclose(s.combine(out), out.combined("mean"), atol=1e-6)


def test_fixed_pooling_learns_nothing_extra(tiny_mlp) -> None:
    s = Combined("max")
    s.setup(tiny_mlp)
    assert s.extra_modules() == {} and s.weights_for() is None
    assert "alpha" not in s.describe()


def test_joint_option_adds_eq6(tiny_mlp) -> None:
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    out = tiny_mlp(x)
    plain, with_joint = Combined("mean"), Combined("mean", joint="uniform")
    extra = sum(F.cross_entropy(t, y) for t in out)
    got = with_joint.loss(tiny_mlp, out, y, epoch=0, epochs=1) - plain.loss(tiny_mlp, out, y, epoch=0, epochs=1)
    assert torch.allclose(got, extra)


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="choose one of: weighted, convex, mean, max"):
        Combined("median")
