"""Calibration on any output kind: token-level classification (share of valid positions right), regression (minus
the squared error), custom scores, the SDN fallback; label and goal checks; costs; the package's layout."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import exitnet as ee
from _problems import exit_logits as _problem
from exitnet.calibration import calibrate, calibrate_iterative, exit_costs, pareto_front
from exitnet.cost import CostProfile
from exitnet.outputs import ExitOutputs
from exitnet.policies import Budgeted, Entropy, ExitPolicy, MaxProb, NeverExit, Patience, TemperatureScaled
from exitnet.scores import accuracy_score, neg_abs_error, neg_squared_error

COST = [1.0, 2.0, 3.5]


def _tokens(n: int = 120, seed: int = 0) -> tuple[ExitOutputs, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, c = 6, 4
    y = torch.randint(0, c, (n, t), generator=g)
    logits = torch.randn(3, n, t, c, generator=g)
    for i in range(3):
        logits[i] += (1.0 + i) * 2 * torch.rand(n, t, 1, generator=g) * torch.nn.functional.one_hot(y, c)
    mask = torch.arange(t).unsqueeze(0) < torch.randint(1, t + 1, (n, 1), generator=g)
    return ExitOutputs(tuple(logits), mask=mask), y


def _regression(n: int = 150, seed: int = 0) -> tuple[ExitOutputs, torch.Tensor]:
    """Outputs [N, 2] whose error shrinks with depth; targets [N, 2]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 2, generator=g)
    noise = torch.randn(3, n, 2, generator=g) * torch.tensor([0.6, 0.3, 0.1]).view(3, 1, 1)
    return ExitOutputs(tuple(y + noise), task="regression"), y


def _mean_score(policy: ExitPolicy, out: ExitOutputs, y: torch.Tensor, fn=None) -> float:
    fn = fn or (accuracy_score if out.task == "classification" else neg_squared_error)
    return float(fn(policy.predict(out), y, out.mask).mean())


def _mean_cost(policy: ExitPolicy, out: ExitOutputs) -> float:
    return float(np.asarray(COST)[policy.decide(out).numpy()].mean())


# ------------------------------------------------------------------------------------------ token level
@pytest.mark.parametrize("policy", [Entropy(), MaxProb(fallback="most_confident"), Patience(), Budgeted(ratio=1.0)])
def test_token_level_calibration_keeps_the_share_of_valid_positions_right(policy: ExitPolicy) -> None:
    out, y = _tokens()
    final = float(accuracy_score(out.logits[-1].argmax(-1), y, out.mask).mean())
    for drop in (0.0, 0.03, 0.1):
        fitted = calibrate(policy, out, y, max_accuracy_drop=drop, cost=COST)
        measured = _mean_score(fitted, out, y)
        assert measured >= final - drop - 1e-12
        assert fitted.calibration_["accuracy"] == pytest.approx(measured, abs=1e-12)
        assert fitted.calibration_["mean_cost"] == pytest.approx(_mean_cost(fitted, out))
    assert fitted.calibration_["final_accuracy"] == pytest.approx(final)


