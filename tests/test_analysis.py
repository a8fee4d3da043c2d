"""analysis.report on a tiny example worked out by hand (eq. (12), the oracle, overthinking) and its Markdown."""

from __future__ import annotations

import json

import pytest
import torch

from exitnet.analysis import oracle_exit, overthinking_rate, report, to_markdown
from exitnet.outputs import ExitOutputs
from exitnet.policies import MaxProb


def _onehot(classes: list[list[int]], num_classes: int = 3) -> torch.Tensor:
    """[E, B, C] logits with arg-max classes[i][b] and max probability ~0.88 (logit gap 3)."""
    return 3.0 * torch.nn.functional.one_hot(torch.tensor(classes), num_classes).float()


# Labels 0, 1, 2, 0. Exit 0 predicts 0, 0, 2, 1 (right on samples 0, 2); exit 1 predicts 0, 1, 1, 1 (right on 0, 1);
# the final exit predicts 1, 1, 2, 2 (right on 1, 2).
STACK = _onehot([[0, 0, 2, 1], [0, 1, 1, 1], [1, 1, 2, 2]])
Y = torch.tensor([0, 1, 2, 0])
COST = [2.0, 5.0, 10.0]


def test_report_numbers_by_hand() -> None:
    exit_index = torch.tensor([0, 1, 2, 0])
    rep = report(STACK, Y, exit_index=exit_index, cost=COST)
    assert [e["accuracy"] for e in rep["per_exit"]] == [0.5, 0.5, 0.5]
    assert [e["fraction"] for e in rep["per_exit"]] == [0.5, 0.25, 0.25]
    # eq. (12) per sample: (2 + 5 + 10 + 2) / 4 = 4.75
    assert rep["mean_flops"] == pytest.approx(4.75)
    assert rep["flops_saved"] == pytest.approx(1 - 4.75 / 10) and rep["speedup_flops"] == pytest.approx(10 / 4.75)
    # chosen exits: sample 0 exit 0 (right), 1 exit 1 (right), 2 final (right), 3 exit 0 (wrong)
    assert rep["early_exit_accuracy"] == 0.75 and rep["final_accuracy"] == 0.5
    # oracle: sample 0 -> exit 0, 1 -> exit 1, 2 -> exit 0, 3 -> nobody right -> final
    assert oracle_exit(STACK, Y).tolist() == [0, 1, 0, 2]
    oracle = rep["oracle"]
    assert oracle["accuracy"] == 0.75 and oracle["mean_flops"] == pytest.approx((2 + 5 + 2 + 10) / 4)
    assert oracle["exit_fractions"] == [0.5, 0.25, 0.25]
    assert oracle["speedup_flops"] == pytest.approx(10 / 4.75)
    # overthinking: wrong at the final exit but right earlier: sample 0 (right at exits 0 and 1) -> 1 of 4
    assert rep["overthinking_rate"] == 0.25 == overthinking_rate(STACK, Y)
    # per exit: right here, wrong at the end: exit 0 -> sample 0; exit 1 -> sample 0; final -> none
    assert [e["overthinking"] for e in rep["per_exit"]] == [0.25, 0.25, 0.0]
    json.dumps(rep)  # plain numbers only


def test_report_with_a_policy_and_names() -> None:
    outputs = ExitOutputs(tuple(STACK), ("a", "b", "final"))
    policy = MaxProb(0.99).fit(STACK)  # max probability ~0.88 everywhere: nobody leaves early
    rep = report(outputs, Y, policy=policy, cost=COST)
    assert rep["exit_names"] == ["a", "b", "final"] and rep["mean_flops"] == 10.0
    assert rep["early_exit_accuracy"] == rep["final_accuracy"]
    without = report(STACK, Y, cost=COST)
    assert "early_exit_accuracy" not in without and without["per_exit"][0]["fraction"] is None


def test_report_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="4 samples but there are 3 labels"):
        report(STACK, Y[:3])
    with pytest.raises(ValueError, match="cost has 2 entries for 3 exits"):
        report(STACK, Y, cost=[1.0, 2.0])
    with pytest.raises(ValueError, match="exit_index has 2 entries"):
        report(STACK, Y, exit_index=torch.tensor([0, 1]))


