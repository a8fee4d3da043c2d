"""Calibration: targets met, budgets respected, the search against brute force, the Pareto front, the iterative
rule of [3], and risk control (Learn-then-Test) on a problem with known per-exit error rates."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import exitnet as ee
from _problems import exit_logits as _problem
from exitnet.bench.policies import known_rates
from exitnet.calibration import _search as S
from exitnet.calibration import (
    binomial_pvalue,
    calibrate,
    calibrate_iterative,
    drop_pvalue,
    hb_pvalue,
    pareto_front,
)
from exitnet.policies import (
    Budgeted,
    Entropy,
    ExitPolicy,
    Gate,
    Margin,
    MaxProb,
    NeverExit,
    Patience,
    TemperatureScaled,
)


def _measure(policy: ExitPolicy, logits: torch.Tensor, y: torch.Tensor, cost: list[float]) -> tuple[float, float]:
    """Accuracy and mean cost of what the fitted policy decides: the ground truth."""
    ex = policy.decide(logits)
    acc = float((logits.argmax(-1).gather(0, ex.unsqueeze(0)).squeeze(0) == y).double().mean())
    return acc, float(np.asarray(cost)[ex.numpy()].mean())


COST = [1.0, 2.0, 3.5, 5.0]


# ------------------------------------------------------------------------------------------- targets
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    drop=st.sampled_from([0.0, 0.002, 0.01, 0.05, 0.2, 1.0]),
    kind=st.sampled_from(["entropy", "maxprob", "margin", "shared", "patience", "budgeted"]),
)
def test_calibrate_never_misses_its_own_target(seed: int, drop: float, kind: str) -> None:
    logits, y = _problem(seed=seed, n=150)
    policy = {"patience": Patience(), "budgeted": Budgeted(ratio=1.0)}.get(kind) or ee.policies.get_policy(
        "entropy" if kind == "shared" else kind
    )
    fitted = calibrate(policy, logits, y, max_accuracy_drop=drop, cost=COST, shared=kind == "shared")
    acc, mean_cost = _measure(fitted, logits, y, COST)
    final = float((logits[-1].argmax(-1) == y).double().mean())
    assert acc >= final - drop - 1e-12
    assert fitted.calibration_["accuracy"] == pytest.approx(acc)
    assert fitted.calibration_["mean_cost"] == pytest.approx(mean_cost)


def test_a_zero_drop_is_always_attainable_and_a_full_drop_sends_everybody_early() -> None:
    logits, y = _problem(seed=3)
    final = float((logits[-1].argmax(-1) == y).double().mean())
    strict = calibrate(Entropy(), logits, y, max_accuracy_drop=0.0, cost=COST)
    assert _measure(strict, logits, y, COST)[0] >= final
    loose = calibrate(MaxProb(), logits, y, max_accuracy_drop=1.0, cost=COST)
    assert _measure(loose, logits, y, COST)[1] == pytest.approx(1.0)  # everybody at exit 0: the cheapest


def test_budget_is_respected_and_the_most_accurate_setting_within_it_is_found() -> None:
    logits, y = _problem(seed=1)
    for budget in (1.0, 1.7, 2.5, 4.0, 5.0):
        fitted = calibrate(MaxProb(), logits, y, flops_budget=budget, cost=COST)
        acc, mean_cost = _measure(fitted, logits, y, COST)
        assert mean_cost <= budget + 1e-9
        # no shared threshold within the budget is more accurate
        shared = calibrate(MaxProb(), logits, y, flops_budget=budget, cost=COST, shared=True)
        assert acc >= _measure(shared, logits, y, COST)[0]
    for policy in (Patience(), Budgeted(ratio=1.0)):
        fitted = calibrate(policy, logits, y, flops_budget=3.0, cost=COST)
        assert _measure(fitted, logits, y, COST)[1] <= 3.0 + 1e-9


def test_bad_goals_raise_clear_errors() -> None:
    logits, y = _problem()
    with pytest.raises(ValueError, match=r"below the cheapest possible mean cost 1"):
        calibrate(Entropy(), logits, y, flops_budget=0.5, cost=COST)
    with pytest.raises(ValueError, match="exactly one of"):
        calibrate(Entropy(), logits, y, cost=COST)
    with pytest.raises(ValueError, match="exactly one of"):
        calibrate(Entropy(), logits, y, max_accuracy_drop=0.01, flops_budget=3.0, cost=COST)
    for bad in (-0.01, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            calibrate(Entropy(), logits, y, max_accuracy_drop=bad, cost=COST)
    with pytest.raises(ValueError, match="one value per exit"):
        calibrate(Entropy(), logits, y, max_accuracy_drop=0.01, cost=[1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        calibrate(Entropy(), torch.full_like(logits, math.nan), y, max_accuracy_drop=0.01)
    with pytest.raises(ValueError, match=r"epsilon, delta"):
        calibrate(Entropy(), logits, y, guarantee=(0.0, 0.1))


def test_calibrate_runs_the_network_and_charges_its_flops(tiny_mlp) -> None:
    split = ee.data.Split(torch.randn(120, 16), torch.randint(0, 4, (120,)))
    fitted = calibrate(MaxProb(), tiny_mlp, split, max_accuracy_drop=0.02)
    assert fitted.calibration_["full_cost"] == tiny_mlp.cost_profile().exit_flops[-1]
    assert len(fitted.thresholds_) == 2


# --------------------------------------------------------------------------------------------- the search
def test_per_exit_search_is_never_worse_than_the_best_shared_threshold() -> None:
    for seed in range(6):
        logits, y = _problem(seed=seed, n=400)
        for drop in (0.005, 0.01, 0.03):
            per_exit = calibrate(Entropy(), logits, y, max_accuracy_drop=drop, cost=COST)
            shared = calibrate(Entropy(), logits, y, max_accuracy_drop=drop, cost=COST, shared=True)
            assert len(set(shared.thresholds_)) == 1
            assert _measure(per_exit, logits, y, COST)[1] <= _measure(shared, logits, y, COST)[1] + 1e-12


def test_shared_curve_equals_evaluating_every_shared_cut() -> None:
    rng = np.random.default_rng(0)
    conf = (rng.random((3, 40)) * 0.98 + 0.01).round(2)
    prob = S.Problem(conf, (rng.random((4, 40)) < 0.7).astype(float), np.array(COST), 0.0, 1.0)
    values, g, c = S.shared_curve(prob)
    for v, gg, cc in zip(values, g, c, strict=True):
        assert prob.evaluate(np.full(3, v)) == pytest.approx((gg, cc))
    seen = {prob.evaluate(np.full(3, v)) for v in np.concatenate([[1.0], np.unique(conf) - 1e-6])}
    assert seen <= {(float(a), float(b)) for a, b in zip(g, c, strict=True)}  # every shared cut is on the curve


def test_scan_equals_evaluating_every_value_of_one_cut() -> None:
    rng = np.random.default_rng(1)
    conf = (rng.random((3, 50)) * 0.98 + 0.01).round(2)
    prob = S.Problem(conf, (rng.random((4, 50)) < 0.6).astype(float), np.array(COST), 0.0, 1.0)
    cuts = np.array([0.7, 0.5, 0.2])
    for i in range(3):
        values, g, c = S.scan(prob, cuts, i)
        for v, gg, cc in zip(values, g, c, strict=True):
            trial = cuts.copy()
            trial[i] = v
            assert prob.evaluate(trial) == pytest.approx((gg, cc))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(4, 18), slack=st.integers(0, 3))
def test_search_finds_the_brute_force_optimum_with_two_auxiliary_exits(seed: int, n: int, slack: int) -> None:
    rng = np.random.default_rng(seed)
    conf = (rng.random((2, n)) * 0.98 + 0.01).round(2)
    gain = (rng.random((3, n)) < 0.7).astype(float)
    cost = np.array([1.0, 2.5, 4.0])
    prob = S.Problem(conf, gain, cost, 0.0, 1.0)
    need = gain[-1].sum() - slack
    cuts = S.solve(prob, S.target_key(need))
    found_gain, found_cost = prob.evaluate(cuts)
    grid = [np.concatenate([[1.0], np.unique(row) - 1e-6]) for row in conf]
    feasible = [prob.evaluate(np.array(c)) for c in itertools.product(*grid)]
    best = min(c for g, c in feasible if g >= need)
    assert found_gain >= need and found_cost == pytest.approx(best)


# ------------------------------------------------------------------------------------------- Pareto front
def test_pareto_front_is_non_dominated_and_each_point_is_real() -> None:
    logits, y = _problem(seed=2)
    front = ee.pareto_front(Entropy(), logits, y, COST)
    assert len(front) > 5
    for a, b in zip(front, front[1:], strict=False):
        assert a.flops < b.flops and a.accuracy < b.accuracy
    for point in front[:: max(1, len(front) // 10)]:
        assert _measure(point.policy, logits, y, COST) == pytest.approx((point.accuracy, point.flops))
    for policy in (Patience(), Budgeted(ratio=1.0), TemperatureScaled(MaxProb())):
        other = pareto_front(policy, logits, y, COST)
        assert other and all(
            a.flops < b.flops and a.accuracy < b.accuracy for a, b in zip(other, other[1:], strict=False)
        )


def test_pareto_front_with_one_auxiliary_exit_dominates_every_threshold() -> None:
    logits, y = _problem(seed=4, exits=2, n=200)
    front = pareto_front(MaxProb(), logits, y, [1.0, 3.0])
    stat = MaxProb().statistic(logits[0])
    right = logits.argmax(-1) == y  # [2, N]
    for beta in torch.cat([stat, torch.tensor([0.0, 1.0])]).tolist():  # every threshold that matters
        leaves = stat > beta
        acc = float(torch.where(leaves, right[0], right[1]).double().mean())
        cost = float(torch.where(leaves, 1.0, 3.0).double().mean())
        assert any(p.flops <= cost + 1e-12 and p.accuracy >= acc - 1e-12 for p in front)


# ------------------------------------------------------------------------------------- iterative rule [3]
def _smooth_problem(n: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Two exits: the first is right with probability equal to its max probability u ~ U(0.5, 1)."""
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 2, (n,), generator=g)
    u = 0.5 + 0.5 * torch.rand(n, generator=g)
    right = torch.rand(n, generator=g) < u
    pred = torch.where(right, y, 1 - y)
    lp = torch.stack([torch.log(u), torch.log1p(-u)], 1)
    first = torch.where((pred == 0).unsqueeze(1), lp, lp.flip(1))
    last = 5.0 * torch.nn.functional.one_hot(y, 2).float()  # the final exit is always right
    return torch.stack([first, last]), y


