"""Risk-controlled calibration: Learn-then-Test (Angelopoulos et al., 2021) with fixed-sequence testing.

Goal: thresholds λ such that, with probability at least 1 − δ over the draw of the calibration set, the
accuracy drop of early exit relative to the full network on new data is at most ε.

- **Assumption**: the calibration samples and the future samples are exchangeable (e.g. i.i.d. from one
  distribution). Nothing else: no model of the network, no continuity.
- **Loss** (``loss="drop"``, the default): per sample, harm − help with harm = 1[final exit right and chosen
  exit wrong] and help = 1[final exit wrong and chosen exit right]: its mean R(λ) *is* the accuracy drop.
  H_λ: R(λ) > ε is rejected at level t when the Clopper–Pearson upper bound of the harm rate minus the lower
  bound of the help rate, each at level t / 2 (Bonferroni), is at most ε (:func:`drop_pvalue`).
- **Or the harm alone** (``loss="harm"``): a 0/1 loss whose mean bounds the drop from above (it gives no credit
  for help), tested with the exact binomial p-value ``P(Binom(n, ε) <= k)`` (k harms among n test samples), or
  the Hoeffding–Bentkus p-value ``min(exp(−n h(k/n ∧ ε, ε)), e · P(Binom(n, ε) <= k))`` with ``pvalue="hb"``.
- **Scores**: 0/1 (one label per sample, accuracy); token-level and regression outputs are refused.
- **Fixed-sequence testing**: the candidates are ordered from conservative to aggressive *without looking at
  the test samples*; they are tested in that order at level δ each and testing stops at the first
  non-rejection. This controls the family-wise error at δ, so every rejected λ has R(λ) <= ε simultaneously
  with probability >= 1 − δ; the cheapest of them is returned. If none is rejected, nobody leaves early
  (R = 0: always valid).
- **Ordering**: per-exit thresholds have no natural order, so the calibration set is split at random
  (``split`` of it, seeded) into a *selection* part, on which learned parts (gates, temperatures) are fitted and
  a path of per-exit thresholds is built (the cheapest thresholds for a growing harm budget, from 0 to 1.5 ε,
  plus, for the drop loss, the share of samples that help could win back: ordering by harm keeps the variance
  of the early candidates small), and a
  *test* part on which the path is tested. Policies whose candidates do not depend on data (``Patience``) are
  tested on the whole calibration set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from exitnet.calibration import _search as S
from exitnet.calibration._inputs import Cached, gain_matrix, threshold_problem, totals, with_cuts
from exitnet.policies import ExitPolicy, TemperatureScaled, ThresholdPolicy

__all__ = ["calibrate_risk", "binomial_pvalue", "hb_pvalue", "drop_pvalue"]

ASSUMPTION = "calibration and future samples are exchangeable (e.g. i.i.d. from one distribution)"


def _binom_cdf(k: int, n: int, p: float) -> float:
    """``P(Binom(n, p) <= k)``, summed in log space (no SciPy import on this path)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq for j in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def binomial_pvalue(k: int, n: int, epsilon: float) -> float:
    """Exact p-value of H: mean loss > ε for k failures in n 0/1 losses: ``P(Binom(n, ε) <= k)``.

    Example:
        >>> round(binomial_pvalue(0, 100, 0.05), 4)  # 0.95 ** 100
        0.0059
    """
    return _binom_cdf(int(k), int(n), float(epsilon))


def hb_pvalue(k: int, n: int, epsilon: float) -> float:
    """Hoeffding–Bentkus p-value of H: mean loss > ε for a [0, 1] loss with mean k / n over n samples.

    Example:
        >>> hb_pvalue(0, 100, 0.05) <= binomial_pvalue(0, 100, 0.05) * math.e
        True
    """
    r = min(k / n, epsilon)

    def h1(a: float, b: float) -> float:
        left = a * math.log(a / b) if a > 0 else 0.0
        return left + (1 - a) * math.log((1 - a) / (1 - b))

    hoeffding = math.exp(-n * h1(r, epsilon))
    bentkus = math.e * _binom_cdf(math.ceil(k), n, epsilon)
    return float(min(1.0, hoeffding, bentkus))


_PVALUES = {"binomial": binomial_pvalue, "hb": hb_pvalue}


def _harm(correct: np.ndarray) -> np.ndarray:
    """Gain matrix ``[E, N]`` = minus the harm of leaving at each exit."""
    return -(correct[-1][None, :] & ~correct).astype(np.float64)