def test_token_level_front_and_iterative_rule_report_what_the_policy_does() -> None:
    out, y = _tokens(seed=1)
    front = pareto_front(Entropy(), out, y, COST)
    assert len(front) > 3
    for point in front[:: max(1, len(front) // 5)]:
        assert _mean_score(point.policy, out, y) == pytest.approx(point.accuracy, abs=1e-12)
    fitted = calibrate_iterative(MaxProb(), out, y, max_accuracy_drop=0.05, tol=0.01)
    assert fitted.calibration_["accuracy"] == pytest.approx(_mean_score(fitted, out, y), abs=1e-12)


def test_risk_control_needs_0_1_scores() -> None:
    out, y = _tokens()
    with pytest.raises(ValueError, match="needs a 0/1 score per sample"):
        calibrate(Entropy(), out, y, guarantee=(0.1, 0.1), cost=COST)
    reg, target = _regression()
    with pytest.raises(ValueError, match="needs a 0/1 score per sample"):
        calibrate(Patience(tau=0.1), reg, target, guarantee=(0.1, 0.1), cost=COST)


# ------------------------------------------------------------------------------------------- regression
def test_regression_calibration_bounds_the_increase_of_the_squared_error() -> None:
    out, y = _regression()
    final_mse = float(((out.logits[-1] - y) ** 2).mean())
    for drop in (0.0, 0.02, 0.2):
        fitted = calibrate(Patience(2, tau=0.1), out, y, max_accuracy_drop=drop, cost=COST)
        mse = -_mean_score(fitted, out, y)
        assert mse <= final_mse + drop + 1e-12
        assert fitted.calibration_["accuracy"] == pytest.approx(-mse, abs=1e-12)
    cheap = calibrate(Patience(2, tau=0.1), out, y, max_score_drop=5.0, cost=COST)  # the alias; drops above 1 fine
    assert cheap.calibration_["mean_cost"] < COST[-1]
    within = calibrate(Patience(2, tau=0.1), out, y, flops_budget=2.0, cost=COST)
    assert _mean_cost(within, out) <= 2.0 + 1e-12
    with pytest.raises(ValueError, match="not both"):
        calibrate(Patience(tau=0.1), out, y, max_accuracy_drop=0.1, max_score_drop=0.1)
    with pytest.raises(ValueError, match="Entropy supports classification outputs only"):
        calibrate(Entropy(), out, y, max_accuracy_drop=0.1)


def test_a_custom_score_function_is_what_calibration_keeps() -> None:
    out, y = _regression(seed=2)
    final = float(neg_abs_error(out.logits[-1], y).mean())
    fitted = calibrate(Patience(2, tau=0.1), out, y, max_score_drop=0.05, score_fn=neg_abs_error, cost=COST)
    measured = _mean_score(fitted, out, y, neg_abs_error)
    assert measured >= final - 0.05 - 1e-12 and fitted.calibration_["score"] == "neg_abs_error"
    assert fitted.calibration_["accuracy"] == pytest.approx(measured, abs=1e-12)


# -------------------------------------------------------------------------------------- SDN fallback
def test_calibration_counts_the_answer_of_the_most_confident_exit() -> None:
    logits, y = _problem(seed=4, exits=3, n=300)
    logits[-1, ::3] = logits[-1, ::3].roll(1, dims=-1)  # the last exit overthinks on a third of the samples
    for policy in (MaxProb(fallback="most_confident"), TemperatureScaled(Entropy(fallback="most_confident"))):
        fitted = calibrate(policy, logits, y, max_accuracy_drop=0.0, cost=COST)
        acc = float((fitted.predict(logits) == y).double().mean())
        assert fitted.calibration_["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert acc >= fitted.calibration_["final_accuracy"]
        risky = calibrate(policy, logits, y, guarantee=(0.1, 0.1), cost=COST)
        assert risky.calibration_["accuracy"] == pytest.approx(float((risky.predict(logits) == y).double().mean()))


# --------------------------------------------------------------------------------------------- labels
def test_non_integer_float_labels_are_refused_and_whole_floats_accepted() -> None:
    logits, y = _problem(exits=3, n=60)
    for run in (
        lambda labels: calibrate(Entropy(), logits, labels, max_accuracy_drop=0.01),
        lambda labels: pareto_front(Entropy(), logits, labels),
        lambda labels: calibrate_iterative(MaxProb(), logits, labels, max_accuracy_drop=0.01),
        lambda labels: ee.analysis.report(logits, labels),
    ):
        with pytest.raises(ValueError, match=r"whole class indices, got non-integer values such as \d\.7"):
            run(y.float() + 0.7)
    same = calibrate(Entropy(), logits, y.float(), max_accuracy_drop=0.01)
    assert same.thresholds_ == calibrate(Entropy(), logits, y, max_accuracy_drop=0.01).thresholds_


# ----------------------------------------------------------------------------------------------- costs
def test_the_one_cost_lookup() -> None:
    assert exit_costs("flops", 3).tolist() == [1.0, 2.0, 3.0] == exit_costs(None, 3).tolist()
    profile = CostProfile(("a", "final"), (10, 20), (1, 0), (0, 0), (0, 0))
    assert exit_costs(profile, 2).tolist() == [float(f) for f in profile.exit_flops]
    with pytest.raises(ValueError, match="unknown cost 'watts'; choose one of: flops, time, a CostProfile"):
        exit_costs("watts", 3)
    logits, y = _problem(exits=3, n=60)
    fitted = calibrate(NeverExit(), logits, y, max_accuracy_drop=0.0)  # cost="flops" on cached outputs: units
    assert fitted.calibration_["full_cost"] == 3.0


# ------------------------------------------------------------------------------------------- the layout
SRC = Path(__file__).resolve().parents[1] / "src" / "exitnet"
AREA = [*(SRC / "calibration").glob("*.py"), *(SRC / "policies").glob("*.py"), SRC / "analysis.py"]


def _imports(path: Path) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, a.name) for a in node.names]
    return out


def test_calibrate_is_the_function_and_calibration_the_package() -> None:
    assert ee.calibrate is ee.calibration.calibrate and callable(ee.calibrate)
    assert ee.calibration.__name__ == "exitnet.calibration" and ee.calibration.risk.calibrate_risk
    risk = _imports(SRC / "calibration" / "risk.py")
    assert not any(mod == "exitnet.calibration._core" for mod, _ in risk)  # no cycle _core <-> risk


def test_no_private_name_crosses_a_module_in_policies_and_calibration() -> None:
    offenders = []
    for path in AREA:
        for module, name in _imports(path):
            is_module = (SRC.parent / Path(*module.split("."), name)).with_suffix(".py").exists()
            if name.startswith("_") and not is_module:
                offenders.append(f"{path.name}: from {module} import {name}")
        text = path.read_text()
        offenders += [f"{path.name}: S.{m}" for m in ("_argbest", "_better", "_lambdas") if f"S.{m}" in text]
    assert not offenders, offenders