@pytest.mark.parametrize("policy", [MaxProb(), Entropy(), Margin()])
def test_iterative_rule_converges_on_a_synthetic_problem(policy) -> None:
    logits, y = _smooth_problem()
    fitted = calibrate_iterative(policy, logits, y, target_accuracy=0.9, eta=1.0, tol=1e-3)
    cal = fitted.calibration_
    assert cal["converged"] and abs(cal["accuracy"] - 0.9) <= 1e-3
    errors = [abs(a - 0.9) for _, a in cal["trace"]]
    assert errors[-1] < errors[0] and cal["iterations"] < 200
    assert _measure(fitted, logits, y, [1.0, 2.0])[0] == pytest.approx(cal["accuracy"])
    if isinstance(policy, MaxProb):
        # leave iff u > β: acc(β) = ∫_β^1 2u du + P(u <= β) = (1 - β²) + (2β - 1) = 2β - β²: 0.9 at β = 1 - √0.1
        assert fitted.thresholds_[0] == pytest.approx(1 - math.sqrt(0.1), abs=5e-3)


def test_iterative_rule_stops_when_the_target_is_out_of_reach() -> None:
    logits, y = _smooth_problem(n=2000)
    fitted = calibrate_iterative(MaxProb(), logits, y, target_accuracy=1.01, eta=1.0, tol=1e-3)
    assert not fitted.calibration_["converged"] and fitted.thresholds_ == [1.0]
    assert fitted.calibration_["status"] == "at a bound: the target is out of reach"
    easy = calibrate_iterative(Entropy(), logits, y, target_accuracy=0.5, eta=1.0, tol=1e-3)
    assert easy.thresholds_ == [1.0] and "above the target" in easy.calibration_["status"]