def _threshold_path(prob: S.Problem, needs: list[float]) -> list[np.ndarray]:
    """The cheapest cuts (on the selection part) for each total-gain requirement in ``needs`` (from the most
    demanding to the least), after 'nobody early': the fixed sequence, conservative first."""
    hull = S.lagrange_sweep(prob, S.lambdas(prob, 24))
    hull_scores = np.array([prob.evaluate(h) for h in hull])  # [H, 2]
    values, g, c = S.shared_curve(prob)
    path, cuts = [prob.never()], prob.never()
    for need in needs:
        key = S.target_key(need)
        j = S.argbest(key, g, c)
        starts = [cuts, np.full(prob.num_aux, values[j]), *hull]
        scores = np.vstack([[prob.evaluate(cuts), (g[j], c[j])], hull_scores])  # [2 + H, 2]
        best = starts[S.argbest(key, scores[:, 0], scores[:, 1])]
        cuts = S.descend(prob, best, key)
        if not any(np.array_equal(cuts, q) for q in path):
            path.append(cuts.copy())
    return path


def drop_pvalue(harms: int, helps: int, n: int, epsilon: float) -> float:
    """p-value of H: accuracy drop > ε, from ``harms`` (final exit right, early exit wrong) and ``helps`` (the
    reverse) among n samples: the smallest t at which the Clopper–Pearson upper bound of the harm rate minus the
    lower bound of the help rate, each at level t / 2 (Bonferroni), is at most ε.

    Example:
        >>> drop_pvalue(0, 0, 100, 0.05) <= 2 * binomial_pvalue(0, 100, 0.05)
        True
    """
    from scipy.special import betaincinv

    def gap(t: float) -> float:
        upper = 1.0 if harms >= n else float(betaincinv(harms + 1, n - harms, 1 - t / 2))
        lower = 0.0 if helps <= 0 else float(betaincinv(helps, n - helps + 1, t / 2))
        return upper - lower

    if gap(1.0) > epsilon:
        return 1.0
    lo, hi = -40.0, 0.0  # bisection on log t: gap(t) decreases as t grows
    for _ in range(60):
        mid = (lo + hi) / 2
        if gap(math.exp(mid)) <= epsilon:
            hi = mid
        else:
            lo = mid
    return float(math.exp(hi))