def test_markdown_shows_the_numbers_a_person_needs() -> None:
    rep = report(STACK, Y, exit_index=torch.tensor([0, 1, 2, 0]), cost=COST)
    rep["pareto_front"] = [{"flops": 2.0, "accuracy": 0.5}, {"flops": 4.75, "accuracy": 0.75}]
    rep["warnings"] = ["a warning"]
    md = to_markdown(rep, title="Tiny", figures={"Accuracy vs. FLOPs": "accuracy_vs_flops.png"})
    assert md.startswith("# Tiny\n")
    assert "| exit0 | 50.00% | 2 | 50.00% | 50.00% | 25.00% |" in md
    assert "25.00 points above the final exit" in md and "52.50% saved" in md
    assert "accuracy 75.00%" in md and "25.00% of the samples are wrong at the final exit" in md
    assert "| 4.75 | 75.00% |" in md and "![Accuracy vs. FLOPs](accuracy_vs_flops.png)" in md
    assert "> **Warning**: a warning" in md


# ------------------------------------------------------------------------------ token-level and regression
def test_token_level_report_by_hand() -> None:
    # 2 exits, 2 samples, 3 positions; sample 1 has 2 valid positions. Labels all class 0.
    classes = torch.tensor([[[0, 1, 0], [0, 0, 1]], [[0, 0, 1], [1, 1, 1]]])  # [E, B, T] arg-max classes
    logits = 3.0 * torch.nn.functional.one_hot(classes, 2).float()
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out = ExitOutputs(tuple(logits), mask=mask)
    y = torch.zeros(2, 3, dtype=torch.long)
    rep = report(out, y, exit_index=torch.tensor([0, 1]), cost=[1.0, 2.0])
    # exit 0: sample 0 has 2 of 3 right, sample 1 2 of 2 (position 2 is padding) -> (2/3 + 1) / 2
    # exit 1: sample 0 2 of 3, sample 1 0 of 2 -> (2/3 + 0) / 2
    assert [e["accuracy"] for e in rep["per_exit"]] == pytest.approx([5 / 6, 1 / 3])
    assert rep["early_exit_accuracy"] == pytest.approx((2 / 3 + 0) / 2) and rep["task"] == "classification"
    # oracle: sample 0 ties (2/3 at both) -> exit 0; sample 1 best at exit 0 -> exit 0
    assert rep["oracle"]["exit_fractions"] == [1.0, 0.0] and rep["oracle"]["accuracy"] == pytest.approx(5 / 6)
    assert rep["overthinking_rate"] == 0.5  # sample 1: exit 0 scores better than the final exit


def test_regression_report_by_hand() -> None:
    y = torch.tensor([1.0, 0.0])
    out = ExitOutputs((torch.tensor([1.5, 0.0]), torch.tensor([1.0, 1.0])), task="regression")  # [E=2] x [B=2]
    rep = report(out, y, exit_index=torch.tensor([0, 1]), cost=[1.0, 2.0])
    # minus the squared error: exit 0 -> (-0.25 + 0) / 2; exit 1 -> (0 - 1) / 2
    assert [e["accuracy"] for e in rep["per_exit"]] == [-0.125, -0.5]
    assert rep["early_exit_accuracy"] == (-0.25 - 1.0) / 2 and rep["mean_flops"] == 1.5
    # oracle: sample 0 best at exit 1 (error 0), sample 1 best at exit 0
    assert oracle_exit(out, y).tolist() == [1, 0] and rep["oracle"]["accuracy"] == 0.0
    assert rep["overthinking_rate"] == 0.5 and [e["overthinking"] for e in rep["per_exit"]] == [0.5, 0.0]
    with pytest.raises(ValueError, match=r"regression targets must have the outputs' shape \(2,\)"):
        report(out, torch.zeros(2, 3))


def test_report_answers_with_the_policy_s_fallback() -> None:
    policy = MaxProb(0.99, fallback="most_confident")  # nobody early; the most confident exit answers
    stack = STACK.clone()
    stack[0, 3] = 5.0 * torch.nn.functional.one_hot(torch.tensor(0), 3)  # sample 3: exit 0 very sure and right
    rep = report(stack, Y, policy=policy, cost=COST)
    assert rep["mean_flops"] == 10.0  # everybody is charged the whole network
    assert rep["early_exit_accuracy"] == float((policy.predict(stack) == Y).double().mean()) == 0.75
    assert rep["final_accuracy"] == 0.5