# ------------------------------------------------------------------------------------------- risk control
def test_pvalues_by_hand() -> None:
    assert binomial_pvalue(0, 100, 0.05) == pytest.approx(0.95**100)
    # no harm, no help: the Clopper-Pearson upper bound at level t/2 is 1 - (t/2)^(1/n) <= eps from t = 2 (1-eps)^n
    assert drop_pvalue(0, 0, 100, 0.05) == pytest.approx(2 * 0.95**100, rel=1e-6)
    assert drop_pvalue(10, 30, 100, 0.05) < drop_pvalue(10, 0, 100, 0.05)  # help earns credit
    assert drop_pvalue(60, 0, 100, 0.05) == 1.0
    assert binomial_pvalue(1, 10, 0.1) == pytest.approx(0.9**10 + 10 * 0.1 * 0.9**9)
    # Hoeffding part for k = 0: exp(-n log(1 / (1 - eps))) = (1 - eps)^n; Bentkus part e * (1 - eps)^n
    assert hb_pvalue(0, 100, 0.05) == pytest.approx(0.95**100)
    assert hb_pvalue(50, 100, 0.05) == 1.0


P_FINAL = 0.95


def _true_harm_and_drop(b0: float, b1: float) -> tuple[float, float]:
    """Exact population harm and accuracy drop of MaxProb thresholds (b0, b1) on :func:`known_rates`."""
    b0, b1 = min(1.0, max(0.5, b0)), min(1.0, max(0.5, b1))
    reach1 = 2 * b0 - 1  # P(u0 <= b0)
    harm = P_FINAL * ((1 - b0) ** 2 + reach1 * (1 - b1) ** 2)  # ∫_b^1 2(1 - u) du = (1 - b)²
    acc = (1 - b0**2) + reach1 * ((1 - b1**2) + (2 * b1 - 1) * P_FINAL)  # ∫_b^1 2u du = 1 - b²
    return harm, P_FINAL - acc


