"""Private: the search over per-exit cuts, on cached confidences (numpy, vectorised over samples).

A *cut* τ_i per auxiliary exit: sample b leaves at the first exit i with ``conf[i, b] > τ_i`` (the last exit takes
the rest). Each sample brings a *gain* at the exit it leaves (its score there: 1 if that exit is right, for
accuracy; the share of positions right, or minus the squared error, for other outputs; minus one if it is wrong
while the final exit is right, for risk control) and the exit's cumulative *cost*. Totals are sums over samples,
so integer gains are compared exactly (float gains up to a tolerance the caller gives).

The building block is the exact one-coordinate scan (:func:`scan`): with every other cut fixed, the samples
that reach exit i either leave there (gain ``gain[i]``, cost ``cost[i]``) or go on to whatever the later cuts
give them. Sorting them by confidence, every possible τ_i (one per distinct confidence, placed midway between
neighbours) is evaluated at once with cumulative sums: O(N log N) for all values of one cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

Key = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (gain, cost) arrays -> sortable score, lower is better


@dataclass(frozen=True)
class Problem:
    """Confidences ``conf [K, N]`` (K = E - 1 auxiliary exits; NaN never leaves), gains ``[E, N]``, cumulative
    costs ``[E]``, and the range ``[lo, hi]`` cuts may take (``hi`` = nobody leaves)."""

    conf: np.ndarray
    gain: np.ndarray
    cost: np.ndarray
    lo: float
    hi: float

    @property
    def num_aux(self) -> int:
        return self.conf.shape[0]

    @property
    def n(self) -> int:
        return self.conf.shape[1]

    def never(self) -> np.ndarray:
        return np.full(self.num_aux, self.hi)

    def exits(self, cuts: np.ndarray) -> np.ndarray:
        """Exit of every sample ``[N]``."""
        leaves = np.concatenate([self.conf > cuts[:, None], np.ones((1, self.n), dtype=bool)], axis=0)  # [E, N]
        return leaves.argmax(axis=0)

    def evaluate(self, cuts: np.ndarray) -> tuple[float, float]:
        """Total gain and total cost of ``cuts``."""
        ex = self.exits(cuts)
        return float(self.gain[ex, np.arange(self.n)].sum()), float(self.cost[ex].sum())

    def subset(self, idx: np.ndarray) -> Problem:
        return Problem(self.conf[:, idx], self.gain[:, idx], self.cost, self.lo, self.hi)


def _between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float32 cuts c with a <= c < b (a < b float32 values), near the middle: 'conf > c' takes b, not a."""
    c = ((a + b) / 2).astype(np.float32).astype(np.float64)
    return np.where((a <= c) & (c < b), c, a)


