"""Calibration of exit policies (survey §6): the cheapest per-exit thresholds for a target accuracy (or score), the
most accurate ones within a cost budget, the whole Pareto front, the iterative single-threshold rule of
Baccarelli et al. (the survey's [3]), and risk-controlled thresholds with a stated guarantee (Learn-then-Test).

The entry point is the function :func:`exitnet.calibrate` (this package's :func:`calibrate`); the package itself
is ``exitnet.calibration``. The search algorithm is described in ``docs/policies.md`` and in
:mod:`exitnet.calibration._search`; the guarantee and its assumption in :mod:`exitnet.calibration.risk`.

Module order (an import points only up this list): ``_search`` (numpy search) → ``_inputs`` (cached data, costs,
gains) → ``risk``, ``iterative``, ``_front`` → ``_core`` (:func:`calibrate`).
"""

from __future__ import annotations

from exitnet.calibration._core import calibrate
from exitnet.calibration._front import FrontPoint, pareto_front
from exitnet.calibration._inputs import COST_KINDS, exit_costs
from exitnet.calibration.iterative import calibrate_iterative
from exitnet.calibration.risk import binomial_pvalue, calibrate_risk, drop_pvalue, hb_pvalue

__all__ = [
    "calibrate",
    "calibrate_iterative",
    "calibrate_risk",
    "pareto_front",
    "FrontPoint",
    "exit_costs",
    "COST_KINDS",
    "binomial_pvalue",
    "hb_pvalue",
    "drop_pvalue",
]