def _violations(splits: int, epsilon: float, delta: float, loss: str) -> tuple[int, int, float]:
    """Over ``splits`` random calibration sets: how often the true harm and the true drop exceed ε."""
    g = torch.Generator().manual_seed(2024)
    harm_violations = drop_violations = 0
    saved = []
    for s in range(splits):
        logits, y = known_rates(1000, g, P_FINAL)
        fitted = calibrate(
            MaxProb(), logits, y, guarantee=(epsilon, delta), cost=[1.0, 2.0, 3.0], seed=s, risk_loss=loss
        )
        harm, drop = _true_harm_and_drop(*getattr(fitted, "thresholds_", [1.0, 1.0]))
        harm_violations += harm > epsilon
        drop_violations += drop > epsilon
        saved.append(1 - fitted.calibration_["mean_cost"] / 3.0)
    return harm_violations, drop_violations, float(np.mean(saved))


@pytest.mark.parametrize("loss", ["drop", "harm"])
def test_risk_control_holds_on_a_few_splits(loss: str) -> None:
    harm_v, drop_v, saved = _violations(20, 0.05, 0.1, loss)
    controlled = drop_v if loss == "drop" else harm_v  # the harm loss controls the harm, a bound of the drop
    assert controlled <= 2 and drop_v <= 2  # at most δ = 10% of the splits
    assert saved > 0.2  # and it still saves FLOPs


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["drop", "harm"])
def test_risk_control_violates_epsilon_in_at_most_delta_of_200_splits(loss: str) -> None:
    harm_v, drop_v, _ = _violations(200, 0.05, 0.1, loss)
    assert drop_v <= 20 and (loss == "drop" or harm_v <= 20)


def test_risk_control_falls_back_to_nobody_early_with_too_little_data() -> None:
    logits, y = _problem(n=40)
    fitted = calibrate(Entropy(), logits, y, guarantee=(0.01, 0.05), cost=COST)
    assert (fitted.decide(logits) == 3).all()
    g = fitted.calibration_["guarantee"]
    assert g["num_accepted"] == 0 and "exchangeable" in g["assumption"]


@pytest.mark.parametrize(
    "policy", [Patience(), Budgeted(ratio=1.0), TemperatureScaled(MaxProb()), Gate(epochs=20), NeverExit()]
)
def test_risk_control_works_for_every_kind_of_policy(policy: ExitPolicy) -> None:
    logits, y = _problem(seed=5, n=1200)
    fitted = calibrate(policy, logits, y, guarantee=(0.1, 0.1), cost=COST)
    acc, _ = _measure(fitted, logits, y, COST)
    assert fitted.calibration_["accuracy"] == pytest.approx(acc)
    assert fitted.calibration_["guarantee"]["tested"][0]["pvalue"] <= 0.1


def test_an_absolute_target_accuracy_is_met_or_said_to_be_out_of_reach() -> None:
    logits, y = _problem(seed=8)
    final = float((logits[-1].argmax(-1) == y).double().mean())
    fitted = calibrate(MaxProb(), logits, y, target_accuracy=final - 0.02, cost=COST)
    assert _measure(fitted, logits, y, COST)[0] >= final - 0.02
    with pytest.raises(ValueError, match="out of reach"):
        calibrate(MaxProb(), logits, y, target_accuracy=1.0, cost=COST)