def calibrate_risk(
    policy: ExitPolicy,
    data: Cached,
    guarantee: tuple[float, float],
    *,
    split: float = 0.5,
    seed: int = 0,
    pvalue: str = "binomial",
    loss: str = "drop",
    path_points: int = 16,
) -> ExitPolicy:
    """Risk-controlled thresholds (module docstring) on cached calibration data.

    Reached through ``exitnet.calibrate(policy, net_or_logits, data, guarantee=(epsilon, delta))``. Needs a 0/1
    score per sample (one label per sample, accuracy). The reference is the answer a sample gets at the last
    exit: the final exit's, or with ``fallback="most_confident"`` the most confident exit's.

    Args:
        loss: ``"drop"`` (harm minus help: the accuracy drop itself, tested with :func:`drop_pvalue`) or
            ``"harm"`` (0/1, an upper bound of the drop, tested with ``pvalue``: fewer bounds to pay for, but no
            credit for samples the early exits get right and the final exit wrong).

    Returns:
        A fitted policy; ``calibration_["guarantee"]`` holds ε, δ, the sizes of the two parts, the candidates
        tested with their p-values, and the assumption.
    """
    epsilon, delta = (float(v) for v in guarantee)
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise ValueError(f"guarantee=(epsilon, delta) needs both in (0, 1), got ({epsilon}, {delta})")
    if pvalue not in _PVALUES:
        raise ValueError(f"unknown pvalue {pvalue!r}; choose one of: {', '.join(_PVALUES)}")
    if loss not in ("harm", "drop"):
        raise ValueError(f"unknown loss {loss!r}; choose one of: harm, drop")
    if not 0 < split < 1:
        raise ValueError(f"split must lie in (0, 1), got {split}")
    if not data.binary:
        raise ValueError(
            "risk control (guarantee=) tests a 0/1 loss: it needs a 0/1 score per sample (one class label per "
            "sample, accuracy); these scores are not 0/1 (token-level or regression outputs, or a custom score_fn): "
            "use max_accuracy_drop= instead"
        )
    n = data.n
    data_free = isinstance(policy, ExitPolicy) and bool(getattr(policy, "data_free_candidates", False))
    perm = np.random.default_rng(seed).permutation(n)
    n_sel = 0 if data_free else int(round(split * n))
    if not data_free and (n_sel < 1 or n_sel >= n):
        raise ValueError(f"risk control needs at least 2 calibration samples to split, got {n}")
    sel, test = np.sort(perm[:n_sel]), (np.sort(perm[n_sel:]) if not data_free else np.arange(n))
    sel_t, test_t = torch.from_numpy(sel), torch.from_numpy(test)

    raw = data
    temps = None
    inner = policy
    if isinstance(policy, TemperatureScaled):
        fit_on = raw.subset(test_t if data_free else sel_t)
        temps = list(policy.temperatures_) if policy.is_fitted() else policy.fit_temperatures(fit_on.outputs, fit_on.y)
        data = data.with_outputs(policy.scale(data.outputs, temps))
        inner = policy.policy
        data_free = data_free or bool(getattr(inner, "data_free_candidates", False))

    if isinstance(inner, ThresholdPolicy):
        selected = data.subset(sel_t)
        base = inner.calibration_base(selected.outputs, selected.y)
        correct = gain_matrix(base, data) > 0.5  # [E, N]; the last row: the answer at the last exit
        prob = threshold_problem(base, data, _harm(correct))
    else:
        correct = gain_matrix(inner, data) > 0.5
    harm = correct[-1][None, :] & ~correct  # [E, N]: leaving there loses a right final answer
    helps = ~correct[-1][None, :] & correct  # [E, N]: leaving there wins a wrong final answer
    if isinstance(inner, ThresholdPolicy):
        # The path grows the harm budget: up to 1.5 ε for the harm loss; for the drop loss further, by the share
        # of samples some early exit gets right and the final exit wrong (what help can win back).
        top = 1.5 * epsilon + (float(helps[:, sel].any(axis=0).mean()) if loss == "drop" else 0.0)
        levels = np.linspace(0, top, path_points if loss == "harm" else 2 * path_points)
        path = _threshold_path(prob.subset(sel), [-math.floor(h * len(sel) + 1e-9) for h in levels])
        candidates: list[ExitPolicy] = [with_cuts(base, cuts) for cuts in path]
        exits = [prob.exits(cuts) for cuts in path]  # numpy: the same decisions as decide()
    else:
        fit_on = data.subset(test_t if data_free else sel_t)
        candidates = inner.calibration_candidates(fit_on.outputs, fit_on.y)
        exits = [c.decide(data.outputs).cpu().numpy() for c in candidates]

    test_fn = _PVALUES[pvalue]
    tested: list[dict[str, Any]] = []
    accepted: list[int] = []
    for j, ex in enumerate(exits):
        k_harm, k_help = int(harm[ex[test], test].sum()), int(helps[ex[test], test].sum())
        if loss == "harm":
            p = test_fn(k_harm, len(test), epsilon)
        else:
            p = drop_pvalue(k_harm, k_help, len(test), epsilon)
        tested.append({
            "harm_test": k_harm / len(test), "help_test": k_help / len(test),
            "mean_cost_test": float(data.cost[ex[test]].mean()), "pvalue": p,
        })  # fmt: skip
        if p > delta:
            break
        accepted.append(j)
    cost_all = [float(data.cost[ex].sum()) for ex in exits]
    if accepted:
        chosen = min(accepted, key=lambda j: (cost_all[j], -j))
        fitted = candidates[chosen]
    else:
        chosen, fitted = -1, candidates[0]  # the first candidate leaves nobody early: zero risk
    if temps is not None:
        assert isinstance(policy, TemperatureScaled)
        fitted = policy.with_inner(temps, fitted)
    g_all, c_all = totals(fitted, raw, correct.astype(np.float64))
    fitted.calibration_ = {
        "guarantee": {
            "epsilon": epsilon,
            "delta": delta,
            "loss": (
                "harm = 1[final exit right and chosen exit wrong]; its mean bounds the accuracy drop"
                if loss == "harm"
                else "drop = harm - help (help = 1[final exit wrong and chosen exit right])"
            ),
            "pvalue": pvalue if loss == "harm" else "Clopper-Pearson bounds of harm and help, Bonferroni",
            "ordering": "data-independent" if data_free else f"selection split {len(sel)}, test split {len(test)}",
            "num_selection": int(len(sel)),
            "num_test": int(len(test)),
            "tested": tested,
            "num_accepted": len(accepted),
            "chosen": chosen,
            "assumption": ASSUMPTION,
        },
        "method": "risk control (Learn-then-Test, fixed sequence)",
        "final_accuracy": float(data.scores[-1].mean()),
        "accuracy": g_all / n,
        "mean_cost": c_all / n,
        "full_cost": float(data.cost[-1]),
        "num_samples": n,
    }
    return fitted