def scan(p: Problem, cuts: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct setting of cut ``i`` with the others fixed: ``(cut values, total gain, total cost)``, from
    the highest cut (nobody leaves at i) down."""
    trial = cuts.copy()
    trial[i] = np.inf
    ex = p.exits(trial)
    cols = np.arange(p.n)
    base_gain, base_cost = float(p.gain[ex, cols].sum()), float(p.cost[ex].sum())
    r = np.flatnonzero((ex > i) & (p.conf[i] > p.lo))  # reach exit i and could leave there
    if r.size == 0:
        return np.array([p.hi]), np.array([base_gain]), np.array([base_cost])
    order = np.argsort(-p.conf[i, r], kind="stable")
    r = r[order]
    v = p.conf[i, r]  # descending
    dg = np.cumsum(p.gain[i, r] - p.gain[ex[r], r])
    dc = np.cumsum(p.cost[i] - p.cost[ex[r]])
    last = np.flatnonzero(np.append(v[1:] != v[:-1], True))  # last index of each group of equal values
    below = np.append(v[last[1:]], p.lo)  # the next lower value (or lo) of each group
    values = _between(below, v[last])
    cut_values = np.concatenate([[p.hi], values])
    gains = np.concatenate([[base_gain], base_gain + dg[last]])
    costs = np.concatenate([[base_cost], base_cost + dc[last]])
    return cut_values, gains, costs


# ------------------------------------------------------------------------------------------------ objectives
def target_key(need: float, tol: float = 1e-9) -> Key:
    """Cheapest with total gain >= ``need`` (up to ``tol``, for sums of float gains); infeasible points rank by
    shortfall."""

    def key(g: np.ndarray, c: np.ndarray) -> np.ndarray:
        ok = g >= need - tol
        return np.stack([~ok, np.where(ok, c, -g), -g]).astype(float)

    return key


def budget_key(budget: float) -> Key:
    """Most gain with total cost <= ``budget``; infeasible points rank by excess cost."""

    def key(g: np.ndarray, c: np.ndarray) -> np.ndarray:
        ok = c <= budget * (1 + 1e-12) + 1e-9
        return np.stack([~ok, np.where(ok, -g, c), c]).astype(float)

    return key


def lagrange_key(lam: float) -> Key:
    """Minimise cost - lam * gain."""

    def key(g: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.stack([c - lam * g, -g])

    return key


def argbest(key: Key, g: np.ndarray, c: np.ndarray) -> int:
    k = key(g, c)  # [levels, M]
    return int(np.lexsort(k[::-1])[0])  # lexsort sorts by the last row first; stable: first of ties wins


def better(key: Key, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Is point a strictly better than b (with a small tolerance against rounding of cost sums)?"""
    ka, kb = key(np.array([a[0]]), np.array([a[1]]))[:, 0], key(np.array([b[0]]), np.array([b[1]]))[:, 0]
    for x, y in zip(ka, kb, strict=True):
        tol = 1e-9 * max(1.0, abs(x), abs(y))
        if x < y - tol:
            return True
        if x > y + tol:
            return False
    return False


def descend(p: Problem, cuts: np.ndarray, key: Key, *, max_rounds: int = 100) -> np.ndarray:
    """Exact coordinate descent: set each cut in turn to its best value given the others, until no change helps."""
    cuts = cuts.copy()
    current = p.evaluate(cuts)
    for _ in range(max_rounds):
        improved = False
        for i in range(p.num_aux):
            values, g, c = scan(p, cuts, i)
            j = argbest(key, g, c)
            if better(key, (g[j], c[j]), current):
                cuts[i] = values[j]
                current = p.evaluate(cuts)
                improved = True
        if not improved:
            break
    return cuts


def pair_moves(p: Problem, cuts: np.ndarray, key: Key, *, grid: int = 24, max_passes: int = 3) -> np.ndarray:
    """Escape coordinate-wise optima: for every ordered pair (i, j), try ``grid`` values of cut i (all of them
    when there are fewer) each with the exact best cut j; keep improvements, then descend again."""
    cuts = descend(p, cuts, key)
    current = p.evaluate(cuts)
    for _ in range(max_passes):
        improved = False
        for i in range(p.num_aux):
            for j in range(p.num_aux):
                if i == j:
                    continue
                values_i, _, _ = scan(p, cuts, i)
                pick = np.unique(np.linspace(0, len(values_i) - 1, min(grid, len(values_i))).round().astype(int))
                for vi in values_i[pick]:
                    trial = cuts.copy()
                    trial[i] = vi
                    values_j, g, c = scan(p, trial, j)
                    k = argbest(key, g, c)
                    if better(key, (g[k], c[k]), current):
                        trial[j] = values_j[k]
                        cuts, current, improved = trial, p.evaluate(trial), True
        if not improved:
            break
        cuts = descend(p, cuts, key)
        current = p.evaluate(cuts)
    return cuts


# ------------------------------------------------------------------------------------------------ paths
def lagrange_sweep(p: Problem, lams: Iterable[float]) -> list[np.ndarray]:
    """Minimisers of cost - λ·gain by coordinate descent, warm-started from one λ to the next (λ descending
    from 'gain is everything' to 'cost is everything'): points on the lower convex hull of the trade-off."""
    cuts = p.never()
    out = []
    for lam in sorted(lams, reverse=True):
        cuts = descend(p, cuts, lagrange_key(lam))
        out.append(cuts.copy())
    return out


def greedy_path(p: Problem, *, notches: int = 50, lookahead: int = 3) -> list[np.ndarray]:
    """From 'nobody leaves early', repeatedly lower one cut by 1..``lookahead`` notches of its confidence
    quantiles, taking the move that saves the most cost per unit of gain lost (moves that lose nothing
    first), until everybody leaves at exit 0. Returns every visited setting."""
    grids = []
    for row in p.conf:
        finite = row[np.isfinite(row)]
        qs: np.ndarray = (
            np.unique(np.quantile(finite, np.linspace(0, 1, notches + 1), method="lower")) if finite.size else finite
        )
        below = [max(p.lo, float(np.nextafter(np.float32(q), np.float32(-np.inf)))) for q in qs[::-1]]
        grids.append(np.array([p.hi, *below, p.lo]))  # descending: 'conf > cut' takes everything >= q
    pos = np.zeros(p.num_aux, dtype=int)
    cuts = np.array([g[0] for g in grids])
    g0, c0 = p.evaluate(cuts)
    path = [cuts.copy()]
    while any(pos[i] < len(grids[i]) - 1 for i in range(p.num_aux)):
        best: tuple[float, float, int, int, float, float] | None = None
        for i, grid in enumerate(grids):
            for step in range(1, lookahead + 1):
                if pos[i] + step >= len(grid):
                    break
                trial = cuts.copy()
                trial[i] = grid[pos[i] + step]
                g, c = p.evaluate(trial)
                saved, lost = c0 - c, g0 - g
                score = np.inf if lost <= 0 else saved / lost
                cand = (score, saved / step, i, step, g, c)
                if best is None or cand[:2] > best[:2]:
                    best = cand
        assert best is not None
        _, _, i, step, g0, c0 = best
        pos[i] += step
        cuts[i] = grids[i][pos[i]]
        path.append(cuts.copy())
    return path


def shared_curve(p: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct *shared* cut (one τ for all exits), exactly: ``(cut values, total gain, total cost)`` from
    the highest cut down. A sample's exit under a shared cut τ is the first i whose running maximum confidence
    exceeds τ, so it changes only where τ crosses a new running maximum: one event per record, swept once."""
    k, n = p.conf.shape
    e_last = k
    conf = np.where(np.isnan(p.conf), -np.inf, p.conf)
    running = np.maximum.accumulate(conf, axis=0)  # [K, N]
    prev = np.vstack([np.full((1, n), -np.inf), running[:-1]])
    record = (conf > prev) & (conf > p.lo)  # [K, N]: exit i becomes the exit once τ < conf[i]
    nxt = np.full(n, e_last)
    prev_exit = np.empty((k, n), dtype=int)  # exit a sample takes just before its event at exit i
    for i in range(k - 1, -1, -1):
        prev_exit[i] = nxt
        nxt = np.where(record[i], i, nxt)
    ii, bb = np.nonzero(record)
    cols = np.arange(n)
    all_last = np.full(n, e_last)
    base_gain, base_cost = float(p.gain[all_last, cols].sum()), float(p.cost[e_last] * n)
    if ii.size == 0:
        return np.array([p.hi]), np.array([base_gain]), np.array([base_cost])
    v = conf[ii, bb]
    dg = p.gain[ii, bb] - p.gain[prev_exit[ii, bb], bb]
    dc = p.cost[ii] - p.cost[prev_exit[ii, bb]]
    order = np.argsort(-v, kind="stable")
    v, dg, dc = v[order], np.cumsum(dg[order]), np.cumsum(dc[order])
    last = np.flatnonzero(np.append(v[1:] != v[:-1], True))
    below = np.append(v[last[1:]], p.lo)
    values = _between(below, v[last])
    return (
        np.concatenate([[p.hi], values]),
        np.concatenate([[base_gain], base_gain + dg[last]]),
        np.concatenate([[base_cost], base_cost + dc[last]]),
    )


def starting_points(p: Problem, *, lams: int = 24) -> list[np.ndarray]:
    """Nobody early, every point of the greedy path and of a λ-sweep of the convex hull."""
    return [p.never(), *greedy_path(p), *lagrange_sweep(p, lambdas(p, lams))]


def solve(p: Problem, key: Key, *, starts: list[np.ndarray] | None = None, pair_grid: int = 24) -> np.ndarray:
    """The best cuts for ``key``: coordinate descent from the four best of several starts (nobody early, the
    greedy path, a λ-sweep of the convex hull, the best shared cut), then pair moves on the winner."""
    starts = list(starting_points(p) if starts is None else starts)
    values, g, c = shared_curve(p)
    starts.append(np.full(p.num_aux, values[argbest(key, g, c)]))
    totals = np.array([p.evaluate(s) for s in starts])  # [S, 2]
    ranks = np.lexsort(key(totals[:, 0], totals[:, 1])[::-1])
    best = None
    for r in ranks[:4]:
        cuts = descend(p, starts[r], key)
        if best is None or better(key, p.evaluate(cuts), p.evaluate(best)):
            best = cuts
    assert best is not None
    return pair_moves(p, best, key, grid=pair_grid) if pair_grid > 0 else best


def solve_budget(
    p: Problem, budget: float, *, pair_grid: int = 24, max_solves: int = 12, unit: float = 1.0
) -> np.ndarray:
    """Most gain within a total-cost ``budget``: the budget search, then galloping on the gain with the target
    search (cheapest cuts for gain >= g + step, from ``unit``: one sample's worth, 1 for 0/1 gains), which is the
    stronger of the two, while the cost fits."""
    starts = starting_points(p)
    best = solve(p, budget_key(budget), starts=starts, pair_grid=pair_grid)
    g_best = p.evaluate(best)[0]
    step = unit
    for _ in range(max_solves):
        trial = solve(p, target_key(g_best + step), starts=[best, *starts], pair_grid=pair_grid)
        g, c = p.evaluate(trial)
        if g >= g_best + step - 1e-9 and c <= budget * (1 + 1e-12) + 1e-9:
            best, g_best, step = trial, g, step * 2
        elif step > unit:
            step = max(unit, step / 4)
        else:
            break
    return best


def gain_unit(gain: np.ndarray) -> float:
    """One sample's worth of gain: 1 for 0/1 gains, else the median spread of a sample's gain over the exits."""
    if np.isin(gain, (0.0, 1.0)).all():
        return 1.0
    spread = np.ptp(gain, axis=0)
    spread = spread[spread > 0]
    return float(np.median(spread)) if spread.size else 1.0


def lambdas(p: Problem, count: int) -> np.ndarray:
    """λ (cost per unit of gain) spanning 'nothing matters but gain' to 'nothing matters but cost'."""
    scale = float(p.cost[-1]) if p.cost[-1] > 0 else 1.0
    return np.concatenate([[0.0], scale * np.geomspace(1e-3, 1e3, max(1, count - 1))])


def nondominated(points: Iterable[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Points ``(cost, gain, id)`` that no other point beats on both (lower cost, higher gain), by cost."""
    out: list[tuple[float, float, int]] = []
    for cost, gain, ident in sorted(points, key=lambda t: (t[0], -t[1])):
        if not out or gain > out[-1][1] + 1e-12:
            out.append((cost, gain, ident))
    return out
