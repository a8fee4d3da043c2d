"""Self-distillation (FastBERT, "Be your own teacher"), an option of Joint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from exitnet.train import Joint
from exitnet.train.joint import distillation_loss, weighted_exit_loss


def test_distillation_by_hand() -> None:
    # two exits, one sample, two classes; teacher logits [ln 3, 0] at T = 1 -> p = [3/4, 1/4]; student uniform
    stack = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(distillation_loss(stack, 1.0)) == pytest.approx(kl, rel=1e-6)
    # T = 2: teacher [ln 3 / 2, 0] -> p = [√3, 1] / (√3 + 1); times T² = 4
    p = torch.tensor([math.sqrt(3.0), 1.0]) / (math.sqrt(3.0) + 1)
    kl2 = float((p * torch.log(p / 0.5)).sum())
    assert float(distillation_loss(stack, 2.0)) == pytest.approx(4 * kl2, rel=1e-5)


def test_distillation_equals_plain_loop() -> None:
    stack = torch.randn(4, 6, 5)
    t = 3.0
    loop = 0.0
    for i in range(3):
        loop += (
            t
            * t
            * F.kl_div(
                F.log_softmax(stack[i] / t, -1),
                F.log_softmax(stack[-1] / t, -1),
                log_target=True,
                reduction="batchmean",
            )
        )
    assert torch.allclose(distillation_loss(stack, t), torch.as_tensor(loop), atol=1e-5)


def test_joint_with_distillation(tiny_mlp) -> None:
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    out = tiny_mlp(x)
    s = Joint(weights="uniform", distill=0.5, temperature=2.0)
    expected = weighted_exit_loss(out.stack(), y, [1.0, 1.0, 1.0]) + 0.5 * distillation_loss(out.stack(), 2.0)
    assert torch.allclose(s.loss(tiny_mlp, out, y, epoch=0, epochs=1), expected)
    assert Joint().describe() == {"name": "joint", "weights": "sdn"}  # no distillation: as before


def test_the_teacher_is_not_pulled_towards_the_students(tiny_mlp) -> None:
    out = tiny_mlp(torch.randn(8, 16))
    distillation_loss(out.stack(), 2.0).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tiny_mlp.stages[2].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_mlp.heads[0].parameters())


def test_bad_distillation_options() -> None:
    with pytest.raises(ValueError, match="temperature must be positive"):
        Joint(distill=1.0, temperature=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        Joint(distill=-0.1)
